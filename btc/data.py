"""Data stage: index a raw folder, audit it, find duplicates, split without leakage, feed tf.data.

Data flows one way: raw folder (never modified) → index table → duplicate groups → manifest
(`data/processed/manifest.csv`) → `make_dataset`. This module knows no model; TensorFlow is
imported only inside `make_dataset` so indexing can run in worker processes cheaply.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from btc import __version__, dedup, shortcut
from btc.config import (
    CLASS_ALIASES,
    CLASS_NAMES,
    OFFICIAL_SPLITS,
    SPLITS,
    UNKNOWN_TUMOUR,
    PreprocessConfig,
    atomic_path,
    canonical_class,
    check_choice,
    check_range,
    write_json_atomic,
)

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_PIXELS = 40_000_000  # the largest real scan here is 1920×1080; 40 MP leaves room, stops bombs
MIN_SIDE = 32
INDEX_COLUMNS = [
    "path", "class", "official_split", "sha256", "width", "height", "mode", "format",
    "bytes", "readable", "error", "phash", "phash_mirror", "phash_eq", "phash_eq_mirror", "thumb_eq", "cues",
]  # fmt: skip
MANIFEST_COLUMNS = [
    "path", "sha256", "class", "split", "group", "official_split", "format", "mode",
]  # fmt: skip
_MAGIC = [
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
]
PIPELINE_FORMATS = ("jpeg", "png", "gif", "bmp")  # what tf.io.decode_image reads


class DataError(ValueError):
    """A dataset folder that cannot be indexed (missing, empty or with unknown classes)."""


# --- 1. index ----------------------------------------------------------------------------------


def detect_format(head: bytes) -> str:
    """Return the image format named by a file's first bytes (not its extension).

    Args:
        head: At least the first 12 bytes of the file.

    Returns:
        `"jpeg"`, `"png"`, `"gif"`, `"bmp"`, `"tiff"`, `"webp"`, or `"unknown"`.
    """
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return "unknown"


def to_grayscale(img: Image.Image) -> Image.Image:
    """Convert any PIL image (RGBA, palette, CMYK, 16-bit) to 8-bit grayscale `"L"`.

    Transparent pixels become black (the scan background), and 16-bit values are scaled rather
    than clipped.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("L")


