"""Edge deployment: export trained models to LiteRT (`.tflite`) files and run them with LiteRT.

`export_tflite` converts `models/<name>/model.keras` with TensorFlow's converter. It goes through
a SavedModel written by `keras.Model.export`, which freezes the weights and lets the converter
fold batch normalisation into the convolutions. Three variants, each next to a JSON sidecar
(`<file>.json`):

| `quantize` | file                   | weights | activations | input / output    |
|------------|------------------------|---------|-------------|-------------------|
| `none`     | `model.tflite`         | float32 | float32     | float32 / float32 |
| `float16`  | `model.float16.tflite` | float16 | float32     | float32 / float32 |
| `int8`     | `model.int8.tflite`    | int8    | int8        | int8 / int8       |

`int8` is full-integer post-training quantisation, after two exact-or-corrective changes to a
copy of the weights (`btc.quantization`: the gray input folded into the first convolution, and
the mean shift of int8 weight rounding cancelled): activation ranges are calibrated on
train-split images that went through btc's own preprocessing (`btc.datasets.make_dataset`, no
augmentation), and only int8 builtin ops are allowed, so the file also runs on integer-only
accelerators. Its input and output are int8 too: the [0, 1] image is quantised with scale ~1/255
and zero point -128 (lossless for 8-bit pixels) and the softmax comes out with scale 1/256 and
zero point -128. `LiteRTModel` applies both from the file's own quantisation parameters, so
callers always pass [0, 1] float32 images and get float32 probabilities, whatever the variant.
The runtime (`LiteRTModel`, `interpreter_class`) lives in `btc.litert`; `load_litert` here pairs
it with the checked sidecar.

Files have a static batch of 1 (what edge delegates expect); `LiteRTModel` loops over a batch.
Running them needs LiteRT (`pip install 'btc[litert]'`), never TensorFlow's deprecated
interpreter. Loading refuses an export whose source `model.keras` or temperature has changed
since it was written: re-run `btc export` then.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from btc import artifacts, datasets, quantization
from btc.calibration import calibration_of, same_calibration
from btc.config import (
    MANIFEST_PATH,
    MODELS_DIR,
    atomic_path,
    check_choice,
    check_range,
    write_json_atomic,
)
from btc.litert import LiteRTModel, interpreter_class

log = logging.getLogger(__name__)

FORMATS = ("tflite",)
QUANTIZE = ("none", "float16", "int8")


class ConversionError(RuntimeError):
    """TensorFlow's converter could not convert a model (the message names the ops)."""


def tflite_path(name: str, quantize: str = "none", models_dir: str | Path = MODELS_DIR) -> Path:
    """Return `models_dir/<name>/model[.<quantize>].tflite`.

    Args:
        name: Trained model name.
        quantize: One of `QUANTIZE`.
        models_dir: Models folder.

    Returns:
        Path of the exported file (which may not exist yet).

    Raises:
        ValueError: On an unknown `quantize`.
    """
    check_choice("quantize", quantize, QUANTIZE)
    suffix = "" if quantize == "none" else f".{quantize}"
    return Path(models_dir) / name / f"model{suffix}.tflite"


def sidecar_path(path: str | Path) -> Path:
    """Return the JSON metadata file that describes a `.tflite` file (`<file>.json`)."""
    return Path(f"{path}.json")


def calibration_sample(
    manifest: pd.DataFrame | str | Path, count: int = 300, seed: int = 42
) -> pd.DataFrame:
    """A seeded random sample of a manifest's train split, for int8 calibration.

    Args:
        manifest: Manifest DataFrame or CSV path.
        count: Images to sample (all train images when there are fewer).
        seed: Sampling seed.

    Returns:
        The sampled manifest rows.

    Raises:
        ValueError: If `count < 1` or the manifest has no train images.
    """

    check_range("count", count, 1, types=int)
    frame = manifest if isinstance(manifest, pd.DataFrame) else datasets.load_manifest(manifest)
    train = frame[frame["split"] == "train"]
    if train.empty:
        raise ValueError("The manifest has no train images to calibrate int8 quantisation with")
    return train.sample(n=min(count, len(train)), random_state=seed)


def representative_dataset(
    sample: pd.DataFrame, image_size: int
) -> Callable[[], Iterator[list[np.ndarray]]]:
    """Calibration images preprocessed exactly as in training (`btc.datasets.make_dataset`).

    Args:
        sample: Manifest rows (e.g. from `calibration_sample`).
        image_size: The model's input side length.

    Returns:
        A generator function yielding `[float32 (1, size, size, 3)]` arrays in [0, 1], as
        `tf.lite.TFLiteConverter.representative_dataset` expects.
    """

    def generate() -> Iterator[list[np.ndarray]]:
        ds = datasets.make_dataset(sample, "train", image_size, batch_size=1, augment=False,
                               shuffle=False, cache=False)  # fmt: skip
        for images, _ in ds:
            yield [images.numpy()]

    return generate


