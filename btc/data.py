"""Data stage: index a raw folder, audit it, find duplicates, split without leakage.

Data flows one way: raw folder (never modified) → index table → duplicate groups → manifest
(`data/processed/manifest.csv`, read and written by `btc.datasets`) → tf.data. This module knows no
model and never imports TensorFlow, so indexing runs in worker processes cheaply.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from btc import dedup, oodct, shortcut
from btc.config import (
    CLASS_ALIASES,
    OFFICIAL_SPLITS,
    PreprocessConfig,
    canonical_class,
    check_range,
)
from btc.datasets import MANIFEST_COLUMNS, crossing_groups, write_manifest
from btc.images import read_checked

log = logging.getLogger(__name__)

INDEX_COLUMNS = [
    "path", "class", "official_split", "sha256", "width", "height", "mode", "format",
    "bytes", "readable", "error", "phash", "phash_mirror", "phash_eq", "phash_eq_mirror", "thumb_eq", "cues", "ct_like",
]  # fmt: skip


class DataError(ValueError):
    """A dataset folder that cannot be indexed (missing, empty or with unknown classes)."""


# --- 1. index ----------------------------------------------------------------------------------


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
                  phash_eq_mirror=None, thumb_eq=None, cues=None, ct_like=False)  # fmt: skip


def inspect_bytes(data: bytes) -> dict:
    """Like `inspect_image`, for the encoded bytes of an image (e.g. an upload)."""
    checked, gray = read_checked(data)
    row = {**_EMPTY_ROW, **checked}
    if gray is None:
        return row
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
    row["ct_like"] = oodct.ct_slice(data)
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
        class), `sizes` (width/height statistics per class), `unreadable` (path and reason),
        `ct_slices` (CT slices filed as MRI, `ct_like`, per class and official split).
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
    ct = ok.get("ct_like", pd.Series(False, index=ok.index)).astype(bool)
    ct_slices = pd.crosstab(ok["class"], split.where(ct, "not CT")).drop(
        columns="not CT", errors="ignore"
    )
    ct_slices["total"], ct_slices["share"] = (
        ct.groupby(ok["class"]).sum(),
        ct.groupby(ok["class"]).mean().round(4),
    )
    return {"counts": counts, "modes": modes, "formats": formats, "sizes": sizes,
            "unreadable": unreadable, "ct_slices": ct_slices}  # fmt: skip


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

    Byte-identical copies are reduced to one file first; label-conflict groups and the groups
    of CT slices (`ct_like`) are dropped when `config` says so. `grouped` mode pools all images and
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
    flagged = df.get("ct_like", pd.Series(False, index=df.index)).fillna(False).astype(bool)
    ct = df["group"].isin(df.loc[flagged, "group"])  # whole groups: copies may be re-windowed
    report["ct_slices"] = {"flagged": int(flagged.sum()), "in_their_groups": int(ct.sum()),
                           "by_class": df.loc[ct, "class"].value_counts().sort_index().to_dict(),
                           "policy": config.ct_slices, "paths": df.loc[ct, "path"].tolist()}  # fmt: skip
    if config.ct_slices == "drop":
        df = df[~ct]
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


def inputs_hash(index: pd.DataFrame) -> str:
    """Return a sha256 over the sorted (relative path, file sha256) pairs of an index."""
    digest = hashlib.sha256()
    for name, sha in sorted(zip(index["path"], index["sha256"].fillna(""))):
        digest.update(f"{Path(name).name}\t{sha}\n".encode())
    return digest.hexdigest()


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
