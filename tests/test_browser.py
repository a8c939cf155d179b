"""A real browser: JupyterLab + headless Chromium run the demo notebook, upload, predict."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import PROJECT_ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyter(tiny_models, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium not found: install it with `apt-get install -y chromium` (CI does)")
    models_dir, manifest = tiny_models
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(
        PROJECT_ROOT / "notebooks" / "04_predict_interactive.ipynb", root
    )  # never the repo copy
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "BTC_MODELS_DIR": str(models_dir),
           "BTC_PROCESSED_DIR": str(Path(manifest).parent), "BTC_RESULTS_DIR": str(tmp_path / "results"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"), "JUPYTER_DATA_DIR": str(tmp_path / "jdata"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrun"), "IPYTHONDIR": str(tmp_path / "ipy")}  # fmt: skip
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]  # fmt: skip
    log = open(tmp_path / "jupyter.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if urllib.request.urlopen(f"{url}/lab?token={token}", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.terminate()
        pytest.fail("JupyterLab did not start: " + (tmp_path / "jupyter.log").read_text()[-2000:])
    yield url, token, manifest
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_demo_in_a_real_browser(jupyter):
    from playwright.sync_api import sync_playwright

    url, token, manifest = jupyter
    frame = pd.read_csv(manifest, keep_default_na=False)
    scan = frame[frame.split == "test"]["path"].iloc[0]
    shot = PROJECT_ROOT / "results" / "04_predict_browser.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])  # fmt: skip
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(f"{url}/lab/tree/04_predict_interactive.ipynb?token={token}")
        page.wait_for_selector(
            ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000
        )
        page.click("li.lm-MenuBar-item:has-text('Run')")
        page.click("li.lm-Menu-item:has-text('Run All Cells')")
        upload = page.locator("button:has-text('Upload')")
        upload.wait_for(timeout=240_000)
        with page.expect_file_chooser() as chooser:
            upload.click()
        chooser.value.set_files(scan)
        page.wait_for_selector("text=press Predict", timeout=60_000)
        page.click("button:has-text('Predict')")
        result = page.locator(".btc-result")
        result.wait_for(timeout=120_000)
        text = result.inner_text()
        assert "Prediction:" in text and "calibrated probability" in text
        probs = page.locator(".btc-prob").all_inner_texts()
        assert len(probs) == 4 and all(t.endswith("%") for t in probs)
        page.wait_for_selector(".btc-explanation", timeout=60_000)
        page.locator(".btc-result").scroll_into_view_if_needed()
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
