"""Evaluation stage: leakage gate, metrics with bootstrap CIs, calibration, ensemble and TTA.

Metrics come from scikit-learn wherever it has them; only the expected calibration error and
the vectorised bootstrap are written here. Every prediction reads class order, input size and
temperature from the model's `metadata.json`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics as skm

from btc import artifacts, calibration, datasets, reports
from btc.config import CLASS_NAMES, MODELS_DIR

TUMOUR_FREE = "notumor"


class LeakageError(RuntimeError):
    """The test split shares a duplicate group or file with train/validation."""


# --- leakage gate --------------------------------------------------------------------------------


def leakage_gate(manifest: pd.DataFrame, allow_leaky: bool = False) -> dict:
    """Check that no test image's duplicate group or file hash is in train or validation.

    Args:
        manifest: Manifest with `split`, `group` and `sha256`.
        allow_leaky: Explicit override: report instead of refusing; every number and figure is
            then labelled "LEAKY".

    Returns:
        `{"leaky": bool, "test_images_leaked": int, "groups_crossing": int}`.

    Raises:
        LeakageError: If leakage is found and `allow_leaky` is false.
    """
    test = manifest[manifest["split"] == "test"]
    seen = manifest[manifest["split"] != "test"]
    leaked = test["group"].isin(set(seen["group"])) | test["sha256"].isin(set(seen["sha256"]))
    groups = int(test.loc[leaked, "group"].nunique())
    result = {"leaky": bool(leaked.any()), "test_images_leaked": int(leaked.sum()),
              "groups_crossing": groups, "test_images": int(len(test))}  # fmt: skip
    if leaked.any() and not allow_leaky:
        raise LeakageError(
            f"{int(leaked.sum())} of {len(test)} test images share a duplicate group or file with "
            f"train/validation ({groups} groups): their scores would measure memorisation. "
            "Re-run 01_preprocess with split_mode='grouped' (or drop_leaked=True), or pass "
            "allow_leaky=True to label every number LEAKY. Received: allow_leaky=False"
        )
    return result


# --- metrics -------------------------------------------------------------------------------------


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins (Guo et al., 2017)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total)


def reliability_table(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> pd.DataFrame:
    """Per confidence bin: count, mean confidence and accuracy (for the reliability diagram)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    frame = pd.DataFrame({"bin": which, "confidence": confidence, "correct": correct})
    table = frame.groupby("bin").agg(count=("correct", "size"), confidence=("confidence", "mean"),
                                     accuracy=("correct", "mean"))  # fmt: skip
    table["lower"], table["upper"] = edges[table.index], edges[table.index + 1]
    return table


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str] = CLASS_NAMES
) -> dict:
    """Every point metric of a set of predictions.

    Args:
        labels: `(n,)` integer labels.
        probs: `(n, classes)` probabilities.
        class_names: Names in label order.

    Returns:
        Dict with accuracy, balanced accuracy, MCC, macro/weighted precision, recall, F1,
        macro ROC-AUC and PR-AUC, `per_class` (precision, sensitivity, specificity, F1, ROC-AUC,
        PR-AUC, support), `tumour_called_no_tumour_rate`, ECE, Brier score and NLL.
    """
    k = len(class_names)
    pred = probs.argmax(axis=1)
    classes = list(range(k))
    onehot = np.eye(k)[labels]
    prec, rec, f1, support = skm.precision_recall_fscore_support(
        labels, pred, labels=classes, zero_division=0
    )
    mcm = skm.multilabel_confusion_matrix(labels, pred, labels=classes)
    specificity = mcm[:, 0, 0] / np.maximum(mcm[:, 0, 0] + mcm[:, 0, 1], 1)
    present = onehot.sum(0) > 0
    roc = [skm.roc_auc_score(onehot[:, c], probs[:, c]) if 0 < onehot[:, c].sum() < len(labels)
           else np.nan for c in classes]  # fmt: skip
    pr = [skm.average_precision_score(onehot[:, c], probs[:, c]) if present[c] else np.nan
          for c in classes]  # fmt: skip
    out = {
        "n": int(len(labels)),
        "accuracy": skm.accuracy_score(labels, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(labels, pred),
        "mcc": skm.matthews_corrcoef(labels, pred),
        "roc_auc_macro": float(np.nanmean(roc)),
        "pr_auc_macro": float(np.nanmean(pr)),
        "ece": expected_calibration_error(probs, labels),
        "brier": float(np.mean(np.sum((probs - onehot) ** 2, axis=1))),
        "nll": skm.log_loss(labels, np.clip(probs, 1e-12, 1), labels=classes),
    }
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            labels, pred, labels=classes, average=avg, zero_division=0
        )
        out.update({f"precision_{avg}": p, f"recall_{avg}": r, f"f1_{avg}": f})
    out["per_class"] = {
        name: {"precision": prec[c], "sensitivity": rec[c], "specificity": specificity[c],
               "f1": f1[c], "roc_auc": roc[c], "pr_auc": pr[c], "support": int(support[c])}
        for c, name in enumerate(class_names)
    }  # fmt: skip
    if TUMOUR_FREE in class_names:
        none = list(class_names).index(TUMOUR_FREE)
        tumour = labels != none
        rate = float(np.mean(pred[tumour] == none)) if tumour.any() else np.nan
        out["tumour_called_no_tumour_rate"] = rate
    return _floats(out)