def _converter(saved_model: Path, quantize: str, representative: Callable | None):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter


def inspect_tflite(content: bytes) -> dict:
    """Describe a `.tflite` flatbuffer: its input, output and ops.

    Args:
        content: The `.tflite` file's bytes.

    Returns:
        `{"input": io, "output": io, "ops": {name: count}, "float_ops": [names]}` where `io` is
        `{"shape", "dtype", "scale", "zero_point"}` (scale 0 for float tensors) and `float_ops`
        lists the ops with a float output (an int8 export has none; float16 weights show up as
        `DEQUANTIZE`).
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    float_types = {schema.TensorType.FLOAT32, schema.TensorType.FLOAT16}
    counts: collections.Counter = collections.Counter()
    float_ops: set[str] = set()
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            name = op_names.get(builtin, str(builtin))
            if builtin == schema.BuiltinOperator.CUSTOM:
                name = f"CUSTOM:{code.customCode.decode()}"
            counts[name] += 1
            if any(graph.tensors[i].type in float_types for i in op.outputs if i >= 0):
                float_ops.add(name)

    def io(index: int) -> dict:
        tensor = model.subgraphs[0].tensors[index]
        quant = tensor.quantization
        has_quant = quant is not None and quant.scale is not None and len(quant.scale)
        return {"shape": [int(d) for d in tensor.shape], "dtype": type_names[tensor.type],
                "scale": float(quant.scale[0]) if has_quant else 0.0,
                "zero_point": int(quant.zeroPoint[0]) if has_quant else 0}  # fmt: skip

    return {"input": io(model.subgraphs[0].inputs[0]), "output": io(model.subgraphs[0].outputs[0]),
            "ops": dict(sorted(counts.items())), "float_ops": sorted(float_ops)}  # fmt: skip


def export_tflite(
    name: str,
    quantize: str = "none",
    format: str = "tflite",
    models_dir: str | Path = MODELS_DIR,
    manifest: pd.DataFrame | str | Path = MANIFEST_PATH,
    representative_images: int = 300,
    seed: int = 42,
) -> Path:
    """Convert a trained model to a LiteRT file and write its JSON sidecar, both atomically.

    Args:
        name: A trained model in `models_dir` (`<name>/model.keras` + `metadata.json`).
        quantize: `"none"` (float32), `"float16"` (float16 weights) or `"int8"` (full-integer,
            int8 input and output).
        format: Export format; only `"tflite"`.
        models_dir: Models folder; the files go to `models_dir/<name>/`.
        manifest: Manifest whose train split calibrates `int8` (unused otherwise).
        representative_images: Train images used to calibrate `int8`.
        seed: Seed of the calibration sample.

    Returns:
        Path of the written `.tflite` file; the sidecar is `sidecar_path(path)`.

    Raises:
        ValueError: On a bad `quantize`, `format` or `representative_images`.
        FileNotFoundError: If the model is not trained, or `int8` has no manifest.
        ConversionError: If the converter refuses the model (e.g. an op with no int8 kernel).
    """
    import keras

    check_choice("quantize", quantize, QUANTIZE)
    check_choice("format", format, FORMATS)
    check_range("representative_images", representative_images, 1, types=int)
    model, meta = artifacts.load_trained(name, models_dir)
    source_sha = datasets.file_sha256(Path(models_dir) / name / "model.keras")
    size = meta["image_size"]
    representative, calibration = None, None
    if quantize == "int8":
        sample = calibration_sample(manifest, representative_images, seed)
        representative = representative_dataset(sample, size)
        manifest_sha = (
            None if isinstance(manifest, pd.DataFrame) else datasets.file_sha256(manifest)
        )
        calibration = {"split": "train", "images": len(sample), "seed": seed,
                       "manifest_sha256": manifest_sha,
                       "same_manifest_as_training": manifest_sha == meta.get("manifest_sha256")}  # fmt: skip
        if not calibration["same_manifest_as_training"]:
            log.warning("int8 calibration of %r uses a manifest it was not trained on", name)
        images = np.concatenate([x[0] for x in representative()])
        calibration["gray_input_folded"] = quantization.fold_gray_input(model, images[:8])
        calibration["bias_corrected_layers"] = len(quantization.correct_weight_bias(model, images))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="btc-export-") as tmp:
        spec = keras.InputSpec(shape=(1, size, size, 3), dtype="float32")
        model.export(tmp, format="tf_saved_model", input_signature=[spec], verbose=False)
        try:
            content = _converter(Path(tmp), quantize, representative).convert()
        except Exception as exc:  # the converter raises several private error types
            hint = " Try quantize='float16' or 'none'." if quantize == "int8" else ""
            raise ConversionError(f"Could not convert {name!r} with quantize={quantize!r}: "
                                  f"{exc}{hint}") from exc  # fmt: skip
    seconds = time.perf_counter() - start
    path = tflite_path(name, quantize, models_dir)
    with atomic_path(path) as tmp_file:
        tmp_file.write_bytes(content)
    write_json_atomic(sidecar_path(path), {
        "format": "tflite", "name": name, "model": meta["model"], "quantize": quantize,
        "class_names": list(meta["class_names"]), "image_size": size, "batch_size": 1,
        "preprocessing": meta.get("input", "float32 [0,1] grayscale replicated to 3 channels, "
                                  "padded to square"),
        "normalisation": f"{meta['normalisation']} (inside the graph)",
        "output_meaning": "softmax probabilities in class_names order, before calibration "
                          "(softmax(log p / temperature + class_bias))",
        "temperature": meta.get("temperature", 1.0), "class_bias": meta.get("class_bias"),
        **inspect_tflite(content),
        "tflite_sha256": hashlib.sha256(content).hexdigest(), "tflite_bytes": len(content),
        "source_model": "model.keras",
        "source_sha256": source_sha,
        "manifest_sha256": meta.get("manifest_sha256"), "calibration": calibration,
        "conversion_seconds": round(seconds, 1), "versions": artifacts.package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })  # fmt: skip
    return path


def exported_model_names(quantize: str = "none", models_dir: str | Path = MODELS_DIR) -> list[str]:
    """Names of the models in `models_dir` with an exported `quantize` variant and its sidecar."""
    check_choice("quantize", quantize, QUANTIZE)
    file = tflite_path("x", quantize).name
    return sorted(p.parent.name for p in Path(models_dir).glob(f"*/{file}")
                  if sidecar_path(p).is_file())  # fmt: skip


def load_sidecar(name: str, quantize: str = "none", models_dir: str | Path = MODELS_DIR) -> dict:
    """Read the sidecar of an exported model and check that the export is current.

    The sidecar must describe the file beside it (sha256). When the source `model.keras` and
    `metadata.json` are still there, the export must come from that model and carry its current
    temperature (03_evaluate recalibrates after training).

    Args:
        name: Model name.
        quantize: Which exported variant (`QUANTIZE`).
        models_dir: Models folder.

    Returns:
        The sidecar metadata.

    Raises:
        FileNotFoundError: If the variant was not exported (lists the exported ones).
        ValueError: On a bad `quantize`, a file that does not match its sidecar, or a stale export.
    """

    path = tflite_path(name, quantize, models_dir)
    fix = f"re-run `btc export --model {name} --quantize {quantize}`"
    if not (path.is_file() and sidecar_path(path).is_file()):
        raise FileNotFoundError(
            f"`name` must be a model exported with quantize={quantize!r} in {str(models_dir)!r}: "
            f"{exported_model_names(quantize, models_dir)} ({fix}). Received: name={name!r}"
        )
    meta = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    if datasets.file_sha256(path) != meta["tflite_sha256"]:
        raise ValueError(f"{str(path)!r} does not match its sidecar: {fix}")
    source, source_meta = path.parent / "model.keras", path.parent / "metadata.json"
    if source.is_file() and datasets.file_sha256(source) != meta["source_sha256"]:
        raise ValueError(f"{str(path)!r} was exported from an older model.keras: {fix}")
    if source_meta.is_file():
        now = calibration_of(json.loads(source_meta.read_text(encoding="utf-8")))
        if not same_calibration(now, calibration_of(meta)):
            raise ValueError(f"{str(path)!r} carries calibration {calibration_of(meta)}, but the "
                             f"model was recalibrated to {now} since: {fix}")  # fmt: skip
    return meta


def load_litert(
    name: str, quantize: str = "none", models_dir: str | Path = MODELS_DIR,
    num_threads: int | None = None,
) -> tuple[LiteRTModel, dict]:  # fmt: skip
    """Load an exported model for LiteRT with its sidecar metadata.

    Args:
        name: Model name.
        quantize: Which exported variant (`QUANTIZE`).
        models_dir: Models folder.
        num_threads: Interpreter threads (`None`: every core).

    Returns:
        `(model, metadata)`; the metadata has `class_names`, `image_size` and `temperature`
        like a Keras model's.

    Raises:
        ImportError: If LiteRT is not installed.
        FileNotFoundError: If the variant was not exported.
        ValueError: On a bad `quantize`, or a stale or mismatched export.
    """
    interpreter_class()  # the install message first, before any file checks
    meta = load_sidecar(name, quantize, models_dir)
    return LiteRTModel(tflite_path(name, quantize, models_dir), num_threads), meta
