"""Tests of btc.oodeval: held-out scoring, thresholds, what `fit_and_report` stores and reports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from btc import ood, oodeval, oodfeatures, oodmetrics, predict, reports
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


def test_threshold_accepts_accept_rate_of_the_pooled_sources():
    val, ext = np.linspace(0, 1, 101), np.linspace(0, 2, 41)
    calibrated = np.tile([0.7, 0.1, 0.1, 0.1], (101, 1))
    fit = oodeval._thresholds({"val": val, "ext_train_held_out": ext}, calibrated,
                              np.zeros(101, int), 0.95, 0.3, 3, "point")  # fmt: skip
    assert fit["source_thresholds"] == {"val": 0.95, "ext_train_held_out": 1.9}
    pooled = np.r_[val, ext]
    t = fit["ood_threshold"]  # rounded to 6 decimals
    assert np.mean(pooled <= t + 1e-6) >= 0.95  # 95 % of all 142 scans accepted
    assert np.mean(pooled < t - 1e-6) < 0.95  # and no higher threshold than needed
    # a few outliers of the small source no longer set the threshold for everyone
    assert fit["ood_threshold"] < fit["source_thresholds"]["ext_train_held_out"]
    assert fit["val_accepted"] == 1.0 and fit["accepted"]["ext_train_held_out"] < 0.95
    # `ood_far`: no brain scan the fit knows is above it (the threshold's 2.5 % tail included)
    assert fit["ood_far"] == 2.0
    with_brains = oodeval._thresholds({"val": val, "ext_train_held_out": ext}, calibrated,
                                      np.zeros(101, int), 0.95, 0.3, 3, "point", np.array([3.5]))  # fmt: skip
    assert with_brains["ood_far"] == 3.5 and with_brains["ood_threshold"] == t


def test_fit_stores_statistics_and_thresholds_with_each_model(ood_fitted):
    models_dir, _, report, root = ood_fitted
    for name in ("cnn", "mobilenet"):
        info = json.loads((models_dir / name / "ood.json").read_text())
        assert (
            info["method"] in oodfeatures.METHODS
            and info["fitted_on"]["thresholds"] == THRESHOLDS_FROM
        )
        assert set(info["selection_auroc"]) == set(oodfeatures.METHODS)
        balanced = info["selection_kind_auroc"]
        assert balanced[info["method"]] == max(balanced.values())  # chosen on the select part
        assert info["fitted_on"]["statistics"].startswith("train + train_style")
        with np.load(models_dir / name / "ood.npz") as npz:
            assert {f"{p}_{k}" for p in oodfeatures.FEATURES for k in ("whiten", "means_w")} <= set(
                npz.files
            )
            # the external train groups are a fifth cluster ("tumour, type unknown")
            assert len(npz["pool_means_w"]) == 5 if SHARED_EXTERNAL.is_dir() else 4
            for part in oodfeatures.KNN_FEATURES:  # a kNN bank only when the method uses it
                uses = f"knn_{part}" in info["method"].split("+")
                assert (f"{part}_knn_bank" in npz.files) == uses, (name, info["method"])
    assert json.loads((models_dir / "ensemble_ood.json").read_text())["members"] == ["cnn", "mobilenet"]  # fmt: skip
    saved = json.loads((root / "results" / "03_evaluate" / "ood_report.json").read_text())
    assert set(saved["models"]) == {"cnn", "mobilenet", "ensemble"}
    assert (root / "results" / "03_evaluate" / "risk_coverage.png").stat().st_size > 5000
    entry = saved["models"]["ensemble"]
    for key in ("aurc", "coverage", "coverage_at_99_accuracy"):
        assert key in entry["selective"] and len(entry["selective"][f"{key}_ci"]) == 2
    markdown = reports.ood_markdown(saved)
    assert "| cnn |" in markdown and "· " in markdown  # AUROCs and kind-balanced AUROC
    together = markdown.split("select and report parts together")[1].split("Selective")[0]
    synthetic = saved["models"]["cnn"]["rejected_by_kind"]["synthetic"]["all"]
    assert f"{synthetic['count']}/{synthetic['n']}" in together.split("| cnn |")[1].split("\n")[0]
    for image in saved["images"]:  # the per-image answer agrees with the score and threshold
        for name, e in saved["models"].items():
            above = image["scores"][name] > e["ood_threshold"]
            assert image["rejected"][name] is True or not above  # below: accepted unless coloured
            kind = image["ood_kind"][name]  # "not a brain": coloured, CT-like beyond the threshold,
            assert (kind is None) == (not image["rejected"][name])  # or beyond far
            if kind == "unfamiliar" and image["ct_like"][name]:  # a CT check alone
                assert not above
            if kind == "not_brain_mri":  # CT-like and above, or a colour picture, or beyond far:
                picture = ood.COLOUR_PICTURE / ood.COLOUR_FRACTION  # (the score is the larger)
                assert (
                    image["ct_like"][name]
                    and above
                    or image["scores"][name] > min(e["ood_far"], picture) - 1e-4
                )
            if image["part"] == "select" and image["expect"] == "accept":  # known (gray) brains
                assert image["scores"][name] <= e["ood_far"], (name, image["name"])
                assert kind != "not_brain_mri" or image["ct_like"][name], image["name"]
    for e in saved["models"].values():
        assert {"test", "ext_test"} & set(e["not_brain"]) and e["ood_far"] >= e["ood_threshold"]
    assert "What a rejection says" in markdown
    files = [i for i in saved["images"] if i.get("dicom_refused")]  # header refusals are listed
    assert files and "bundled DICOM files above are scored as PNG pixels" in markdown
    accepted = [i["name"] for i in files if not i["rejected"]["cnn"]]
    assert all(n in markdown.split("accepted by the pixel checks: cnn: ")[1] for n in accepted)
    held = [i for i in saved["images"] if i.get("held_out")]  # Debian packages, when installed
    assert ("Held-out images from Debian" in markdown) == bool(held)
    assert all(i["part"] == "report" for i in held)
    if held:
        assert f"| {held[0]['name']} | {held[0]['kind']} |" in markdown


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
        low, high = min(info["source_thresholds"].values()), max(info["source_thresholds"].values())
        assert low <= info["ood_threshold"] <= high  # the pooled quantile
        assert set(info["source_thresholds"]) == set(THRESHOLDS_FROM.split(" + "))
        sizes = {"val": len(val)}
        if "ext_train_held_out" in info["accepted"]:
            sizes["ext_train_held_out"] = report["models"][name]["external_rejected"]["train_held_out"]["n"]  # fmt: skip
        pooled = sum(info["accepted"][k] * n for k, n in sizes.items()) / sum(sizes.values())
        assert pooled >= info["accept_rate"] - 1e-6  # of the brain scans pooled
        assert info["val_accepted"] == info["accepted"]["val"]
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


def test_kind_balanced_auroc_weighs_every_pair_of_kinds_the_same():
    val = np.linspace(0, 1, 1000)  # many typical scans
    inside = {"val": val, "brain_mri_other": np.array([2.0, 3.0])}  # two far-off brains
    outside = {"photo": np.full(13, 5.0), "head_ct": np.array([0.5, 2.5])}
    pairs = {("val", "photo"): 1.0, ("val", "head_ct"): 0.75, ("brain_mri_other", "photo"): 1.0,
             ("brain_mri_other", "head_ct"): 0.25}  # fmt: skip
    assert oodmetrics.kind_balanced_auroc(inside, outside) == pytest.approx(np.mean(list(pairs.values())))  # fmt: skip
    plain = oodmetrics.auroc(np.r_[val, 2.0, 3.0], np.r_[np.full(13, 5.0), 0.5, 2.5])
    assert plain > 0.9 > oodmetrics.kind_balanced_auroc(inside, outside)  # pooled, photos dominate


def test_selection_uses_only_the_select_part_and_brains_count_as_inside():
    images = [{"part": "select", "expect": "accept", "kind": "brain_mri_other"},
              {"part": "select", "expect": "reject", "kind": "photo"},
              {"part": "select", "expect": "reject", "kind": "head_ct"},
              {"part": "report", "expect": "reject", "kind": "photo"},
              {"part": "report", "expect": "accept", "kind": "brain_mri_other"}]  # fmt: skip
    sources = {"val": np.array([0.0, 0.2, 0.4, 0.6])}
    score = np.array([0.5, 3.0, 0.3, -1.0, 9.0])  # the report-part scores would flip both
    plain, balanced = oodmetrics.selection_aurocs(sources, score, images)
    # inside: val + the select brain (0.5); outside: photo 3.0, head CT 0.3 (beats 0.4, 0.5, 0.6)
    assert plain == pytest.approx((5 + 2) / 10)
    pairs = [1.0, 0.5, 1.0, 0.0]  # (val, photo), (val, head CT), (brain, photo), (brain, head CT)
    assert balanced == pytest.approx(np.mean(pairs))


def test_style_copies_of_the_train_split_are_fitted_as_the_same_classes():
    outs = _blobs()
    styled = {k: v.copy() for k, v in outs["train"].items()}
    for part in oodfeatures.FEATURES:
        styled[part] = styled[part] + 5.0  # e.g. skull-stripped, blurred copies
    probe = {
        k: v[:20] + (5.0 if k in oodfeatures.FEATURES else 0) for k, v in outs["train"].items()
    }
    alone = ood.raw_scores(probe, oodeval._gaussians(outs))["mahalanobis_pool"]
    fitted = ood.raw_scores(probe, oodeval._gaussians(outs | {"train_style": styled}))
    assert fitted["mahalanobis_pool"].max() < alone.min()  # a styled scan is no longer far
    assert (
        len(oodeval._gaussians(outs | {"train_style": styled})["pool_means_w"]) == 5
    )  # 4 + external


def test_ensemble_ct_flags_are_the_union_even_when_a_member_has_no_ct_check(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 80)
    calibrated = np.eye(4)[labels] * 0.7 + 0.075  # right, 77.5 % confident

    def member(ct: dict) -> dict:
        scaled = {s: rng.normal(size=n) for s, n in (("val", 80), ("images", 5))}
        return {"scaled": scaled, "calibrated": {"val": calibrated},
                "labels": {"val": labels}, "ct": ct}  # fmt: skip

    members = {"cnn": member({"images": np.array([1, 0, 0, 1, 0], bool)}),
               "mobilenet": member({})}  # e.g. an energy-score member: no CT check  # fmt: skip
    colours, fit_args = {"val": np.zeros(80), "images": np.zeros(5)}, (0.95, 0.02, None, "point")
    images = [{"part": p, "expect": e} for p, e in [("select", "accept"), ("report", "accept")]
              + [("select", "reject")] * 3]  # fmt: skip
    info, ens = oodeval._fit_ensemble(
        ["cnn", "mobilenet"], members, tmp_path, colours, fit_args, images
    )
    # `ood_far`: the highest ensemble score of any known brain (validation, select-part brains)
    assert info["ood_far"] == pytest.approx(
        max(ens["scaled"]["val"].max(), ens["scaled"]["images"][0]), abs=1e-4
    ) and info["ood_far"] >= max(ens["scaled"]["val"].max(), ens["scaled"]["images"][0])
    assert ens["ct"]["images"].tolist() == [True, False, False, True, False]
    members["mobilenet"]["ct"] = {"images": np.array([0, 1, 0, 0, 0], bool)}
    members["cnn"]["ct"] = {}  # the first member without it no longer hides the other's flags
    _, ens = oodeval._fit_ensemble(
        ["cnn", "mobilenet"], members, tmp_path, colours, fit_args, images
    )
    assert ens["ct"]["images"].tolist() == [False, True, False, False, False]
    assert info["members"] == ["cnn", "mobilenet"]
    assert json.loads((tmp_path / ood.ENSEMBLE_FILE).read_text())["model"] == "ensemble"
