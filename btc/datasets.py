"""The manifest file and tf.data: read/write the split, batch it as `[0, 1]` images, predict it.

The manifest (path, sha256, class, split, duplicate group, source) is the split as a file: 01
writes it once; training, evaluation and prediction read it and never re-split. Data flows one
way: manifest → `make_dataset` → model. `predict_split` runs a model over one split
(optionally with test-time augmentation); it is how evaluation, saliency and OOD fitting read a
split, so none of them builds its own pipeline.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from btc import __version__
from btc.config import (
    CLASS_NAMES,
    SPLITS,
    UNKNOWN_TUMOUR,
    atomic_path,
    check_choice,
    check_image_size,
    check_range,
    write_json_atomic,
)
from btc.images import decode_and_resize

# --- the manifest ------------------------------------------------------------------------------

MANIFEST_COLUMNS = [
    "path", "sha256", "class", "split", "group", "official_split", "format", "mode",
]  # fmt: skip


def crossing_groups(manifest: pd.DataFrame, splits: Sequence[str] | None = None) -> int:
    """Return how many duplicate groups or file hashes appear in more than one split.

    Args:
        manifest: Manifest with `split`, `group`, `sha256`.
        splits: Only consider these splits (e.g. `["train", "val"]`); default all.
    """
    if splits is not None:
        manifest = manifest[manifest["split"].isin(splits)]
    by_group = manifest.groupby("group")["split"].nunique().gt(1).sum()
    by_hash = manifest.groupby("sha256")["split"].nunique().gt(1).sum()
    return int(by_group + by_hash)


def write_manifest(manifest: pd.DataFrame, path: str | Path, info: dict) -> Path:
    """Write the manifest CSV and its JSON sidecar (`<name>.json`) atomically.

    Args:
        manifest: Output of `split_dataset`.
        path: Destination CSV, usually `config.MANIFEST_PATH`.
        info: Parameters, inputs hash and report recorded in the sidecar.

    Returns:
        The CSV path.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        manifest.to_csv(tmp, index=False)
    sidecar = {**info, "manifest_sha256": file_sha256(path), "btc_version": __version__,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    write_json_atomic(path.with_suffix(".json"), sidecar)
    return path


def file_sha256(path: str | Path) -> str:
    """Return the sha256 hex digest of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_manifest(path: str | Path, check_leakage: bool = True) -> pd.DataFrame:
    """Read a manifest CSV written by `write_manifest`, checking its columns and splits.

    Args:
        path: Manifest CSV.
        check_leakage: Refuse a manifest whose duplicate groups cross splits (evaluation turns
            this off and applies its own gate, which can label results LEAKY instead).

    Raises:
        FileNotFoundError: If the manifest does not exist (run 01_preprocess first).
        ValueError: If columns are missing or a group crosses splits.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No manifest at {str(path)!r}: run notebooks/01_preprocess.ipynb (or `make pipeline`)"
        )
    manifest = pd.read_csv(path, keep_default_na=False, dtype={"official_split": str})
    missing = sorted(set(MANIFEST_COLUMNS) - set(manifest.columns))
    if missing:
        raise ValueError(f"Manifest {str(path)!r} lacks columns {missing}")
    if check_leakage and crossing_groups(manifest):
        raise ValueError(f"Manifest {str(path)!r} has duplicate groups in several splits")
    return manifest


# --- tf.data -------------------------------------------------------------------------------------


def augmentation(seed: int = 42):
    """Return the training augmentation: flip, rotation (±10°), brightness and contrast."""
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(10 / 360, fill_mode="constant", fill_value=0.0, seed=seed),
        keras.layers.RandomBrightness(0.1, value_range=(0.0, 1.0), seed=seed),
        keras.layers.RandomContrast(0.1, seed=seed),
    ], name="augmentation")  # fmt: skip


def style_augmentation(images, image_size: int, seed: int = 42):
    """Vary acquisition style in a `[0, 1]` batch: gamma, resolution and noise.

    Framing and exposure differ by source in this dataset; varying them during training makes
    them less useful as a shortcut. Gamma per image in [0.7, 1.4], one down-and-up resampling per
    batch to 50–100 % of the side, Gaussian noise with σ up to 0.03 per image.
    """
    import tensorflow as tf

    batch = tf.shape(images)[0]
    gamma = tf.exp(tf.random.uniform([batch, 1, 1, 1], np.log(0.7), np.log(1.4), seed=seed))
    images = tf.pow(tf.clip_by_value(images, 1e-6, 1.0), gamma)
    side = tf.cast(tf.round(tf.random.uniform([], 0.5, 1.0, seed=seed + 1) * image_size), tf.int32)
    images = tf.image.resize(tf.image.resize(images, [side, side], antialias=True),
                             [image_size, image_size])  # fmt: skip
    sigma = tf.random.uniform([batch, 1, 1, 1], 0.0, 0.03, seed=seed + 2)
    noise = tf.random.normal(tf.shape(images), seed=seed + 3)
    return tf.clip_by_value(images + sigma * noise, 0.0, 1.0)


