"""Saved models: `models/<name>/model.keras` + `metadata.json`, written atomically, read typed.

The saved-model floor. Every stage that needs a trained model (evaluate, explain, predict,
export, OOD) loads it here, so none of them imports `btc.train`. `Metadata` is the typed record of
`metadata.json`: class order, input size, preprocessing, full training config, data hashes,
package versions, validation metrics and the calibration temperature.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from btc import __version__, models  # noqa: F401  (models registers btc's losses for loading)
from btc.config import MODELS_DIR, atomic_path, write_json_atomic

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
RUN_FILE = "run.json"


@dataclasses.dataclass(frozen=True)
class Metadata(Mapping):
    """What a trained model needs to be used and reproduced (`metadata.json`).

    Read fields as attributes (`meta.image_size`). It is also a read-only mapping, so
    `dict(meta)` and JSON writing see the same keys as the file. Keys this version does not know
    (from a newer btc) are kept in `extra` and written back unchanged.
    """

    name: str
    model: str
    class_names: tuple[str, ...]
    image_size: int
    input: str = "float32 [0,1] grayscale replicated to 3 channels, padded to square"
    normalisation: str = ""
    gradcam_layer: str | None = None
    config: dict = dataclasses.field(default_factory=dict)
    manifest_sha256: str | None = None
    train_images: int = 0
    external_train_images: int = 0
    val_images: int = 0
    versions: dict = dataclasses.field(default_factory=dict)
    params_total: int = 0
    params_trainable_last_phase: int = 0
    training_seconds: float = 0.0
    epochs_run: int = 0
    phase_starts: tuple[int, ...] = (0,)
    best_epoch: int = 0
    best_val_loss: float = float("nan")
    best_val_accuracy: float = float("nan")
    temperature: float = 1.0
    temperature_fitted_on: str | None = None
    temperature_tta: float | None = None
    calibration: str = "temperature"
    class_bias: list[float] | None = None
    class_bias_tta: list[float] | None = None
    strategy: str = "default"
    replicas: int = 1
    created: str = ""
    extra: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Metadata:
        """Build from a `metadata.json` dict; unknown keys go to `extra`."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in raw.items() if k in known}
        values["class_names"] = tuple(values["class_names"])
        values["phase_starts"] = tuple(values.get("phase_starts", (0,)))
        extra = {
            **raw.get("extra", {}),
            **{k: v for k, v in raw.items() if k not in known | {"extra"}},
        }
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict written to `metadata.json`."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out.update(class_names=list(self.class_names), phase_starts=list(self.phase_starts))
        return {**out, **self.extra}

    def replace(self, **changes: Any) -> Metadata:
        """A copy with some fields changed (e.g. the temperature fitted by evaluation)."""
        return dataclasses.replace(self, **changes)

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


def package_versions() -> dict[str, str]:
    """Return the versions that determine a model's behaviour."""
    import sklearn
    import tensorflow as tf

    return {"btc": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__, "scikit-learn": sklearn.__version__}  # fmt: skip


def save_model_atomic(model: keras.Model, path: str | Path) -> Path:
    """Save a model as `.keras` so that the file is either the old one or the complete new one."""
    with atomic_path(path) as tmp:
        model.save(tmp)
    return Path(path)


def write_metadata(folder: str | Path, metadata: Metadata) -> Path:
    """Write `folder/metadata.json` atomically."""
    return write_json_atomic(Path(folder) / METADATA_FILE, metadata.to_dict())


def trained_model_names(models_dir: str | Path = MODELS_DIR) -> list[str]:
    """Names of the models in `models_dir` that have both `model.keras` and `metadata.json`."""
    return sorted(p.parent.name for p in Path(models_dir).glob(f"*/{MODEL_FILE}")
                  if (p.parent / METADATA_FILE).is_file())  # fmt: skip


def record_run(names: list[str], models_dir: str | Path = MODELS_DIR) -> Path:
    """Record which models the last training run (02) produced, in `models/run.json`.

    Evaluation, saliency, OOD fitting and the demo then default to these models, so that a model
    left in `models/` by an earlier run with another preset is not silently evaluated with them.

    Returns:
        The path written.
    """
    path = Path(models_dir) / RUN_FILE
    write_json_atomic(
        path, {"models": list(names), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    )
    return path


def run_model_names(models_dir: str | Path = MODELS_DIR) -> list[str]:
    """The trained models of the last training run, or every trained model if none was recorded.

    A model listed in `run.json` but no longer trained is left out; one trained but not listed
    (an earlier run's) can still be asked for by name.
    """
    trained = trained_model_names(models_dir)
    path = Path(models_dir) / RUN_FILE
    if not path.is_file():
        return trained
    listed = json.loads(path.read_text(encoding="utf-8")).get("models", [])
    return [n for n in listed if n in trained] or trained


def _check_trained(name: str, models_dir: str | Path) -> Path:
    folder = Path(models_dir) / name
    if not (folder / MODEL_FILE).is_file() or not (folder / METADATA_FILE).is_file():
        raise FileNotFoundError(
            f"`name` must be a trained model in {str(models_dir)!r}: "
            f"{trained_model_names(models_dir)}. Received: name={name!r}"
        )
    return folder


def read_metadata(name: str, models_dir: str | Path = MODELS_DIR) -> Metadata:
    """Read a trained model's metadata without loading the model.

    Raises:
        FileNotFoundError: If the model has not been trained (lists the trained ones).
    """
    folder = _check_trained(name, models_dir)
    return Metadata.from_dict(json.loads((folder / METADATA_FILE).read_text(encoding="utf-8")))


def load_trained(name: str, models_dir: str | Path = MODELS_DIR) -> tuple[keras.Model, Metadata]:
    """Load `models_dir/<name>/model.keras` and its metadata.

    Args:
        name: Model folder name (`models_dir/<name>/`).
        models_dir: Parent folder of model artifacts.

    Returns:
        `(model, metadata)`.

    Raises:
        FileNotFoundError: If the model has not been trained (lists the trained ones).
    """
    metadata = read_metadata(name, models_dir)
    return keras.saving.load_model(Path(models_dir) / name / MODEL_FILE), metadata