def _floats(obj):
    if isinstance(obj, dict):
        return {k: _floats(v) for k, v in obj.items()}
    if isinstance(obj, np.generic | float):
        return None if np.isnan(obj) else round(float(obj), 6)
    return obj


def bootstrap_ci(
    labels: np.ndarray, probs: np.ndarray, n_resamples: int = 1000, seed: int = 0,
    level: float = 0.95, class_names: Sequence[str] = CLASS_NAMES,
) -> dict:  # fmt: skip
    """Percentile bootstrap CIs for accuracy, macro-F1 and per-class sensitivity (vectorised).

    Args:
        labels: `(n,)` integer labels.
        probs: `(n, classes)` probabilities.
        n_resamples: Bootstrap resamples (≥ 1000 for reported numbers).
        seed: Resampling seed.
        level: Confidence level.
        class_names: Names in label order.

    Returns:
        `{"accuracy": [lo, hi], "f1_macro": [lo, hi], "sensitivity": {class: [lo, hi]}}`.
    """
    rng = np.random.default_rng(seed)
    n, k = len(labels), len(class_names)
    idx = rng.integers(0, n, size=(n_resamples, n))
    y, p = labels[idx], probs.argmax(axis=1)[idx]
    tp = np.stack([((p == c) & (y == c)).sum(1) for c in range(k)], 1).astype(float)
    fp = np.stack([((p == c) & (y != c)).sum(1) for c in range(k)], 1)
    fn = np.stack([((p != c) & (y == c)).sum(1) for c in range(k)], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        sens = tp / (tp + fn)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]

    def ci(values):
        return [round(float(v), 6) for v in np.nanpercentile(values, q)]

    return {
        "accuracy": ci((y == p).mean(1)),
        "f1_macro": ci(f1.mean(1)),
        "sensitivity": {name: ci(sens[:, c]) for c, name in enumerate(class_names)},
        "n_resamples": n_resamples,
        "level": level,
    }


