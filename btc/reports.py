"""Reports of evaluation in words and tables: the model comparison, model cards, a plain summary.

Pure formatting of the dicts `btc.evaluate.evaluate` returns (no TensorFlow, no model loading),
so the README generator and the notebooks share one wording.
"""

from __future__ import annotations

import pandas as pd

from btc.oodfeatures import METHODS as OOD_METHODS


def summary_row(name: str, result: dict) -> dict:
    m, ci = result["metrics"], result["ci"]
    row = {"model": name, "accuracy": m["accuracy"], "accuracy_ci": ci["accuracy"],
           "f1_macro": m["f1_macro"], "f1_macro_ci": ci["f1_macro"],
           "balanced_accuracy": m["balanced_accuracy"], "mcc": m["mcc"],
           "roc_auc_macro": m["roc_auc_macro"], "ece_before": result["uncalibrated"]["ece"],
           "ece_after": m["ece"], "temperature": result.get("temperature"),
           "class_bias": result.get("class_bias"),
           "tumour_called_no_tumour_rate": m.get("tumour_called_no_tumour_rate")}  # fmt: skip
    for cls, values in m["per_class"].items():
        row[f"sensitivity_{cls}"] = values["sensitivity"]
        row[f"sensitivity_{cls}_ci"] = ci["sensitivity"][cls]
    ext = result.get("external") or {}
    row["external_sensitivity"], row["external_sensitivity_ci"] = (
        ext.get("sensitivity"),
        ext.get("ci"),
    )
    return row


def _fmt(value, ci=None) -> str:
    if value is None:
        return "–"
    text = f"{100 * value:.1f}"
    return f"{text} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else text


def _calibration_cell(row: dict) -> str:
    if row["temperature"] is None:
        return "–"
    if row.get("class_bias") is None:
        return f"T {row['temperature']:.2f}"
    return f"T {row['temperature']:.2f}, bias " + "/".join(f"{b:+.1f}" for b in row["class_bias"])


