"""Drive the demo notebook (04) in JupyterLab with headless Chromium: upload a file, Predict, screenshot.

Usage: `python tools/browser_demo.py IMAGE [SCREENSHOT]` runs the demo on the project's trained
models (`models/`, `data/processed/`) and saves what a user sees after pressing Predict, e.g.

    python tools/browser_demo.py ../shared/ood-dev/chest_xray/txv_tb0005.png results/ood/chest_xray_demo.png

It prints the status banner and the result text. `tests/test_browser.py` drives the same steps on
tiny models. Needs Chromium (`apt-get install -y chromium`) and the `playwright` package; no
browser download.

Why the driver waits on JupyterLab's own state rather than on what the page looks like: the
notebook toolbar's kernel indicator reads "idle" before a kernel session exists, and "Run All
Cells" issued in that window opens JupyterLab's *Select Kernel* dialog instead of running
anything. So it (1) warms up what is cold (TensorFlow and btc imports, the font cache) before any
timing starts; (2) waits, through `window.jupyterapp` (`--LabApp.expose_app_in_browser`), until
the notebook's kernel is connected and idle; (3) runs all cells from the Run menu, as a user does,
and checks that the run really started; (4) waits until every code cell has executed without an
error, then for the rendered widget. On failure, `save_diagnostics` keeps a screenshot, the live
notebook (with its outputs) and the JupyterLab log.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NOTEBOOK = "04_predict_interactive.ipynb"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip

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


def warm_up(env: dict) -> float:
    """Import what the demo's kernel imports, once, so that no timeout pays for a cold start."""
    start = time.perf_counter()
    code = "import tensorflow, keras, tf_keras_vis, ipywidgets, matplotlib.pyplot, btc.widgets"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=900)
    return time.perf_counter() - start


@contextlib.contextmanager
def jupyterlab(models_dir: Path, processed_dir: Path, workdir: Path):
    """A JupyterLab server on a copy of the demo notebook, reading the given models and manifest.

    Args:
        models_dir: Trained models (`BTC_MODELS_DIR` of the kernel).
        processed_dir: Folder of the manifest (`BTC_PROCESSED_DIR`).
        workdir: Scratch folder: the notebook copy, Jupyter's config/data/runtime, results, log.

    Yields:
        `{"url", "token", "log", "warm_seconds"}`.

    Raises:
        RuntimeError: If JupyterLab does not answer within 120 s (with the log's tail).
    """
    root = workdir / "lab"
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, root)  # never the repo copy
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "BTC_MODELS_DIR": str(models_dir), "BTC_PROCESSED_DIR": str(processed_dir),
           "BTC_RESULTS_DIR": str(workdir / "results"),
           "JUPYTER_CONFIG_DIR": str(workdir / "jcfg"), "JUPYTER_DATA_DIR": str(workdir / "jdata"),
           "JUPYTER_RUNTIME_DIR": str(workdir / "jrun"), "IPYTHONDIR": str(workdir / "ipy")}  # fmt: skip
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        env.pop(var, None)
    # no "news" pop-up over what the screenshots should show (a user setting, so in this config dir)
    notification = workdir / "jcfg" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True, exist_ok=True)
    (notification / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    warm_seconds = warm_up(env)
    cmd = [sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]  # fmt: skip
    log_path = workdir / "jupyter.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(240):
                try:
                    if urllib.request.urlopen(f"{url}/lab?token={token}", timeout=2).status == 200:
                        break
                except OSError:
                    time.sleep(0.5)
            else:
                raise RuntimeError(
                    "JupyterLab did not start in 120 s: " + log_path.read_text()[-2000:]
                )
            yield {"url": url, "token": token, "log": log_path, "warm_seconds": warm_seconds}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def notebook_errors(page) -> list[str]:
    """The errors raised by the live notebook's cells, as `"Name: message"`."""
    cells = json.loads(page.evaluate(_NOTEBOOK_JSON_JS))["cells"]
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in cells for o in c.get("outputs", [])
            if o.get("output_type") == "error"]  # fmt: skip