def inspect_image(path: str | Path) -> dict:
    """Read one file: hash, format by content, size, colour mode, perceptual hashes, thumbnail.

    Never raises for a bad file: problems are returned in `readable=False` and `error`.

    Args:
        path: Image file.

    Returns:
        A dict with the `INDEX_COLUMNS` other than path, class and official split.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return {**_EMPTY_ROW, "error": f"cannot read file: {exc.strerror or exc}"}
    return inspect_bytes(data)


_EMPTY_ROW = dict(sha256=None, width=0, height=0, mode=None, format="unknown", bytes=0,
                  readable=False, error=None, phash=None, phash_mirror=None, phash_eq=None,
                  phash_eq_mirror=None, thumb_eq=None, cues=None)  # fmt: skip


def inspect_bytes(data: bytes) -> dict:
    """Like `inspect_image`, for the encoded bytes of an image (e.g. an upload)."""
    row = dict(_EMPTY_ROW)
    row["bytes"] = len(data)
    row["sha256"] = hashlib.sha256(data).hexdigest()
    row["format"] = detect_format(data[:16])
    if not data:
        row["error"] = "empty file (0 bytes)"
        return row
    if row["format"] == "unknown":
        row["error"] = f"not an image: content starts with {data[:8]!r}"
        return row
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            row.update(width=img.width, height=img.height, mode=img.mode)
            if img.width * img.height > MAX_PIXELS:
                row["error"] = (
                    f"declared size {img.width}x{img.height} exceeds {MAX_PIXELS:,} pixels "
                    "(possible decompression bomb); not decoded"
                )
                return row
            if min(img.size) < MIN_SIDE:
                row["error"] = f"image is {img.width}x{img.height} px, below {MIN_SIDE} px a side"
                return row
            if row["format"] not in PIPELINE_FORMATS:
                row["error"] = f"{row['format']} images are not supported by the pipeline"
                return row
            if img.format == "JPEG" and img.mode == "CMYK":
                row["error"] = "CMYK JPEG is not supported by the pipeline; save it as RGB or L"
                return row
            if img.format == "JPEG":
                img.draft(img.mode, (64, 64))  # DCT-domain downscale; still reads every byte
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        row["error"] = f"possible decompression bomb, not decoded: {exc}"
        return row
    except Exception as exc:  # PIL raises many types for corrupt data
        row["error"] = f"cannot decode {row['format']}: {exc}"
        return row
    gray = to_grayscale(img)
    row["phash"] = str(imagehash.phash(gray))
    row["phash_mirror"] = str(imagehash.phash(ImageOps.mirror(gray)))
    # Histogram equalisation undoes any monotonic re-windowing (brightness, contrast, gamma),
    # so re-windowed copies of a slice share these hashes and thumbnails (see btc.dedup).
    equalised = ImageOps.equalize(gray)
    row["phash_eq"] = str(imagehash.phash(equalised))
    row["phash_eq_mirror"] = str(imagehash.phash(ImageOps.mirror(equalised)))
    small = gray.resize((dedup.THUMB_SIDE, dedup.THUMB_SIDE), Image.BILINEAR)
    row["thumb_eq"] = np.asarray(ImageOps.equalize(small), dtype=np.uint8).tobytes()
    row["cues"] = shortcut.image_cues(np.asarray(gray)).tobytes()
    row["readable"] = True
    return row


def discover_files(data_dir: str | Path) -> pd.DataFrame:
    """List the image files of a dataset folder with their class and official split.

    Accepts `Training|Testing/<class>/` (Kaggle, SARTAJ) and a flat `<class>/` layout. Class
    folder names map case-insensitively to `CLASS_NAMES` (`glioma_tumor` → `glioma`, ...).

    Args:
        data_dir: Dataset root.

    Returns:
        DataFrame with columns `path`, `class`, `official_split` (`"Training"`, `"Testing"` or
        `""` for a flat folder), sorted by path.

    Raises:
        DataError: If the folder is missing, has an unknown class folder, or holds no images.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(
            f"`data_dir` does not exist or is not a folder. Download the Kaggle 'Brain Tumor MRI "
            f"Dataset' and point BTC_DATA_DIR at it (see README). Received: data_dir={str(root)!r}"
        )
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    split_dirs = [p for p in subdirs if p.name.lower() in OFFICIAL_SPLITS]
    sources = [(OFFICIAL_SPLITS[p.name.lower()], p) for p in split_dirs] or [("", root)]
    rows = []
    for split, folder in sources:
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            if class_dir.name.startswith("."):
                continue
            label = canonical_class(class_dir.name)
            if label is None:
                raise DataError(
                    f"Unknown class folder {str(class_dir)!r}. Known class names "
                    f"(case-insensitive): {sorted(CLASS_ALIASES)}. "
                    f"Received: class folder={class_dir.name!r}"
                )
            files = sorted(
                p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith(".")
            )
            if not files:
                log.warning("Empty class folder %s: no images, skipped.", class_dir)
            rows += [(str(p), label, split) for p in files]
    if not rows:
        raise DataError(
            f"No image files found under `data_dir`. Expected `Training|Testing/<class>/` or "
            f"`<class>/` folders with images. Received: data_dir={str(root)!r}"
        )
    return pd.DataFrame(rows, columns=["path", "class", "official_split"])


def _sample(files: pd.DataFrame, per_class: int, seed: int) -> pd.DataFrame:
    parts = [
        g.sample(n=min(per_class, len(g)), random_state=seed)
        for _, g in files.groupby(["official_split", "class"], sort=True)
    ]
    return pd.concat(parts).sort_values("path").reset_index(drop=True)


def index_dataset(
    data_dir: str | Path,
    sample_per_class: int = 0,
    seed: int = 42,
    workers: int = 0,
) -> pd.DataFrame:
    """Index a dataset folder: one row per file with hashes, size, mode, format and errors.

    Unreadable files are kept in the table with `readable=False` and the reason in `error`
    (and logged with their path); later steps skip them.

    Args:
        data_dir: Dataset root (see `discover_files`).
        sample_per_class: If > 0, a seeded sample of this many files per class and official
            split; `0` indexes every file.
        seed: Seed of the sample.
        workers: Processes to use; `0` means one per CPU core.

    Returns:
        DataFrame with `INDEX_COLUMNS`.

    Raises:
        DataError: See `discover_files`.
    """
    files = discover_files(data_dir)
    if check_range("sample_per_class", sample_per_class, 0, types=int):
        files = _sample(files, sample_per_class, seed)
    workers = workers or os.cpu_count() or 1
    paths = files["path"].tolist()
    if workers == 1 or len(paths) < 64:
        details = [inspect_image(p) for p in paths]
    else:
        ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold TF
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            details = list(pool.map(inspect_image, paths, chunksize=32))
    index = pd.concat([files, pd.DataFrame(details, index=files.index)], axis=1)[INDEX_COLUMNS]
    for row in index.loc[~index["readable"]].itertuples():
        log.warning("Skipping %s: %s", row.path, row.error)
    return index


# --- 2. audit ------------------------------------------------------------------------------------


