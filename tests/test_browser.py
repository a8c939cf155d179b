"""A real browser: JupyterLab + headless Chromium run the demo notebook, upload, predict.

Why this test waits on JupyterLab's own state rather than on what the page looks like: the
notebook toolbar's kernel indicator reads "idle" before a kernel session exists, and "Run All
Cells" issued in that window opens JupyterLab's *Select Kernel* dialog instead of running
anything — on a cold machine (fresh clone, first TensorFlow import) the window is wide and the
test used to wait four minutes for an Upload button that could never come. So the test

1. warms up what is cold (imports TensorFlow and btc once, builds the font cache) before any
   timing starts;
2. waits, through `window.jupyterapp` (`--LabApp.expose_app_in_browser`), until the notebook's
   kernel is connected and idle;
3. runs all cells from the Run menu, as a user does, and checks that the run really started;
4. waits until every code cell has executed without an error, then for the rendered widget;
5. on any failure saves a screenshot, the live notebook (with its outputs) and the JupyterLab
   log under `results/browser_test/`, and names them in the failure message.
"""

from __future__ import annotations

import json
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
NOTEBOOK = "04_predict_interactive.ipynb"
DIAGNOSTICS = PROJECT_ROOT / "results" / "browser_test"
pytestmark = [pytest.mark.browser, pytest.mark.slow]

# The notebook panel, found among the main area's widgets by its path (JupyterLab 4 API).
_PANEL_JS = f"""() => {{
  const app = window.jupyterapp;
  if (!app || !app.shell) return null;
  return Array.from(app.shell.widgets('main')).find(
    w => w.context && w.context.path.endsWith('{NOTEBOOK}')) || null;
}}"""
_KERNEL_IDLE_JS = f"""() => {{
  const panel = ({_PANEL_JS})();
  const kernel = panel && panel.sessionContext.session && panel.sessionContext.session.kernel;
  return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle'
    && panel.content.widgets.length > 0;
}}"""
# Started: a cell carries an execution count or the "[*]" of a queued/running cell.
_RUN_STARTED_JS = f"""() => {{
  const panel = ({_PANEL_JS})();
  return !!panel && panel.content.widgets.some(c => c.model.type === 'code' &&
    (c.model.executionCount !== null || /\\*/.test(c.node.querySelector('.jp-InputPrompt')?.textContent || '')));
}}"""
# Finished: kernel idle again and every non-empty code cell has an execution count.
_RUN_DONE_JS = f"""() => {{
  const panel = ({_PANEL_JS})();
  const kernel = panel && panel.sessionContext.session && panel.sessionContext.session.kernel;
  if (!kernel || kernel.status !== 'idle') return false;
  return panel.content.widgets.filter(c => c.model.type === 'code'
    && c.model.sharedModel.getSource().trim()).every(c => c.model.executionCount !== null);
}}"""
_NOTEBOOK_JSON_JS = f"""() => {{
  const panel = ({_PANEL_JS})();
  return panel ? JSON.stringify(panel.content.model.toJSON()) : null;
}}"""
_DIALOG_JS = """() => Array.from(document.querySelectorAll('.jp-Dialog')).map(d => d.innerText)"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _warm_up(env: dict) -> float:
    """Import what the demo's kernel imports, once, so that no timeout pays for a cold start."""
    start = time.perf_counter()
    code = "import tensorflow, keras, tf_keras_vis, ipywidgets, matplotlib.pyplot, btc.widgets"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=900)
    return time.perf_counter() - start