class Demo:
    """One browser session on the demo notebook; `step` names what it is doing (for failures)."""

    def __init__(self, page, lab: dict):
        self.page, self.lab, self.step = page, lab, "start"
        self.times: dict[str, float] = {"warm-up": lab["warm_seconds"]}

    def open_and_run(self) -> None:
        """Open 04, wait for its kernel, Run All Cells, wait until every cell ran without error."""
        page, start = self.page, time.perf_counter()
        self.step = "open the notebook"
        page.goto(f"{self.lab['url']}/lab/tree/{NOTEBOOK}?token={self.lab['token']}")
        self.step = "wait for the notebook's kernel to be connected and idle"
        page.wait_for_function(_KERNEL_IDLE_JS, timeout=180_000, polling=250)
        self.times["kernel ready"] = time.perf_counter() - start
        self.step = "Run → Run All Cells"
        page.click("li.lm-MenuBar-item:has-text('Run')")
        page.click("li.lm-Menu-item:has-text('Run All Cells')")
        self.step = "confirm that the run started"
        page.wait_for_function(_RUN_STARTED_JS, timeout=30_000, polling=250)
        self.step = "wait until every code cell has executed"
        page.wait_for_function(_RUN_DONE_JS, timeout=300_000, polling=500)
        self.times["run all"] = time.perf_counter() - start - self.times["kernel ready"]
        errors = notebook_errors(page)
        if errors:
            raise AssertionError(f"notebook cells raised: {errors}")

    def predict(self, image: str | Path) -> dict:
        """Upload `image` through the FileUpload's file chooser, press Predict, wait for the result.

        Returns:
            `{"banner": text or None, "result": text, "probabilities": [texts]}`.
        """
        page = self.page
        self.step = f"upload {Path(image).name} through the FileUpload's file chooser"
        page.locator(".btc-result").evaluate_all("nodes => nodes.forEach(n => n.remove())")
        upload = page.locator("button:has-text('Upload')")
        upload.wait_for(timeout=30_000)
        with page.expect_file_chooser() as chooser:
            upload.click()
        chooser.value.set_files(str(image))
        page.wait_for_selector("text=press Predict", timeout=60_000)
        self.step = f"Predict {Path(image).name}"
        page.click("button:has-text('Predict')")
        result = page.locator(".btc-result")
        result.wait_for(timeout=120_000)
        banner = page.locator(".btc-banner")
        return {"banner": banner.inner_text() if banner.count() else None,
                "result": result.inner_text(),
                "probabilities": page.locator(".btc-prob").all_inner_texts()}  # fmt: skip

    def screenshot(self, path: str | Path, wait_for: str | None = ".btc-explanation") -> Path:
        """Save a full-page screenshot, after `wait_for` (a selector) has appeared."""
        self.step = f"screenshot {Path(path).name}"
        if wait_for:
            self.page.wait_for_selector(wait_for, timeout=60_000)
        top = self.page.locator(".btc-banner, .btc-result").first  # the widget's answer on top
        top.evaluate("e => e.scrollIntoView({block: 'start'})")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), full_page=True)
        return Path(path)

    def save_diagnostics(self, folder: Path) -> list[Path]:
        """Save what a person needs to see why the run failed; return the paths written."""
        folder.mkdir(parents=True, exist_ok=True)
        saved = []
        shot = folder / "failure.png"
        try:
            self.page.screenshot(path=str(shot), full_page=True)
            saved.append(shot)
        except Exception as exc:  # the page itself may be gone
            print(f"screenshot failed: {exc}")
        try:
            notebook = self.page.evaluate(_NOTEBOOK_JSON_JS)
            dialogs = self.page.evaluate(_DIALOG_JS)
        except Exception as exc:
            notebook, dialogs = None, [f"could not read the page: {exc}"]
        if notebook:
            path = folder / "notebook.ipynb"
            path.write_text(json.dumps(json.loads(notebook), indent=1))
            saved.append(path)
        state = folder / "state.txt"
        state.write_text(f"failed step: {self.step}\nopen dialogs: {dialogs}\n")
        saved.append(state)
        if self.lab["log"].is_file():
            saved.append(Path(shutil.copy(self.lab["log"], folder / "jupyter.log")))
        return saved


def main(image: str, shot: str | None = None) -> dict:
    """Run the demo on the project's models with `image` and save the screenshot; print the text."""
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT))
    from btc import config

    shot_path = Path(shot or config.RESULTS_DIR / "demo" / f"{Path(image).stem}_demo.png")
    with tempfile.TemporaryDirectory(prefix="btc-demo-") as tmp, \
            jupyterlab(config.MODELS_DIR, config.PROCESSED_DIR, Path(tmp)) as lab, \
            sync_playwright() as p:  # fmt: skip
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        demo = Demo(browser.new_page(viewport={"width": 1400, "height": 1800}), lab)
        try:
            demo.open_and_run()
            seen = demo.predict(image)
            demo.screenshot(shot_path, wait_for="text=Done.")  # rejected images are explained too
        except Exception:
            saved = demo.save_diagnostics(shot_path.parent / "failure")
            print(f"failed at step {demo.step!r}; diagnostics: {', '.join(map(str, saved))}")
            raise
        finally:
            browser.close()
    print(f"banner: {seen['banner']}\nresult: {seen['result']}\nscreenshot: {shot_path}")
    return {**seen, "screenshot": str(shot_path)}


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(*sys.argv[1:])
