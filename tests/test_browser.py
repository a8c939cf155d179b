"""A real browser: JupyterLab + headless Chromium run the demo notebook, upload, predict.

The driver lives in `tools/browser_demo.py` (which also makes the README's demo screenshots on the
real models); its docstring explains why it waits on JupyterLab's own state. On any failure the
test saves a screenshot, the live notebook (with its outputs) and the JupyterLab log under
`results/browser_test/` and names them in the failure message.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import PROJECT_ROOT

_spec = importlib.util.spec_from_file_location(
    "browser_demo", PROJECT_ROOT / "tools" / "browser_demo.py"
)
browser_demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(browser_demo)

DIAGNOSTICS = PROJECT_ROOT / "results" / "browser_test"
pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def jupyter(tiny_models, tmp_path):
    if not Path(browser_demo.CHROMIUM).exists():
        pytest.skip("Chromium not found: install it with `apt-get install -y chromium` (CI does)")
    models_dir, manifest = tiny_models
    try:
        with browser_demo.jupyterlab(models_dir, Path(manifest).parent, tmp_path) as lab:
            yield {**lab, "manifest": manifest}
    except RuntimeError as exc:  # JupyterLab did not start
        pytest.fail(str(exc))


def test_demo_in_a_real_browser(jupyter, tmp_path):
    from playwright.sync_api import sync_playwright

    frame = pd.read_csv(jupyter["manifest"], keep_default_na=False)
    scan = frame[frame.split == "test"]["path"].iloc[0]
    shot = tmp_path / "04_predict_browser.png"  # a passing run leaves nothing in the repo
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_demo.CHROMIUM,
                                    args=browser_demo.CHROMIUM_ARGS)  # fmt: skip
        demo = browser_demo.Demo(
            browser.new_page(viewport={"width": 1400, "height": 1800}), jupyter
        )
        try:
            demo.open_and_run()
            seen = demo.predict(scan)
            assert seen["banner"] is None, seen  # no OOD statistics: no status banner
            assert "Prediction:" in seen["result"] and "calibrated probability" in seen["result"], (
                seen
            )
            probs = seen["probabilities"]
            assert len(probs) == 4 and all(t.endswith("%") for t in probs), probs
            demo.screenshot(shot)  # after the explanation has appeared
        except Exception as exc:
            saved = demo.save_diagnostics(DIAGNOSTICS)
            pytest.fail(
                f"browser demo failed at step {demo.step!r} after {demo.times}: {exc}\n"
                f"diagnostics: {', '.join(str(p) for p in saved)}"
            )
        finally:
            browser.close()
    print(f"browser test times (s): { {k: round(v, 1) for k, v in demo.times.items()} }")
    assert shot.stat().st_size > 10_000
