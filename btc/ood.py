"""Refuse what is not a brain MRI slice; abstain when unsure (OOD rejection, selective prediction).

Every prediction gets one of three statuses: `"out_of_distribution"` (the input does not look like
the training scans: not analysed; `ood_kind` says whether btc is sure it is no brain MRI, or only
that it is unfamiliar), `"uncertain"` (a brain MRI slice, but the calibrated confidence is below
the threshold fitted for a target error rate: refer to a radiologist) or `"predicted"`.

OOD score candidates, computed from the trained model: `mahalanobis_pool` / `_stages` / `_dense`
(the smallest Mahalanobis distance of the pooled last-conv features / the pooled outputs of the
last three stages / the penultimate dense features to the cluster means, one shared Ledoit–Wolf
covariance; Lee et al., 2018), `mahalanobis_generic` (on three pooled stages of a frozen ImageNet
MobileNet α 0.25, which tell modalities apart) and `_joint` (stages and generic), `knn_stages` /
`knn_joint` (cosine kNN; Sun et al., 2022), their unions with the Mahalanobis score (`a+b`: the
larger scaled score), `energy` (Liu et al., 2020) and `msp` (Hendrycks & Gimpel, 2017). The
clusters: the four classes of the train split and the external *train* groups (Br35H). Each
score is scaled by its validation distribution (0 = median, 1 = the `accept_rate` quantile) and
combined with a colour check (MRI is grayscale: an image with more than `COLOUR_FRACTION` of its
pixels coloured is not a scan) by taking the maximum; a coloured image is rejected whatever the
threshold (`rejected`), and so is one nearer to simulated CT than to every brain cluster
(`btc.oodct`: head CT is the hardest kind) or whose pixels show a CT's skull
(`oodct.skull_flag`); such an image is called "not a brain MRI" only when its feature score is
beyond the threshold too. The Gaussians are also fitted on a style-augmented copy of the train
split (blur, gamma, simulated skull stripping, turns, crops). The method is chosen per model by
kind-balanced AUROC on the *select* part (validation, held-out external-train and bundled
other-source brain scans against synthetic, bundled and half of the OOD folder's images); numbers
are reported on the rest. The threshold accepts `accept_rate` of the in-distribution brain scans
pooled (validation and the external train groups scored by a fit without them); `ood_far`, the
highest score of any brain MRI the fit knows, separates "not a brain MRI" from "unfamiliar". The
features and the Gaussian fit live in `btc.oodfeatures`; fitting and report in `btc.oodeval`
(called by 03_evaluate); the numbers in `btc.oodmetrics`.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from btc import config, datasets, llm, oodct, oodmetrics
from btc.calibration import same_calibration
from btc.config import MODELS_DIR
from btc.oodfeatures import FEATURES, GENERIC_FILE, knn_distance

STATUSES = ("predicted", "uncertain", "out_of_distribution")
COLOUR_CHROMA = 0.1  # a pixel is coloured when max − min of its R, G, B exceeds 10 % of the range
# an image is in colour when more than 10 % of its pixels are: Kaggle and Br35H scans stay below
# 5 % (JPEG chroma noise), the colour photographs and figures of ood-dev exceed 19 %; an overlay
# colours a small part of a scan, so from a quarter of the pixels on it is a colour picture
COLOUR_FRACTION, COLOUR_PICTURE = 0.10, 0.25
CT_REASON = "looks like a CT scan, not an MRI: the skull is bright"
# `ood_kind` of a rejected image (`ood_kinds`): "unfamiliar" may be a brain MRI from elsewhere
OOD_KINDS = ("not_brain_mri", "unfamiliar")
FAR_REASON = "far from every brain MRI scan btc was fitted on"
UNFAMILIAR_REASON = "unlike the training scans, though it may be a brain MRI"
STATS_FILE, THRESHOLDS_FILE, ENSEMBLE_FILE = "ood.npz", "ood.json", "ensemble_ood.json"
UNAVAILABLE = "OOD checking unavailable: no fitted statistics for {} (run 03_evaluate)"
LITERT_NOTE = ("LiteRT: status from the confidence threshold only (the OOD score needs the Keras "
               "model's features)")  # fmt: skip


# --- scores --------------------------------------------------------------------------------------


def colour_fraction(raw: bytes) -> float:
    """Share of pixels whose chroma (max − min of R, G, B) exceeds `COLOUR_CHROMA`.

    Args:
        raw: Encoded image bytes, before the grayscale conversion of the pipeline.

    Returns:
        A share in [0, 1]; 0 for grayscale files (an RGB file of a gray scan is near 0 too).
    """
    with Image.open(io.BytesIO(raw)) as img:
        img.draft("RGB", (256, 256))
        if img.mode in ("1", "L", "LA", "I", "I;16", "F"):
            return 0.0
        rgb = img.convert("RGB")
    rgb.thumbnail((256, 256))
    arr = np.asarray(rgb, dtype=np.int16)
    return float(np.mean(arr.max(-1) - arr.min(-1) > COLOUR_CHROMA * 255))


def raw_scores(out: dict, stats_arrays: dict) -> dict[str, np.ndarray]:
    """Every candidate method's raw score.

    Args:
        out: `forward` output.
        stats_arrays: `<part>_*` arrays of `fit_gaussian` and `fit_knn` (`ood.npz`).

    Returns:
        `{method: (n,)}` for every single method of `oodfeatures.METHODS` (not the `a+b` unions,
        see `method_score`) whose features are in both `out` and `stats_arrays`; higher = less
        like the training scans.
    """
    scores = {}
    for part in (p for p in FEATURES if p in out and f"{p}_whiten" in stats_arrays):
        z = out[part] @ stats_arrays[f"{part}_whiten"]
        d2 = ((z[:, None, :] - stats_arrays[f"{part}_means_w"][None]) ** 2).sum(-1)
        scores[f"mahalanobis_{part}"] = d2.min(1)
    for part in (p for p in FEATURES if p in out and f"{p}_knn_bank" in stats_arrays):
        scores[f"knn_{part}"] = knn_distance(out[part], stats_arrays, f"{part}_")
    logits = out["logits"].astype(np.float64)
    top = logits.max(1)
    scores["energy"] = -(top + np.log(np.exp(logits - top[:, None]).sum(1)))
    scores["msp"] = 1.0 - out["probs"].max(1)
    return scores


def fit_scale(val_score: np.ndarray, accept_rate: float) -> dict:
    """A raw score's validation statistics for `normalise`: its median and accept quantile.

    Args:
        val_score: `(n,)` raw scores of the validation scans.
        accept_rate: Share of them the scaled score puts at or below 1.

    Returns:
        `{"median", "spread"}`: the median and the `accept_rate` quantile minus it (kept
        positive).
    """
    median = float(np.median(val_score))
    spread = float(np.quantile(val_score, accept_rate)) - median
    return {"median": median, "spread": max(spread, 1e-6 * max(abs(median), 1.0))}


def normalise(score: np.ndarray, scale: dict) -> np.ndarray:
    """Scale a raw score by its validation statistics: 0 = median, 1 = the accept quantile."""
    return (np.asarray(score) - scale["median"]) / scale["spread"]


def method_score(scores: dict, scales: dict, method: str) -> np.ndarray:
    """A method's scaled score; a union `a+b` is the larger of its members' scaled scores.

    Args:
        scores: `raw_scores` output.
        scales: Validation scale of each single method (`ood.json` `scales`).
        method: A method of `oodfeatures.METHODS`, e.g. `"mahalanobis_joint+knn_joint"`.

    Returns:
        `(n,)` scaled scores (0 = validation median, 1 = its accept quantile).
    """
    return np.max([normalise(scores[m], scales[m]) for m in method.split("+")], 0)


def combine(feature_score: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """The OOD score: the larger of the scaled feature score and the scaled colour share."""
    return np.maximum(feature_score, np.asarray(colour) / COLOUR_FRACTION)


def rejected(score, colour, threshold: float, ct=False):
    """Whether inputs are out of distribution: above the OOD threshold, in colour, or CT-like.

    The colour check is a hard gate: MRI is grayscale, so a coloured image is refused even when a
    threshold fitted on atypical validation sources (scaled scores far above 1) would accept it.
    So are the CT checks (`btc.oodct`): nearer to simulated CT than to every brain cluster, or a
    CT's skull in the pixels.

    Args:
        score: Combined OOD score(s) (`combine`).
        colour: `colour_fraction` of the input(s).
        threshold: The fitted OOD threshold.
        ct: `ct_flags` of the input(s).

    Returns:
        A bool (or bool array, for array inputs).
    """
    return (np.asarray(score) > threshold) | (np.asarray(colour) > COLOUR_FRACTION) | np.asarray(ct)


def ood_kinds(feature, colour, threshold: float, ct=False, far: float | None = None) -> np.ndarray:
    """Each input's `ood_kind`: `""` when accepted, else one of `OOD_KINDS`.

    `"not_brain_mri"` for a colour picture (over `COLOUR_PICTURE`), a feature score above `far`,
    or a CT-like image whose feature score is beyond `threshold` too (two signals: a CT check
    alone also fires on a few real MRI in a harsh window); `"unfamiliar"` for the rest of the
    rejected (a brain MRI with a coloured overlay stays one), all score-only rejections when
    `far` is `None` (fitted before it)."""
    feature = np.asarray(feature, float)  # `None` (no features): NaN, beyond nothing
    sure = (np.asarray(ct) & (feature > threshold)) | (np.asarray(colour) > COLOUR_PICTURE)
    sure = sure | (feature > (np.inf if far is None else far))
    out = rejected(combine(feature, colour), colour, threshold, ct)
    return np.where(out, np.where(sure, *OOD_KINDS), "")


def ct_flags(out: dict, stats_: dict, skull=None) -> np.ndarray:
    """The CT checks of a `forward` output: `(n,)` bool (all `False` when none was fitted).

    Args:
        out: `oodfeatures.forward` output.
        stats_: `load_stats` output (`ood.npz` arrays `ct_*`, `ood.json` `ct_check`,
            `skull_check`).
        skull: `oodct.skull_flag` of each input; used when `ood.json` has `skull_check` (models
            fitted before it keep their behaviour).

    Returns:
        Whether each image is nearer to simulated CT than to every brain cluster, or has a CT's
        skull.
    """
    check, info = stats_["info"].get("ct_check"), stats_["info"]
    flags = np.zeros(len(out["probs"]), bool)
    if check and "ct_whiten" in stats_["arrays"]:
        flags = oodct.margins(out[check["part"]], stats_["arrays"]) > 0
    if skull is not None and info.get("skull_check"):
        flags = flags | np.asarray(skull, bool)
    return flags


RISK_BOUNDS = ("point", "upper")


def fit_confidence_threshold(confidence: np.ndarray, correct: np.ndarray, target_error: float = 0.02,
                             min_answered: int | None = None, risk_bound: str = "point") -> dict:  # fmt: skip
    """The lowest confidence threshold whose answered validation scans err at most `target_error`.

    With `risk_bound="upper"` it is the one-sided 95 % Clopper–Pearson upper bound of their error
    rate that must stay within `target_error` (selective classification with guaranteed risk,
    Geifman & El-Yaniv 2017): fewer scans are answered, and new scans are unlikely to err more.

    Args:
        confidence: `(n,)` calibrated top-class probabilities of OOD-accepted validation scans.
        correct: `(n,)` whether each top class is right.
        target_error: Highest error rate allowed among the answered scans.
        min_answered: Fewest answered scans to trust the estimate; default `ceil(3 /
            target_error)` (rule of three: even zero errors in fewer scans cannot show the rate).
        risk_bound: `"point"` (the observed error rate) or `"upper"` (its 95 % upper bound)
            must meet `target_error`.

    Returns:
        `threshold` (answer when confidence ≥ it; `None` if the target is never met),
        `target_met`, `answered`, `coverage`, `risk`, its one-sided 95 % `risk_upper` and
        `risk_bound`.

    Raises:
        ValueError: On a `target_error` outside (0, 1] or an unknown `risk_bound`.
    """
    config.check_range("target_error", target_error, 0.0, 1.0, low_inclusive=False)
    config.check_choice("risk_bound", risk_bound, RISK_BOUNDS)
    n = len(confidence)
    min_answered = math.ceil(3 / target_error) if min_answered is None else min_answered
    order = np.argsort(-confidence, kind="stable")
    conf, wrong = confidence[order], ~np.asarray(correct, bool)[order]
    k = np.arange(1, n + 1)
    errors = np.cumsum(wrong)
    risk = errors / k
    upper = oodmetrics.binomial_upper(errors, k)  # one-sided 95 %
    ends = np.r_[conf[1:] != conf[:-1], True]  # the last scan of each block of equal confidence
    bound = risk if risk_bound == "point" else upper
    ok = np.flatnonzero(ends & (bound <= target_error) & (k >= min_answered))
    common = {"n": n, "min_answered": min_answered, "risk_bound": risk_bound}
    if not len(ok):
        return {"threshold": None, "target_met": False, "answered": 0, "coverage": 0.0,
                "risk": None, "risk_upper": None, **common}  # fmt: skip
    i = ok[-1]
    return {"threshold": round(float(conf[i]), 6), "target_met": True, "answered": int(i + 1),
            "coverage": round((i + 1) / n, 6), "risk": round(float(risk[i]), 6),
            "risk_upper": round(float(upper[i]), 6), **common}  # fmt: skip


def status_of(ood_score, ood_threshold, confidence: float, confidence_threshold, target_met=True,
              colour: float = 0.0, ct: bool = False) -> str:  # fmt: skip
    """The status of one prediction.

    Args:
        ood_score: Combined OOD score, or `None` when it cannot be computed (LiteRT).
        ood_threshold: OOD threshold, or `None`.
        confidence: Calibrated top-class probability.
        confidence_threshold: Answer when `confidence` reaches it; `None` for no threshold.
        target_met: Whether any confidence threshold met the target error on validation (if
            not, every answer is uncertain).
        colour: `colour_fraction` of the input (the hard colour gate of `rejected`; applied
            with the OOD score only).
        ct: `ct_flags` of the input (the CT gate; with the OOD score only).

    Returns:
        `"out_of_distribution"` when `rejected` (above the OOD threshold, in colour or CT-like), else
        `"uncertain"` below the confidence threshold, else `"predicted"`.
    """
    if ood_score is not None and ood_threshold is not None:
        if rejected(ood_score, colour, ood_threshold, ct):
            return "out_of_distribution"
    if not target_met or (confidence_threshold is not None and confidence < confidence_threshold):
        return "uncertain"
    return "predicted"


# --- stored statistics ---------------------------------------------------------------------------


def load_stats(name: str, models_dir: str | Path = MODELS_DIR, runtime: str = "keras",
               calibration: tuple | None = None) -> dict:  # fmt: skip
    """A model's fitted OOD statistics and thresholds, as stored by `btc.oodeval`.

    Args:
        name: Model name.
        models_dir: Models folder (`<name>/ood.npz`, `<name>/ood.json`).
        runtime: `"keras"`, or `"litert"` (thresholds only: no features to score).
        calibration: The model's current `(temperature, class_bias)`
            (`btc.calibration.calibration_of`).

    Returns:
        `{"available", "info" (ood.json), "arrays" (ood.npz), "generic" (the stored
        `generic_model`, or `None`), "note"}`. Not available (with a
        note) when nothing was fitted, when `model.keras` changed since (hashed on each load),
        or when the calibration changed (03 refits it: re-run the OOD section).
    """
    folder = Path(models_dir) / name
    path = folder / THRESHOLDS_FILE
    if not path.is_file() or not (folder / STATS_FILE).is_file():
        return {"available": False, "note": UNAVAILABLE.format(name)}
    info = json.loads(path.read_text(encoding="utf-8"))
    if calibration is not None and not same_calibration(
        (info["temperature"], info.get("class_bias")), calibration
    ):
        return {"available": False, "note": f"OOD thresholds of {name} predate its calibration "
                                             "(03_evaluate refitted it): re-run the OOD section"}  # fmt: skip
    if runtime != "keras":
        return {"available": True, "info": info, "arrays": None, "note": LITERT_NOTE}
    if datasets.file_sha256(folder / "model.keras") != info["model_sha256"]:
        return {"available": False, "note": f"OOD statistics of {name} are stale (model.keras "
                                             "changed): re-run the OOD section of 03_evaluate"}  # fmt: skip
    with np.load(folder / STATS_FILE) as npz:
        # kNN banks are stored as float16; widened once here, not on every prediction
        arrays = {
            k: npz[k].astype(np.float32) if k.endswith("_knn_bank") else npz[k] for k in npz.files
        }
    generic = None
    if info.get("generic_sha256"):
        path = folder / GENERIC_FILE
        if not path.is_file() or datasets.file_sha256(path) != info["generic_sha256"]:
            return {"available": False, "note": f"The generic OOD extractor of {name} is missing "
                                                 "or changed: re-run the OOD section of 03_evaluate"}  # fmt: skip
        import keras

        generic = keras.saving.load_model(path, compile=False)
    return {"available": True, "info": info, "arrays": arrays, "generic": generic, "note": None}


def feature_score(out: dict, stats_: dict) -> np.ndarray:
    """The scaled `(n,)` score of the model's chosen method for a `forward` output."""
    info = stats_["info"]
    return method_score(raw_scores(out, stats_["arrays"]), info["scales"], info["method"])


