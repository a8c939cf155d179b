"""Tests of btc.ood, btc.oodeval and btc.oodsets: OOD rejection, selective prediction and the status contract."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from btc import llm, ood, oodeval, oodfeatures, oodmetrics, oodsets, predict, reports, widgets
from tests import images, test_llm
from tests.conftest import SHARED_DIR, SHARED_EXTERNAL

OOD_DEV = SHARED_DIR / "ood-dev"
stub = test_llm.stub  # the real google-genai client against a local stub server
# thresholds come from validation-type data only: the validation split and, with an external set,
# its train groups scored by a fit without their fold (never the test split or the OOD images)
THRESHOLDS_FROM = "val + ext_train_held_out" if SHARED_EXTERNAL.is_dir() else "val"


def _noise(seed: int = 0, colour: bool = False) -> np.ndarray:
    shape = (96, 96, 3) if colour else (96, 96)
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


# --- pure functions -------------------------------------------------------------------------------


def test_confidence_threshold_is_the_lowest_meeting_the_target():
    conf = np.array([0.99, 0.98, 0.97, 0.9, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    correct = np.array([1, 1, 1, 1, 0, 1, 1, 0, 0, 1], bool)
    fit = ood.fit_confidence_threshold(conf, correct, target_error=0.2, min_answered=3)
    # answering conf ≥ 0.7: 1 error in 7 (≤ 20 %); ≥ 0.6 would be 2 in 8 (25 %)
    assert (fit["threshold"], fit["answered"], fit["target_met"]) == (0.7, 7, True)
    assert fit["risk"] == pytest.approx(1 / 7) and fit["risk"] <= fit["risk_upper"] <= 1
    # ties are answered together: 0.9 and 0.9 cannot be split
    tied = ood.fit_confidence_threshold(conf[:5], correct[:5], target_error=0.01, min_answered=1)
    assert tied["threshold"] == 0.97 and tied["answered"] == 3
    # the rule of three: 10 scans cannot show a 2 % error rate, whatever their errors
    none = ood.fit_confidence_threshold(conf, np.ones(10, bool), target_error=0.02)
    assert none["target_met"] is False and none["threshold"] is None and none["min_answered"] == 150
    with pytest.raises(ValueError, match=r"Received: target_error=0"):
        ood.fit_confidence_threshold(conf, correct, target_error=0)


def test_status_of_follows_the_thresholds():
    assert ood.status_of(2.0, 1.0, 0.99, 0.9) == "out_of_distribution"  # even when confident
    assert ood.status_of(0.5, 1.0, 0.80, 0.9) == "uncertain"
    assert ood.status_of(0.5, 1.0, 0.95, 0.9) == "predicted"
    assert ood.status_of(None, None, 0.95, 0.9) == "predicted"  # no features (LiteRT)
    assert ood.status_of(0.5, 1.0, 0.99, 0.9, colour=0.5) == "out_of_distribution"  # colour gate
    assert ood.status_of(None, None, 0.99, 0.9, colour=0.5) == "predicted"  # gate needs a score
    assert ood.status_of(0.5, 1.0, 0.99, None, target_met=False) == "uncertain"


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
                              np.zeros(101, int), 0.95, 0.3, 3)  # fmt: skip
    assert fit["source_thresholds"] == {"val": 0.95, "ext_train_held_out": 1.9}
    assert fit["ood_threshold"] == 1.9 and fit["val_accepted"] == 1.0
    assert fit["accepted"]["ext_train_held_out"] >= 0.95


def test_stage_layers_are_the_deepest_activation_per_resolution(tiny_models):
    from btc import artifacts

    model, meta = artifacts.load_trained("cnn", tiny_models[0])
    stages = oodfeatures.stage_layers(model, meta["gradcam_layer"])
    assert stages == ["block2_act", "block3_act", "block4_act"]
    outs = oodfeatures.forward(model, oodfeatures.feature_model(model, meta), np.zeros((2, meta["image_size"], meta["image_size"], 3), np.float32))  # fmt: skip
    widths = sum(model.get_layer(n).output.shape[-1] for n in stages)
    assert outs["stages"].shape == (2, widths) and outs["pool"].shape[1] == 256


def test_generic_features_need_imagenet_weights_and_are_skipped_without(tmp_path, monkeypatch):
    model = oodfeatures.generic_model(64)  # the offline MobileNet a 0.25 weights (conftest)
    images = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
    features = model.predict_on_batch(images)
    assert features.shape == (2, 64 + 128 + 256) and np.all(features >= 0)
    assert not any(w.trainable for w in model.weights)
    monkeypatch.setenv("BTC_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr("keras.utils.get_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))  # fmt: skip
    assert oodfeatures.generic_model(64) is None


def test_generic_extractor_is_stored_with_each_model_and_checked(fitted, tmp_path):
    models_dir = fitted[0]
    info = json.loads((models_dir / "mobilenet" / ood.THRESHOLDS_FILE).read_text())
    path = models_dir / "mobilenet" / oodfeatures.GENERIC_FILE
    assert info["generic_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    stats = ood.load_stats("mobilenet", models_dir)
    assert stats["available"] and stats["generic"].output.shape[-1] == 448
    with np.load(models_dir / "mobilenet" / ood.STATS_FILE) as npz:
        assert {"generic_whiten", "joint_whiten"} <= set(npz.files)
    copy = shutil.copytree(models_dir, tmp_path / "models")
    (copy / "mobilenet" / oodfeatures.GENERIC_FILE).write_bytes(b"changed")
    stale = ood.load_stats("mobilenet", copy)
    assert not stale["available"] and "generic OOD extractor" in stale["note"]


def test_evaluation_helpers_on_known_values():
    inside, outside = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.35, 0.9, 1.0])
    assert oodmetrics.auroc(inside, outside) == pytest.approx(11 / 12)
    assert oodmetrics.fpr_at_tpr(inside, outside, 0.95) == pytest.approx(
        1 / 3
    )  # 0.35 ≤ 0.4 accepted
    score = np.array([0.9, 0.9, 0.8, 0.7, -1.0])
    correct = np.array([1, 0, 1, 1, 0], bool)
    coverage, risk = oodmetrics.risk_coverage(score, correct)
    np.testing.assert_allclose(coverage, [0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(risk, [0.5, 1 / 3, 0.25, 0.4])
    m = oodmetrics.selective_metrics(score, correct, score >= 0.8)
    assert m["coverage"] == 0.6 and m["accuracy_at_coverage"] == pytest.approx(2 / 3)
    assert m["aurc"] == pytest.approx(0.4 * 0.5 + 0.2 / 3 + 0.2 * 0.25 + 0.2 * 0.4)
    assert m["coverage_at_99_accuracy"] == 0.0
    ci = oodmetrics.bootstrap(
        lambda a, b: {"auroc": oodmetrics.auroc(a, b)}, [[inside], [outside]], 200, 0
    )
    assert 0 <= ci["auroc"][0] <= 11 / 12 <= ci["auroc"][1] <= 1
    assert oodmetrics.clopper_pearson(0, 5)[0] == 0 and oodmetrics.clopper_pearson(5, 5) == (pytest.approx(0.478, abs=1e-3), 1.0)  # fmt: skip


def test_colour_fraction_sees_colour_not_rgb_containers():
    gray = images.brain_like()
    assert ood.colour_fraction(images.encoded(gray, "PNG")) == 0.0
    rgb_gray = np.repeat(gray[..., None], 3, axis=2)  # an RGB file of a gray scan (Kaggle has many)
    assert ood.colour_fraction(images.encoded(rgb_gray, "JPEG")) < 0.01
    assert ood.colour_fraction(images.encoded(_noise(colour=True), "PNG")) > 0.5


def test_folder_parts_alternate_within_each_kind_and_brain_is_reported(tmp_path):
    for kind, n in (("chest_xray", 4), ("other_medical", 3), ("brain_mri_other", 2)):
        for i in range(n):
            name = f"CT_head_{i}.png" if kind == "other_medical" and i < 2 else f"{kind}_{i}.png"
            images.save(tmp_path / kind / name, _noise(i + 10 * n), "PNG")
    (tmp_path / "chest_xray" / "notes.txt").write_text("not an image")
    items = oodsets.folder_images(tmp_path)
    parts = pd.DataFrame(items).groupby(["kind", "part"]).size().to_dict()
    assert parts == {("brain_mri_other", "report"): 2, ("chest_xray", "report"): 2,
                     ("chest_xray", "select"): 2, ("head_ct", "report"): 1,
                     ("head_ct", "select"): 1, ("other_medical", "report"): 1}  # fmt: skip
    assert {i["expect"] for i in items if i["kind"].startswith("brain")} == {"accept"}
    assert [i["part"] for i in oodsets.folder_images(tmp_path)] == [i["part"] for i in items]
    kinds = {i["kind"] for i in oodsets.bundled_images()}
    assert {"synthetic", "dicom_other"} <= kinds  # always there offline


# --- on tiny trained models -----------------------------------------------------------------------


def _copy(tiny_models, root: Path, test_rows: int | None = None) -> tuple[Path, Path]:
    models_dir, manifest = tiny_models
    shutil.copytree(models_dir, root / "models", ignore=shutil.ignore_patterns("results"))
    frame = pd.read_csv(manifest, keep_default_na=False, dtype={"official_split": str})
    if test_rows is not None:  # a different test split: fewer rows
        frame = frame.drop(frame.index[frame.split == "test"][test_rows:])
    (root / "data").mkdir()
    frame.to_csv(root / "data" / "manifest.csv", index=False)
    brain = sorted((SHARED_EXTERNAL / "images").glob("*.jpg"))[:16]
    if brain:  # Br35H scans as an external set: 8 to choose with, 8 to report
        pd.DataFrame({"path": [str(p) for p in brain], "sha256": "", "class": "tumour",
                      "split": ["train", "test"] * 8, "group": [f"ext-{i}" for i in range(16)],
                      "width": 0, "height": 0, "boxes": "[]"}).to_csv(root / "data" / "external.csv", index=False)  # fmt: skip
    return root / "models", root / "data" / "manifest.csv"


FIT = dict(target_error=0.3, min_answered=3, n_bootstrap=20)


@pytest.fixture(scope="module")
def fitted(tiny_models, tmp_path_factory):
    """OOD statistics fitted on a copy of the tiny models (the shared fixture stays unfitted)."""
    root = tmp_path_factory.mktemp("ood")
    models_dir, manifest = _copy(tiny_models, root)
    ood_dir = OOD_DEV if OOD_DEV.is_dir() else None
    report = oodeval.fit_and_report(None, manifest, models_dir, root / "results", ood_dir, **FIT)
    return models_dir, manifest, report, root


@pytest.fixture(scope="module")
def loaded(fitted):
    return predict.load_models(models_dir=fitted[0])


def test_fit_stores_statistics_and_thresholds_with_each_model(fitted):
    models_dir, _, report, root = fitted
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


def test_ood_threshold_accepts_accept_rate_of_each_validation_source(fitted, loaded):
    models_dir, manifest, report, _ = fitted
    frame = pd.read_csv(manifest, keep_default_na=False)
    val = frame[frame.split == "val"].path.tolist()
    records = predict.predict(val, "ensemble", loaded, models_dir)
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


def test_thresholds_do_not_depend_on_the_test_split(fitted, tiny_models, tmp_path):
    models_dir, _, _, _ = fitted
    other_models, other_manifest = _copy(tiny_models, tmp_path, test_rows=3)
    ood_dir = OOD_DEV if OOD_DEV.is_dir() else None
    oodeval.fit_and_report(None, other_manifest, other_models, tmp_path / "results", ood_dir, **FIT)
    keys = ("method", "ood_threshold", "confidence_threshold", "target_met", "scales")
    for name in ("cnn", "mobilenet", "ensemble"):
        file = "ensemble_ood.json" if name == "ensemble" else f"{name}/ood.json"
        a, b = (json.loads((d / file).read_text()) for d in (models_dir, other_models))
        assert {k: a.get(k) for k in keys} == {k: b.get(k) for k in keys}, name


def test_status_contract(fitted, loaded, tmp_path):
    models_dir, manifest, _, _ = fitted
    frame = pd.read_csv(manifest, keep_default_na=False)
    scan = frame[frame.split == "val"].path.iloc[0]  # every validation scan is accepted (n < 40)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    colour = tmp_path / "photo.png"
    images.save(colour, _noise(colour=True), "PNG")
    share = ood.colour_fraction(colour.read_bytes())  # ~0.97 of the noise pixels are coloured
    cnn = loaded["cnn"].ood["info"]
    saved = dict(cnn)
    try:
        for threshold, expected in ((0.0, "predicted"), (1.01, "uncertain")):
            cnn.update(confidence_threshold=threshold, target_met=True)
            rec = predict.predict_files([scan, str(colour), str(bad)], "cnn", loaded, models_dir)
            assert [r["status"] for r in rec[:2]] == [expected, "out_of_distribution"]
            assert (
                rec[0]["ood_score"] <= rec[0]["thresholds"]["ood"]
                and rec[1]["ood_score"] >= share / ood.COLOUR_FRACTION
            )
            assert rec[0]["thresholds"]["confidence"] == threshold
    finally:
        cnn.clear()
        cnn.update(saved)
    for r in rec[:2]:
        assert r["thresholds"]["fitted_on"] == THRESHOLDS_FROM
        assert r["thresholds"]["method"] == cnn["method"]
    assert rec[1]["ood_reason"] == "colour image" and rec[1]["class"] in rec[1]["probabilities"]
    assert rec[2]["ok"] is False and "bad.png" in rec[2]["error"] and "status" not in rec[2]
    ens = predict.predict([scan, str(colour)], "ensemble", loaded, models_dir)
    assert ens[1]["status"] == "out_of_distribution"
    for r in ens:
        assert r["status"] in ood.STATUSES and r["thresholds"]["fitted_on"] == THRESHOLDS_FROM
        assert all(m["status"] in ood.STATUSES for m in r["per_model"].values())


def test_litert_records_get_their_status_from_the_confidence_threshold_only(fitted, loaded):
    models_dir = fitted[0]
    cnn = loaded["cnn"]  # the Keras graph stands in for the .tflite file: same probabilities
    meta = {**cnn.metadata, "quantize": "none"}
    stats = ood.load_stats("cnn", models_dir, "litert", meta["temperature"])
    lite = predict.LoadedModel("cnn", cnn.model, meta, runtime="litert", ood=stats)
    rec = predict.predict([_noise(colour=True)], "cnn", {"cnn": lite}, models_dir)[0]
    assert rec["runtime"] == "litert" and rec["status"] in ("predicted", "uncertain")
    assert rec["ood_score"] is None and rec["thresholds"]["ood"] is None
    assert rec["thresholds"]["confidence"] == stats["info"]["confidence_threshold"]
    assert rec["status_note"] == ood.LITERT_NOTE


def test_models_without_statistics_still_predict_with_a_note(tiny_models):
    models_dir, manifest = tiny_models  # the shared fixture: trained, never fitted for OOD
    frame = pd.read_csv(manifest, keep_default_na=False)
    rec = predict.predict([_noise(colour=True)], "ensemble", models_dir=models_dir)[0]
    assert rec["status"] == "predicted" and rec["ood_score"] is None
    assert "OOD checking unavailable" in rec["status_note"]
    assert predict.predict(frame.path.iloc[0], "cnn", models_dir=models_dir)[0]["status"] == "predicted"  # fmt: skip


def test_cli_json_and_csv_carry_the_status(fitted, tmp_path):
    from tests.test_predict import _cli

    models_dir = fitted[0]
    photo = tmp_path / "photo.png"
    images.save(photo, _noise(colour=True), "PNG")
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    done = _cli("predict", str(photo), str(bad), "--saliency", str(tmp_path / "maps"), env_dirs=models_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    good, failed = json.loads(done.stdout)
    assert good["status"] == "out_of_distribution" and good["ood_reason"] == "colour image"
    assert good["saliency_png"] is None and not list((tmp_path / "maps").glob("*.png"))
    assert failed["ok"] is False and "notes.jpg" in failed["error"]
    done = _cli("predict", str(photo), "--model", "cnn", "--format", "csv", env_dirs=models_dir)
    (row,) = csv.DictReader(io.StringIO(done.stdout))
    assert row["status"] == "out_of_distribution" and row["ood_reason"] == "colour image"


@pytest.mark.skipif(not OOD_DEV.is_dir(), reason=f"ood-dev not found at {OOD_DEV}")
def test_real_ood_images_score_above_validation_scans(fitted, loaded):
    models_dir, manifest, report, _ = fitted
    frame = pd.read_csv(manifest, keep_default_na=False)
    val = frame[frame.split == "val"].path.tolist()
    chosen = [*sorted((OOD_DEV / "chest_xray").glob("*"))[:3], *sorted((OOD_DEV / "document").glob("*"))[:2],
              OOD_DEV / "photo" / "skimage_camera.png"]  # fmt: skip
    outside = predict.predict([*map(str, chosen), _noise(3)], "ensemble", loaded, models_dir)
    inside = predict.predict(val, "ensemble", loaded, models_dir)
    for name in ("ensemble", "cnn", "mobilenet"):
        out_s, in_s = ([r["ood_score"] if name == "ensemble" else r["per_model"][name]["ood_score"]
                        for r in recs] for recs in (outside, inside))  # fmt: skip
        assert np.mean(out_s) > np.mean(in_s), name
    for kind in ("photo", "document"):  # colour photographs and figures are refused by colour
        colour = [str(OOD_DEV / i["name"]) for i in report["images"] if i["kind"] == kind
                  and ood.colour_fraction((OOD_DEV / i["name"]).read_bytes()) > ood.COLOUR_FRACTION]  # fmt: skip
        records = predict.predict(colour, "ensemble", loaded, models_dir)
        assert colour and {(r["status"], r["ood_reason"]) for r in records} == {
            ("out_of_distribution", "colour image")
        }, kind


# --- a rejected image never reaches Gemini as a tumour finding ---------------------------------------


TUMOUR_WORDS = ("glioma", "meningioma", "pituitary", "no tumour", "notumor", "%", "inlineData")


def test_rejected_image_is_never_explained_as_a_finding(fitted, loaded, stub, tmp_path):
    handler, url = stub
    models_dir = fitted[0]
    photo = tmp_path / "holiday.png"
    images.save(photo, _noise(colour=True), "PNG")
    rec = predict.predict([str(photo)], "ensemble", loaded, models_dir)[0]
    assert rec["status"] == "out_of_distribution"
    facts = llm.Facts.from_record(rec, "ensemble")
    client = test_llm._client(url)
    result = llm.explain(facts, images=[rec["image"]], share_images=True, client=client)
    assert handler.requests == []  # Gemini is not asked to explain a rejected image
    assert "does not look like a brain MRI slice" in result.text
    assert not any(w in result.text.lower() for w in ("glioma", "meningioma", "pituitary tumour"))
    answer, _ = llm.chat([], "Which tumour is it?", facts, client=client)
    (request,) = handler.requests
    body = json.loads(request["body"])
    sent = json.dumps(body["contents"])
    assert "REJECTED" in sent and "does not look like a brain MRI slice" in sent
    assert not any(word in sent for word in TUMOUR_WORDS), sent
    assert "REJECTED" in json.dumps(body["systemInstruction"])
    table = widgets.run_batch([str(photo)], models=loaded, results_dir=tmp_path, client=client)
    assert table["status"].tolist() == ["out_of_distribution"] and len(handler.requests) == 1
    assert not list((tmp_path / "04_predict").glob("*_gradcam.png"))


def test_uncertain_facts_are_explained_as_an_abstention(stub):
    handler, url = stub
    facts = llm.Facts("glioma", {"glioma": 0.55, "meningioma": 0.3, "notumor": 0.05, "pituitary": 0.1},
                      status="uncertain", confidence_threshold=0.9)  # fmt: skip
    llm.explain(facts, client=test_llm._client(url))
    prompt = json.loads(handler.requests[-1]["body"])["contents"][0]["parts"][0]["text"]
    assert "UNCERTAIN" in prompt and "90.0%" in prompt and "Predicted class" not in prompt
    template = llm.template_explanation(facts)
    assert "refer to a radiologist" in template and "not a result" in template
    assert llm.STATUSES == ood.STATUSES
    with pytest.raises(ValueError, match="Received: status='rejected'"):
        llm.Facts("glioma", facts.probabilities, status="rejected")


def test_demo_shows_the_banners(fitted, loaded, monkeypatch):
    for var in llm.KEY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    models_dir, manifest, _, _ = fitted
    app = widgets.PredictApp(loaded, manifest_path=manifest)
    buf = io.BytesIO()
    Image.fromarray(_noise(colour=True)).save(buf, "PNG")
    app._source = ("upload", [("photo.png", buf.getvalue())])
    record = app.run_prediction()
    assert record["status"] == "out_of_distribution"
    assert widgets.OOD_BANNER in app.result.value and "btc-ood" in app.result.value
    assert "does not look like a brain MRI slice" in app.explanation.value
    assert app.overlay.value[:8] == b"\x89PNG\r\n\x1a\n"
    answer = app.ask("Is it a glioma?")
    assert "meningioma" not in answer and "does not look like a brain MRI slice" in answer
    uncertain = {
        **record,
        "status": "uncertain",
        "thresholds": {"confidence": 0.9},
        "ood_reason": None,
    }
    assert widgets.UNCERTAIN_BANNER in widgets.status_banner(uncertain)


def test_fit_gaussian_handles_dead_and_collinear_units_and_is_exact_mahalanobis():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(0)
    f = rng.normal(size=(400, 6))
    f[:, 2] = 0.0  # a dead ReLU unit
    f = np.c_[f, 2 * f[:, 0]].astype(np.float32)  # a collinear one: a Cholesky used to fail here
    y = rng.integers(0, 3, 400)
    stats = oodfeatures.fit_gaussian(f, y, 3)
    z = f[:5] @ stats["whiten"]
    d2 = ((z[:, None, :] - stats["means_w"][None]) ** 2).sum(-1)
    assert np.isfinite(d2).all()
    g = rng.normal(size=(300, 4))
    yg = rng.integers(0, 2, 300)
    stats = oodfeatures.fit_gaussian(g.astype(np.float32), yg, 2)
    means = np.stack([g[yg == c].mean(0) for c in range(2)])
    precision = np.linalg.inv(LedoitWolf().fit(g - means[yg]).covariance_)
    expected = np.array([[(x - m) @ precision @ (x - m) for m in means] for x in g[:5]])
    got = (((g[:5] @ stats["whiten"])[:, None, :] - stats["means_w"][None]) ** 2).sum(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-3)
