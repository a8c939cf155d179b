"""Tests of btc.ood: OOD rejection, selective prediction and the status contract.

The statistics come from `ood_fitted` (conftest); fitting and the report are tested in
test_oodeval, the features in test_oodfeatures, the numbers in test_oodmetrics, the image sets in
test_oodsets.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from btc import calibration, llm, ood, oodfeatures, predict, widgets
from tests import images, test_llm
from tests.conftest import OOD_DEV, THRESHOLDS_FROM
from tests.images import noise as _noise

stub = test_llm.stub  # the real google-genai client against a local stub server


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
    with pytest.raises(ValueError, match=r"\['point', 'upper'\]. Received: risk_bound='max'"):
        ood.fit_confidence_threshold(conf, correct, 0.2, risk_bound="max")


def test_guaranteed_risk_threshold_bounds_the_error_of_new_scans():
    rng = np.random.default_rng(0)

    def scans(n):  # confidence predicts correctness: errors fall from 20 % to 0 %
        conf = rng.uniform(0.5, 1.0, n)
        return conf, rng.random(n) > 0.4 * (1.0 - conf)

    conf, correct = scans(2000)
    point = ood.fit_confidence_threshold(conf, correct, 0.05)
    upper = ood.fit_confidence_threshold(conf, correct, 0.05, risk_bound="upper")
    assert upper["risk_bound"] == "upper" and upper["risk_upper"] <= 0.05 < point["risk_upper"]
    assert upper["threshold"] > point["threshold"] and upper["answered"] < point["answered"]
    assert point["risk"] <= 0.05 and upper["risk"] < point["risk"]
    # on new scans from the same source, the point rule errs above target about half the time;
    # the bound rule seldom does (95 % per threshold; picking the lowest that qualifies among
    # many makes it a little optimistic: 4 of 40 fits here, against 23 of 40)
    over = {"point": 0, "upper": 0}
    for _ in range(40):
        fit_c, fit_ok = scans(2000)
        new_c, new_ok = scans(5000)
        for bound in over:
            t = ood.fit_confidence_threshold(fit_c, fit_ok, 0.05, risk_bound=bound)["threshold"]
            over[bound] += (1 - new_ok[new_c >= t].mean()) > 0.05
    assert over["point"] >= 10 and 4 * over["upper"] <= over["point"], over


def test_status_of_follows_the_thresholds():
    assert ood.status_of(2.0, 1.0, 0.99, 0.9) == "out_of_distribution"  # even when confident
    assert ood.status_of(0.5, 1.0, 0.80, 0.9) == "uncertain"
    assert ood.status_of(0.5, 1.0, 0.95, 0.9) == "predicted"
    assert ood.status_of(None, None, 0.95, 0.9) == "predicted"  # no features (LiteRT)
    assert ood.status_of(0.5, 1.0, 0.99, 0.9, colour=0.5) == "out_of_distribution"  # colour gate
    assert ood.status_of(None, None, 0.99, 0.9, colour=0.5) == "predicted"  # gate needs a score
    assert ood.status_of(0.5, 1.0, 0.99, None, target_met=False) == "uncertain"


def test_a_rejection_says_not_a_brain_only_beyond_every_known_brain():
    info = {"ood_threshold": 1.0, "ood_far": 3.0, "confidence_threshold": 0.9, "target_met": True,
            "method": "mahalanobis_joint", "target_error": 0.02, "accept_rate": 0.975}  # fmt: skip
    said = {f: ood.assess(info, 0.99, f, 0.0) for f in (0.5, 2.0, 3.5)}
    assert [(r["status"], r["ood_kind"]) for r in said.values()] == [
        ("predicted", None), ("out_of_distribution", "unfamiliar"),
        ("out_of_distribution", "not_brain_mri")]  # fmt: skip
    assert (
        said[2.0]["ood_reason"] == ood.UNFAMILIAR_REASON
        and "may be a brain MRI" in ood.UNFAMILIAR_REASON
    )
    assert said[3.5]["ood_reason"] == ood.FAR_REASON and said[3.5]["thresholds"]["ood_far"] == 3.0
    # colour is refused whatever the score; "not a brain MRI" when a colour picture (a brain MRI
    # with a coloured overlay stays "unfamiliar") or by its features
    colour = [ood.assess(info, 0.99, f, c) for f, c in ((0.5, 0.2), (3.5, 0.2), (0.5, 0.5))]
    assert [(r["status"], r["ood_kind"], r["ood_reason"]) for r in colour] == [
        ("out_of_distribution", "unfamiliar", "colour image"),
        ("out_of_distribution", "not_brain_mri", "colour image"),
        ("out_of_distribution", "not_brain_mri", "colour image")]  # fmt: skip
    assert "(colour image)" in widgets.status_banner(
        {**said[2.0], **colour[0], "class": "glioma", "confidence": 0.9}
    )
    # statistics fitted before `ood_far` never call an image "not a brain" by its score
    old = {k: v for k, v in info.items() if k != "ood_far"}
    assert ood.assess(old, 0.99, 9.0, 0.0)["ood_kind"] == "unfamiliar"
    kinds = ood.ood_kinds(np.array([0.5, 2.0, 3.5, 0.5, 0.5, 0.5, 1.5]),
                          np.array([0, 0, 0, 0.2, 0.5, 0, 0]), 1.0,
                          ct=np.array([0, 0, 0, 0, 0, 1, 1], bool), far=3.0)  # fmt: skip
    # a CT check with a brain's features: refused as unfamiliar; with unfamiliar features too: sure
    assert kinds.tolist() == [
        "",
        "unfamiliar",
        "not_brain_mri",
        "unfamiliar",
        "not_brain_mri",
        "unfamiliar",
        "not_brain_mri",
    ]


def test_a_union_method_scores_the_larger_of_its_scaled_members():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 5)).astype(np.float32)
    labels = rng.integers(0, 2, 300)
    arrays = {f"joint_{k}": v for k, v in oodfeatures.fit_gaussian(train, labels, 2).items()}
    arrays |= {f"joint_{k}": v for k, v in oodfeatures.fit_knn(train, "joint").items()}
    val, probe = rng.normal(size=(200, 5)), rng.normal(0.0, 3.0, (40, 5))
    out = {"joint": val, "logits": np.zeros((200, 2)), "probs": np.full((200, 2), 0.5)}
    raw_val = ood.raw_scores(out, arrays)
    scales = {m: ood.fit_scale(raw_val[m], 0.975) for m in ("mahalanobis_joint", "knn_joint")}
    for m, scale in scales.items():  # 0 = the validation median, 1 = its 97.5 % quantile
        scaled = ood.normalise(raw_val[m], scale)
        assert np.median(scaled) == pytest.approx(0.0, abs=1e-6)
        assert np.quantile(scaled, 0.975) == pytest.approx(1.0, abs=1e-6)
    out = {"joint": probe, "stages": probe, "logits": np.zeros((40, 2)), "probs": np.full((40, 2), 0.5)}  # fmt: skip
    raw = ood.raw_scores(out, arrays)
    union = "mahalanobis_joint+knn_joint"
    parts = [ood.normalise(raw[m], scales[m]) for m in ("mahalanobis_joint", "knn_joint")]
    np.testing.assert_allclose(ood.method_score(raw, scales, union), np.maximum(*parts))
    assert (parts[0] > parts[1]).any() and (parts[1] > parts[0]).any()  # each member counts
    stats_ = {"info": {"method": union, "scales": scales}, "arrays": arrays}
    np.testing.assert_allclose(ood.feature_score(out, stats_), np.maximum(*parts))  # as predicted
    assert "knn_stages" not in raw  # no bank, no score


def test_generic_extractor_is_stored_with_each_model_and_checked(ood_fitted, tmp_path):
    models_dir = ood_fitted[0]
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


def test_colour_fraction_sees_colour_not_rgb_containers():
    gray = images.brain_like()
    assert ood.colour_fraction(images.encoded(gray, "PNG")) == 0.0
    rgb_gray = np.repeat(gray[..., None], 3, axis=2)  # an RGB file of a gray scan (Kaggle has many)
    assert ood.colour_fraction(images.encoded(rgb_gray, "JPEG")) < 0.01
    assert ood.colour_fraction(images.encoded(_noise(colour=True), "PNG")) > 0.5


# --- on tiny trained models -----------------------------------------------------------------------


def test_status_contract(ood_fitted, ood_loaded, tmp_path):
    models_dir, manifest, _, _ = ood_fitted
    frame = pd.read_csv(manifest, keep_default_na=False)
    scan = frame[frame.split == "val"].path.iloc[0]  # every validation scan is accepted (n < 40)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    colour = tmp_path / "photo.png"
    images.save(colour, _noise(colour=True), "PNG")
    share = ood.colour_fraction(colour.read_bytes())  # ~0.97 of the noise pixels are coloured
    cnn = ood_loaded["cnn"].ood["info"]
    saved = dict(cnn)
    try:
        for threshold, expected in ((0.0, "predicted"), (1.01, "uncertain")):
            cnn.update(confidence_threshold=threshold, target_met=True)
            rec = predict.predict_files(
                [scan, str(colour), str(bad)], "cnn", ood_loaded, models_dir
            )
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
    ens = predict.predict([scan, str(colour)], "ensemble", ood_loaded, models_dir)
    assert ens[1]["status"] == "out_of_distribution"
    # a preset that trains one model: "ensemble" (btc predict's default) is that model, with
    # its OOD thresholds (there are no ensemble thresholds to fit for a single member)
    alone = predict.predict([scan, str(colour)], "ensemble", {"cnn": ood_loaded["cnn"]}, models_dir)
    for r in alone:
        assert r["status_note"] is None or "no thresholds" not in r["status_note"]
        assert r["ood_score"] == r["per_model"]["cnn"]["ood_score"] is not None
        assert r["thresholds"] == r["per_model"]["cnn"]["thresholds"]
    assert alone[1]["status"] == "out_of_distribution"
    for r in ens:
        assert r["status"] in ood.STATUSES and r["thresholds"]["fitted_on"] == THRESHOLDS_FROM
        assert all(m["status"] in ood.STATUSES for m in r["per_model"].values())


def test_litert_records_get_their_status_from_the_confidence_threshold_only(ood_fitted, ood_loaded):
    models_dir = ood_fitted[0]
    cnn = ood_loaded["cnn"]  # the Keras graph stands in for the .tflite file: same probabilities
    meta = {**cnn.metadata, "quantize": "none"}
    stats = ood.load_stats("cnn", models_dir, "litert", calibration.calibration_of(meta))
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


def test_cli_json_and_csv_carry_the_status(ood_fitted, tmp_path):
    from tests.test_predict import _cli

    models_dir = ood_fitted[0]
    photo = tmp_path / "photo.png"
    images.save(photo, _noise(colour=True), "PNG")
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    done = _cli("predict", str(photo), str(bad), "--saliency", str(tmp_path / "maps"), env_dirs=models_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    good, failed = json.loads(done.stdout)
    assert good["status"] == "out_of_distribution" and good["ood_reason"] == "colour image"
    limits = good["thresholds"]  # a colour picture is "not a brain MRI" whatever its features
    assert good["ood_kind"] == "not_brain_mri" and limits["ood_far"] >= limits["ood"]
    assert good["saliency_png"] is None and not list((tmp_path / "maps").glob("*.png"))
    assert failed["ok"] is False and "notes.jpg" in failed["error"]
    done = _cli("predict", str(photo), "--model", "cnn", "--format", "csv", env_dirs=models_dir)
    (row,) = csv.DictReader(io.StringIO(done.stdout))
    assert row["status"] == "out_of_distribution" and row["ood_reason"] == "colour image"
    cnn = good["per_model"]["cnn"]  # the CSV of `--model cnn` says what the JSON's member said
    assert (row["ood_kind"], float(row["ood_far"])) == (
        cnn["ood_kind"],
        cnn["thresholds"]["ood_far"],
    )


@pytest.mark.skipif(not OOD_DEV.is_dir(), reason=f"ood-dev not found at {OOD_DEV}")
def test_real_ood_images_score_above_validation_scans(ood_fitted, ood_loaded):
    models_dir, manifest, report, _ = ood_fitted
    frame = pd.read_csv(manifest, keep_default_na=False)
    val = frame[frame.split == "val"].path.tolist()
    chosen = [*sorted((OOD_DEV / "chest_xray").glob("*"))[:3], *sorted((OOD_DEV / "document").glob("*"))[:2],
              OOD_DEV / "photo" / "skimage_camera.png"]  # fmt: skip
    outside = predict.predict([*map(str, chosen), _noise(3)], "ensemble", ood_loaded, models_dir)
    inside = predict.predict(val, "ensemble", ood_loaded, models_dir)
    for name in ("ensemble", "cnn", "mobilenet"):
        out_s, in_s = ([r["ood_score"] if name == "ensemble" else r["per_model"][name]["ood_score"]
                        for r in recs] for recs in (outside, inside))  # fmt: skip
        assert np.mean(out_s) > np.mean(in_s), name
    for kind in ("photo", "document"):  # colour photographs and figures are refused by colour
        colour = [str(OOD_DEV / i["name"]) for i in report["images"] if i["kind"] == kind
                  and not i.get("held_out")  # Debian images are not files of the OOD folder
                  and ood.colour_fraction((OOD_DEV / i["name"]).read_bytes()) > ood.COLOUR_FRACTION]  # fmt: skip
        records = predict.predict(colour, "ensemble", ood_loaded, models_dir)
        assert colour and {(r["status"], r["ood_reason"]) for r in records} == {
            ("out_of_distribution", "colour image")
        }, kind


# --- a rejected image never reaches Gemini as a tumour finding ---------------------------------------


# what the explanation and the chat say of a rejected image, by its `ood_kind`
SAID = {
    "not_brain_mri": "does not look like a brain MRI slice",
    "unfamiliar": "unlike the brain MRI slices",
}
TUMOUR_WORDS = ("glioma", "meningioma", "pituitary", "no tumour", "notumor", "%", "inlineData")


def test_rejected_image_is_never_explained_as_a_finding(ood_fitted, ood_loaded, stub, tmp_path):
    handler, url = stub
    models_dir = ood_fitted[0]
    photo = tmp_path / "holiday.png"
    images.save(photo, _noise(colour=True), "PNG")
    rec = predict.predict([str(photo)], "ensemble", ood_loaded, models_dir)[0]
    assert rec["status"] == "out_of_distribution"
    facts = llm.Facts.from_record(rec, "ensemble")
    client = test_llm._client(url)
    result = llm.explain(facts, images=[rec["image"]], share_images=True, client=client)
    assert handler.requests == []  # Gemini is not asked to explain a rejected image
    assert SAID[rec["ood_kind"]] in result.text
    assert not any(w in result.text.lower() for w in ("glioma", "meningioma", "pituitary tumour"))
    answer, _ = llm.chat([], "Which tumour is it?", facts, client=client)
    (request,) = handler.requests
    body = json.loads(request["body"])
    sent = json.dumps(body["contents"])
    assert "REJECTED" in sent and SAID[rec["ood_kind"]] in sent
    assert not any(word in sent for word in TUMOUR_WORDS), sent
    assert "REJECTED" in json.dumps(body["systemInstruction"])
    table = widgets.run_batch([str(photo)], models=ood_loaded, results_dir=tmp_path, client=client)
    assert table["status"].tolist() == ["out_of_distribution"] and len(handler.requests) == 1
    assert not list((tmp_path / "04_predict").glob("*_gradcam.png"))


def test_an_unfamiliar_image_is_never_called_not_a_brain_nor_explained_as_a_finding(stub):
    handler, url = stub
    probs = {"glioma": 0.1, "meningioma": 0.7, "notumor": 0.1, "pituitary": 0.1}
    record = {"class": "meningioma", "probabilities": probs, "status": "out_of_distribution",
              "ood_kind": "unfamiliar", "ood_reason": ood.UNFAMILIAR_REASON, "confidence": 0.7}  # fmt: skip
    facts = llm.Facts.from_record(record, "ensemble")
    client = test_llm._client(url)
    result = llm.explain(facts, share_images=True, images=[np.zeros((8, 8))], client=client)
    assert handler.requests == [] and result.source == "template"
    assert "does not look like a brain MRI" not in result.text and "radiologist" in result.text
    llm.chat([], "Is it a tumour?", facts, client=client)
    sent = json.dumps(json.loads(handler.requests[0]["body"])["contents"])
    assert "REJECTED" in sent and "may still be a brain MRI" in sent
    assert "does not look like a brain MRI" not in sent
    assert not any(word in sent for word in TUMOUR_WORDS), sent
    banner = widgets.status_banner(record)
    assert widgets.UNFAMILIAR_BANNER in banner and widgets.OOD_BANNER not in banner
    assert "ask a radiologist" in banner and "(flagged)" in banner
    hint = llm.Facts.from_record(record | {"ood_reason": llm.CT_HINT}, "ensemble")
    for text in (llm.template_explanation(hint), llm.build_prompt(hint)):
        assert f"({llm.CT_HINT})" in text and "does not look like a brain MRI" not in text
    sure = widgets.status_banner(
        record | {"ood_kind": "not_brain_mri", "ood_reason": ood.FAR_REASON}
    )
    assert widgets.OOD_BANNER in sure and widgets.UNFAMILIAR_BANNER not in sure


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


def test_demo_shows_the_banners(ood_fitted, ood_loaded, monkeypatch):
    for var in llm.KEY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    models_dir, manifest, _, _ = ood_fitted
    app = widgets.PredictApp(ood_loaded, manifest_path=manifest)
    buf = io.BytesIO()
    Image.fromarray(_noise(colour=True)).save(buf, "PNG")
    app._source = ("upload", [("photo.png", buf.getvalue())])
    record = app.run_prediction()
    assert record["status"] == "out_of_distribution"
    banner = {"not_brain_mri": widgets.OOD_BANNER, "unfamiliar": widgets.UNFAMILIAR_BANNER}
    assert banner[record["ood_kind"]] in app.result.value and "btc-ood" in app.result.value
    assert SAID[record["ood_kind"]] in app.explanation.value
    assert app.overlay.value[:8] == b"\x89PNG\r\n\x1a\n"
    answer = app.ask("Is it a glioma?")
    assert "meningioma" not in answer and SAID[record["ood_kind"]] in answer
    uncertain = {
        **record,
        "status": "uncertain",
        "thresholds": {"confidence": 0.9},
        "ood_reason": None,
    }
    assert widgets.UNCERTAIN_BANNER in widgets.status_banner(uncertain)


def test_a_series_is_called_not_a_brain_only_when_every_slice_is():
    probs = {"glioma": 0.1, "meningioma": 0.1, "notumor": 0.7, "pituitary": 0.1}
    base = {"ok": True, "probabilities": probs, "class": "notumor", "status": "out_of_distribution"}
    sure, unsure = ({**base, "input": f"{k}.dcm", "ood_kind": k} for k in ood.OOD_KINDS)
    assert (
        predict._series_record([sure, {**sure, "input": "b.dcm"}], "s")["ood_kind"]
        == "not_brain_mri"
    )
    mixed = predict._series_record([sure, unsure], "s")
    assert (mixed["status"], mixed["ood_kind"], mixed["rejected_slices"]) == (
        "out_of_distribution",
        "unfamiliar",
        2,
    )
    accepted = {**base, "input": "c.dcm", "status": "predicted", "ood_kind": None}
    one = predict._series_record([sure, accepted], "s")  # the answer comes from the accepted slice
    assert one["status"] == "predicted" and "ood_kind" not in one and one["rejected_slices"] == 1