def audit(index: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Summarise an index: counts, the colour-mode shortcut, formats, sizes and bad files.

    Args:
        index: Output of `index_dataset`.

    Returns:
        Dict of tables: `counts` (class × official split, with totals), `modes` (share of each
        colour mode per class — the shortcut table), `formats` (real format vs extension per
        class), `sizes` (width/height statistics per class), `unreadable` (path and reason).
    """
    ok = index[index["readable"]]
    split = ok["official_split"].replace("", "all")
    counts = pd.crosstab(ok["class"], split, margins=True, margins_name="total")
    modes = pd.crosstab(ok["class"], ok["mode"], normalize="index").round(3)
    ext = ok["path"].str.rsplit(".", n=1).str[-1].str.lower()
    formats = pd.crosstab(ok["class"], ok["format"] + " as ." + ext)
    sizes = ok.assign(side=ok[["width", "height"]].min(axis=1), square=ok.width == ok.height)
    sizes = sizes.groupby("class").agg(
        median_width=("width", "median"), median_height=("height", "median"),
        min_side=("side", "min"), max_side=("side", "max"), square_share=("square", "mean"),
        distinct_sizes=("width", lambda s: len(set(zip(s, sizes.loc[s.index, "height"])))),
    ).round(3)  # fmt: skip
    unreadable = index.loc[~index["readable"], ["path", "class", "error"]].reset_index(drop=True)
    return {"counts": counts, "modes": modes, "formats": formats, "sizes": sizes,
            "unreadable": unreadable}  # fmt: skip


# --- 4. split ------------------------------------------------------------------------------------


def _assign_groups(groups: pd.DataFrame, fractions: dict[str, float], seed: int) -> dict[int, str]:
    """Stratified, group-aware assignment: per class, groups fill the split most below target."""
    rng = np.random.default_rng(seed)
    assignment: dict[int, str] = {}
    for _, by_class in groups.groupby("label", sort=True):
        order = by_class.iloc[rng.permutation(len(by_class))]
        order = order.sort_values("size", ascending=False, kind="stable")
        total = order["size"].sum()
        filled = dict.fromkeys(fractions, 0)
        for gid, size in zip(order.index, order["size"]):
            split = max(fractions, key=lambda s: fractions[s] * total - filled[s])
            assignment[gid] = split
            filled[split] += size
    return assignment


def split_dataset(
    index: pd.DataFrame, groups: pd.Series, config: PreprocessConfig
) -> tuple[pd.DataFrame, dict]:
    """Split indexed images into train/val/test so that no duplicate group crosses splits.

    Byte-identical copies are reduced to one file first. `grouped` mode pools all images and
    makes a class-stratified split by group; `official` mode keeps the published Testing folder
    minus every image whose group also has a Training member, and carves validation out of
    Training by group.

    Args:
        index: Output of `index_dataset`.
        groups: Second output of `find_duplicates`.
        config: Split parameters (`split_mode`, fractions, `seed`, `label_conflicts`).

    Returns:
        `(manifest, report)`: `manifest` has `MANIFEST_COLUMNS` and `source` (the likely
        source, `btc.shortcut.likely_source`); `report` counts what was
        dropped and the groups crossing splits before and after.

    Raises:
        ValueError: In `official` mode when the index has no official split.
    """
    df = index[index["readable"]].assign(group=groups).sort_values("path")
    report: dict = {"readable_images": len(df), "unreadable_images": int((~index.readable).sum())}
    report["exact_copies_removed"] = int(df.duplicated("sha256").sum())
    df = df.drop_duplicates("sha256", keep="first")
    labels = df.groupby("group")["class"].agg(lambda s: s.value_counts().index[0])
    conflicted = df.groupby("group")["class"].nunique() > 1
    report["label_conflict_groups"] = int(conflicted.sum())
    report["label_conflict_images"] = int(df["group"].isin(conflicted[conflicted].index).sum())
    if config.label_conflicts == "drop":
        df = df[~df["group"].isin(conflicted[conflicted].index)]
    report["official_leakage"] = _official_leakage(df)
    info = pd.DataFrame({"label": labels, "size": df.groupby("group").size()}).dropna()
    val, test = config.val_fraction, config.test_fraction
    if config.split_mode == "grouped":
        fractions = {"train": 1 - val - test, "val": val, "test": test}
        df["split"] = df["group"].map(_assign_groups(info, fractions, config.seed))
    else:
        if not df["official_split"].isin(["Training", "Testing"]).all():
            raise ValueError(
                "`split_mode='official'` needs the Training/Testing layout; this folder is flat. "
                "Use split_mode='grouped'. Received: split_mode='official'"
            )
        train_groups = set(df.loc[df.official_split == "Training", "group"])
        leaked = (df.official_split == "Testing") & df["group"].isin(train_groups)
        if config.drop_leaked:
            report["official_test_dropped_for_leakage"] = int(leaked.sum())
            df = df[~leaked]
        else:
            report["official_test_kept_despite_leakage"] = int(leaked.sum())
            log.warning("LEAKY manifest: %d test images have a copy in train", leaked.sum())
        pool = info.loc[sorted(train_groups)]
        assigned = _assign_groups(pool, {"train": 1 - val, "val": val}, config.seed)
        df["split"] = np.where(df.official_split == "Testing", "test", df["group"].map(assigned))
    df["source"] = shortcut.likely_source(df)
    manifest = df[[*MANIFEST_COLUMNS, "source"]].reset_index(drop=True)
    report["split_sizes"] = pd.crosstab(manifest["class"], manifest["split"]).to_dict()
    report["groups_crossing_splits"] = crossing_groups(manifest)
    if report["groups_crossing_splits"] and config.drop_leaked:
        raise AssertionError(f"{report['groups_crossing_splits']} groups cross splits: a btc bug")
    return manifest, report


def _official_leakage(df: pd.DataFrame) -> dict:
    if not df["official_split"].isin(["Training", "Testing"]).all():
        return {"groups_crossing": 0, "testing_images_with_training_copy": 0}
    spans = df.groupby("group")["official_split"].nunique()
    crossing = spans[spans > 1].index
    test = df["official_split"] == "Testing"
    return {
        "groups_crossing": int(len(crossing)),
        "testing_images_with_training_copy": int((test & df["group"].isin(crossing)).sum()),
        "testing_images": int(test.sum()),
    }


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


def inputs_hash(index: pd.DataFrame) -> str:
    """Return a sha256 over the sorted (relative path, file sha256) pairs of an index."""
    digest = hashlib.sha256()
    for name, sha in sorted(zip(index["path"], index["sha256"].fillna(""))):
        digest.update(f"{Path(name).name}\t{sha}\n".encode())
    return digest.hexdigest()


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


# --- 5. tf.data ----------------------------------------------------------------------------------


def decode_and_resize(contents, image_size: int):
    """Decode JPEG/PNG/GIF/BMP bytes by content to a `(size, size, 1)` uint8 grayscale tensor.

    The aspect ratio is kept: the image is scaled to fit and padded with black (the scan
    background), so wide Br35H images are not squashed.
    """
    import tensorflow as tf

    image = tf.io.decode_image(contents, channels=1, expand_animations=False, dtype=tf.float32)
    image = tf.image.resize_with_pad(image, image_size, image_size, antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)


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
    check_range("image_size", image_size, 32, 1024, types=int)
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


# --- the whole stage -----------------------------------------------------------------------------


def preprocess(config: PreprocessConfig, manifest_path: str | Path | None = None) -> dict:
    """Run the data stage: index, audit, de-duplicate, split, write the manifest.

    Args:
        config: Validated stage parameters.
        manifest_path: Destination CSV; defaults to `config.MANIFEST_PATH`.

    Returns:
        Dict with `index`, `audit`, `pairs`, `duplicates` (summary table), `threshold_check`,
        `similarity_check` (label agreement of re-windowed pairs per similarity cut), `sources`
        (class × likely source), `shortcut` (what non-anatomical cues predict, `btc.shortcut`),
        `manifest`, `report` (JSON-ready), `manifest_path` and `seconds` per step.

    Raises:
        DataError: If the data folder cannot be indexed.
    """
    from btc.config import MANIFEST_PATH

    seconds = {}
    start = time.perf_counter()
    index = index_dataset(config.data_dir, config.sample_per_class, config.seed, config.workers)
    seconds["index"] = time.perf_counter() - start
    start = time.perf_counter()
    pairs, groups = dedup.find_duplicates(index, config.near_threshold, config.rewindow_similarity)
    seconds["duplicates"] = time.perf_counter() - start
    manifest, report = split_dataset(index, groups, config)
    path = Path(manifest_path or MANIFEST_PATH)
    summary = dedup.duplicate_summary(pairs)
    report.update(
        duplicate_pairs={k: int(v) for k, v in summary["total"].items()},
        duplicate_pairs_by_split=json.loads(summary.drop(columns="same label").to_json()),
        duplicate_groups=int(groups.value_counts().gt(1).sum()),
        images_in_duplicate_groups=int(groups.map(groups.value_counts()).gt(1).sum()),
    )
    info = {"params": config.to_dict(), "inputs_sha256": inputs_hash(index), "report": report}
    write_manifest(manifest, path, info)
    seconds["total"] = sum(seconds.values())
    return {"index": index, "audit": audit(index), "pairs": pairs, "duplicates": summary,
            "threshold_check": dedup.threshold_check(index),
            "similarity_check": dedup.similarity_check(index, config.near_threshold),
            "sources": pd.crosstab(manifest["class"], manifest["source"]),
            "shortcut": shortcut.shortcut_size(index, manifest, seed=config.seed), "manifest": manifest, "report": report,
            "manifest_path": path, "seconds": seconds}  # fmt: skip