def make_dataset(
    manifest: pd.DataFrame | str | Path,
    split: str,
    image_size: int = 299,
    batch_size: int = 32,
    augment: bool | None = None,
    seed: int = 42,
    shuffle: bool | None = None,
    cache: bool | str = True,
    class_names: Sequence[str] = CLASS_NAMES,
    style: bool = False,
):
    """Build a `tf.data.Dataset` of `(images, labels)` for one split of a manifest.

    Images are decoded by content, converted to grayscale and replicated to 3 channels (removing
    the colour-mode shortcut), resized with padding and scaled to [0, 1]. Model-specific
    normalisation happens inside each model.

    Args:
        manifest: Manifest DataFrame or CSV path.
        split: `"train"`, `"val"` or `"test"`.
        image_size: Output side length in pixels.
        batch_size: Batch size.
        augment: Random flip/rotation/brightness/contrast; defaults to `split == "train"`.
        seed: Seed of shuffling and augmentation.
        shuffle: Shuffle each epoch; defaults to `split == "train"`.
        cache: `True` caches decoded, resized uint8 images in memory; a path caches to disk;
            `False` decodes every epoch.
        class_names: Label order (index `i` is `class_names[i]`); rows of class `"tumour"`
            (external scans of unknown tumour type) get label `len(class_names)`.
        style: Also apply `style_augmentation` (with `augment`).

    Returns:
        Dataset of `float32 (batch, image_size, image_size, 3)` images in [0, 1] and `int32
        (batch,)` labels.

    Raises:
        ValueError: On an unknown split, a bad size, or an empty split.
    """
    import tensorflow as tf

    check_choice("split", split, SPLITS)
    check_image_size(image_size)
    check_range("batch_size", batch_size, 1, types=int)
    if not isinstance(manifest, pd.DataFrame):
        manifest = load_manifest(manifest)
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise ValueError(f"`split` has no images in this manifest. Received: split={split!r}")
    augment = split == "train" if augment is None else augment
    shuffle = split == "train" if shuffle is None else shuffle
    lookup = {name: i for i, name in enumerate(class_names)} | {UNKNOWN_TUMOUR: len(class_names)}
    labels = rows["class"].map(lookup).astype("int32").to_numpy()
    ds = tf.data.Dataset.from_tensor_slices((rows["path"].to_numpy(), labels))
    ds = ds.map(
        lambda p, y: (decode_and_resize(tf.io.read_file(p), image_size), y),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if cache:
        ds = ds.cache("" if cache is True else str(cache))
    if shuffle:
        ds = ds.shuffle(min(len(rows), 4096), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(
        lambda x, y: (tf.cast(x, tf.float32) / 255.0, y), num_parallel_calls=tf.data.AUTOTUNE
    )
    if augment:
        aug = augmentation(seed)
        ds = ds.map(lambda x, y: (tf.clip_by_value(aug(x, training=True), 0.0, 1.0), y),
                    num_parallel_calls=tf.data.AUTOTUNE)  # fmt: skip
        if style:
            ds = ds.map(lambda x, y: (style_augmentation(x, image_size, seed), y),
                        num_parallel_calls=tf.data.AUTOTUNE)  # fmt: skip
    ds = ds.map(lambda x, y: (tf.image.grayscale_to_rgb(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


# --- predicting a split ------------------------------------------------------------------------


TTA_TRANSFORMS = ("identity", "flip", "shift_left", "shift_right", "shift_up", "shift_down")


def tta_batch(images, transform: str, shift: float = 0.04):
    """Apply one test-time transform to a batch: identity, horizontal flip or a small shift."""
    import tensorflow as tf

    if transform == "identity":
        return images
    if transform == "flip":
        return tf.image.flip_left_right(images)
    pixels = max(1, int(round(shift * int(images.shape[1]))))
    axis, sign = {"shift_left": (2, -1), "shift_right": (2, 1), "shift_up": (1, -1),
                  "shift_down": (1, 1)}[transform]  # fmt: skip
    return tf.roll(images, sign * pixels, axis=axis)  # scans sit on black: wrap-around is black


def predict_split(
    model, metadata: Mapping, manifest: pd.DataFrame, split: str = "test", batch_size: int = 64,
    tta: bool = False,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Predict one split with a model, in batches, at the input size its metadata records.

    Args:
        model: Keras model returning softmax probabilities.
        metadata: The model's metadata (`artifacts.Metadata` or a LiteRT sidecar dict: any
            mapping with `image_size` and `class_names`).
        manifest: Manifest DataFrame.
        split: Split to predict.
        batch_size: Batch size.
        tta: Average over `TTA_TRANSFORMS` (flip and small shifts).

    Returns:
        `(probs, labels)`: uncalibrated `(n, classes)` probabilities in the metadata's class
        order and `(n,)` integer labels.
    """

    ds = make_dataset(manifest, split, metadata["image_size"], batch_size, augment=False,
                           shuffle=False, cache=False, class_names=metadata["class_names"])  # fmt: skip
    transforms = TTA_TRANSFORMS if tta else ("identity",)
    probs, labels = [], []
    for x, y in ds:
        probs.append(np.mean([model.predict_on_batch(tta_batch(x, t)) for t in transforms], 0))
        labels.append(y.numpy())
    return np.concatenate(probs), np.concatenate(labels)
