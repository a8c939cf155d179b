"""Tests of btc.predict and the `btc predict` CLI (tiny trained models; widgets: test_widgets)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from btc import artifacts, config, datasets, predict
from btc import images as btc_images


@pytest.fixture(scope="module")
def loaded(tiny_models):
    models_dir, manifest = tiny_models
    return predict.load_models(models_dir=models_dir), models_dir, manifest


@pytest.fixture(scope="module")
def test_files(tiny_models):
    frame = pd.read_csv(tiny_models[1], keep_default_na=False)
    return frame[frame.split == "test"]["path"].tolist()[:3]


def test_every_input_kind_gives_the_same_calibrated_prediction(loaded, test_files):
    models, _, _ = loaded
    path = Path(test_files[0])
    gray = np.asarray(btc_images.to_grayscale(Image.open(path)))
    as_png = io.BytesIO()
    Image.fromarray(gray).save(as_png, "PNG")
    by_path = predict.predict(path, "cnn", models)[0]
    by_png_bytes = predict.predict([as_png.getvalue()], "cnn", models)[0]
    by_pil = predict.predict([Image.fromarray(gray)], "cnn", models)[0]
    by_array = predict.predict([gray], "cnn", models)[0]
    assert by_path["input"] == path.name
    for other in (by_png_bytes, by_pil, by_array):
        np.testing.assert_allclose(list(other["probabilities"].values()),
                                   list(by_pil["probabilities"].values()), atol=1e-5)  # fmt: skip
    probs = by_path["probabilities"]
    assert list(probs) == list(config.CLASS_NAMES) and sum(probs.values()) == pytest.approx(
        1, abs=1e-4
    )
    assert by_path["class"] == max(probs, key=probs.get)
    assert by_path["image"].shape == (64, 64, 3)


def test_prediction_matches_the_training_pipeline_and_temperature(loaded, test_files):
    models, _, manifest = loaded
    m = models["cnn"]
    frame = pd.read_csv(manifest, keep_default_na=False)
    row = frame[frame.path == test_files[0]]
    x, _ = next(
        iter(datasets.make_dataset(row, "test", 64, 1, augment=False, shuffle=False, cache=False))
    )
    np.testing.assert_allclose(
        predict.predict([test_files[0]], "cnn", models)[0]["image"], x.numpy()[0]
    )
    raw = m.model.predict(x, verbose=0)[0]
    original = m.metadata  # a frozen artifacts.Metadata: swap in a copy, restore it after
    bias = [0.3, 2.0, -1.0, -1.3]  # vector scaling: a bias per class after the temperature
    m.metadata = original.replace(temperature=2.0)
    try:
        p = predict.predict([test_files[0]], "cnn", models)[0]["probabilities"]
        m.metadata = original.replace(temperature=2.0, calibration="vector", class_bias=bias)
        p_vector = predict.predict([test_files[0]], "cnn", models)[0]["probabilities"]
    finally:
        m.metadata = original
    expected = np.exp(np.log(raw) / 2.0) / np.exp(np.log(raw) / 2.0).sum()
    np.testing.assert_allclose(list(p.values()), expected, atol=1e-5)
    expected = np.exp(np.log(raw) / 2.0 + bias) / np.exp(np.log(raw) / 2.0 + bias).sum()
    np.testing.assert_allclose(list(p_vector.values()), expected, atol=1e-5)


def test_ensemble_record_carries_every_member(loaded, test_files):
    models, _, _ = loaded
    rec = predict.predict(test_files[:2], "ensemble", models)
    assert len(rec) == 2 and set(rec[0]["per_model"]) == {"cnn", "mobilenet"}
    members = rec[0]["per_model"]
    weights = predict.ensemble_weights(models)  # fitted ones once 03 wrote ensemble.json
    mean = np.average([list(members[n]["probabilities"].values()) for n in members], 0,
                      [weights[n] for n in members])  # fmt: skip
    np.testing.assert_allclose(list(rec[0]["probabilities"].values()), mean, atol=1e-5)
    with pytest.raises(ValueError, match="Received: model='resnet'"):
        predict.predict(test_files[:1], "resnet", models)


def _cli(*args, env_dirs):
    env = {**__import__("os").environ, "BTC_MODELS_DIR": str(env_dirs)}
    return subprocess.run([sys.executable, "-m", "btc.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip


def test_cli_predict_json_good_and_bad_files(loaded, test_files, tmp_path):
    _, models_dir, _ = loaded
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    done = _cli("predict", test_files[0], str(bad), "--model", "ensemble", "--saliency",
                str(tmp_path / "maps"), env_dirs=models_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    records = json.loads(done.stdout)
    assert [r["ok"] for r in records] == [True, False]
    assert records[0]["class"] in config.CLASS_NAMES and "probabilities" in records[0]
    assert "notes.jpg" in records[1]["error"] and "only JPEG and PNG" in records[1]["error"]
    assert "notes.jpg" in done.stderr
    assert list((tmp_path / "maps").glob("*_gradcam.png"))


def test_cli_exit_codes_and_csv(loaded, test_files, tmp_path):
    _, models_dir, _ = loaded
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    assert _cli("predict", str(bad), env_dirs=models_dir).returncode == 1
    assert _cli("predict", test_files[0], env_dirs=tmp_path).returncode == 2  # no models there
    done = _cli("predict", test_files[0], "--model", "cnn", "--format", "csv", env_dirs=models_dir)
    header, row = done.stdout.strip().splitlines()
    assert header.startswith("file,ok,error,model,class") and ",cnn," in row
    help_text = _cli("--help", env_dirs=models_dir).stdout
    assert all(cmd in help_text for cmd in ("pipeline", "preprocess", "predict"))


def test_recommended_model_and_method_follow_03s_choices(tmp_path):
    import json

    from btc import predict as pr

    assert pr.recommended(tmp_path) == {"model": "ensemble", "saliency_method": "gradcam",
                                        "why": "no choice recorded by 03 yet"}  # fmt: skip
    (tmp_path / "ensemble.json").write_text(json.dumps(
        {"weights": {"cnn": 0.1, "mobilenet": 0.9}, "default_model": "mobilenet"}))  # fmt: skip
    (tmp_path / "saliency.json").write_text(json.dumps(
        {"recommended": {"cnn": "gradcam", "mobilenet": "smoothgrad"}}))  # fmt: skip
    choice = pr.recommended(tmp_path)
    assert (choice["model"], choice["saliency_method"]) == ("mobilenet", "smoothgrad")
    assert "did not beat mobilenet" in choice["why"]
    (tmp_path / "ensemble.json").write_text(json.dumps(
        {"weights": {"cnn": 0.7, "mobilenet": 0.3}, "default_model": "ensemble"}))  # fmt: skip
    assert pr.recommended(tmp_path)["saliency_method"] == "gradcam"  # the heaviest member's
    (tmp_path / "mobilenet").mkdir()  # a preset that trained one model: that model, its method
    for name in ("model.keras", "metadata.json"):
        (tmp_path / "mobilenet" / name).write_text("{}")
    only_mobilenet = {"model": "mobilenet", "saliency_method": "smoothgrad",
                      "why": "the only model of the last training run"}  # fmt: skip
    assert pr.recommended(tmp_path) == only_mobilenet
    (tmp_path / "cnn").mkdir()  # an earlier run's model stays on disk; the last run trained one
    for name in ("model.keras", "metadata.json"):
        (tmp_path / "cnn" / name).write_text("{}")
    artifacts.record_run(["mobilenet"], tmp_path)
    assert pr.recommended(tmp_path) == only_mobilenet
    assert artifacts.trained_model_names(tmp_path) == ["cnn", "mobilenet"]
    artifacts.record_run(["cnn", "mobilenet"], tmp_path)
    assert pr.recommended(tmp_path)["model"] == "ensemble"


def test_demo_explains_at_the_cam_layer_03_chose_and_ignores_a_stale_one(tiny_models_copy):
    models_dir, _ = tiny_models_copy
    (models_dir / "saliency.json").write_text(json.dumps(
        {"cam_layers": {"mobilenet": "conv_pw_11_relu", "cnn": "layer_of_an_older_model"}}))  # fmt: skip
    loaded = predict.load_models(models_dir=models_dir)
    assert loaded["mobilenet"].cam_layer == "conv_pw_11_relu"
    assert loaded["mobilenet"].explainer.layer == "conv_pw_11_relu"
    assert loaded["cnn"].cam_layer is None
    assert loaded["cnn"].explainer.layer == loaded["cnn"].metadata["gradcam_layer"]