def comparison_markdown(report: dict) -> str:
    """Markdown table of every evaluated model and the ensemble (percent, 95 % CI)."""
    leaky = "LEAKY — " if report["leakage"]["leaky"] else ""
    classes = report["class_names"]
    head = ["model", "accuracy", "macro-F1"] + [f"sens. {c}" for c in classes] + [
        "ECE before → after", "calibration", "external tumour sens."]  # fmt: skip
    lines = [f"{leaky}Test split: {report['split_sizes']['test']} images, 95 % bootstrap CIs "
             f"({report['n_bootstrap']} resamples); numbers in %.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for row in report["table"]:
        cells = [row["model"], _fmt(row["accuracy"], row["accuracy_ci"]),
                 _fmt(row["f1_macro"], row["f1_macro_ci"])]  # fmt: skip
        cells += [_fmt(row[f"sensitivity_{c}"], row[f"sensitivity_{c}_ci"]) for c in classes]
        cells += [f"{_fmt(row['ece_before'])} → {_fmt(row['ece_after'])}",
                  _calibration_cell(row),
                  _fmt(row.get("external_sensitivity"), row.get("external_sensitivity_ci"))]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    ext = report.get("external_set")
    if ext:
        lines += ["", f"External: {ext['what']} — {ext['images']} images in {ext['groups']} "
                      "near-copy groups; sensitivity = share not called 'no tumour', CI resamples "
                      "whole groups. The internal split shares its sources with training and "
                      "cannot reveal a source shortcut; the external set can."]  # fmt: skip
    if any(row.get("class_bias") for row in report["table"]):
        lines += ["", "Calibration: T = temperature; bias = vector scaling's bias per class ("
                      + "/".join(classes) + "), fitted on validation where its cross-validated "
                      "NLL beat temperature scaling alone; the biases can change the predicted "
                      "class."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _calibration_sentence(result: dict) -> str:
    """How the model was calibrated, for its card."""
    if result.get("calibration") == "vector":
        bias = ", ".join(f"{b:+.2f}" for b in result["class_bias"])
        how = (f"Vector scaling (temperature {result['temperature']} and one bias per class, "
               f"[{bias}] in class order)")  # fmt: skip
    else:
        how = f"Temperature scaling (temperature {result['temperature']})"
    cv = result.get("calibration_cv_nll")
    chosen = "" if not cv else (f"; chosen by cross-validated validation NLL (temperature "
                                f"{cv['temperature']:.3f}, vector {cv['vector']:.3f})")  # fmt: skip
    return f"{how}, fitted on the validation split{chosen}."


def model_card(meta: dict, result: dict, report: dict) -> str:
    """Markdown model card: intended use, data, metrics with CIs, calibration, limitations."""
    m, ci, u = result["metrics"], result["ci"], result["uncalibrated"]
    leaky = "\n> **LEAKY EVALUATION** — the test split shares duplicates with training.\n" if report[
        "leakage"]["leaky"] else ""  # fmt: skip
    sens = "\n".join(
        f"| {c} | {_fmt(v['sensitivity'], ci['sensitivity'][c])} | {_fmt(v['specificity'])} | "
        f"{_fmt(v['precision'])} | {_fmt(v['f1'])} | {v['support']} |"
        for c, v in m["per_class"].items()
    )
    cfg = meta["config"]
    return f"""# Model card — {meta["name"]} ({meta["model"]})
{leaky}
## Intended use
Research decision support for classifying 2-D brain MRI slices into {", ".join(meta["class_names"])}.
**Not a diagnostic device**: not clinically validated; a radiologist's reading always prevails.
Not for treatment decisions, other modalities, 3-D volumes, or paediatric populations.

## Model
Registry model `{meta["model"]}`, {meta["params_total"]:,} parameters, input {meta["image_size"]} px
({meta["input"]}; normalisation inside the graph: {meta["normalisation"]}). Weights: `{cfg["weights"]}`.
Trained {meta["epochs_run"]} epochs ({meta["training_seconds"] / 60:.1f} min), phases start at epochs
{meta["phase_starts"]}; best validation accuracy {_fmt(meta["best_val_accuracy"])} %.
Versions: {", ".join(f"{k} {v}" for k, v in meta["versions"].items())}.

## Data and split
Kaggle "Brain Tumor MRI Dataset" (Nickparvar; figshare, SARTAJ and Br35H sources). Exact, near and
mirrored duplicates were grouped and every group kept in one split; images converted to grayscale
to remove the colour-mode shortcut. Train {meta["train_images"]}, validation {meta["val_images"]},
test {report["split_sizes"].get("test")} images. Manifest sha256 `{report["manifest_sha256"][:16]}…`.
Leakage check: {report["leakage"]["test_images_leaked"]} test images share a group with train/val.
External training images (Br35H tumour scans as "tumour, type unknown"): {meta.get("external_train_images", 0)}.

## External validation (the notumor class's own source, held-out groups)
{_external_line(result.get("external"))}

## Test metrics (95 % bootstrap CI, {report["n_bootstrap"]} resamples), in %
Accuracy {_fmt(m["accuracy"], ci["accuracy"])}; macro-F1 {_fmt(m["f1_macro"], ci["f1_macro"])};
balanced accuracy {_fmt(m["balanced_accuracy"])}; MCC {m["mcc"]:.3f}; macro ROC-AUC {m["roc_auc_macro"]:.3f}.
Tumours called "no tumour": {_fmt(m.get("tumour_called_no_tumour_rate"))} %.

| class | sensitivity | specificity | precision | F1 | n |
|---|---|---|---|---|---|
{sens}

## Calibration
{_calibration_sentence(result)} ECE (15 bins)
{_fmt(u["ece"])} % → {_fmt(m["ece"])} %; NLL {u["nll"]:.3f} → {m["nll"]:.3f}; Brier {u["brier"]:.3f} → {m["brier"]:.3f}.

## Limitations
- No patient identifiers in the source data: neighbouring slices of one patient may still sit in
  different splits; near-duplicate grouping reduces but cannot exclude this.
- Three public sources with different scanners and protocols; performance on other sites is unknown.
- A handful of labels in the source set may be wrong; groups with conflicting labels were dropped.
- Single 2-D slices only; no clinical context.

## Ethical considerations
Errors have asymmetric costs: a missed tumour (see the "no tumour" rate above) is worse than a false
alarm. Show calibrated confidence, not only the top class. Saliency maps show what the model used,
not where the tumour is. Patient data must not leave the institution without consent.
"""


def _external_line(ext: dict | None) -> str:
    if not ext:
        return (
            "No external set was prepared (01 found no `external_dir`): source shortcuts untested."
        )
    return (f"Br35H tumour scans: {ext['images']} images in {ext['groups']} near-copy groups; "
            f"tumour sensitivity {_fmt(ext['sensitivity'], ext['ci'])} % (group-bootstrap 95 % CI); "
            f"called {ext['called']}.")  # fmt: skip


def plain_summary(report: dict) -> str:
    """A short plain-language paragraph per model, for clinicians and reviewers."""
    leaky = (
        "LEAKY evaluation — these numbers overstate performance. "
        if report["leakage"]["leaky"]
        else ""
    )
    lines = []
    for row in report["table"]:
        worst = min(report["class_names"], key=lambda c: row[f"sensitivity_{c}"] or 0)
        missed = row["tumour_called_no_tumour_rate"]
        lines.append(
            f"- **{row['model']}**: {leaky}correct on {_fmt(row['accuracy'])} % of "
            f"{report['split_sizes']['test']} unseen test images (95 % CI "
            f"{_fmt(row['accuracy_ci'][0])}–{_fmt(row['accuracy_ci'][1])} %). It misses "
            f"{worst} most often (sensitivity {_fmt(row[f'sensitivity_{worst}'])} %), and calls "
            f"{_fmt(missed)} % of tumours 'no tumour'. After calibration its confidence is off by "
            f"{_fmt(row['ece_after'])} points on average (ECE; {_fmt(row['ece_before'])} before)."
        )
    return "\n".join(lines)


# --- out-of-distribution rejection and selective prediction (btc.oodeval) ------------------------


def _pct(value, ci=None) -> str:
    if value is None:
        return "–"
    shown = ci and None not in ci
    return f"{100 * value:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if shown else "")


def _row(cells) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def _table(head: list[str], rows: list[list]) -> list[str]:
    return [_row(head), "|---" * len(head) + "|", *map(_row, rows)]


def ood_markdown(report: dict) -> str:
    """Markdown tables of `fit_and_report`: methods tried, rejection per kind, selective prediction."""
    models = report["models"]
    rows = []
    for name, e in models.items():
        if e.get("selection_auroc"):
            balanced = e.get("selection_kind_auroc") or {}
            shown = {m: "–" if m not in e["selection_auroc"] else f"{e['selection_auroc'][m]:.3f}"
                     + (f" / {e['report_auroc'][m]:.3f}" if e.get("report_auroc") else "")
                     + (f" · {balanced[m]:.3f}" if m in balanced else "")
                     for m in OOD_METHODS}  # fmt: skip
            rows.append([name, *(f"**{v}**" if m == e["method"] else v for m, v in shown.items())])
    lines = [f"Methods tried: AUROC on the select / report part · kind-balanced AUROC on the "
             f"select part (it chooses; chosen in bold). Select part: "
             f"{report['parts']['select']}. Report part: {report['parts']['report']}.", "",
             *_table(["model", *OOD_METHODS], rows)]  # fmt: skip
    kinds = sorted({k for e in models.values() for k, p in e["rejected_by_kind"].items() if "report" in p})  # fmt: skip
    rows = []
    for name, e in models.items():
        r, test = e.get("report") or {}, e["test_rejected"]
        ext = e.get("external_rejected") or {}
        ext_cells = [
            _pct(ext[k]["rate"], ext[k]["ci"]) if k in ext else "–" for k in ("test", "all")
        ]
        parts = [e["rejected_by_kind"].get(k, {}).get("report") for k in kinds]
        rows.append([name, _pct(r.get("auroc"), r.get("auroc_ci")),
                     _pct(r.get("fpr_at_95_tpr"), r.get("fpr_at_95_tpr_ci")),
                     _pct(test["rate"], test["ci"]), *ext_cells,
                     *(f"{p['count']}/{p['n']}" if p else "–" for p in parts)])  # fmt: skip
    lines += ["", "OOD rejection on the report part, % [95 % CI]; per kind: rejected / images "
              "(brain* kinds must be accepted):", "",
              *_table(["model", "AUROC", "FPR at 95 % TPR", "test rejected", "Br35H test groups rejected",
                       "Br35H all rejected", *kinds], rows)]  # fmt: skip
    every = sorted({k for e in models.values() for k in e["rejected_by_kind"]})
    rows = [[name, *(f"{p['all']['count']}/{p['all']['n']}" if (p := e["rejected_by_kind"].get(k)) else "–"
                     for k in every)] for name, e in models.items()]  # fmt: skip
    lines += ["", "Rejected / images per kind, select and report parts together (the select part "
              "chose the method; brain* kinds must be accepted):", "", *_table(["model", *every], rows)]  # fmt: skip
    if all("not_brain" in e for e in models.values()):  # `ood_kind`: what a rejection says
        rows = [[name, f"{e['ood_far']:.2f}", *(f"{e['not_brain'][s]['count']}/{e['not_brain'][s]['n']}" if s in e["not_brain"] else "–" for s in ("test", "ext_test")),
                 *(f"{p['not_brain']['count']}/{p['all']['count']}" if (p := e["rejected_by_kind"].get(k)) else "–" for k in every)]
                for name, e in models.items()]  # fmt: skip
        lines += ["", "What a rejection says: \"not a brain MRI\" (CT-like with features beyond the threshold, a colour picture, or features "
                  "above `ood_far`, the highest score of any brain MRI the fit knows) or only \"unlike the training scans\" (a CT check "
                  "alone: \"the skull is bright, as on a CT scan\"). Test and Br35H scans called not a brain, and per kind: said not a brain / rejected:",
                  "", *_table(["model", "ood_far", "test", "Br35H test", *every], rows)]  # fmt: skip
    files = [i for i in report["images"] if "dicom_refused" in i and "rejected" in i]
    if files:  # the bundled DICOM files: what `btc predict` does with the file itself
        refused = {k: f"{sum(bool(i['dicom_refused']) for i in files if i['kind'] == k)}/{sum(i['kind'] == k for i in files)}"
                   for k in sorted({i["kind"] for i in files})}  # fmt: skip
        passed = {n: [i["name"] for i in files if i["dicom_refused"] and not i["rejected"][n]] for n in models}  # fmt: skip
        lines += ["", f"The {len(files)} bundled DICOM files above are scored as PNG pixels (an exported "
                  "slice). Given the DICOM file, `btc predict` refuses by its header (modality, body part) "
                  f"{', '.join(f'{k} {v}' for k, v in refused.items())}; among them, accepted by the pixel "
                  "checks: " + "; ".join(f"{n}: {', '.join(v) or 'none'}" for n, v in passed.items()) + "."]  # fmt: skip
    checked = {n: e["ct_check"] for n, e in models.items() if e.get("ct_check")}
    skulls = {n: e["skull_check"] | {"part": "pixels: skull ring"} for n, e in models.items() if e.get("skull_check")}  # fmt: skip
    if checked or skulls:
        flagged = {n: {k: sum(i["ct_like"].get(n, False) for i in report["images"] if i["kind"] == k
                           and "ct_like" in i) for k in every} for n in models}  # fmt: skip
        rows = [[n, c["part"], *(_pct(c["flagged"].get(s)) for s in ("val", "test", "ext_test")),
                 "(either: above)" if c is skulls.get(n) and n in checked else
                 ", ".join(f"{k} {v}" for k, v in flagged[n].items() if v) or "none"]
                for n, c in [*checked.items(), *skulls.items()]]  # fmt: skip
        if "ensemble" in models:
            rows.append(["ensemble", "any member", "", "", "", ", ".join(f"{k} {v}" for k, v in flagged["ensemble"].items() if v) or "none"])  # fmt: skip
        lines += ["", "CT checks (`btc.oodct`: nearer to simulated CT than to every brain cluster, or "
                  "a CT's skull in the pixels, refuses like colour): % of the brain scans each "
                  "flags, and images flagged per kind by either:",
                  "", *_table(["model", "features", "val", "test", "Br35H test", "images flagged"], rows)]  # fmt: skip
    # turned copies (`name@rot90`) are counted in the per-kind tables (`brain_mri_turned`)
    held = [i for i in report["images"] if i.get("held_out") and "rejected" in i and "@" not in i["name"]]  # fmt: skip
    if held:
        rows = [[i["name"], i["kind"], i["expect"],
                 *(f"{'accepted' if not i['rejected'][n] else 'rejected, CT-like' if i.get('ct_like', {}).get(n) else 'rejected, ' + (i.get('ood_kind') or {}).get(n, 'out of distribution').replace('_', ' ')} ({i['scores'][n]:.2f})" for n in models)]
                for i in held]  # fmt: skip
        lines += ["", "Held-out images from Debian packages (sources nothing was chosen on), per image: "
                  "the answer (OOD score):", "",
                  *_table(["image", "kind", "wanted", *(f"{n} (threshold {e['ood_threshold']:.2f})"
                                                        for n, e in models.items())], rows)]  # fmt: skip
    rows = []
    for name, e in models.items():
        s, v, n = e["selective"], e["val_selective"], e["status_counts"]
        rows.append([name, f"{e['confidence_threshold']:.3f}" if e["target_met"] else "not met",
                     f"{_pct(v['risk'])} ({_pct(v['risk_upper'])})", _pct(s["coverage"], s["coverage_ci"]),
                     _pct(s["accuracy_at_coverage"], s["accuracy_at_coverage_ci"]),
                     f"{s['aurc']:.4f} [{s['aurc_ci'][0]:.4f}, {s['aurc_ci'][1]:.4f}]",
                     _pct(s["coverage_at_99_accuracy"], s["coverage_at_99_accuracy_ci"]),
                     f"{n['predicted']} / {n['uncertain']} / {n['out_of_distribution']}"])  # fmt: skip
    head = ["model", "confidence threshold", "val error (95 % upper)", "coverage",
            "accuracy at coverage", "AURC", "coverage at 99 % accuracy", "predicted / uncertain / OOD"]  # fmt: skip
    lines += ["", f"Selective prediction on the test split (confidence threshold fitted on validation "
              f"for ≤ {_pct(report['target_error'])} % errors), % [95 % CI]:", "", *_table(head, rows)]  # fmt: skip
    if report.get("note"):
        lines += ["", f"_{report['note']}_"]
    return "\n".join(lines) + "\n"


def training_summary(metadatas: list[dict]) -> pd.DataFrame:
    """One row per trained model: parameters, epochs, time and best validation metrics."""
    rows = [{"model": m["name"], "params": m["params_total"], "image_size": m["image_size"],
             "epochs": m["epochs_run"], "minutes": round(m["training_seconds"] / 60, 1),
             "best_val_accuracy": round(m["best_val_accuracy"], 4),
             "best_val_loss": round(m["best_val_loss"], 4)} for m in metadatas]  # fmt: skip
    return pd.DataFrame(rows).set_index("model")
