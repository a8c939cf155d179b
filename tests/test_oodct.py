"""Tests of btc.oodct: simulated CT, the CT check's fit, and its place in the status contract."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from btc import inputs, llm, ood, oodct, oodfeatures, predict, reports, widgets
from tests.conftest import OOD_DEV, SHARED_EXTERNAL


def _mri_head(size: int = 96) -> np.ndarray:
    """An MRI-like axial head: bright scalp, dark skull, textured brain with dark ventricles."""
    yy, xx = np.mgrid[:size, :size] / (size - 1) - 0.5
    r = np.hypot(xx, yy)
    rng = np.random.default_rng(2)
    img = np.where(r < 0.48, 0.8, 0.0)  # scalp fat, bright on T1
    img = np.where(r < 0.41, 0.05, img)  # cortical bone: no signal
    brain = 0.5 + 0.25 * np.sin(xx * 40) * np.cos(yy * 35) + 0.05 * rng.random((size, size))
    img = np.where(r < 0.38, brain, img)
    img = np.where((np.abs(xx) < 0.06) & (np.abs(yy) < 0.12), 0.1, img)  # ventricles (CSF)
    return np.repeat(img[..., None], 3, -1).astype(np.float32)


def test_ct_like_puts_the_brightest_ring_where_the_skull_is_and_flattens_the_brain():
    x = np.stack([_mri_head()] * 8)
    out = oodct.ct_like(x, np.random.default_rng(0))
    np.testing.assert_array_equal(out, oodct.ct_like(x, np.random.default_rng(0)))  # reproducible
    assert (
        out.shape == x.shape and out.dtype == np.float32 and np.allclose(out[..., 0], out[..., 2])
    )
    assert out.min() >= 0 and out.max() <= 1
    size = x.shape[1]
    yy, xx = np.mgrid[:size, :size] / (size - 1) - 0.5
    r = np.hypot(xx, yy)
    g = out[..., 0]
    assert (g[:, r > 0.49] == 0).all()  # outside the head: black
    # the ring just inside the head edge is the bone, brighter than anything in the brain
    edge = np.stack([np.max(np.where((r > 0.36) & (r < 0.48), gi, 0)) for gi in g])
    centre = r < 0.3
    assert (edge > 0.8).all() and (edge > g[:, centre].max(1)).all()
    # the brain keeps its layout (CSF darker) at a fraction of the MRI's contrast
    brain = (r < 0.3) & ~((np.abs(xx) < 0.08) & (np.abs(yy) < 0.14))
    csf = (np.abs(xx) < 0.04) & (np.abs(yy) < 0.1)
    assert (g[:, csf].mean(1) < g[:, brain].mean(1)).all()
    assert (g[:, brain].std(1) < 0.6 * x[0, ..., 0][brain].std()).all()


def test_margins_follow_the_nearest_mean_with_the_shared_covariance():
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 5.0, 0.2])
    brain = np.concatenate([rng.normal(c, 1, (300, 3)) * scale for c in (0.0, 4.0)])
    labels = np.repeat([0, 1], 300)
    ct = rng.normal(-4.0, 1, (300, 3)) * scale
    arrays = oodct.fit(brain, labels, ct, 2, oodfeatures.fit_gaussian)
    assert arrays["ct_means_w"].shape == (3, 3)
    probe = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 4.0], [-4.0, -4.0, -4.0]]) * scale
    m = oodct.margins(probe, arrays)
    assert m[0] < 0 and m[1] < 0 and m[2] > 0
    # the same numbers as squared Mahalanobis distances with the pooled within-cluster covariance
    full = oodfeatures.fit_gaussian(np.r_[brain, ct], np.r_[labels, np.full(300, 2)], 3)
    z = probe @ full["whiten"]
    d2 = ((z[:, None] - full["means_w"][None]) ** 2).sum(-1)
    np.testing.assert_allclose(m, d2[:, :2].min(1) - d2[:, 2], rtol=1e-5, atol=1e-4)
    _, info, flags = oodct.fit_check(
        [{"joint": brain, "labels": labels}],
        ct,
        "joint",
        {"val": brain, "images": probe},
        oodfeatures.fit_gaussian,
    )
    assert info["part"] == "joint" and info["flagged"]["val"] == float(np.mean(flags["val"]))
    assert flags["images"].tolist() == [False, False, True] and flags["val"].mean() < 0.01


def test_status_of_and_assess_refuse_a_ct_like_image():
    assert ood.status_of(0.5, 1.0, 0.99, 0.9, ct=True) == "out_of_distribution"
    assert ood.status_of(None, None, 0.99, 0.9, ct=True) == "predicted"  # gate needs features
    info = {"ood_threshold": 1.0, "confidence_threshold": 0.9, "target_met": True,
            "method": "mahalanobis_joint", "target_error": 0.02, "accept_rate": 0.975}  # fmt: skip
    # a CT check alone refuses, but says "not a brain MRI" only with the features' agreement: it
    # also fires on a few real MRI in a harsh window (Br35H y10.jpg), whose features are a brain's
    rec = ood.assess(info, 0.99, 0.5, 0.0, ct=True)
    assert rec["status"] == "out_of_distribution"
    assert (rec["ood_kind"], rec["ood_reason"]) == ("unfamiliar", llm.CT_HINT)
    beyond = ood.assess(info | {"ood_far": 1.5}, 0.99, 1.2, 0.0, ct=True)
    assert (beyond["ood_kind"], beyond["ood_reason"]) == ("not_brain_mri", ood.CT_REASON)
    far = ood.assess(info | {"ood_far": 1.5}, 0.99, 2.0, 0.0, ct=True)
    assert (far["ood_reason"], far["ood_kind"]) == (ood.CT_REASON, "not_brain_mri")
    banner = widgets.status_banner(rec | {"class": "notumor", "confidence": 0.99})
    assert widgets.UNFAMILIAR_BANNER in banner and f"({llm.CT_HINT})" in banner
    assert ood.assess(info, 0.99, 0.5, 0.0)["status"] == "predicted"


def test_the_ct_check_is_fitted_stored_and_applied_by_predict(ood_fitted, ood_loaded):
    models_dir, manifest, report, _ = ood_fitted
    for name in ("cnn", "mobilenet"):
        info = json.loads((models_dir / name / ood.THRESHOLDS_FILE).read_text())
        check = info["ct_check"]  # on the features of the chosen method's (first) member
        first = info["method"].split("+")[0]
        assert first in (f"mahalanobis_{check['part']}", f"knn_{check['part']}"), info["method"]
        assert 0 <= check["flagged"]["val"] <= 1
        with np.load(models_dir / name / ood.STATS_FILE) as npz:
            assert len(npz["ct_means_w"]) == len(npz[f"{check['part']}_means_w"]) + 1
    markdown = reports.ood_markdown(report)
    assert "CT check" in markdown and "| ensemble | any member |" in markdown
    alone = reports.ood_markdown(report | {"models": {"cnn": report["models"]["cnn"]}})
    assert "| cnn |" in alone.split("CT check")[1]
    assert "| ensemble |" not in alone  # one trained model: no ensemble row
    flagged = [i["ct_like"]["ensemble"] for i in report["images"]]
    assert all(i["rejected"]["ensemble"] for i, f in zip(report["images"], flagged) if f)
    frame = pd.read_csv(manifest, keep_default_na=False)
    scan = frame[frame.split == "val"].path.iloc[0]
    before = predict.predict_files([scan], "ensemble", ood_loaded, models_dir)[0]
    loaded = ood_loaded["cnn"]
    arrays, size = loaded.ood["arrays"], loaded.metadata["image_size"]
    saved = arrays["ct_means_w"].copy()
    x = inputs.preprocess(open(scan, "rb").read(), size)[None]
    out = oodfeatures.forward(loaded.model, loaded.feature_model, x)
    try:  # move the simulated-CT mean onto this scan: the CT check must now refuse it
        arrays["ct_means_w"][-1] = (
            out[loaded.ood["info"]["ct_check"]["part"]][0] @ arrays["ct_whiten"]
        )
        after = predict.predict_files([scan], "ensemble", ood_loaded, models_dir)[0]
    finally:
        arrays["ct_means_w"][:] = saved
    assert before["per_model"]["cnn"]["status"] != "out_of_distribution"  # validation: accepted
    assert after["per_model"]["cnn"]["status"] == "out_of_distribution"
    member = after["per_model"]["cnn"]  # a validation scan: its features are a brain's
    assert (member["ood_kind"], member["ood_reason"]) == ("unfamiliar", llm.CT_HINT)
    assert (
        after["status"] == "out_of_distribution"
    )  # any member's CT check refuses for the ensemble
    assert after["ood_score"] == before["ood_score"]  # the score itself is unchanged


def _ct_head(size: int = oodct.RING_SIZE, skin: float = 0.46, bone: float = 0.42) -> np.ndarray:
    """A CT-like axial head: grey scalp, saturated bone ring, flat grey brain, darker ventricles."""
    yy, xx = np.mgrid[:size, :size] / (size - 1) - 0.5
    r = np.hypot(xx, yy)
    rng = np.random.default_rng(3)
    img = np.where(r < skin, 0.45, 0.0)  # scalp: soft tissue
    img = np.where(r < skin - 0.01, 1.0, img)  # bone: saturated in a soft-tissue window
    brain = 0.4 + 0.02 * rng.standard_normal((size, size))
    img = np.where(r < bone, brain, img)
    img = np.where((np.abs(xx) < 0.06) & (np.abs(yy) < 0.12), 0.15, img)  # ventricles
    return np.clip(img, 0, 1).astype(np.float32)


def test_skull_ring_tells_a_ct_skull_from_mri_scalp_fat():
    ct = _ct_head()
    profile = oodct.ring_profile(ct)
    assert profile.shape == (len(oodct.RING_DEPTHS),) and profile[1:3].max() > 0.95
    assert oodct.skull_ring(ct)
    # a tightly framed CT, the skull cut by the image border, is still one
    size = oodct.RING_SIZE
    assert oodct.skull_ring(_ct_head(size + 24)[12 : 12 + size, 12 : 12 + size])
    mri = _mri_head(oodct.RING_SIZE)[..., 0]  # bright scalp fat over a dark cortical bone
    assert oodct.ring_profile(mri)[1:3].max() > 0.85  # bright under the edge, like CT bone ...
    assert not oodct.skull_ring(mri)  # ... but the dark band under it is MRI's
    yy, xx = np.mgrid[:size, :size] / (size - 1) - 0.5
    dark = (np.hypot(xx, yy) > 0.39) & (np.hypot(xx, yy) < 0.42)
    fat = np.where(dark, 0.05, ct)  # a bright ring over a dark band, as FLAIR's scalp fat
    assert oodct.ring_profile(fat)[-1] >= oodct.RING_SATURATED and not oodct.skull_ring(fat)
    assert not oodct.skull_ring(np.where(ct > 0.9, 0.4, ct))  # no bright skull: not CT
    assert not oodct.skull_ring(np.where(ct < 0.9, ct * 2.2, ct).clip(0, 1))  # bright brain
    assert not oodct.skull_ring(np.zeros((size, size)))  # no head at all
    assert not oodct.skull_ring(np.full((size, size), 0.5))  # flat grey frame


def test_skull_ring_on_real_scans(shared_data):
    heads = sorted((OOD_DEV / "other_medical").glob("CT_head_*"))
    if not heads:
        pytest.skip(f"no head CT in {OOD_DEV / 'other_medical'}")
    assert all(oodct.skull_flag(p.read_bytes()) for p in heads)  # tightly framed head CTs
    others = sorted((OOD_DEV / "brain_mri_other").glob("*"))
    assert others and not any(oodct.skull_flag(p.read_bytes()) for p in others)
    rng = np.random.default_rng(0)
    mri = [
        p for c in ("glioma", "pituitary") for p in sorted((shared_data / "Testing" / c).glob("*"))
    ]
    mri = [mri[i] for i in rng.choice(len(mri), 80, replace=False)]
    mri += sorted((SHARED_EXTERNAL / "images").glob("*.jpg"))[:60]  # Br35H: MRI with bright scalp
    assert sum(oodct.skull_flag(p.read_bytes()) for p in mri) <= 1


def test_the_skull_check_gates_only_models_fitted_with_it():
    out = {"probs": np.zeros((3, 4))}
    skull = [True, False, True]
    stats_ = {"info": {"skull_check": {"rule": "r", "flagged": {"val": 0.01}}}, "arrays": {}}
    assert ood.ct_flags(out, stats_, skull).tolist() == skull
    assert ood.ct_flags(out, stats_).tolist() == [False] * 3  # no pixels given
    old = {"info": {}, "arrays": {}}  # fitted before the skull check: unchanged behaviour
    assert ood.ct_flags(out, old, skull).tolist() == [False] * 3


def test_the_skull_check_is_reported_and_refuses_a_ct_in_predict(
    ood_fitted, ood_loaded, tmp_path, monkeypatch
):
    models_dir, manifest, report, _ = ood_fitted
    for name in ("cnn", "mobilenet"):
        info = json.loads((models_dir / name / ood.THRESHOLDS_FILE).read_text())
        assert set(info["skull_check"]["flagged"]) >= {"val", "test"}
        assert report["models"][name]["skull_check"] == info["skull_check"]
    assert "| cnn | pixels: skull ring |" in reports.ood_markdown(report)
    path = tmp_path / "ct.png"
    Image.fromarray((_ct_head(256) * 255).astype(np.uint8)).save(path)
    rec = predict.predict_files([path], "ensemble", ood_loaded, models_dir)[0]
    assert rec["ok"] and rec["status"] == "out_of_distribution"
    for member in rec["per_model"].values():
        assert member["status"] == "out_of_distribution"
    frame = pd.read_csv(manifest, keep_default_na=False)
    scan = frame[frame.split == "val"].path.iloc[0]
    before = predict.predict_files([scan], "ensemble", ood_loaded, models_dir)[0]
    monkeypatch.setattr(oodct, "skull_flag", lambda raw: True)  # the pixels now show a CT skull
    after = predict.predict_files([scan], "ensemble", ood_loaded, models_dir)[0]
    assert before["per_model"]["cnn"]["status"] != "out_of_distribution"
    assert after["status"] == "out_of_distribution"
    assert after["per_model"]["cnn"]["ood_reason"] == llm.CT_HINT  # below the threshold
    assert after["ood_score"] == before["ood_score"]