def mcnemar(labels: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict:
    """Exact McNemar test of two models' correctness on the same images."""
    a, b = pred_a == labels, pred_b == labels
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    p = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": float(p)}


def pairwise_mcnemar(labels: np.ndarray, probs: dict[str, np.ndarray]) -> list[dict]:
    """McNemar's test for every pair of models (and the ensemble)."""
    return [{"a": a, "b": b, **mcnemar(labels, probs[a].argmax(1), probs[b].argmax(1))}
            for a, b in itertools.combinations(probs, 2)]  # fmt: skip


# --- the whole stage -----------------------------------------------------------------------------


def _rounded(values: list[float] | None) -> list[float] | None:
    return None if values is None else [round(v, 4) for v in values]


def evaluate(
    model_names: Sequence[str] | None = None,
    manifest_path: str | Path | None = None,
    models_dir: str | Path = MODELS_DIR,
    results_dir: str | Path | None = None,
    n_bootstrap: int = 1000,
    tta: bool = False,
    use_ensemble: bool = True,
    fit_ensemble: bool = True,
    allow_leaky: bool = False,
    batch_size: int = 64,
    seed: int = 0,
    calibration_method: str = "auto",
) -> dict:
    """Evaluate trained models (and their ensemble) on the manifest's test split.

    Fits each model's calibration (temperature or vector scaling, see
    `calibration.fit_calibration`) on the validation split, stores it in the model's
    `metadata.json`, and reports every metric before/after calibration with bootstrap CIs.
    Writes `results/metrics.json`, `results/03_evaluate/` (figures, `comparison.md`) and
    `models/<name>/MODEL_CARD.md`.

    Args:
        model_names: Models to evaluate; default every trained model in `models_dir`.
        manifest_path: Manifest CSV; defaults to `config.MANIFEST_PATH`.
        models_dir: Folder of trained models.
        results_dir: Output folder; defaults to `config.RESULTS_DIR`.
        n_bootstrap: Bootstrap resamples (≥ 1000 for reported numbers).
        tta: Test-time augmentation (flip and small shifts) for every model.
        use_ensemble: Also evaluate soft voting over the models (when there are ≥ 2).
        fit_ensemble: Fit the voting weights on validation (else equal weights).
        allow_leaky: Evaluate a manifest that fails the leakage gate, labelling it LEAKY.
        batch_size: Prediction batch size.
        seed: Bootstrap seed.
        calibration_method: `"temperature"`, `"vector"` (a temperature and one bias per
            class), or `"auto"`: vector scaling only if its cross-validated NLL on the
            validation split is lower.

    Returns:
        The report written to `metrics.json`.

    Raises:
        LeakageError: If the test split leaks and `allow_leaky` is false.
        FileNotFoundError: If no trained model is found.
        ValueError: If `calibration_method` is not one of `calibration.METHODS`.
    """
    from btc import config, external, plots

    config.check_range("n_bootstrap", n_bootstrap, 1, types=int)
    config.check_choice("calibration_method", calibration_method, calibration.METHODS)
    manifest_path = Path(manifest_path or config.MANIFEST_PATH)
    results_dir = Path(results_dir or config.RESULTS_DIR)
    out = results_dir / "03_evaluate"
    manifest = datasets.load_manifest(manifest_path, check_leakage=False)
    gate = leakage_gate(manifest, allow_leaky)
    tag = "LEAKY " if gate["leaky"] else ""
    names = list(model_names or artifacts.run_model_names(models_dir))
    if not names:
        raise FileNotFoundError(f"No trained model in {str(models_dir)!r}: run 02_train first")
    ext = external.load_external(manifest_path.with_name("external.csv"))
    ext_test = None if ext is None else ext[ext.split == "test"].reset_index(drop=True)
    val_p, test_p, metas, labels, ext_p = {}, {}, {}, {}, {}
    for name in names:
        model, meta = artifacts.load_trained(name, models_dir)
        val_probs, val_y = datasets.predict_split(
            model, meta, manifest, "val", batch_size, tta=False
        )
        fit = calibration.fit_calibration(val_probs, val_y, calibration_method, seed=seed)
        meta = meta.replace(
            temperature=round(fit["temperature"], 4), temperature_fitted_on="val",
            calibration=fit["method"], class_bias=_rounded(fit["class_bias"]),
            extra={**meta.extra, "calibration_cv_nll": fit["cv_nll"]},
        )  # fmt: skip
        if tta:  # TTA averages are less confident: they get a calibration of their own
            val_probs, _ = datasets.predict_split(
                model, meta, manifest, "val", batch_size, tta=True
            )
            fit = calibration.fit_calibration(val_probs, val_y, fit["method"], seed=seed)
            meta = meta.replace(temperature_tta=round(fit["temperature"], 4),
                                class_bias_tta=_rounded(fit["class_bias"]))  # fmt: skip
        params = calibration.calibration_of(meta, tta)  # what this evaluation applies
        test_probs, test_y = datasets.predict_split(model, meta, manifest, "test", batch_size, tta)
        if ext_test is not None and len(ext_test):
            ext_probs, _ = datasets.predict_split(model, meta, ext_test, "test", batch_size, tta)
            ext_p[name] = calibration.apply_temperature(ext_probs, *params)
        artifacts.write_metadata(Path(models_dir) / name, meta)
        val_p[name], test_p[name], metas[name] = (
            calibration.apply_temperature(val_probs, *params), test_probs,
            {**meta, "eval_temperature": params[0], "eval_class_bias": params[1]})  # fmt: skip
        labels = {"val": val_y, "test": test_y}
    y = labels["test"]
    results = {}
    for name in names:
        calibrated = calibration.apply_temperature(
            test_p[name], metas[name]["eval_temperature"], metas[name]["eval_class_bias"]
        )
        results[name] = {"temperature": metas[name]["eval_temperature"],
                         "calibration": metas[name]["calibration"],
                         "class_bias": metas[name]["eval_class_bias"],
                         "calibration_cv_nll": metas[name].get("calibration_cv_nll"),
                         "uncalibrated": classification_metrics(y, test_p[name]),
                         "metrics": classification_metrics(y, calibrated),
                         "ci": bootstrap_ci(y, calibrated, n_bootstrap, seed), "probs": calibrated}  # fmt: skip
    if use_ensemble and len(names) >= 2:
        weights = (calibration.fit_ensemble_weights([val_p[n] for n in names], labels["val"]) if fit_ensemble
                   else np.ones(len(names)) / len(names))  # fmt: skip
        probs = calibration.ensemble([results[n]["probs"] for n in names], weights)
        raw = calibration.ensemble([test_p[n] for n in names], weights)
        results["ensemble"] = {"temperature": None, "weights": dict(zip(names, weights.round(4).tolist())),
                               "uncalibrated": classification_metrics(y, raw),
                               "metrics": classification_metrics(y, probs),
                               "ci": bootstrap_ci(y, probs, n_bootstrap, seed), "probs": probs}  # fmt: skip
    if "ensemble" in results:
        # The ensemble earns its place only if it beats its best member on validation.
        val_acc = {n: float((val_p[n].argmax(1) == labels["val"]).mean()) for n in names}
        val_acc["ensemble"] = float((calibration.ensemble([val_p[n] for n in names], weights).argmax(1)
                                     == labels["val"]).mean())  # fmt: skip
        best = max(names, key=val_acc.get)
        earns = val_acc["ensemble"] > val_acc[best]
        results["ensemble"]["val_accuracy"] = {k: round(v, 4) for k, v in val_acc.items()}
        results["ensemble"]["default_model"] = "ensemble" if earns else best
        config.write_json_atomic(Path(models_dir) / "ensemble.json",
                                 {"members": names, "weights": results["ensemble"]["weights"],
                                  "fitted_on": "val" if fit_ensemble else "equal",
                                  "val_accuracy": results["ensemble"]["val_accuracy"],
                                  "beats_best_member_on_val": bool(earns),
                                  "default_model": "ensemble" if earns else best})  # fmt: skip
    probs = {n: r.pop("probs") for n, r in results.items()}
    if ext_p:
        if "ensemble" in results:
            ext_p["ensemble"] = calibration.ensemble([ext_p[n] for n in names],
                                         [results["ensemble"]["weights"][n] for n in names])  # fmt: skip
        groups = ext_test["group"].to_numpy()
        for name, p in ext_p.items():
            results[name]["external"] = external.tumour_sensitivity(
                p, groups, CLASS_NAMES, n_bootstrap, seed
            )
    report = {
        "leakage": gate, "class_names": list(CLASS_NAMES), "tta": tta, "n_bootstrap": n_bootstrap,
        "manifest_sha256": datasets.file_sha256(manifest_path),
        "split_sizes": manifest["split"].value_counts().to_dict(),
        "external_set": None if ext_test is None else {
            "what": "Br35H scans with a tumour (the notumor class's own source), held-out groups",
            "images": int(len(ext_test)), "groups": int(ext_test["group"].nunique())},
        "models": results, "mcnemar": pairwise_mcnemar(y, probs),
        "table": [reports.summary_row(n, r) for n, r in results.items()],
    }  # fmt: skip
    config.write_json_atomic(results_dir / "metrics.json", report)
    config.write_text_atomic(out / "comparison.md", reports.comparison_markdown(report))
    test_rows = manifest[manifest["split"] == "test"].reset_index(drop=True)
    for name, p in probs.items():
        plots.confusion_matrices(
            y, p.argmax(1), CLASS_NAMES, f"{tag}{name}", out / f"{name}_confusion.png"
        )
        plots.reliability_diagram(
            [reliability_table(test_p.get(name, p), y), reliability_table(p, y)],
            ["before calibration", "after"], f"{tag}{name}", out / f"{name}_reliability.png",
        )  # fmt: skip
        plots.error_gallery(
            test_rows, y, p, CLASS_NAMES, f"{tag}{name}", out / f"{name}_errors.png"
        )
    plots.roc_curves(y, probs, CLASS_NAMES, tag, out / "roc_curves.png")
    histories = {n: pd.read_csv(Path(models_dir) / n / "history.csv") for n in names
                 if (Path(models_dir) / n / "history.csv").is_file()}  # fmt: skip
    if histories:
        plots.all_training_curves(histories, out / "training_curves.png")
    for name in names:
        config.write_text_atomic(Path(models_dir) / name / "MODEL_CARD.md",
                                 reports.model_card(metas[name], results[name], report))  # fmt: skip
    return report
