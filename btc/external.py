"""External validation: tumour scans from the "no tumour" class's own source (Br35H), with boxes.

The Kaggle set's notumor class comes from Br35H, its tumour classes mostly from figshare and
SARTAJ, so a model can score well internally by recognising the source. Br35H scans *with* a
tumour expose that: a model that learned "looks like Br35H → no tumour" misses them.

Data side (01): `prepare_external` indexes a flat folder of images with YOLO box files,
groups near-copies (they are many), drops every image that has a copy in the Kaggle set, and
splits the rest **by group** into `train` (usable in training as "tumour, type unknown") and
`test` (held out for the external numbers), written to `data/processed/external.csv`.

Model side (03): `tumour_sensitivity` (group-bootstrap CI) and `box_scores` (saliency pointing
game and energy inside the box, against an image-centre baseline).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from btc import data, dedup, images
from btc.config import EXTERNAL_PATH, UNKNOWN_TUMOUR, atomic_path, check_range

EXTERNAL_COLUMNS = ["path", "sha256", "class", "split", "group", "width", "height", "boxes"]


def read_boxes(path: str | Path) -> list[list[float]]:
    """Read YOLO boxes (`class cx cy w h`, normalised) from a `.txt` file; `[]` if absent.

    Raises:
        ValueError: If a line is not five numbers, naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    boxes = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            values = [float(v) for v in parts]
        except ValueError:
            values = []
        if len(values) != 5:
            raise ValueError(f"{path}:{number}: expected `class cx cy w h`. Received: {line!r}")
        boxes.append(values[1:])
    return boxes


def prepare_external(
    external_dir: str | Path,
    kaggle_index: pd.DataFrame,
    seed: int = 42,
    train_fraction: float = 0.5,
    near_threshold: int = 4,
    rewindow_similarity: float = dedup.DEFAULT_SIMILARITY,
) -> tuple[pd.DataFrame, dict]:
    """Index, de-duplicate and group-split an external folder of tumour scans with boxes.

    Args:
        external_dir: Folder with `images/*.jpg|png` and one YOLO `.txt` per image (or the
            images directly in the folder).
        kaggle_index: `btc.data.index_dataset` of the Kaggle set; external images with a copy
            (exact, near, mirrored or re-windowed) there are dropped.
        seed: Seed of the group split.
        train_fraction: Share of the external images (by group) usable for training; the
            rest is the external test set. `0` keeps everything for testing.
        near_threshold: pHash threshold of `btc.dedup.find_duplicates`.
        rewindow_similarity: Similarity cut of `btc.dedup.find_duplicates`.

    Returns:
        `(frame, report)`: `frame` has `EXTERNAL_COLUMNS` (`class` is `"tumour"`, `boxes` a
        JSON list of `[cx, cy, w, h]`); `report` counts images, groups, drops and splits.

    Raises:
        FileNotFoundError: If the folder holds no images.
    """
    check_range("train_fraction", train_fraction, 0.0, 0.9)
    root = Path(external_dir)
    folder = root / "images" if (root / "images").is_dir() else root
    paths = sorted(p for p in folder.glob("*") if p.suffix.lower() in images.IMAGE_EXTENSIONS)
    if not paths:
        raise FileNotFoundError(
            f"`external_dir` holds no images (expected images/*.jpg with YOLO .txt boxes). "
            f"Received: external_dir={str(root)!r}"
        )
    rows = [{"path": str(p), "class": UNKNOWN_TUMOUR, "official_split": "external",
             **data.inspect_image(p)} for p in paths]  # fmt: skip
    ext = pd.DataFrame(rows)[data.INDEX_COLUMNS]
    report: dict = {"images": len(ext), "unreadable": int((~ext.readable).sum())}
    ext = ext[ext.readable]
    both = pd.concat([kaggle_index[kaggle_index.readable], ext], ignore_index=True)
    _, groups = dedup.find_duplicates(both, near_threshold, rewindow_similarity)
    both["group"] = groups.to_numpy()
    kaggle_groups = set(both.loc[both.official_split != "external", "group"])
    ext = both[both.official_split == "external"].copy()
    copies = ext["group"].isin(kaggle_groups)
    report["dropped_copy_of_kaggle"] = int(copies.sum())
    ext = ext[~copies].drop_duplicates("sha256")
    report["groups"] = int(ext["group"].nunique())
    rng = np.random.default_rng(seed)
    sizes = ext.groupby("group").size()
    order = sizes.index[rng.permutation(len(sizes))]
    cumulative = sizes.loc[order].cumsum() / sizes.sum()
    train_groups = set(order[cumulative.to_numpy() <= train_fraction])
    ext["split"] = np.where(ext["group"].isin(train_groups), "train", "test")
    ext["group"] = "ext-" + ext["group"].astype(str)
    ext["boxes"] = [json.dumps(read_boxes(Path(p).with_suffix(".txt"))) for p in ext["path"]]
    frame = ext[EXTERNAL_COLUMNS].sort_values("path").reset_index(drop=True)
    report["split_images"] = frame["split"].value_counts().to_dict()
    report["split_groups"] = frame.groupby("split")["group"].nunique().to_dict()
    return frame, report


