"""Predict new scans with trained models: the training preprocessing, calibrated probabilities.

Images go through exactly the tf.data preprocessing of training (decode by content → grayscale
→ pad to square → resize → [0, 1] → 3 channels). Probabilities are temperature-scaled with the
temperature stored in each model's metadata; the ensemble is soft voting over the calibrated
members with the weights `03_evaluate` fitted (`models/ensemble.json`), else equal weights.
Every record carries a `status` (`btc.ood`): `"predicted"`, `"uncertain"` (refer to a
radiologist) or `"out_of_distribution"` (not analysed: the class is not meaningful; `ood_kind`
says whether it is not a brain MRI slice or only unlike the training scans).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from btc import artifacts, dicom, ood, oodct, oodfeatures
from btc.artifacts import run_model_names
from btc.calibration import calibrate, calibration_of, ensemble
from btc.config import CLASS_NAMES, MODELS_DIR
from btc.inputs import ImageError, expand_input, preprocess

ENSEMBLE = "ensemble"
RUNTIMES = ("keras", "litert")
SALIENCY_NEEDS_KERAS = "saliency maps need the .keras model: predict with runtime='keras'"


@dataclasses.dataclass
class LoadedModel:
    """A trained model with its metadata (class order, input size, temperature).

    `runtime="litert"` models are exported `.tflite` files (`btc.litert.LiteRTModel`) whose
    metadata is the export's sidecar; they predict like Keras models but have no saliency.
    """

    name: str
    model: object
    metadata: dict
    runtime: str = "keras"
    ood: dict = dataclasses.field(default_factory=lambda: {"available": False})
    cam_layer: str | None = None  # 03's choice (`saliency.json`); None: the last conv layer

    @functools.cached_property
    def feature_model(self):
        """The Keras model returning the features the OOD score needs (built once)."""
        return oodfeatures.feature_model(self.model, self.metadata, self.ood.get("generic"))

    @functools.cached_property
    def explainer(self):
        """The model's saliency `Explainer`, built once (its tf-keras-vis tools are reused).

        Raises:
            ValueError: For a LiteRT model (saliency needs the `.keras` model).
        """
        if self.runtime != "keras":
            raise ValueError(f"{self.name} runs on {self.runtime}: {SALIENCY_NEEDS_KERAS}")
        from btc import explain

        return explain.Explainer(self.model, self.cam_layer or self.metadata["gradcam_layer"])


def load_models(
    names: Sequence[str] | None = None, models_dir: str | Path = MODELS_DIR,
    runtime: str = "keras", quantize: str = "none",
) -> dict:  # fmt: skip
    """Load trained models (default: all in `models_dir`) with their metadata.

    Args:
        names: Model names (default: every trained, or for LiteRT every exported, model).
        models_dir: Models folder.
        runtime: `"keras"` (`model.keras`) or `"litert"` (the exported `.tflite` file).
        quantize: With LiteRT, which exported variant: `"none"`, `"float16"` or `"int8"`.

    Raises:
        FileNotFoundError: If no trained (or exported) model exists.
        ValueError: On a bad `runtime` or `quantize`, or a stale LiteRT export.
        ImportError: With LiteRT when `ai-edge-litert` is not installed.
    """
    from btc import config

    config.check_choice("runtime", runtime, RUNTIMES)
    if runtime == "litert":
        from btc import export, litert

        config.check_choice("quantize", quantize, export.QUANTIZE)
        litert.interpreter_class()  # the install message before anything else
        names = list(names or export.exported_model_names(quantize, models_dir))
        if not names:
            raise FileNotFoundError(f"No model exported with quantize={quantize!r} in "
                                    f"{str(models_dir)!r}: run `btc export` first")  # fmt: skip
        loaded = {n: LoadedModel(n, *export.load_litert(n, quantize, models_dir), runtime="litert")
                  for n in names}  # fmt: skip
    else:
        names = list(names or run_model_names(models_dir))
        if not names:
            raise FileNotFoundError(f"No trained model in {str(models_dir)!r}: run 02_train first")
        loaded = {n: LoadedModel(n, *artifacts.load_trained(n, models_dir)) for n in names}
    ensemble_thresholds = ood.load_ensemble(models_dir)
    cam_layers = _read_json(Path(models_dir) / "saliency.json").get("cam_layers", {})
    for m in loaded.values():  # OOD statistics, thresholds and CAM layer chosen by 03, if any
        m.ood = ood.load_stats(m.name, models_dir, runtime, calibration_of(m.metadata))
        m.ood["ensemble"] = ensemble_thresholds
        if runtime == "keras" and cam_layers.get(m.name) in {x.name for x in m.model.layers}:
            m.cam_layer = cam_layers[m.name]  # a stale name (model retrained since 03) is ignored
    return loaded


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def recommended(models_dir: str | Path = MODELS_DIR) -> dict[str, str]:
    """The model and saliency method 03 recommends for the demo.

    The model is the ensemble only if it beat its best member on validation (`ensemble.json`'s
    `default_model`); the method is the one that passed the sanity check (CI below 0.5) and
    pointed best at external tumour boxes (`saliency.json`), for the chosen model or, for the
    ensemble, its heaviest member. With a single trained model (a preset that trains one), that
    model. Without those files: the ensemble and Grad-CAM.

    Returns:
        `{"model": name, "saliency_method": method, "why": text}`.
    """
    from btc.explain import DEFAULT_METHOD

    choice = _read_json(Path(models_dir) / "ensemble.json")
    per_model = _read_json(Path(models_dir) / "saliency.json").get("recommended", {})
    model = choice.get("default_model", ENSEMBLE)
    weights = choice.get("weights") or {ENSEMBLE: 1.0}
    member = model if model != ENSEMBLE else max(weights, key=weights.get)
    trained = run_model_names(models_dir)
    if len(trained) == 1:
        model = member = trained[0]
        why = "the only model of the last training run"
    elif not choice:
        why = "no choice recorded by 03 yet"
    elif model == ENSEMBLE:
        why = "the ensemble beat its best member on validation"
    else:
        why = f"the ensemble did not beat {model} on validation"
    return {"model": model, "saliency_method": per_model.get(member) or DEFAULT_METHOD, "why": why}


def ensemble_weights(models: dict, models_dir: str | Path = MODELS_DIR) -> dict[str, float]:
    """Weights of the soft-voting ensemble: fitted ones when they cover these models."""
    path = Path(models_dir) / "ensemble.json"
    if path.is_file():
        fitted = json.loads(path.read_text(encoding="utf-8")).get("weights", {})
        if set(fitted) == set(models):
            return fitted
    return dict.fromkeys(models, 1.0 / len(models))


def _record(probs: np.ndarray, class_names: Sequence[str]) -> dict:
    order = np.argsort(-probs)
    return {
        "class": class_names[order[0]],
        "confidence": round(float(probs[order[0]]), 6),
        "runner_up": class_names[order[1]],
        "runner_up_probability": round(float(probs[order[1]]), 6),
        "probabilities": {c: round(float(p), 6) for c, p in zip(class_names, probs)},
    }


def predict(
    images: Sequence, model: str = ENSEMBLE, models: dict | None = None,
    models_dir: str | Path = MODELS_DIR, names: Sequence[str] | None = None,
    runtime: str | None = None, quantize: str = "none",
) -> list[dict]:  # fmt: skip
    """Predict scans with one model or the ensemble; calibrated probabilities per record.

    Args:
        images: Paths, bytes, PIL images or arrays (a single one is also accepted); DICOM
            files (one record per frame) and folders of DICOM slices (slice order) too.
        model: A trained model's name or `"ensemble"`.
        models: Output of `load_models` (loaded here when omitted).
        models_dir: Where models are loaded from.
        names: Display names of `images` (default: file names, else `"image <i>"`).
        runtime: `"keras"` or `"litert"` (exported `.tflite` files, same preprocessing and
            temperature); default: that of `models`, else `"keras"`.
        quantize: With LiteRT and no `models`, which exported variant to load (`"none"`,
            `"float16"`, `"int8"`).

    Returns:
        One dict per input: `class`, `confidence`, `runner_up`, `probabilities` (canonical
        class order), `model`, `per_model` (each member's record), `image` (the preprocessed
        array of the first model's size), `input` (file name or index; `file.dcm#frame3`
        for a frame) and, for DICOM, `dicom` (technical facts only, no patient data); `runtime`,
        and for LiteRT `quantize` and `saliency_note` (maps need the `.keras` model). Every
        record (and member record) has `status` (`"predicted"`, `"uncertain"` or
        `"out_of_distribution"`: the class is then reported but not meaningful), `ood_score`,
        `ood_kind` (when rejected: `"not_brain_mri"`, or `"unfamiliar"` for an image that may
        be a brain MRI from elsewhere), `thresholds` (OOD, `ood_far` and confidence, fitted on
        validation), `ood_reason` and `status_note`
        (e.g. OOD checking unavailable for models without fitted statistics: status
        `"predicted"`; LiteRT: status from the confidence threshold only).

    Raises:
        ValueError: On an unknown model name, or a `runtime` that `models` do not have.
        ImageError: On a bad image (use `predict_files` to continue past bad files).
    """
    if isinstance(images, str | Path | bytes | Image.Image | np.ndarray) and not (
        isinstance(images, np.ndarray) and images.ndim == 4
    ):
        images = [images]
    models = models or load_models(models_dir=models_dir, runtime=runtime or "keras",
                                    quantize=quantize)  # fmt: skip
    members = list(models) if model == ENSEMBLE else [model]
    if model != ENSEMBLE and model not in models:
        raise ValueError(f"`model` must be one of {[*models, ENSEMBLE]}. Received: model={model!r}")
    runtimes = {models[n].runtime for n in members}
    if len(runtimes) > 1 or (runtime is not None and runtimes != {runtime}):
        raise ValueError(f"`runtime` must match the loaded models' {sorted(runtimes)}. "
                         f"Received: runtime={runtime!r}")  # fmt: skip
    runtime = runtimes.pop()
    extra = {"runtime": runtime}
    if runtime == "litert":
        variants = sorted({models[n].metadata["quantize"] for n in members})
        extra.update(quantize="+".join(variants), saliency_note=SALIENCY_NEEDS_KERAS)
    encoded = [item for i, img in enumerate(images)
               for item in expand_input(img, names[i] if names else f"image {i}")]  # fmt: skip
    per_model: dict[str, np.ndarray] = {}
    scores: dict[str, np.ndarray] = {}  # each member's scaled OOD feature score
    cts: dict[str, np.ndarray] = {}  # each member's CT checks (`ood.ct_flags`)
    arrays: dict[int, np.ndarray] = {}
    uses_skull = any((models[n].ood.get("info") or {}).get("skull_check") for n in members)
    skulls = [oodct.skull_flag(raw) for raw, *_ in encoded] if runtime == "keras" and uses_skull else None  # fmt: skip
    for name in members:
        meta, loaded = models[name].metadata, models[name]
        size = meta["image_size"]
        if size not in arrays:
            arrays[size] = np.stack([preprocess(raw, size) for raw, *_ in encoded])
        if runtime == "keras" and loaded.ood.get("available"):
            out = oodfeatures.forward(loaded.model, loaded.feature_model, arrays[size])  # one pass
            raw_probs, scores[name] = out["probs"], ood.feature_score(out, loaded.ood)
            cts[name] = ood.ct_flags(out, loaded.ood, skulls)
        else:
            batches = [arrays[size][i : i + 64] for i in range(0, len(arrays[size]), 64)]
            # predict_on_batch runs the compiled graph: ~10 ms for one image vs ~130 ms eager
            raw_probs = np.concatenate([loaded.model.predict_on_batch(b) for b in batches])
        probs = calibrate(raw_probs, meta)
        order = [meta["class_names"].index(c) for c in CLASS_NAMES]  # canonical order
        per_model[name] = probs[:, order]
    weights = ensemble_weights({n: models[n] for n in members}, models_dir)
    combined = ensemble([per_model[n] for n in members], [weights[n] for n in members])
    first = arrays[next(iter(arrays))]
    colours = [ood.colour_fraction(raw) for raw, *_ in encoded]
    records = []
    for i, (_, name, info) in enumerate(encoded):
        member_records = {n: _record(per_model[n][i], CLASS_NAMES) for n in members}
        for n, rec in member_records.items():
            stats = models[n].ood
            rec.update(ood.assess(stats.get("info"), rec["confidence"],
                                  scores[n][i] if n in scores else None, colours[i], stats.get("note"),
                                  bool(cts[n][i]) if n in cts else False))  # fmt: skip
        top = _record(combined[i], CLASS_NAMES)
        if model != ENSEMBLE or len(members) == 1:  # an ensemble of one is that model
            top.update(member_records[members[0]])
        else:
            ct = any(bool(cts[n][i]) for n in cts)  # any member's CT check refuses
            top.update(
                _ensemble_status(models, members, scores, i, top["confidence"], colours[i], ct)
            )
        records.append({**top, "model": model, "input": name, "per_model": member_records,
                        "image": first[i], **extra, **({"dicom": info} if info else {})})  # fmt: skip
    return records


def _ensemble_status(models, members, scores, i, confidence, colour, ct=False) -> dict:
    """The ensemble's status fields: its own thresholds, the mean of its members' scores, the CT
    check of any member."""
    missing = [models[n].ood.get("note") for n in members if not models[n].ood.get("available")]
    info = models[members[0]].ood.get("ensemble")
    info = None if missing or not info or sorted(info["members"]) != sorted(members) else info
    note = "; ".join(missing) or (None if info else "OOD checking unavailable: no thresholds "
                                  "fitted for this ensemble (run 03_evaluate)")  # fmt: skip
    feature = (
        float(np.mean([scores[n][i] for n in members])) if len(scores) == len(members) else None
    )
    return ood.assess(
        info, confidence, feature, colour, note or models[members[0]].ood.get("note"), ct
    )


def predict_files(paths: Sequence[str | Path], model: str = ENSEMBLE, models: dict | None = None,
                  models_dir: str | Path = MODELS_DIR, keep_image: bool = False,
                  runtime: str = "keras", quantize: str = "none") -> list[dict]:  # fmt: skip
    """Predict files one record each; a bad file gives `{"ok": false, "error": ...}`.

    A multi-frame DICOM gives a record per frame, a folder a record per file with its DICOM
    slices in series order; each series (or multi-frame file) is followed by a `kind="series"`
    record (`btc.dicom.series_summary` over the slices not rejected as out of distribution,
    with the key slice's `status`). `keep_image=True` keeps each record's preprocessed
    `image` (for saliency maps). `runtime` and `quantize` choose the models loaded when
    `models` is omitted (see `load_models`).
    """
    models = models or load_models(models_dir=models_dir, runtime=runtime, quantize=quantize)

    def predict_one(path) -> list[dict]:
        try:
            recs = predict([path], model, models, models_dir)
        except ImageError as exc:
            return [{"file": str(path), "ok": False, "error": str(exc)}]
        for rec in recs if not keep_image else ():
            rec.pop("image")
        return [{"file": str(path), "ok": True, "error": None, **rec} for rec in recs]

    records = []
    for path in paths:
        groups = dicom.find_series(path) if Path(path).is_dir() else [(None, [path])]
        if not groups:
            records.append({"file": str(path), "ok": False, "error": f"{path}: empty folder"})
        for label, files in groups:
            slices = [rec for f in files for rec in predict_one(f)]
            records += slices
            if label is not None or len(slices) > 1:
                label = label or Path(path).name
                for rec in slices:
                    rec["series"] = label
                records.append({"file": str(path), **_series_record(slices, label), "model": model})
    return records


def _series_record(slices: list[dict], label: str) -> dict:
    """The series summary from the slices not rejected as out of distribution, with a status."""
    rejected = [r for r in slices if r.get("status") == "out_of_distribution"]
    accepted = [r for r in slices if r.get("status") != "out_of_distribution"]
    summary = dicom.series_summary(accepted or slices, label)
    key = next(
        (r for r in slices if summary.get("key_slice") == r.get("input") and r.get("ok")), {}
    )
    status = "out_of_distribution" if not accepted and rejected else key.get("status")
    kinds = {r.get("ood_kind") for r in rejected}  # "not a brain" only if every slice is
    kind = (
        ("unfamiliar" if "unfamiliar" in kinds else "not_brain_mri")
        if not accepted and rejected
        else None
    )
    return {"ok": summary["ok"], "error": summary["error"], **summary,
            "rejected_slices": len(rejected), **({"status": status} if status else {}),
            **({"ood_kind": kind} if kind else {}),
            "thresholds": key.get("thresholds")}  # fmt: skip


def record_stem(record: dict) -> str:
    """A file-name stem for a record's outputs: `scan`, `cine_frame3`, `series4_IM0001`."""
    base, _, frame = str(record.get("input") or record["file"]).partition("#")
    stem = Path(base).stem + (f"_{frame}" if frame else "")
    series = str(record.get("series") or "").replace(" ", "")
    return f"{series}_{stem}" if series and not frame else stem


def saliency_for(record: dict, models: dict, method: str = "gradcam") -> np.ndarray:
    """The saliency map of a prediction record (mean over ensemble members) at its image size."""
    import tensorflow as tf

    size = record["image"].shape[:2]
    maps = []
    for name in record["per_model"]:
        loaded = models[name]
        image = record["image"]
        if image.shape[0] != loaded.metadata["image_size"]:
            image = tf.image.resize(image, [loaded.metadata["image_size"]] * 2).numpy()
        target = loaded.metadata["class_names"].index(record["class"])
        m = loaded.explainer(image[None], [target], method)[0]
        if m.shape != size:
            m = tf.image.resize(m[..., None], size).numpy()[..., 0]
        maps.append(m)
    return np.clip(np.mean(maps, axis=0), 0, 1)
