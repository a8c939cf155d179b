"""Tests of btc.reports: the comparison table, the plain summary and the model card."""

from __future__ import annotations

import numpy as np

from btc import artifacts, evaluate, external, reports
from btc.config import CLASS_NAMES


def _result(labels: np.ndarray, missed: str, seed: int) -> dict:
    """What `evaluate` keeps per model, for predictions that find `missed` only half the time."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(len(labels)) < np.where(labels == CLASS_NAMES.index(missed), 0.5, 0.1)
    pred = np.where(wrong, (labels + 1) % 4, labels)
    sharp, soft = (np.full((len(labels), 4), (1 - c) / 3) for c in (0.97, 0.7))
    sharp[np.arange(len(labels)), pred], soft[np.arange(len(labels)), pred] = 0.97, 0.7
    return {"temperature": 1.8, "uncalibrated": evaluate.classification_metrics(labels, sharp),
            "metrics": evaluate.classification_metrics(labels, soft),
            "ci": evaluate.bootstrap_ci(labels, soft, n_resamples=200, seed=0)}  # fmt: skip


def _report(results: dict, n: int, leaky: bool = False, external_set=None) -> dict:
    return {"leakage": {"leaky": leaky, "test_images_leaked": 0}, "class_names": list(CLASS_NAMES),
            "split_sizes": {"train": 3 * n, "val": n, "test": n}, "n_bootstrap": 200,
            "manifest_sha256": "ab" * 32, "external_set": external_set,
            "table": [reports.summary_row(k, r) for k, r in results.items()]}  # fmt: skip


def _cells(markdown: str, model: str) -> list[str]:
    (line,) = [x for x in markdown.splitlines() if x.startswith(f"| {model} |")]
    return [c.strip() for c in line.strip("|").split("|")]


def test_comparison_and_summary_show_each_models_numbers_and_weakest_class():
    labels = np.random.default_rng(0).integers(0, 4, 400)
    results = {"a": _result(labels, "meningioma", 1), "b": _result(labels, "pituitary", 2)}
    report = _report(results, len(labels))
    for row, (name, result) in zip(report["table"], results.items()):
        assert row["model"] == name and row["accuracy"] == result["metrics"]["accuracy"]
        assert row["sensitivity_glioma_ci"] == result["ci"]["sensitivity"]["glioma"]
        assert row["ece_before"] == result["uncalibrated"]["ece"] > row["ece_after"]
        assert row["external_sensitivity"] is None
    table = reports.comparison_markdown(report)
    assert table.startswith(f"Test split: {len(labels)} images") and "External:" not in table
    head = _cells(table, "model")
    assert head[3:7] == [f"sens. {c}" for c in CLASS_NAMES]
    for name, result in results.items():
        cells = _cells(table, name)
        (lo, hi), acc = result["ci"]["accuracy"], result["metrics"]["accuracy"]
        assert len(cells) == len(head)
        assert cells[1] == f"{100 * acc:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
        assert cells[7].startswith(f"{100 * result['uncalibrated']['ece']:.1f} → ")
        assert cells[8] == "T 1.80" and cells[9] == "–"
    summary = reports.plain_summary(report).splitlines()
    assert "misses meningioma most often" in summary[0] and "misses pituitary" in summary[1]
    assert f"correct on {100 * results['a']['metrics']['accuracy']:.1f} %" in summary[0]
    leaky = _report(results, len(labels), leaky=True)
    assert reports.comparison_markdown(leaky).startswith("LEAKY — ")
    assert "LEAKY evaluation" in reports.plain_summary(leaky)


def test_external_numbers_and_the_model_card():
    labels = np.random.default_rng(3).integers(0, 4, 200)
    result = _result(labels, "glioma", 4)
    scans = np.random.default_rng(5).dirichlet(np.ones(4), 30)  # external tumour scans
    result["external"] = external.tumour_sensitivity(scans, np.arange(30) // 3, CLASS_NAMES, 200)
    ext = {"what": "Br35H", "images": 30, "groups": 10}
    report = _report({"cnn": result}, len(labels), external_set=ext)
    sens, (lo, hi) = result["external"]["sensitivity"], result["external"]["ci"]
    table = reports.comparison_markdown(report)
    assert _cells(table, "cnn")[-1] == f"{100 * sens:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    assert _cells(table, "cnn")[-2] == "T 1.80" and "vector scaling" not in table
    vector = {**result, "class_bias": [-0.4, 1.1, -0.5, -0.2]}
    vector_table = reports.comparison_markdown(_report({"cnn": vector}, len(labels)))
    assert _cells(vector_table, "cnn")[-2] == "T 1.80, bias -0.4/+1.1/-0.5/-0.2"
    assert "vector scaling's bias per class (glioma/meningioma/notumor/pituitary)" in vector_table
    assert "External: Br35H — 30 images in 10 near-copy groups" in table
    meta = artifacts.Metadata(name="cnn", model="cnn", class_names=tuple(CLASS_NAMES),
                              image_size=64, config={"weights": "none"}).to_dict()  # fmt: skip
    card = reports.model_card(meta, result, report)
    assert "Not a diagnostic device" in card and "LEAKY" not in card
    for c in CLASS_NAMES:  # one row per class: its sensitivity and its support
        support = int((labels == CLASS_NAMES.index(c)).sum())
        assert f"| {c} | " in card and card.split(f"| {c} | ")[1].splitlines()[0].endswith(
            f" | {support} |"
        )
    assert f"tumour sensitivity {100 * sens:.1f}" in card and "30 images in 10" in card
    assert "Temperature scaling (temperature 1.8), fitted on the validation split." in card
    vector = {**result, "calibration": "vector", "class_bias": [-0.4, 1.1, -0.5, -0.2],
              "calibration_cv_nll": {"temperature": 0.2, "vector": 0.17}}  # fmt: skip
    card = reports.model_card(meta, vector, report)
    assert "one bias per class, [-0.40, +1.10, -0.50, -0.20]" in card
    assert "(temperature 0.200, vector 0.170)" in card
    assert "LEAKY EVALUATION" in reports.model_card(
        meta, result, _report({"cnn": result}, 200, True)
    )