def write_external(frame: pd.DataFrame, path: str | Path = EXTERNAL_PATH) -> Path:
    """Write the external manifest atomically and return its path."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def load_external(path: str | Path = EXTERNAL_PATH) -> pd.DataFrame | None:
    """Read the external manifest, or `None` when 01 wrote none (no external folder)."""
    path = Path(path)
    if not path.is_file():
        return None
    return pd.read_csv(path, keep_default_na=False)


def group_bootstrap(
    hits: np.ndarray, groups: np.ndarray, n_resamples: int = 1000, seed: int = 0
) -> list[float]:
    """95 % percentile CI of a mean over images, resampling whole groups (near-copies).

    Args:
        hits: `(n,)` per-image values (e.g. 1 if a tumour was found).
        groups: `(n,)` group id per image.
        n_resamples: Bootstrap resamples.
        seed: Resampling seed.

    Returns:
        `[low, high]`.
    """
    codes, _ = pd.factorize(pd.Series(groups))
    sums = np.bincount(codes, weights=hits.astype(float))
    counts = np.bincount(codes)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(counts), size=(n_resamples, len(counts)))
    means = sums[pick].sum(1) / counts[pick].sum(1)
    return [round(float(v), 6) for v in np.percentile(means, [2.5, 97.5])]


def tumour_sensitivity(
    probs: np.ndarray, groups: np.ndarray, class_names, n_resamples: int = 1000, seed: int = 0
) -> dict:
    """Share of external tumour scans not called "no tumour", with a group-bootstrap CI.

    Args:
        probs: `(n, classes)` calibrated probabilities in `class_names` order.
        groups: `(n,)` near-copy group per image.
        class_names: Class order of `probs`.
        n_resamples: Bootstrap resamples.
        seed: Resampling seed.

    Returns:
        `{"sensitivity", "ci", "images", "groups", "called": {class: count}}`.
    """
    pred = np.asarray(class_names)[probs.argmax(1)]
    hits = pred != "notumor"
    return {
        "sensitivity": round(float(hits.mean()), 6),
        "ci": group_bootstrap(hits, groups, n_resamples, seed),
        "images": int(len(hits)),
        "groups": int(len(set(groups))),
        "called": {c: int((pred == c).sum()) for c in class_names},
    }


def box_masks(frame: pd.DataFrame, image_size: int) -> np.ndarray:
    """Boolean `(n, size, size)` masks of the tumour boxes, in the pipeline's padded square.

    The pipeline scales each image to fit `image_size` and pads it centred
    (`tf.image.resize_with_pad`), so the normalised boxes are mapped the same way.
    """
    masks = np.zeros((len(frame), image_size, image_size), dtype=bool)
    for k, (w, h, boxes) in enumerate(zip(frame.width, frame.height, frame.boxes)):
        scale = image_size / max(w, h)
        pad_x, pad_y = (image_size - w * scale) / 2, (image_size - h * scale) / 2
        for cx, cy, bw, bh in json.loads(boxes) if isinstance(boxes, str) else boxes:
            x0 = int(np.floor(pad_x + (cx - bw / 2) * w * scale))
            x1 = int(np.ceil(pad_x + (cx + bw / 2) * w * scale))
            y0 = int(np.floor(pad_y + (cy - bh / 2) * h * scale))
            y1 = int(np.ceil(pad_y + (cy + bh / 2) * h * scale))
            masks[k, max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
    return masks


def box_scores(maps: np.ndarray, masks: np.ndarray) -> dict:
    """Pointing game and energy-in-box of saliency maps, against an image-centre baseline.

    Pointing game: the map's peak falls inside a tumour box. Energy: the share of the map's
    (non-negative) mass inside the boxes. The baseline points at the image centre and spreads
    its energy as a centred Gaussian (σ = a quarter of the side).

    Args:
        maps: `(n, size, size)` saliency maps.
        masks: `(n, size, size)` boolean box masks (`box_masks`).

    Returns:
        `{"pointing", "energy", "centre_pointing", "centre_energy", "box_area"}` (means), plus
        per-image `"pointing_hits"` for CIs.
    """
    n, size = masks.shape[0], masks.shape[1]
    flat = maps.reshape(n, -1)
    peaks = flat.argmax(1)
    hits = masks.reshape(n, -1)[np.arange(n), peaks]
    mass = np.clip(flat, 0, None)
    energy = (mass * masks.reshape(n, -1)).sum(1) / np.maximum(mass.sum(1), 1e-12)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    blob = np.exp(-(xx**2 + yy**2) / (2 * (size / 4) ** 2)).ravel()
    centre_energy = (masks.reshape(n, -1) * blob).sum(1) / blob.sum()
    centre_hits = masks[:, size // 2, size // 2]
    return {
        "pointing": round(float(hits.mean()), 6),
        "energy": round(float(energy.mean()), 6),
        "centre_pointing": round(float(centre_hits.mean()), 6),
        "centre_energy": round(float(centre_energy.mean()), 6),
        "box_area": round(float(masks.reshape(n, -1).mean()), 6),
        "pointing_hits": hits.astype(int).tolist(),
        "centre_hits": centre_hits.astype(int).tolist(),
    }


def preprocess_external(config, index: pd.DataFrame, manifest_path: str | Path) -> dict | None:
    """The external part of 01: prepare the external set and write it beside the manifest.

    Args:
        config: The data stage's `PreprocessConfig` (`external_dir`, `seed`, thresholds).
        index: The Kaggle index of the same run (`btc.data.preprocess(...)["index"]`).
        manifest_path: The manifest CSV; `external.csv` is written in the same folder.

    Returns:
        The report of `prepare_external` plus `path`, or `None` when `external_dir` does not
        exist (nothing is written then).
    """
    if not Path(config.external_dir).is_dir():
        return None
    frame, report = prepare_external(
        config.external_dir, index, config.seed, config.external_train_fraction,
        config.near_threshold, config.rewindow_similarity,
    )  # fmt: skip
    report["path"] = str(write_external(frame, Path(manifest_path).with_name("external.csv")))
    return report


def training_rows(manifest_path: Path | None, repeat: int = 1) -> pd.DataFrame:
    """The external set's `train` rows beside a manifest, as manifest rows (empty if none).

    Args:
        manifest_path: The manifest CSV; `external.csv` is read from the same folder.
        repeat: Repeat each row this many times (they are few next to the Kaggle images).

    Returns:
        Rows with `path`, `class` (`"tumour"`), `split` (`"train"`), `group`, `sha256`.
    """
    path = Path(manifest_path).with_name("external.csv") if manifest_path else None
    if path is None or not path.is_file():
        return pd.DataFrame(columns=["path", "class", "split", "group", "sha256"])
    ext = pd.read_csv(path, keep_default_na=False)
    rows = ext[ext.split == "train"][["path", "class", "split", "group", "sha256"]]
    return pd.concat([rows] * repeat, ignore_index=True)