def load_ensemble(models_dir: str | Path = MODELS_DIR) -> dict | None:
    """The ensemble's fitted thresholds (`models/ensemble_ood.json`, with its `members`), or `None`."""
    path = Path(models_dir) / ENSEMBLE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def assess(info: dict | None, confidence: float, feature: float | None, colour: float,
           note: str | None = None, ct: bool = False) -> dict:  # fmt: skip
    """The status fields of one record: `status`, `ood_score`, `thresholds`, `status_note`.

    Args:
        info: Thresholds (a model's `ood.json` or the ensemble's), or `None` when unavailable.
        confidence: Calibrated top-class probability.
        feature: Scaled feature score (`None` without features, e.g. LiteRT).
        colour: `colour_fraction` of the input.
        note: Why something is unavailable.
        ct: `ct_flags` of the input (`True`: nearer to simulated CT than to every brain cluster).

    Returns:
        `status`, `ood_score` (`None` without features), `thresholds` (`ood`, `ood_far`,
        `confidence`, `method`, `target_error`, `accept_rate`, `fitted_on`), `ood_kind` (`None`
        unless rejected; else one of `OOD_KINDS`, see `ood_kinds`), `ood_reason` and
        `status_note`. Without `info`: status `"predicted"` and a note that OOD checking is
        unavailable.
    """
    if info is None:
        return {"status": "predicted", "ood_score": None, "thresholds": None, "ood_kind": None,
                "ood_reason": None, "status_note": note or "OOD checking unavailable"}  # fmt: skip
    score = None if feature is None else float(combine(feature, colour))
    status = status_of(score, info["ood_threshold"], confidence, info["confidence_threshold"],
                       info["target_met"], colour, bool(ct))  # fmt: skip
    if not info["target_met"] and status == "uncertain":
        note = note or "no confidence threshold met the target error on validation"
    far = info.get("ood_far")
    thresholds = {"ood": None if feature is None else info["ood_threshold"],
                  "ood_far": None if feature is None else far,
                  "confidence": info["confidence_threshold"], "method": info["method"],
                  "target_error": info["target_error"], "accept_rate": info["accept_rate"],
                  "fitted_on": info.get("fitted_on", {}).get("thresholds", "val")}  # fmt: skip
    kind, reason = None, None
    if status == "out_of_distribution":
        kind = str(ood_kinds(feature, colour, info["ood_threshold"], ct, far))
        sure = kind == OOD_KINDS[0]
        reason = (llm.COLOUR_REASON if colour > COLOUR_FRACTION else (CT_REASON if sure else
                  llm.CT_HINT) if ct else FAR_REASON if sure else UNFAMILIAR_REASON)  # fmt: skip
    return {"status": status, "ood_score": None if score is None else round(score, 4),
            "thresholds": thresholds, "ood_kind": kind, "ood_reason": reason, "status_note": note}  # fmt: skip
