"""The interactive demo (04_predict_interactive): upload or pick a scan, predict, explain, chat.

`PredictApp` holds the widgets and the logic; every handler can also be called from Python, so
tests drive it without a browser. `run_batch` is the non-interactive path papermill uses.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import ipywidgets as w
import numpy as np
import pandas as pd

from btc import datasets, dicom, explain, inputs, llm, plots, predict
from btc.config import CLASS_NAMES, MANIFEST_PATH, RESULTS_DIR, write_json_atomic

BOLD = " style='font-weight:bold'"
UPLOAD_ACCEPT = ".jpg,.jpeg,.png,.dcm,image/jpeg,image/png,application/dicom"
DISCLAIMER = "Research decision support — not a diagnosis. Discuss every scan with the care team."
OOD_BANNER = "This does not look like a brain MRI slice"
UNFAMILIAR_BANNER = "Not analysed: this image is unlike the brain MRI slices btc was trained on"
UNCERTAIN_BANNER = "Uncertain: refer to a radiologist"
_BANNER_STYLE = "padding:8px 10px;margin:4px 0;font-weight:bold;border-radius:4px;border:2px solid "


def status_banner(record: dict) -> str:
    """HTML for a prediction's status: a red banner for a rejected image, amber when uncertain."""
    status, note = record.get("status", "predicted"), record.get("status_note")
    conf = f"{record['confidence']:.1%}"
    threshold = (record.get("thresholds") or {}).get("confidence")
    if status == "out_of_distribution" and record.get("ood_kind") == "unfamiliar":
        why = record.get("ood_reason")
        named = f" ({why})" if why in llm.NAMED_REASONS else ""
        html_ = (
            f"<div class='btc-banner btc-ood btc-unfamiliar' style='{_BANNER_STYLE}#c00;"
            f"background:#f8d7da'>{UNFAMILIAR_BANNER}{html.escape(named)}.</div><div class='btc-result'>It may still "
            "be a brain MRI from another scanner, sequence, orientation or crop: ask a radiologist "
            f"to read it. <i>The classifier's output is not reliable for it and is shown only for "
            f"reference: {llm.CLASS_WORDS[record['class']]} {conf} (flagged).</i></div>"
        )
    elif status == "out_of_distribution":
        reason = f" ({record['ood_reason']})" if record.get("ood_reason") else ""
        html_ = (
            f"<div class='btc-banner btc-ood' style='{_BANNER_STYLE}#c00;background:#f8d7da'>"
            f"{OOD_BANNER}{html.escape(reason)} — it was not analysed.</div><div class='btc-result'>"
            f"<i>The classifier's output is not meaningful for this image and is shown only for "
            f"reference: {llm.CLASS_WORDS[record['class']]} {conf} (flagged).</i></div>"
        )
    elif status == "uncertain":
        limit = f", below the threshold {threshold:.1%}" if threshold is not None else ""
        html_ = (
            f"<div class='btc-banner btc-uncertain' style='{_BANNER_STYLE}#e0a800;background:#fff3cd'>"
            f"{UNCERTAIN_BANNER}.</div><div class='btc-result'>The model is not confident enough to "
            f"answer: most probable {llm.CLASS_WORDS[record['class']]} at {conf}{limit} fitted on "
            f"validation scans for a low error rate. <i>{DISCLAIMER}</i></div>"
        )
    else:
        words = llm.confidence_words(record["confidence"])
        html_ = (
            f"<div class='btc-result'><b>Prediction: {llm.CLASS_WORDS[record['class']]}</b> — "
            f"{conf} calibrated probability ({words} confidence); runner-up "
            f"{llm.CLASS_WORDS[record['runner_up']]} {record['runner_up_probability']:.1%}. "
            f"<i>{DISCLAIMER}</i></div>"
        )
    return html_ + (f"<small class='btc-status-note'>{html.escape(note)}</small>" if note else "")


