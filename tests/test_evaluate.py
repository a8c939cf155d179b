"""Tests of btc.evaluate on hand-checked and synthetic predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from btc import artifacts, calibration, evaluate, reports


def _onehotish(pred, k=4, conf=0.7):
    p = np.full((len(pred), k), (1 - conf) / (k - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def test_metrics_on_a_hand_checked_case():
    # classes: 0 glioma, 1 meningioma, 2 notumor, 3 pituitary
    y = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    pred = np.array([0, 2, 1, 1, 2, 2, 3, 0])  # one glioma called no tumour, one pituitary glioma
    m = evaluate.classification_metrics(y, _onehotish(pred))
    assert m["accuracy"] == 0.75 and m["n"] == 8
    g = m["per_class"]["glioma"]
    assert g["sensitivity"] == 0.5 and g["precision"] == 0.5
    assert g["specificity"] == pytest.approx(5 / 6, abs=1e-6)
    assert m["per_class"]["notumor"]["precision"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["per_class"]["meningioma"]["f1"] == 1.0
    assert m["tumour_called_no_tumour_rate"] == pytest.approx(1 / 6, abs=1e-6)
    assert m["f1_macro"] == pytest.approx(np.mean([0.5, 1.0, 0.8, 2 / 3]), abs=1e-6)
    assert m["nll"] == pytest.approx(-np.log(0.7) * 6 / 8 - np.log(0.1) * 2 / 8, abs=1e-5)


def test_ece_is_near_zero_for_perfectly_calibrated_predictions():
    rng = np.random.default_rng(0)
    n, k = 200_000, 4
    conf = rng.uniform(0.3, 1.0, n)
    label = rng.integers(0, k, n)
    correct = rng.random(n) < conf
    pred = np.where(correct, label, (label + rng.integers(1, k, n)) % k)
    probs = np.tile(((1 - conf) / (k - 1))[:, None], (1, k))
    probs[np.arange(n), pred] = conf
    assert evaluate.expected_calibration_error(probs, label) < 0.01
    overconfident = calibration.apply_temperature(probs, 0.3)
    assert evaluate.expected_calibration_error(overconfident, label) > 0.1


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_n():
    rng = np.random.default_rng(2)

    def case(n):
        y = rng.integers(0, 4, n)
        pred = np.where(rng.random(n) < 0.85, y, (y + 1) % 4)
        return y, _onehotish(pred)

    widths = []
    for n in (200, 5000):
        y, p = case(n)
        ci = evaluate.bootstrap_ci(y, p, n_resamples=1000, seed=0)
        m = evaluate.classification_metrics(y, p)
        assert ci["accuracy"][0] <= m["accuracy"] <= ci["accuracy"][1]
        assert ci["f1_macro"][0] <= m["f1_macro"] <= ci["f1_macro"][1]
        for cls, (lo, hi) in ci["sensitivity"].items():
            assert lo <= m["per_class"][cls]["sensitivity"] <= hi
        widths.append(ci["accuracy"][1] - ci["accuracy"][0])
    assert widths[1] < widths[0] / 3  # ~1/sqrt(n): 5x narrower expected


def test_leakage_gate_fires_on_a_crossing_group():
    manifest = pd.DataFrame({"split": ["train", "val", "test", "test"], "group": [1, 2, 1, 3],
                             "sha256": ["a", "b", "c", "d"]})  # fmt: skip
    with pytest.raises(evaluate.LeakageError, match="1 of 2 test images"):
        evaluate.leakage_gate(manifest)
    assert evaluate.leakage_gate(manifest, allow_leaky=True)["leaky"] is True
    manifest.loc[2, "group"] = 4
    assert evaluate.leakage_gate(manifest) == {"leaky": False, "test_images_leaked": 0,
                                               "groups_crossing": 0, "test_images": 2}  # fmt: skip
    manifest.loc[3, "sha256"] = "a"  # same file in train and test, different group id
    assert evaluate.leakage_gate(manifest, allow_leaky=True)["test_images_leaked"] == 1


def test_mcnemar_counts_discordant_pairs():
    y = np.zeros(20, int)
    a = np.zeros(20, int)
    b = np.r_[np.ones(10, int), np.zeros(10, int)]
    result = evaluate.mcnemar(y, a, b)
    assert (result["only_a_correct"], result["only_b_correct"]) == (10, 0)
    assert result["p_value"] < 0.01
    assert evaluate.mcnemar(y, a, a)["p_value"] == 1.0


def test_evaluate_writes_metrics_cards_figures_and_temperatures(tiny_models_copy, tmp_path):
    import json
    import shutil

    import pandas as pd

    from tests.conftest import SHARED_EXTERNAL

    models_dir, tiny = tiny_models_copy
    manifest = tmp_path / "processed" / "manifest.csv"
    manifest.parent.mkdir()
    shutil.copy(tiny, manifest)
    scans = sorted((SHARED_EXTERNAL / "images").glob("*.jpg"))[:10]
    pd.DataFrame({"path": [str(p) for p in scans], "sha256": "", "class": "tumour", "split": "test",
                  "group": [f"ext-{i // 2}" for i in range(len(scans))], "width": 256,
                  "height": 256, "boxes": "[[0.5, 0.5, 0.2, 0.2]]"}).to_csv(
        manifest.with_name("external.csv"), index=False)  # fmt: skip
    report = evaluate.evaluate(None, manifest, models_dir, tmp_path, n_bootstrap=1000, tta=True)
    assert set(report["models"]) == {"cnn", "mobilenet", "ensemble"}
    assert report["leakage"]["leaky"] is False
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["models"]["ensemble"]["ci"]["n_resamples"] == 1000
    for name in ("cnn", "mobilenet"):
        meta = json.loads((models_dir / name / "metadata.json").read_text())
        assert meta["temperature"] > 0 and meta["temperature_fitted_on"] == "val"
        assert meta["temperature_tta"] == report["models"][name]["temperature"] > 0  # TTA run
        result = report["models"][name]  # validation chose the calibration; the TTA fit follows
        assert meta["calibration"] == result["calibration"] in ("temperature", "vector")
        assert set(result["calibration_cv_nll"]) == {"temperature", "vector"}
        assert meta["class_bias_tta"] == result["class_bias"]
        assert (meta["class_bias"] is None) == (result["calibration"] == "temperature")
        card = (models_dir / name / "MODEL_CARD.md").read_text()
        assert "Not a diagnostic device" in card and "95 % bootstrap CI" in card
        for fig in ("confusion", "reliability", "errors"):
            assert (tmp_path / "03_evaluate" / f"{name}_{fig}.png").stat().st_size > 1000
    table = (tmp_path / "03_evaluate" / "comparison.md").read_text()
    assert "| ensemble |" in table and not table.startswith("LEAKY")
    for name in ("cnn", "mobilenet", "ensemble"):  # external numbers next to the internal ones
        ext = report["models"][name]["external"]
        assert ext["images"] == len(scans) and ext["groups"] == 5
        assert sum(ext["called"].values()) == len(scans)
        assert ext["ci"][0] <= ext["sensitivity"] <= ext["ci"][1]
    assert "External: Br35H" in table and "external tumour sens." in table
    assert "tumour sensitivity" in (models_dir / "cnn" / "MODEL_CARD.md").read_text()
    chosen = json.loads((models_dir / "ensemble.json").read_text())
    acc = chosen["val_accuracy"]
    best = max(["cnn", "mobilenet"], key=acc.get)
    expected = "ensemble" if acc["ensemble"] > acc[best] else best
    assert chosen["default_model"] == expected == report["models"]["ensemble"]["default_model"]
    assert "accuracy" in reports.plain_summary(report) or "correct on" in reports.plain_summary(
        report
    )


def test_evaluate_refuses_a_leaky_manifest_unless_told(tiny_models, tmp_path):
    import shutil

    models_dir = shutil.copytree(tiny_models[0], tmp_path / "models")
    manifest = tiny_models[1]
    frame = pd.read_csv(manifest, keep_default_na=False)
    test_group = frame.loc[frame.split == "test", "group"].iloc[0]
    frame.loc[frame.index[frame.split == "train"][0], "group"] = test_group
    leaky_path = tmp_path / "leaky.csv"
    frame.to_csv(leaky_path, index=False)
    with pytest.raises(evaluate.LeakageError):
        evaluate.evaluate(["cnn"], leaky_path, models_dir, tmp_path, n_bootstrap=10)
    artifacts.record_run(["cnn"], models_dir)  # the last 02 trained the CNN alone: its models
    report = evaluate.evaluate(None, leaky_path, models_dir, tmp_path, n_bootstrap=10,
                               allow_leaky=True)  # fmt: skip
    assert set(report["models"]) == {"cnn"}  # mobilenet, left by an earlier run, is not evaluated
    assert report["leakage"]["leaky"] is True
    assert (tmp_path / "03_evaluate" / "comparison.md").read_text().startswith("LEAKY")
    assert "LEAKY" in (models_dir / "cnn" / "MODEL_CARD.md").read_text()
    with pytest.raises(ValueError, match=r"'auto'\]\. Received: calibration_method='platt'"):
        evaluate.evaluate(["cnn"], manifest, models_dir, tmp_path, calibration_method="platt")
