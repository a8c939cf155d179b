"""Tests of btc.oodeval: held-out scoring, thresholds, what `fit_and_report` stores and reports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from btc import ood, oodeval, oodfeatures, predict, reports
from tests.conftest import FIT, OOD_DEV, SHARED_EXTERNAL, THRESHOLDS_FROM, ood_copy


def _blobs(seed: int = 0) -> dict:
    """Features of 4 train classes near 0 and an external cluster far away, in 4 groups."""
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(200, 6)) + np.repeat(np.eye(6)[:4], 50, 0)
    ext = rng.normal(size=(40, 6)) + 8.0

    def out(f, labels, groups=None):
        o = {p: f.astype(np.float32) for p in oodfeatures.FEATURES}
        o |= {"labels": labels, "logits": f[:, :4], "probs": np.full((len(f), 4), 0.25)}
        return o | ({"groups": groups} if groups is not None else {})

    return {"train": out(train, np.repeat(np.arange(4), 50)),
            "ext_train": out(ext, np.full(40, 4), np.repeat([f"g{i}" for i in range(4)], 10))}  # fmt: skip


def test_external_train_groups_are_a_cluster_and_are_scored_held_out():
    outs = _blobs()
    ext = outs["ext_train"]
    with_ext = ood.raw_scores(ext, oodeval._gaussians(outs))["mahalanobis_pool"]
    without = ood.raw_scores(ext, oodeval._gaussians({"train": outs["train"]}))["mahalanobis_pool"]
    assert with_ext.max() < without.min()  # as a fifth cluster, the Br35H-like scans are near
    held = oodeval._held_out_scores(outs)["mahalanobis_pool"]
    first = np.isin(ext["groups"], ["g0", "g2"])  # sorted group ids, alternating
    for fold in (first, ~first):  # each fold scored by a fit on the train split + the other fold
        part = {k: v[fold] for k, v in ext.items() if k != "groups"}
        refit = ood.raw_scores(part, oodeval._gaussians(outs, ~fold))["mahalanobis_pool"]
        np.testing.assert_allclose(held[fold], refit, rtol=1e-5)
    assert held.mean() > with_ext.mean()  # a scan its own fit saw looks more typical


def test_threshold_accepts_accept_rate_of_every_source():
    val, ext = np.linspace(0, 1, 101), np.linspace(0, 2, 41)
    calibrated = np.tile([0.7, 0.1, 0.1, 0.1], (101, 1))
    fit = oodeval._thresholds({"val": val, "ext_train_held_out": ext}, calibrated,
                              np.zeros(101, int), 0.95, 0.3, 3, "point")  # fmt: skip
    assert fit["source_thresholds"] == {"val": 0.95, "ext_train_held_out": 1.9}
    assert fit["ood_threshold"] == 1.9 and fit["val_accepted"] == 1.0
    assert fit["accepted"]["ext_train_held_out"] >= 0.95


def test_fit_stores_statistics_and_thresholds_with_each_model(ood_fitted):
    models_dir, _, report, root = ood_fitted
    for name in ("cnn", "mobilenet"):
        info = json.loads((models_dir / name / "ood.json").read_text())
        assert (
            info["method"] in oodfeatures.METHODS
            and info["fitted_on"]["thresholds"] == THRESHOLDS_FROM
        )
        assert set(info["selection_auroc"]) == set(oodfeatures.METHODS)
        with np.load(models_dir / name / "ood.npz") as npz:
            assert {f"{p}_{k}" for p in oodfeatures.FEATURES for k in ("whiten", "means_w")} <= set(
                npz.files
            )
            # the external train groups are a fifth cluster ("tumour, type unknown")
            assert len(npz["pool_means_w"]) == 5 if SHARED_EXTERNAL.is_dir() else 4
    assert json.loads((models_dir / "ensemble_ood.json").read_text())["members"] == ["cnn", "mobilenet"]  # fmt: skip
    saved = json.loads((root / "results" / "03_evaluate" / "ood_report.json").read_text())
    assert set(saved["models"]) == {"cnn", "mobilenet", "ensemble"}
    assert (root / "results" / "03_evaluate" / "risk_coverage.png").stat().st_size > 5000
    entry = saved["models"]["ensemble"]
    for key in ("aurc", "coverage", "coverage_at_99_accuracy"):
        assert key in entry["selective"] and len(entry["selective"][f"{key}_ci"]) == 2
    assert "| cnn |" in reports.ood_markdown(saved)


def test_ood_threshold_accepts_accept_rate_of_each_validation_source(ood_fitted, ood_loaded):
    models_dir, manifest, report, _ = ood_fitted
    frame = pd.read_csv(manifest, keep_default_na=False)
    val = frame[frame.split == "val"].path.tolist()
    records = predict.predict(val, "ensemble", ood_loaded, models_dir)
    for name in ("cnn", "mobilenet"):  # recompute the validation part from the validation scans
        info = json.loads((models_dir / name / "ood.json").read_text())
        scores = [r["per_model"][name]["ood_score"] for r in records]
        expected = np.quantile(scores, info["accept_rate"], method="higher")
        assert info["source_thresholds"]["val"] == pytest.approx(expected, abs=1e-3)
        assert info["ood_threshold"] == max(info["source_thresholds"].values())
        assert set(info["source_thresholds"]) == set(THRESHOLDS_FROM.split(" + "))
        assert all(v >= info["accept_rate"] for v in info["accepted"].values())
        assert info["val_accepted"] >= info["accept_rate"]
    ext = report["models"]["mobilenet"]["external_rejected"]
    if SHARED_EXTERNAL.is_dir():  # 8 held-out test groups, all 16, the 8 train ones held out
        assert (ext["test"]["n"], ext["all"]["n"], ext["train_held_out"]["n"]) == (8, 16, 8)


def test_thresholds_do_not_depend_on_the_test_split(ood_fitted, tiny_models, tmp_path):
    models_dir, _, _, _ = ood_fitted
    other_models, other_manifest = ood_copy(tiny_models, tmp_path, test_rows=3)
    ood_dir = OOD_DEV if OOD_DEV.is_dir() else None
    oodeval.fit_and_report(None, other_manifest, other_models, tmp_path / "results", ood_dir, **FIT)
    keys = ("method", "ood_threshold", "confidence_threshold", "target_met", "scales")
    for name in ("cnn", "mobilenet", "ensemble"):
        file = "ensemble_ood.json" if name == "ensemble" else f"{name}/ood.json"
        a, b = (json.loads((d / file).read_text()) for d in (models_dir, other_models))
        assert {k: a.get(k) for k in keys} == {k: b.get(k) for k in keys}, name
