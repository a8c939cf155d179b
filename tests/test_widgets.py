"""Tests of btc.widgets, headless: build the app, set the upload's value, call its handlers."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pandas as pd
import pytest

from btc import llm, widgets
from btc.config import CLASS_NAMES
from tests import images


@pytest.fixture(autouse=True)
def _no_gemini_key(monkeypatch):
    for var in llm.KEY_VARIABLES:
        monkeypatch.delenv(var, raising=False)


def _upload(name: str, content: bytes, kind: str = "image/png") -> dict:
    return {"name": name, "type": kind, "size": len(content), "content": memoryview(content),
            "last_modified": datetime.datetime(2026, 1, 1)}  # fmt: skip


@pytest.fixture
def manifest(tmp_path) -> Path:
    """A manifest of generated scans: three test images per class and one train image."""
    rows = []
    for c, name in enumerate(CLASS_NAMES):
        for k, split in enumerate(["test", "test", "test", "train"]):
            path = images.save(tmp_path / "scans" / name / f"{name}{k}.jpg",
                               images.brain_like(64, seed=10 * c + k))  # fmt: skip
            rows.append({"path": str(path), "sha256": f"{c}-{k}", "class": name, "split": split,
                         "group": 10 * c + k, "official_split": "", "format": "jpeg", "mode": "L"})  # fmt: skip
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _record(status: str = "predicted", **extra) -> dict:
    probs = {"glioma": 0.81, "meningioma": 0.12, "notumor": 0.04, "pituitary": 0.03}
    return {"class": "glioma", "confidence": 0.81, "runner_up": "meningioma",
            "runner_up_probability": 0.12, "probabilities": probs, "status": status, **extra}  # fmt: skip


def test_status_banner_says_what_each_status_means():
    predicted = widgets.status_banner(_record())
    assert "Prediction: glioma" in predicted and "81.0% calibrated" in predicted
    assert "runner-up meningioma 12.0%" in predicted and widgets.DISCLAIMER in predicted
    uncertain = widgets.status_banner(_record("uncertain", thresholds={"confidence": 0.9}))
    assert widgets.UNCERTAIN_BANNER in uncertain and "below the threshold 90.0%" in uncertain
    ood = widgets.status_banner(_record("out_of_distribution", ood_reason="colour <photo>",
                                        status_note="a & b"))  # fmt: skip
    assert widgets.OOD_BANNER in ood and "not analysed" in ood and "(flagged)" in ood
    assert "colour &lt;photo&gt;" in ood and "a &amp; b" in ood  # escaped, never raw HTML


def test_probability_bars_draw_every_class_and_highlight_the_prediction():
    bars = widgets.probability_bars(_record()["probabilities"], "glioma")
    assert bars.count("btc-bar") == len(CLASS_NAMES)
    glioma, rest = bars.split("data-class='meningioma'", 1)
    assert "#d9534f" in glioma and "#d9534f" not in rest  # only the predicted class in red
    assert "width:194px" in glioma and "81.0%" in glioma  # 0.81 × 240 px


def test_test_samples_pick_test_images_per_class(manifest, tmp_path):
    picked = widgets.test_samples(manifest, per_class=2)
    assert len(picked) == 2 * len(CLASS_NAMES)
    frame = pd.read_csv(manifest)
    test_paths = set(frame.loc[frame.split == "test", "path"])
    assert all(path in test_paths for _, path in picked)
    assert picked[0][0].startswith("glioma · glioma") and picked == widgets.test_samples(
        manifest, 2
    )
    assert widgets.test_samples(tmp_path / "missing.csv") == []


def test_upload_and_sample_handlers_without_models(manifest):
    app = widgets.PredictApp({"cnn": None, "mobilenet": None}, manifest_path=manifest)
    assert list(app.model.options) == ["cnn", "mobilenet", "ensemble"]
    assert app.model.value == "ensemble" and app.share.value is False and app.client is None
    assert app.run_prediction() is None and "Upload a JPEG/PNG scan" in app.status.value
    assert app.ask("why?") is None and "Predict a scan before asking" in app.status.value
    scan = images.encoded(images.brain_like(64), "PNG")
    app.upload.value = (_upload("scan.png", scan), _upload("notes.png", b"hello"))
    assert "Uploaded scan.png — press Predict." in app.status.value
    assert "Rejected:" in app.status.value and "notes.png" in app.status.value
    assert app._source == ("upload", [("scan.png", scan)])
    app.upload.value = (_upload("empty.jpg", b"", "image/jpeg"),)
    assert "Uploaded" not in app.status.value and app._source is None
    _, path = app.sample.options[1]
    app.sample.value = path
    assert app.status.value == f"Selected {Path(path).name} — press Predict."
    assert app._source == ("sample", [(Path(path).name, path)])


# --- with the tiny trained models (moved from tests/test_predict.py) -----------------------------


@pytest.fixture(scope="module")
def loaded(tiny_loaded):
    models, _, manifest, test_files = tiny_loaded
    return models, manifest, test_files


def test_widget_upload_predict_and_chat(loaded):
    models, manifest, test_files = loaded
    app = widgets.PredictApp(models, manifest_path=manifest)
    assert app.share.value is False and app.model.value == "ensemble"
    assert len(app.sample.options) > 1
    content = Path(test_files[0]).read_bytes()
    app.upload.value = (_upload("scan.jpg", content, "image/jpeg"),)
    assert "Uploaded scan.jpg" in app.status.value
    record = app.run_prediction()
    assert record is not None and llm.CLASS_WORDS[record["class"]] in app.result.value
    assert app.bars.value.count("btc-bar") == 4 and "%" in app.bars.value
    assert "not AI-generated" in app.explanation.value
    assert app.overlay.value[:8] == b"\x89PNG\r\n\x1a\n" and len(app.overlay.value) > 5000
    answer = app.ask("What does the map show?")
    assert "GEMINI_API_KEY" in answer and "What does the map show?" in app.chat_log.value
    app.upload.value = (_upload("notes.png", b"hello"),)
    assert "Rejected" in app.status.value and "notes.png" in app.status.value
    assert app.run_prediction() is None


def test_batch_mode_writes_predictions_overlays_and_explanations(loaded, tmp_path):
    models, _, test_files = loaded
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0truncated")
    table = widgets.run_batch([test_files[0], str(bad)], models=models, results_dir=tmp_path)
    assert table["ok"].tolist() == [True, False]
    out = tmp_path / "04_predict"
    saved = json.loads((out / "predictions.json").read_text())
    assert saved[0]["explanation_source"] == "template" and "bad.jpg" in saved[1]["error"]
    assert len(list(out.glob("*_gradcam.png"))) == 1
    assert "not a diagnosis" in (out / "explanations.md").read_text()
