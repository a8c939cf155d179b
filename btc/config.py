"""Paths, class names, validated stage configurations and atomic file writes.

Everything that says *where* (data, models, results) or *what is allowed* (class names, split
modes, parameter ranges) lives here, so notebooks never use bare relative paths and every stage
rejects bad parameters with the same Keras-style message. This module imports nothing of btc.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser().resolve() if value else default


DATA_DIR = _env_path("BTC_DATA_DIR", PROJECT_ROOT / "data" / "raw" / "brain-tumor-mri")
PROCESSED_DIR = _env_path("BTC_PROCESSED_DIR", PROJECT_ROOT / "data" / "processed")
MODELS_DIR = _env_path("BTC_MODELS_DIR", PROJECT_ROOT / "models")
RESULTS_DIR = _env_path("BTC_RESULTS_DIR", PROJECT_ROOT / "results")
PARAMS_DIR = PROJECT_ROOT / "params"
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
MANIFEST_PATH = PROCESSED_DIR / "manifest.csv"
# External tumour scans from the notumor class's own source (Br35H "yes"), with boxes (btc.external)
EXTERNAL_DIR = _env_path("BTC_EXTERNAL_DIR", PROJECT_ROOT / "data" / "raw" / "br35h-tumour")
EXTERNAL_PATH = PROCESSED_DIR / "external.csv"
UNKNOWN_TUMOUR = "tumour"  # label of a scan known to hold a tumour of unknown type

CLASS_NAMES: tuple[str, ...] = ("glioma", "meningioma", "notumor", "pituitary")
CLASS_ALIASES: dict[str, str] = {
    "glioma": "glioma",
    "glioma_tumor": "glioma",
    "meningioma": "meningioma",
    "meningioma_tumor": "meningioma",
    "notumor": "notumor",
    "no_tumor": "notumor",
    "no_tumour": "notumor",
    "no tumor": "notumor",
    "pituitary": "pituitary",
    "pituitary_tumor": "pituitary",
}
OFFICIAL_SPLITS: dict[str, str] = {"training": "Training", "testing": "Testing"}
SPLIT_MODES = ("grouped", "official")
SPLITS = ("train", "val", "test")
LABEL_CONFLICT_POLICIES = ("drop", "keep")
CT_SLICE_POLICIES = ("drop", "keep")


def canonical_class(name: str) -> str | None:
    """Map a folder name to a canonical class name, case-insensitively.

    Args:
        name: Folder name such as `"Glioma_Tumor"` or `"notumor"`.

    Returns:
        One of `CLASS_NAMES`, or `None` when the name is not a known alias.
    """
    return CLASS_ALIASES.get(name.strip().lower())


# --- validation helpers (Keras-style messages) ------------------------------------------------


def check_choice(arg: str, value: Any, allowed: tuple | list) -> Any:
    """Return `value` if it is one of `allowed`, else raise a Keras-style `ValueError`.

    Args:
        arg: Argument name used in the message.
        value: Value to check.
        allowed: Allowed values.

    Returns:
        `value` unchanged.

    Raises:
        ValueError: If `value` is not in `allowed`.
    """
    if value not in allowed:
        raise ValueError(f"`{arg}` must be one of {list(allowed)}. Received: {arg}={value!r}")
    return value


def check_range(
    arg: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    types: type | tuple[type, ...] = (int, float),
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> Any:
    """Return `value` if it has the right type and lies in the range, else raise.

    Args:
        arg: Argument name used in the message.
        value: Value to check.
        low: Lower bound, or `None` for no bound.
        high: Upper bound, or `None` for no bound.
        types: Accepted types (`bool` is never accepted as a number).
        low_inclusive: Whether `low` itself is allowed.
        high_inclusive: Whether `high` itself is allowed.

    Returns:
        `value` unchanged.

    Raises:
        TypeError: If `value` has the wrong type.
        ValueError: If `value` is out of range.
    """
    if isinstance(value, bool) or not isinstance(value, types):
        names = (
            types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        )
        raise TypeError(f"`{arg}` must be of type {names}. Received: {arg}={value!r}")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        brackets = ("[" if low_inclusive else "(", "]" if high_inclusive else ")")
        raise ValueError(
            f"`{arg}` must be in {brackets[0]}{lo}, {hi}{brackets[1]}. Received: {arg}={value!r}"
        )
    return value


MAX_IMAGE_SIZE = 1024


def check_image_size(value: Any, min_size: int = 32) -> int:
    """Return `value` if it is a valid input side length (an int in [`min_size`, 1024]).

    The one check of `image_size`, used by every stage config, `make_dataset` and `build_model`
    (which passes its architecture's smallest size).

    Raises:
        TypeError: If `value` is not an int.
        ValueError: If it is out of range.
    """
    return check_range("image_size", value, min_size, MAX_IMAGE_SIZE, types=int)


class StageConfig:
    """Mixin: build a frozen dataclass from a parameter mapping, rejecting unknown keys."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None = None, **overrides: Any):
        """Build the config from notebook parameters, rejecting unknown names.

        papermill only *warns* about parameters a notebook does not declare, so a typo such as
        `image_szie=128` would silently be ignored. This raises instead.

        Args:
            params: Mapping of parameter names to values (e.g. a notebook's globals subset).
            **overrides: More parameters; they win over `params`.

        Returns:
            A validated, frozen config instance.

        Raises:
            ValueError: On an unknown parameter name or an invalid value.
        """
        merged = {**(params or {}), **overrides}
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(merged) - set(known))
        if unknown:
            raise ValueError(
                f"Unknown {cls.__name__} parameter(s) {unknown}. Allowed: {known}. "
                f"Received: {', '.join(f'{k}={merged[k]!r}' for k in unknown)}"
            )
        return cls(**merged)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a JSON-serialisable dict."""
        return {
            k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()
        }


@dataclasses.dataclass(frozen=True)
class PreprocessConfig(StageConfig):
    """Validated parameters of the data stage (01_preprocess).

    Args:
        data_dir: Raw dataset folder (Kaggle, SARTAJ or flat `<class>/` layout).
        split_mode: `"grouped"` (pooled, stratified, group-aware 70/15/15) or `"official"`
            (published Testing kept minus leaked images, validation carved from Training).
        seed: Seed of the split and of any sampling.
        val_fraction: Fraction of images in the validation split.
        test_fraction: Fraction of images in the test split (grouped mode only).
        near_threshold: Maximum Hamming distance (of 64 bits) between perceptual hashes for two
            images to count as near or mirrored duplicates.
        rewindow_similarity: Minimum correlation of the histogram-equalised 64×64 thumbnails for
            two images to count as re-windowed copies (same slice, other brightness, contrast or
            gamma); `1.0` turns that search off.
        image_size: Side length the tf.data pipeline resizes to.
        sample_per_class: If > 0, index only this many files per class and official split
            (a seeded sample for quick runs and tests); `0` indexes every file.
        label_conflicts: What to do with duplicate groups whose images carry different labels:
            `"drop"` them (their label is unreliable) or `"keep"` them (majority label used
            for stratification).
        ct_slices: What to do with CT slices filed as MRI (`btc.oodct.ct_slice`): `"drop"` their
            duplicate groups (btc classifies brain MRI; CT in training teaches "CT means no
            tumour") or `"keep"` them.
        workers: Processes used to index the files; `0` uses all cores.
        external_dir: Folder of external tumour scans with boxes (`btc.external`); empty or
            missing skips the external set.
        external_train_fraction: Share of the external images (whole near-copy groups) that
            training may use as "tumour, type unknown"; the rest is held out for testing.
        drop_leaked: In `official` mode, drop Testing images whose duplicate group is in
            Training. `False` keeps them to *measure* how much the leak inflates scores; such
            a manifest is refused by evaluation unless explicitly allowed, and labelled LEAKY.
    """

    data_dir: str | Path = DATA_DIR
    split_mode: str = "grouped"
    seed: int = 42
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    near_threshold: int = 4
    rewindow_similarity: float = 0.97
    image_size: int = 299
    sample_per_class: int = 0
    label_conflicts: str = "drop"
    ct_slices: str = "drop"
    workers: int = 0
    drop_leaked: bool = True
    external_dir: str | Path = EXTERNAL_DIR
    external_train_fraction: float = 0.5

    def __post_init__(self):
        object.__setattr__(self, "data_dir", Path(self.data_dir or DATA_DIR).expanduser())
        check_choice("split_mode", self.split_mode, SPLIT_MODES)
        check_choice("label_conflicts", self.label_conflicts, LABEL_CONFLICT_POLICIES)
        check_choice("ct_slices", self.ct_slices, CT_SLICE_POLICIES)
        check_range("seed", self.seed, 0, types=int)
        check_range("val_fraction", self.val_fraction, 0.0, 0.5, low_inclusive=False)
        check_range("test_fraction", self.test_fraction, 0.0, 0.5, low_inclusive=False)
        check_range("near_threshold", self.near_threshold, 0, 32, types=int)
        check_range("rewindow_similarity", self.rewindow_similarity, 0.5, 1.0)
        check_image_size(self.image_size)
        check_range("workers", self.workers, 0, 64, types=int)
        check_range("sample_per_class", self.sample_per_class, 0, types=int)
        check_range("external_train_fraction", self.external_train_fraction, 0.0, 0.9)
        object.__setattr__(
            self, "external_dir", Path(self.external_dir or EXTERNAL_DIR).expanduser()
        )
        check_choice("drop_leaked", self.drop_leaked, (True, False))
        if not self.drop_leaked and self.split_mode != "official":
            raise ValueError(
                "`drop_leaked=False` only applies to split_mode='official'. "
                f"Received: drop_leaked=False, split_mode={self.split_mode!r}"
            )


# --- atomic writes ------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it onto `path` only if the block succeeds.

    A crash or exception while writing leaves the previous file untouched and no partial file.

    Args:
        path: Final destination.

    Yields:
        A temporary path in the same folder (same file system, so the final rename is atomic).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON to `path` atomically and return the path."""
    return write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    """Typed records (e.g. `artifacts.Metadata`) as their dicts; anything else as its `str`."""
    return obj.to_dict() if callable(getattr(obj, "to_dict", None)) else str(obj)


def quiet_tensorflow() -> bool:
    """Import TensorFlow and Keras with its C++ start-up lines kept off the notebook.

    TensorFlow writes CUDA, oneDNN and absl notices from C++ straight to file descriptor 2,
    which a Jupyter kernel shows as red stderr under the cell (`btc pipeline` filters them the
    same way). Python errors still raise. Call it before the first model is loaded.

    Returns:
        `True` if this call imported TensorFlow, `False` if it was already imported.
    """
    import sys

    if "tensorflow" in sys.modules:
        return False
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        import keras  # noqa: F401
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe prints here on a CPU machine
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
    return True
