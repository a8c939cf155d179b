"""Fit and evaluate the OOD check in the pipeline (03_evaluate): statistics, thresholds, report.

`fit_and_report` fits and stores each model's OOD statistics and thresholds (`btc.ood`) on the
train and validation splits, chooses the method on the select part of the images from
`btc.oodsets`, and reports on the test split, the external test groups and the report part:
`results/03_evaluate/ood_report.json` and `risk_coverage.png`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from btc import artifacts, config, datasets, ood, oodct, oodfeatures, oodmetrics, oodsets
from btc.artifacts import run_model_names
from btc.calibration import calibrate, calibration_of, ensemble
from btc.config import CLASS_NAMES, MODELS_DIR

OOD_DIR_ENV = "BTC_OOD_DIR"
FIT_SETS = ("train", "train_style")  # what the Gaussians are fitted on: never scored or reported
CT_SET = "train_ct"  # simulated CT copies of the train scans (`oodct.ct_like`): the CT check's fit
STYLE_SEED = 0
PARTS = (
    "validation (+ external-train) brain scans and the brain MRI of other sources bundled with "
    "nilearn, matplotlib and pydicom-data (to accept) vs synthetic, scikit-image and pydicom(-data) "
    "images and every other file of each OOD-folder kind (to reject): chooses the method",
    "test split, external test groups, the other OOD-folder files, all brain* files and the ITK / "
    "mricron images of Debian packages (when installed): reported",
)


# --- fitting ------------------------------------------------------------------------------------


def _outputs(model, meta: dict, frames: dict, arrays: np.ndarray, batch_size: int,
             generic=None) -> dict:  # fmt: skip
    """`oodfeatures.forward` outputs per set (`train`, `val`, `ext_test`, ..., `images`)."""
    fmodel = oodfeatures.feature_model(model, meta, generic)
    canonical = [meta["class_names"].index(c) for c in CLASS_NAMES]
    to_canonical = np.array(
        [CLASS_NAMES.index(c) for c in meta["class_names"]] + [len(CLASS_NAMES)]
    )
    outs = {"images": oodfeatures.forward(model, fmodel, arrays, batch_size)}
    for key, (frame, split) in frames.items():
        ds = datasets.make_dataset(frame, split, meta["image_size"], batch_size, augment=False,
                               shuffle=False, cache=False, class_names=meta["class_names"])  # fmt: skip
        outs[key] = oodfeatures.forward(model, fmodel, ds)
        outs[key]["labels"] = to_canonical[np.concatenate([y.numpy() for _, y in ds])]
        outs[key]["groups"] = frame.loc[frame.split == split, "group"].to_numpy()
        if key == "train":  # the style-augmented copy the Gaussians are also fitted on
            rng = np.random.default_rng(STYLE_SEED)
            styled = ((oodfeatures.style_augment(x.numpy(), rng), y) for x, y in ds)
            outs["train_style"] = oodfeatures.forward(model, fmodel, styled)
            outs["train_style"]["labels"] = outs["train"]["labels"]
            rng = np.random.default_rng(oodct.CT_SEED)
            outs[CT_SET] = oodfeatures.forward(model, fmodel, ((oodct.ct_like(x.numpy(), rng), y) for x, y in ds))  # fmt: skip
    for out in (o for s, o in outs.items() if s != CT_SET):
        calibrated = calibrate(out["probs"], meta)
        out["calibrated"] = calibrated[:, canonical]
    return outs


def _pooled_threshold(sources: dict, accept_rate: float) -> float:
    """The `accept_rate` quantile of the in-distribution brain scans of every source, pooled."""
    pooled = np.concatenate(list(sources.values()))
    return float(np.quantile(pooled, accept_rate, method="higher"))


def _thresholds(sources: dict, calibrated, labels, accept_rate, target_error, min_answered,
                risk_bound, brains=()) -> dict:  # fmt: skip
    """The OOD threshold, `ood_far` and, on the validation scans accepted, the confidence threshold.

    The OOD threshold is the `accept_rate` quantile of the in-distribution brain scans pooled
    (`val`, and `ext_train_held_out` when there is an external set). `ood_far` is the highest score
    of any brain MRI the fit knows (those and `brains`, the select part's other-source brains):
    above it btc says "not a brain MRI". Each source's own quantile and accepted share are reported.
    """
    per_source = {k: _pooled_threshold({k: v}, accept_rate) for k, v in sources.items()}
    threshold = _pooled_threshold(sources, accept_rate)
    far = max(threshold, float(np.max(np.concatenate([*sources.values(), np.ravel(brains)]))))
    far = float(np.ceil(far * 1e4) / 1e4)  # rounded up: the brain that sets it stays within it
    accepted = sources["val"] <= threshold
    confidence, correct = calibrated.max(1)[accepted], (calibrated.argmax(1) == labels)[accepted]
    fit = ood.fit_confidence_threshold(confidence, correct, target_error, min_answered, risk_bound)
    return {"ood_threshold": round(threshold, 6), "ood_far": far, "accept_rate": accept_rate,
            "source_thresholds": {k: round(v, 6) for k, v in per_source.items()},
            "accepted": {k: round(float(np.mean(v <= threshold)), 6) for k, v in sources.items()},
            "val_accepted": round(float(accepted.mean()), 6),
            "confidence_threshold": fit["threshold"], "target_met": fit["target_met"],
            "target_error": target_error, "val_selective": fit}  # fmt: skip


def _known_brains(scaled: np.ndarray, images: list[dict], colours: dict) -> np.ndarray:
    """The scores of the select part's grayscale brain MRI of other sources (`ood_far`'s too)."""
    known = np.array([i["part"] == "select" and i["expect"] == "accept" for i in images], bool)
    known &= colours["images"] <= ood.COLOUR_FRACTION
    return ood.combine(scaled, colours["images"])[known]


def _parts(outs: dict) -> list[str]:
    """The feature sets the outputs have (`generic` and `joint` only with the generic extractor)."""
    return [p for p in oodfeatures.FEATURES if p in outs["train"]]


def _gaussians(outs: dict, ext_keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """`oodfeatures.fit_gaussian` (and `fit_knn`) of every feature set: the 4 classes of the train
    split (and of its style-augmented copy, `train_style`) and, as a fifth cluster ("tumour, type
    unknown"), the external train groups (those in `ext_keep`)."""
    k, sets = len(CLASS_NAMES), _fit_sets(outs, ext_keep)
    labels = np.concatenate([s["labels"] for s in sets])  # external rows carry label k
    arrays = {}
    for part in _parts(outs):
        x = np.concatenate([s[part] for s in sets])
        fitted = oodfeatures.fit_gaussian(x, labels, k + 1) | oodfeatures.fit_knn(x, part)
        arrays |= {f"{part}_{key}": value for key, value in fitted.items()}
    return arrays


def _fit_sets(outs: dict, ext_keep: np.ndarray | None = None) -> list[dict]:
    """The sets the Gaussians are fitted on: `FIT_SETS` and the external train groups (label k)."""
    sets = [outs[s] for s in FIT_SETS if s in outs]
    if "ext_train" in outs:
        ext = outs["ext_train"]
        keep = np.ones(len(ext["labels"]), bool) if ext_keep is None else ext_keep
        sets.append({key: ext[key][keep] for key in (*_parts(outs), "labels")})
    return sets


def _held_out_scores(outs: dict) -> dict[str, np.ndarray]:
    """Raw scores of the external train scans, each from a fit without its own fold.

    Two folds of whole near-copy groups (sorted group ids, alternating): like validation scans,
    the scores used for the threshold never come from a fit that saw them.
    """
    ext = outs["ext_train"]
    groups = np.unique(ext["groups"])
    first = np.isin(ext["groups"], groups[::2])
    scores: dict[str, np.ndarray] = {}
    for fold in (first, ~first):
        if fold.any():
            part = {key: ext[key][fold] for key in (*_parts(outs), "logits", "probs")}
            for m, v in ood.raw_scores(part, _gaussians(outs, ~fold)).items():
                scores.setdefault(m, np.zeros(len(first)))[fold] = v
    return scores


def _fit_model(name, model, models_dir, meta, outs, checks, images, fit_args,
               generic=None) -> tuple[dict, dict]:  # fmt: skip
    """Fit, choose the method, store `ood.npz`, `ood.json` (and the generic extractor); never
    reads the test sets.

    The method: the best `oodmetrics.kind_balanced_auroc` on the select part of `images` (then
    the best plain AUROC of in-distribution and other-source brains against the other images).

    `checks`: `(colours, skulls)`, the `ood.colour_fraction` and `oodct.skull_flag` of each set.

    Returns:
        The stored info, every method's scaled score per set (`{method: {set: (n,)}}`) and the
        CT checks' flags per set (feature check or skull ring).
    """
    (colours, skulls), arrays = checks, _gaussians(outs)
    raw = {
        s: ood.raw_scores(out, arrays) for s, out in outs.items() if s not in (*FIT_SETS, CT_SET)
    }
    if "ext_train" in outs:
        raw["ext_train_held_out"] = _held_out_scores(outs)
    methods = [m for m in oodfeatures.METHODS if all(p in raw["val"] for p in m.split("+"))]
    scales = {p: ood.fit_scale(raw["val"][p], fit_args[0]) for m in methods for p in m.split("+")}
    scaled = {m: {s: ood.method_score(r, scales, m) for s, r in raw.items()} for m in methods}
    brain = [s for s in ("val", "ext_train_held_out") if s in raw]
    selection, balanced = {}, {}
    for m in methods:
        sources = {s: ood.combine(scaled[m][s], colours[s]) for s in brain}
        score = ood.combine(scaled[m]["images"], colours["images"])
        selection[m], balanced[m] = oodmetrics.selection_aurocs(sources, score, images)
    method = max(methods, key=lambda m: (balanced[m], selection[m], -oodfeatures.METHODS.index(m)))
    sources = {s: ood.combine(scaled[method][s], colours[s]) for s in brain}
    ct_info, ct, part = {}, {}, method.split("+")[0].split("_", 1)[-1]  # `knn_joint` -> `joint`
    arrays = oodfeatures.method_arrays(arrays, method)  # the chosen method's kNN bank only
    if CT_SET in outs and part in oodfeatures.FEATURES and part in outs[CT_SET]:  # `btc.oodct`
        feats = {s: outs[s.removesuffix("_held_out")][part] for s in raw}
        ct_arrays, ct_info, ct = oodct.fit_check(
            _fit_sets(outs), outs[CT_SET][part], part, feats, oodfeatures.fit_gaussian
        )
        arrays |= ct_arrays
    ct = {s: np.asarray(ct.get(s, False)) | skulls[s] for s in raw}
    skull_info = {"rule": "a saturated skull ring around a darker, flat brain (`btc.oodct.skull_ring`)",
                  "flagged": {s: round(float(np.mean(skulls[s])), 6) for s in ("val", "ext_train", "test", "ext_test") if s in skulls}}  # fmt: skip
    info = {
        "model": name, "method": method, "scales": scales, "selection_auroc": selection,
        **({"ct_check": ct_info} if ct_info else {}), "skull_check": skull_info,
        "selection_kind_auroc": balanced,
        "stage_layers": oodfeatures.stage_layers(model, meta["gradcam_layer"]),
        **_thresholds(sources, outs["val"]["calibrated"], outs["val"]["labels"], *fit_args,
                      _known_brains(scaled[method]["images"], images, colours)),
        "temperature": calibration_of(meta)[0], "class_bias": calibration_of(meta)[1],
        "model_sha256": datasets.file_sha256(Path(models_dir) / name / "model.keras"),
        "colour": {"chroma": ood.COLOUR_CHROMA, "fraction": ood.COLOUR_FRACTION,
                   "val_max": round(float(np.max(colours["val"])), 6)},
        "fitted_on": {"statistics": " + ".join(s for s in (*FIT_SETS, "ext_train") if s in outs),
                      "thresholds": " + ".join(brain),
                      "method": f"{' + '.join(brain)} vs the select part"},
    }  # fmt: skip
    folder = Path(models_dir) / name
    with config.atomic_path(folder / ood.STATS_FILE) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    if generic is not None:
        artifacts.save_model_atomic(generic, folder / oodfeatures.GENERIC_FILE)
        info["generic_sha256"] = datasets.file_sha256(folder / oodfeatures.GENERIC_FILE)
    else:
        (folder / oodfeatures.GENERIC_FILE).unlink(missing_ok=True)
    config.write_json_atomic(folder / ood.THRESHOLDS_FILE, info)
    return info, scaled, ct


def _fit_ensemble(names, members: dict, models_dir, colours, fit_args, images) -> tuple[dict, dict]:
    """The ensemble: mean of its members' scaled scores, thresholds of its own (validation)."""
    path = Path(models_dir) / "ensemble.json"
    fitted = (
        json.loads(path.read_text(encoding="utf-8")).get("weights", {}) if path.is_file() else {}
    )
    weights = fitted if set(fitted) == set(names) else dict.fromkeys(names, 1 / len(names))
    sets = members[names[0]]["calibrated"]
    member = {
        "scaled": {s: np.mean([members[n]["scaled"][s] for n in names], 0)
                   for s in members[names[0]]["scaled"]},
        "calibrated": {s: ensemble([members[n]["calibrated"][s] for n in names],
                                   [weights[n] for n in names]) for s in sets},
        "labels": members[names[0]]["labels"],
        "ct": {s: np.any(np.broadcast_arrays(*(members[n]["ct"].get(s, False) for n in names)), 0)
               for s in {s for n in names for s in members[n]["ct"]}},  # a member may have none
    }  # fmt: skip
    brain = [s for s in ("val", "ext_train_held_out") if s in member["scaled"]]
    sources = {s: ood.combine(member["scaled"][s], colours[s]) for s in brain}
    info = {"model": "ensemble", "members": names, "weights": weights,
            "method": "mean of the members' scaled scores",
            **_thresholds(sources, member["calibrated"]["val"], member["labels"]["val"], *fit_args,
                          _known_brains(member["scaled"]["images"], images, colours)),
            "fitted_on": {"thresholds": " + ".join(brain)}}  # fmt: skip
    config.write_json_atomic(Path(models_dir) / ood.ENSEMBLE_FILE, info)
    return info, member


# --- the report ----------------------------------------------------------------------------------


def _report(info: dict, member: dict, colours: dict, images: list[dict], n_bootstrap, seed) -> dict:
    """Test split, external test groups and OOD images of one model (or the ensemble)."""
    score = {s: ood.combine(v, colours[s]) for s, v in member["scaled"].items()}
    t, cal, y = info["ood_threshold"], member["calibrated"]["test"], member["labels"]["test"]
    said = {s: ood.ood_kinds(v, colours[s], t, member["ct"].get(s, False), info["ood_far"])
            for s, v in member["scaled"].items()}  # fmt: skip
    out_of = {s: k != "" for s, k in said.items()}
    rejected = out_of["test"]
    limit = info["confidence_threshold"] if info["target_met"] else np.inf
    answered = ~rejected & (cal.max(1) >= limit)
    correct = cal.argmax(1) == y
    ranking = np.where(rejected, -1.0, cal.max(1))  # rejected scans are abstained from first
    selective = oodmetrics.bootstrap(oodmetrics.selective_metrics, [[ranking, correct, answered]], n_bootstrap, seed)  # fmt: skip
    out = {
        "method": info["method"], "ood_threshold": t,
        "confidence_threshold": info["confidence_threshold"], "target_met": info["target_met"],
        "val_selective": info["val_selective"], "test_rejected": oodmetrics.rate(rejected),
        "status_counts": {"predicted": int(answered.sum()), "out_of_distribution": int(rejected.sum()),
                          "uncertain": int((~rejected & ~answered).sum())},
        "selective": oodmetrics.with_ci(oodmetrics.selective_metrics(ranking, correct, answered), selective),
        "external_accepted": oodmetrics.rate(~out_of["ext_test"]) if "ext_test" in score else None,
        "external_rejected": oodmetrics.external_rejected(out_of),
        "curve": oodmetrics.risk_coverage(ranking, correct),
        "ood_far": info["ood_far"],  # test / Br35H scans called "not a brain MRI" (CT-like only):
        "not_brain": {s: oodmetrics.rate(said[s] == ood.OOD_KINDS[0]) for s in ("test", "ext_test") if s in said},
    }  # fmt: skip
    out["rejected_by_kind"] = oodmetrics.rates_by_kind(images, out_of["images"], said["images"] == ood.OOD_KINDS[0])  # fmt: skip
    reported = np.array([i["part"] == "report" and i["expect"] == "reject" for i in images])
    if reported.any():
        out["report"] = oodmetrics.with_ci(
            *oodmetrics.separation(score["test"], score["images"][reported], n_bootstrap, seed)
        )
    ct = np.broadcast_to(member["ct"].get("images", False), len(images))
    for image, s, r, c, k in zip(images, score["images"], out_of["images"], ct, said["images"]):
        image.setdefault("scores", {})[info["model"]] = round(float(s), 4)
        image.setdefault("rejected", {})[info["model"]] = bool(r)
        image.setdefault("ood_kind", {})[info["model"]] = str(k) or None
        image.setdefault("ct_like", {})[info["model"]] = bool(c)
    return out


def fit_and_report(
    model_names: Sequence[str] | None = None, manifest_path: str | Path | None = None,
    models_dir: str | Path = MODELS_DIR, results_dir: str | Path | None = None,
    ood_dir: str | Path | None = None, accept_rate: float = 0.975, target_error: float = 0.02,
    min_answered: int | None = None, n_bootstrap: int = 1000, seed: int = 0, batch_size: int = 64,
    risk_bound: str = "point",
) -> dict:  # fmt: skip
    """Fit and store each model's OOD statistics and thresholds; report them on held-out images.

    Per model: class means and a shared covariance on the train split and its style-augmented
    copy; each candidate score scaled on validation; the method with the best
    `oodmetrics.kind_balanced_auroc` on the select part; the OOD threshold accepting
    `accept_rate` of the validation and held-out Br35H scans, pooled; the confidence threshold
    for `target_error` on the accepted validation scans; the CT check (`btc.oodct`) on the chosen
    method's features (`models/<name>/ood.npz`, `ood.json`). The ensemble averages its members'
    scaled scores and has thresholds of its own (`models/ensemble_ood.json`). The test split, the
    external test groups and the report part of `ood_dir` are only reported on.

    Args:
        model_names: Models (default: every trained model).
        manifest_path: Manifest CSV (default `config.MANIFEST_PATH`; `external.csv` beside it).
        models_dir: Trained models.
        results_dir: Output root (default `config.RESULTS_DIR`).
        ood_dir: Non-brain images, one folder per kind (`brain*` folders must be accepted);
            default `$BTC_OOD_DIR`. Without one the method is chosen on synthetic and bundled
            images only and the OOD-image report is skipped with a note.
        accept_rate: Share of in-distribution brain scans (validation and held-out Br35H,
            pooled) the OOD threshold accepts.
        target_error: Highest error rate on the scans answered (validation).
        min_answered: Fewest answered validation scans (default `ceil(3 / target_error)`).
        n_bootstrap: Bootstrap resamples of the 95 % CIs.
        seed: Bootstrap seed.
        batch_size: Prediction batch size.
        risk_bound: `"point"`: the answered validation scans err at most `target_error`;
            `"upper"`: so does the 95 % upper bound of their error rate (fewer answers).

    Returns:
        The report written to `results/03_evaluate/ood_report.json` (plus `risk_coverage.png`).

    Raises:
        FileNotFoundError: If no trained model or no manifest exists.
        ValueError: On an out-of-range argument or an `ood_dir` that is not a folder.
    """
    from btc import external, plots

    config.check_range("accept_rate", accept_rate, 0.5, 1.0, high_inclusive=False)
    config.check_range("target_error", target_error, 0.0, 1.0, low_inclusive=False)
    config.check_range("n_bootstrap", n_bootstrap, 1, types=int)
    manifest_path = Path(manifest_path or config.MANIFEST_PATH)
    manifest = datasets.load_manifest(manifest_path, check_leakage=False)
    names = list(model_names or run_model_names(models_dir))
    if not names:
        raise FileNotFoundError(f"No trained model in {str(models_dir)!r}: run 02_train first")
    ood_dir = ood_dir or os.environ.get(OOD_DIR_ENV) or None
    if ood_dir is not None and not Path(ood_dir).is_dir():
        raise ValueError("`ood_dir` must be a folder with one sub-folder of images per kind. "
                         f"Received: ood_dir={str(ood_dir)!r}")  # fmt: skip
    folder = oodsets.folder_images(ood_dir) if ood_dir else []
    images = oodsets.bundled_images(exclude=folder) + folder + oodsets.system_images()
    reported = np.array([i["part"] == "report" and i["expect"] == "reject" for i in images])
    frames = {s: (manifest, s) for s in config.SPLITS}
    ext = external.load_external(manifest_path.with_name("external.csv"))
    if ext is not None:
        frames |= {f"ext_{s}": (ext, s) for s in ("train", "test") if (ext.split == s).any()}
    raws = {"images": [i["raw"] for i in images]} | {k: [Path(p).read_bytes() for p in f.loc[f.split == s, "path"]] for k, (f, s) in frames.items() if k != "train"}  # fmt: skip
    colours = {k: np.array([ood.colour_fraction(r) for r in v]) for k, v in raws.items()}
    skulls = {k: np.array([oodct.skull_flag(r) for r in v], bool) for k, v in raws.items()}
    del raws
    for checks in (colours, skulls) if "ext_train" in colours else ():
        checks["ext_train_held_out"] = checks["ext_train"]
    config.check_choice("risk_bound", risk_bound, ood.RISK_BOUNDS)
    fit_args = (accept_rate, target_error, min_answered, risk_bound)
    fitted, members, generics = {}, {}, {}
    for name in names:
        model, meta = artifacts.load_trained(name, models_dir)
        arrays = oodsets.to_arrays([i["raw"] for i in images], meta["image_size"])
        size = meta["image_size"]
        if size not in generics:
            generics[size] = oodfeatures.generic_model(size)
        outs = _outputs(model, meta, frames, arrays, batch_size, generics[size])
        fitted[name], scaled, ct = _fit_model(name, model, models_dir, meta, outs, (colours, skulls),
                                              images, fit_args, generics[size])  # fmt: skip
        pairs = ({m: ood.combine(v[s], colours[s]) for m, v in scaled.items()} for s in ("test", "images"))  # fmt: skip
        fitted[name]["report_auroc"] = oodmetrics.method_aurocs(*pairs, reported)
        members[name] = {"scaled": scaled[fitted[name]["method"]], "ct": ct,
                         "calibrated": {s: o["calibrated"] for s, o in outs.items() if s not in (*FIT_SETS, CT_SET)},
                         "labels": {s: o["labels"] for s, o in outs.items() if "labels" in o}}  # fmt: skip
    if len(names) >= 2:
        fitted["ensemble"], members["ensemble"] = _fit_ensemble(names, members, models_dir, colours, fit_args, images)  # fmt: skip
    entries = {}
    for name, member in members.items():
        entries[name] = _report(fitted[name], member, colours, images, n_bootstrap, seed)
        entries[name] |= {k: fitted[name].get(k) for k in
                          ("selection_auroc", "selection_kind_auroc", "report_auroc", "ct_check", "skull_check")}  # fmt: skip
    out = Path(results_dir or config.RESULTS_DIR) / "03_evaluate"
    curves = {n: e.pop("curve") for n, e in entries.items()}
    plots.risk_coverage(curves, {n: e["selective"] for n, e in entries.items()}, target_error,
                        out / "risk_coverage.png")  # fmt: skip
    plots.plt.close("all")
    report = {
        "parts": {"select": PARTS[0], "report": PARTS[1]},
        "ood_dir": None if ood_dir is None else str(ood_dir),
        "note": None if folder else f"no OOD folder (set ${OOD_DIR_ENV} or `ood_dir`): OOD-image report skipped",
        "accept_rate": accept_rate, "target_error": target_error, "risk_bound": risk_bound,
        "n_bootstrap": n_bootstrap, "manifest_sha256": datasets.file_sha256(manifest_path), "models": entries,
        "images": [{k: v for k, v in i.items() if k != "raw"} for i in images],
    }  # fmt: skip
    config.write_json_atomic(out / "ood_report.json", report)
    return report