@pytest.fixture
def jupyter(tiny_models, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium not found: install it with `apt-get install -y chromium` (CI does)")
    models_dir, manifest = tiny_models
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(PROJECT_ROOT / "notebooks" / NOTEBOOK, root)  # never the repo copy
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "BTC_MODELS_DIR": str(models_dir),
           "BTC_PROCESSED_DIR": str(Path(manifest).parent), "BTC_RESULTS_DIR": str(tmp_path / "results"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"), "JUPYTER_DATA_DIR": str(tmp_path / "jdata"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrun"), "IPYTHONDIR": str(tmp_path / "ipy")}  # fmt: skip
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        env.pop(var, None)
    warm_seconds = _warm_up(env)
    cmd = [sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]  # fmt: skip
    log_path = tmp_path / "jupyter.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if urllib.request.urlopen(f"{url}/lab?token={token}", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.terminate()
        pytest.fail("JupyterLab did not start in 120 s: " + log_path.read_text()[-2000:])
    yield {"url": url, "token": token, "manifest": manifest, "log": log_path,
           "warm_seconds": warm_seconds}  # fmt: skip
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _save_diagnostics(page, log_path: Path, step: str) -> list[Path]:
    """Save what a person needs to see why the run failed; return the paths written."""
    DIAGNOSTICS.mkdir(parents=True, exist_ok=True)
    saved = []
    shot = DIAGNOSTICS / "failure.png"
    try:
        page.screenshot(path=str(shot), full_page=True)
        saved.append(shot)
    except Exception as exc:  # the page itself may be gone
        print(f"screenshot failed: {exc}")
    try:
        notebook = page.evaluate(_NOTEBOOK_JSON_JS)
        dialogs = page.evaluate(_DIALOG_JS)
    except Exception as exc:
        notebook, dialogs = None, [f"could not read the page: {exc}"]
    if notebook:
        path = DIAGNOSTICS / "notebook.ipynb"
        path.write_text(json.dumps(json.loads(notebook), indent=1))
        saved.append(path)
    state = DIAGNOSTICS / "state.txt"
    state.write_text(f"failed step: {step}\nopen dialogs: {dialogs}\n")
    saved.append(state)
    if log_path.is_file():
        saved.append(Path(shutil.copy(log_path, DIAGNOSTICS / "jupyter.log")))
    return saved


def _errors_in(notebook_json: str) -> list[str]:
    cells = json.loads(notebook_json)["cells"]
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in cells for o in c.get("outputs", [])
            if o.get("output_type") == "error"]  # fmt: skip


def test_demo_in_a_real_browser(jupyter):
    from playwright.sync_api import sync_playwright

    frame = pd.read_csv(jupyter["manifest"], keep_default_na=False)
    scan = frame[frame.split == "test"]["path"].iloc[0]
    shot = PROJECT_ROOT / "results" / "04_predict_browser.png"
    times: dict[str, float] = {"warm-up": jupyter["warm_seconds"]}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])  # fmt: skip
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        step = "open the notebook"
        try:
            start = time.perf_counter()
            page.goto(f"{jupyter['url']}/lab/tree/{NOTEBOOK}?token={jupyter['token']}")
            step = "wait for the notebook's kernel to be connected and idle"
            page.wait_for_function(_KERNEL_IDLE_JS, timeout=180_000, polling=250)
            times["kernel ready"] = time.perf_counter() - start
            step = "Run → Run All Cells"
            page.click("li.lm-MenuBar-item:has-text('Run')")
            page.click("li.lm-Menu-item:has-text('Run All Cells')")
            step = "confirm that the run started"
            page.wait_for_function(_RUN_STARTED_JS, timeout=30_000, polling=250)
            step = "wait until every code cell has executed"
            page.wait_for_function(_RUN_DONE_JS, timeout=300_000, polling=500)
            times["run all"] = time.perf_counter() - start - times["kernel ready"]
            errors = _errors_in(page.evaluate(_NOTEBOOK_JSON_JS))
            assert not errors, f"notebook cells raised: {errors}"
            step = "upload a test-split scan through the FileUpload's file chooser"
            upload = page.locator("button:has-text('Upload')")
            upload.wait_for(timeout=30_000)
            with page.expect_file_chooser() as chooser:
                upload.click()
            chooser.value.set_files(scan)
            page.wait_for_selector("text=press Predict", timeout=60_000)
            step = "Predict"
            page.click("button:has-text('Predict')")
            result = page.locator(".btc-result")
            result.wait_for(timeout=120_000)
            text = result.inner_text()
            assert "Prediction:" in text and "calibrated probability" in text, text
            probs = page.locator(".btc-prob").all_inner_texts()
            assert len(probs) == 4 and all(t.endswith("%") for t in probs), probs
            step = "wait for the explanation"
            page.wait_for_selector(".btc-explanation", timeout=60_000)
            page.locator(".btc-result").scroll_into_view_if_needed()
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
        except Exception as exc:
            saved = _save_diagnostics(page, jupyter["log"], step)
            pytest.fail(
                f"browser demo failed at step {step!r} after {times}: {exc}\n"
                f"diagnostics: {', '.join(str(p) for p in saved)}"
            )
        finally:
            browser.close()
    print(f"browser test times (s): { {k: round(v, 1) for k, v in times.items()} }")
    assert shot.stat().st_size > 10_000