def _scan_only(image: np.ndarray, title: str):
    fig, ax = plots.plt.subplots(figsize=(3.1, 3.3))
    ax.imshow(np.asarray(image)[..., 0], cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return fig


def probability_bars(probabilities: dict[str, float], predicted: str) -> str:
    """HTML bar chart of class probabilities (the predicted class highlighted)."""
    rows = []
    for cls in CLASS_NAMES:
        p = probabilities[cls]
        colour = "#d9534f" if cls == predicted else "#5b8def"
        rows.append(
            f"<div class='btc-bar' data-class='{cls}' style='display:flex;align-items:center;gap:6px'>"
            f"<span style='width:130px'>{llm.CLASS_WORDS[cls]}</span>"
            f"<span style='display:inline-block;height:14px;width:{max(p * 240, 1):.0f}px;"
            f"background:{colour}'></span><span class='btc-prob'>{p:.1%}</span></div>"
        )
    return "".join(rows)


def test_samples(
    manifest_path=MANIFEST_PATH, per_class: int = 3, seed: int = 0
) -> list[tuple[str, str]]:
    """`(label, path)` options of test-split images, `per_class` per class (empty if no manifest)."""

    if not Path(manifest_path).is_file():
        return []
    test = datasets.load_manifest(manifest_path, check_leakage=False).query("split == 'test'")
    picked = test.sample(frac=1.0, random_state=seed).groupby("class").head(per_class)
    picked = picked.sort_values(["class", "path"])
    return [(f"{r['class']} · {Path(r['path']).name}", r["path"]) for _, r in picked.iterrows()]


class PredictApp:
    """The ipywidgets app: FileUpload / sample picker → Predict → probabilities, map, explanation.

    Args:
        models: Output of `predict.load_models` (loaded when omitted).
        manifest_path: Manifest whose test split feeds the sample picker.
        method: Initial saliency method.
        colormap: Overlay colormap (also described to the LLM).
        gemini_model: Gemini model name.
        client: google-genai client (default from the environment; `None` → template text).
        model: The model selected at start (default: the ensemble when there are several).
    """

    def __init__(self, models=None, manifest_path=MANIFEST_PATH, method: str = explain.DEFAULT_METHOD,
                 colormap: str = "jet", gemini_model: str = llm.DEFAULT_MODEL, client=None,
                 model: str | None = None):  # fmt: skip
        self.models = models or predict.load_models()
        self.colormap, self.gemini_model = colormap, gemini_model
        self.client = client if client is not None else llm.make_client()
        self.upload = w.FileUpload(accept=UPLOAD_ACCEPT, multiple=True, description="Upload")
        self.sample = w.Dropdown(options=[("— pick a test image —", None), *test_samples(manifest_path)],
                                 description="Sample")  # fmt: skip
        options = [*self.models, predict.ENSEMBLE] if len(self.models) > 1 else list(self.models)
        self.model = w.Dropdown(options=options, value=model if model in options else options[-1],
                                description="Model")  # fmt: skip
        self.method = w.Dropdown(
            options=list(explain.METHODS), value=method, description="Saliency"
        )
        self.share = w.Checkbox(value=False, description="Share images with Gemini", indent=False)
        self.predict_button = w.Button(description="Predict", button_style="primary", icon="play")
        self.status = w.HTML()
        self.result = w.HTML()
        self.series = w.HTML()
        self.slice = w.Dropdown(options=[], description="Slice", layout=w.Layout(display="none"))
        self.records: list[dict] = []
        self._updating = False
        self.bars = w.HTML()
        self.overlay = w.Image(format="png", layout=w.Layout(max_width="640px"))
        self.explanation = w.HTML()
        self.question = w.Text(placeholder="Ask about this result…", layout=w.Layout(width="60%"))
        self.ask_button = w.Button(description="Ask", icon="comment")
        self.chat_log = w.HTML()
        self.history: list[dict] = []
        self.record: dict | None = None
        self.facts: llm.Facts | None = None
        self._source: tuple[str, list[tuple[str, object]]] | None = None  # (kind, [(name, src)])
        self.upload.observe(self._on_upload, names="value")
        self.sample.observe(self._on_sample, names="value")
        self.slice.observe(self._on_slice, names="value")
        self.predict_button.on_click(lambda _: self.run_prediction())
        self.ask_button.on_click(lambda _: self.ask())
        self.widget = w.VBox([
            w.HTML(f"<b>btc — brain MRI classifier</b><br><i>{DISCLAIMER}</i>"),
            w.HBox([self.upload, self.sample]), w.HBox([self.model, self.method]),
            w.HBox([self.predict_button, self.share]), self.status, self.series, self.slice,
            self.result, self.bars,
            self.overlay, self.explanation, w.HBox([self.question, self.ask_button]), self.chat_log,
        ])  # fmt: skip

    def _on_upload(self, change) -> None:
        files = change["new"]
        if not files:
            return
        accepted, rejected = [], []
        for item in files:
            name, content = item["name"], bytes(item["content"])
            try:
                if dicom.is_dicom(content):
                    dicom.read_dicom(content, name)
                else:
                    inputs.check_image_bytes(content, name)
                accepted.append((name, content))
            except (predict.ImageError, dicom.DicomError) as exc:
                rejected.append(
                    f"<span style='color:#c00'>Rejected: {html.escape(str(exc))}</span>"
                )
        self._source = ("upload", accepted) if accepted else None
        names = html.escape(", ".join(name for name, _ in accepted))
        done = [f"Uploaded {names} — press Predict."] if accepted else []
        self.status.value = "<br>".join(done + rejected)

    def _on_sample(self, change) -> None:
        if change["new"]:
            self._source = ("sample", [(Path(change["new"]).name, change["new"])])
            self.status.value = f"Selected {html.escape(Path(change['new']).name)} — press Predict."

    def run_prediction(self) -> dict | None:
        """Predict the current upload or sample; fill the result, bars, overlay and explanation."""
        if self._source is None:
            self.status.value = "Upload a JPEG/PNG scan or MR DICOM, or pick a test image first."
            return None
        self.status.value = "Predicting…"
        names, sources = zip(*self._source[1])
        try:
            records = predict.predict(list(sources), self.model.value, self.models, names=names)
        except predict.ImageError as exc:
            self.status.value = f"<span style='color:#c00'>{html.escape(str(exc))}</span>"
            return None
        self.records = dicom.sort_records(records) if len(records) > 1 else records
        key = self._show_series()
        return self.show_record(self.records[key])

    def _show_series(self) -> int:
        """Fill the slice table and picker for several slices; return the key slice's index."""
        self.series.value, self.slice.layout.display = "", "none"
        if len(self.records) < 2:
            return 0
        accepted = [r for r in self.records if r.get("status") != "out_of_distribution"]
        summary = dicom.series_summary(accepted or self.records)  # never a rejected slice's answer
        key = next(i for i, r in enumerate(self.records) if r["input"] == summary["key_slice"])
        answer = llm.CLASS_WORDS[summary["class"]]
        rows = "".join(
            f"<tr{BOLD if i == key else ''}><td>{i + 1}</td>"
            f"<td>{html.escape(r['input'])}</td><td>{llm.CLASS_WORDS[r['class']]}"
            f"{'' if r.get('status', 'predicted') == 'predicted' else ' (' + r['status'] + ')'}</td>"
            f"<td>{r['confidence']:.1%}</td><td>{1 - r['probabilities']['notumor']:.1%}</td></tr>"
            for i, r in enumerate(self.records)
        )
        numbers = {(r.get("dicom") or {}).get("series_number") for r in self.records}
        mixed = (
            f" <b>Warning:</b> these files come from {len(numbers)} series."
            if len(numbers) > 1
            else ""
        )
        self.series.value = (
            f"<div class='btc-series'><b>Series answer: {answer}</b> — slice {key + 1} has the "
            f"highest tumour probability ({summary['tumour_probability']:.1%}); "
            f"{summary['agreeing_slices']} of {summary['slices']} slices agree. The answer is "
            f"the most suspicious slice, not a validated series-level model.{mixed}</div>"
            "<table class='btc-slices'><tr><th>#</th><th>slice</th><th>class</th>"
            f"<th>confidence</th><th>tumour probability</th></tr>{rows}</table>"
        )
        self._updating = True
        self.slice.options = [(f"{i + 1}. {r['input']} — {r['class']}", i)
                              for i, r in enumerate(self.records)]  # fmt: skip
        self.slice.value, self.slice.layout.display, self._updating = key, None, False
        return key

    def _on_slice(self, change) -> None:
        if change["new"] is not None and not self._updating:
            self.show_record(self.records[change["new"]])

    def show_record(self, record: dict) -> dict:
        """Show one prediction: status banner, result, bars, saliency overlay and explanation.

        A rejected image (out of distribution) gets no saliency map and a fixed explanation.
        """
        self.record = record
        rejected = record.get("status") == "out_of_distribution"
        saliency = (
            None if rejected else predict.saliency_for(record, self.models, self.method.value)
        )
        described = {} if saliency is None else explain.describe_map(saliency)
        self.facts = llm.Facts.from_record(record, self.model.value, self.method.value, described,
                                           self.colormap)  # fmt: skip
        self.result.value = status_banner(record)
        self.bars.value = probability_bars(record["probabilities"], record["class"])
        title = (
            "unlike the training scans"
            if record.get("ood_kind") == "unfamiliar"
            else OOD_BANNER.lower()
        )
        fig = (_scan_only(record["image"], f"not analysed: {title}") if rejected else
               plots.saliency_overlay(record["image"], {self.method.value: saliency},
                                      f"{self.model.value}: {record['class']}", cmap=self.colormap))  # fmt: skip
        self.overlay.value = plots.to_png(fig)
        # burned-in annotation may carry patient text in the pixels: never send those images
        share = self.share.value and not (record.get("dicom") or {}).get("burned_in_annotation")
        images = [record["image"], saliency] if share else []
        result = llm.explain(self.facts, images, share, self.gemini_model, self.client)
        note = (
            f"<br><small>{html.escape(result.error)}</small>"
            if result.error and self.client
            else ""
        )
        self.explanation.value = (
            f"<div class='btc-explanation'>{html.escape(result.text)}{note}</div>"
        )
        self.history = []
        self.chat_log.value = ""
        self.status.value = "Done."
        return record

    def ask(self, question: str | None = None) -> str | None:
        """Send the chat question (or the text box's) about the current prediction."""
        question = (question if question is not None else self.question.value).strip()
        if not question:
            return None
        if self.facts is None:
            self.status.value = "Predict a scan before asking about it."
            return None
        answer, self.history = llm.chat(
            self.history, question, self.facts, self.gemini_model, self.client
        )
        self.question.value = ""
        self.chat_log.value = "".join(
            f"<p><b>{'You' if t['role'] == 'user' else 'Assistant'}:</b> {html.escape(t['text'])}</p>"
            for t in self.history
        )
        return answer


def run_batch(
    image_paths: list[str], model: str = predict.ENSEMBLE, method: str = explain.DEFAULT_METHOD,
    share_images: bool = False, gemini_model: str = llm.DEFAULT_MODEL, models=None,
    results_dir=RESULTS_DIR, client=None,
) -> pd.DataFrame:  # fmt: skip
    """Predict files non-interactively; write predictions, overlays and explanations.

    Writes `results/04_predict/predictions.json`, `<file>_<method>.png` overlays and
    `explanations.md`. Bad files are reported in the table and skipped; images rejected as out of
    distribution get no saliency map and the fixed refusal as their explanation.

    Returns:
        One row per file: file, ok, error, status, class, confidence, runner-up, explanation
        source.
    """
    models = models or predict.load_models()
    client = client if client is not None else llm.make_client()
    out = Path(results_dir) / "04_predict"
    records, texts = predict.predict_files(image_paths, model, models, keep_image=True), []
    for rec in records:
        if not rec["ok"] or "image" not in rec:  # failed, or a series summary
            continue
        image = rec.pop("image")
        described = {}
        if rec.get("status") != "out_of_distribution":
            saliency = predict.saliency_for({**rec, "image": image}, models, method)
            plots.saliency_overlay(image, {method: saliency},
                                   f"{rec['class']} ({rec['confidence']:.0%} calibrated) — {model}",
                                   path=out / f"{predict.record_stem(rec)}_{method}.png")  # fmt: skip
            plots.plt.close("all")
            described = explain.describe_map(saliency)
        facts = llm.Facts.from_record(rec, model, method, described)
        share = share_images and not (rec.get("dicom") or {}).get("burned_in_annotation")
        shared = [image, saliency] if share and described else []
        result = llm.explain(facts, shared, share, gemini_model, client)
        rec.update(
            explanation=result.text, explanation_source=result.source, saliency=facts.saliency
        )
        texts.append(f"## {rec.get('input') or Path(rec['file']).name}\n\n{result.text}\n")
    write_json_atomic(out / "predictions.json", json.loads(json.dumps(records, default=_plain)))
    from btc.config import write_text_atomic

    write_text_atomic(
        out / "explanations.md", f"# Explanations\n\n_{DISCLAIMER}_\n\n" + "\n".join(texts)
    )
    cols = ["file", "ok", "error", "status", "ood_kind", "class", "confidence", "runner_up",
            "explanation_source"]  # fmt: skip
    return pd.DataFrame(records).reindex(columns=cols)


def _plain(obj):
    return obj.tolist() if isinstance(obj, np.ndarray) else str(obj)
