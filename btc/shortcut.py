"""The source shortcut, measured: each image's likely source, and what non-anatomical cues predict.

The Kaggle set was assembled from three sources, one per class or so: "no tumour" is Br35H, the
tumour classes are figshare (Cheng et al.: 3064 T1-weighted contrast-enhanced 512×512 grayscale
slices) and SARTAJ (RGB JPEGs of various sizes). A network can score well by recognising the
source from framing, size and exposure instead of finding a tumour. `shortcut_size` trains a
trivial model on such cues only — no anatomy — and reports how well it predicts the class on the
test split: that number is the size of the shortcut a CNN can take.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

CUE_NAMES = [f"hist_{i}" for i in range(16)] + ["border_mean", "dark_fraction", "mean", "std"]
SOURCES = ("br35h", "figshare", "sartaj")


def image_cues(gray: np.ndarray) -> np.ndarray:
    """Non-anatomical cues of one grayscale image (uint8): intensity histogram, border, exposure.

    Args:
        gray: `(H, W)` uint8 array (any size).

    Returns:
        Float32 vector in the order of `CUE_NAMES`.
    """
    g = np.asarray(gray, dtype=np.float32)
    hist = np.histogram(g, bins=16, range=(0, 256))[0] / g.size
    h, w = g.shape
    bh, bw = max(1, h // 10), max(1, w // 10)
    border = np.concatenate(
        [g[:bh].ravel(), g[-bh:].ravel(), g[:, :bw].ravel(), g[:, -bw:].ravel()]
    )
    return np.array([*hist, border.mean() / 255, (g < 10).mean(), g.mean() / 255, g.std() / 255],
                    dtype=np.float32)  # fmt: skip


def likely_source(index: pd.DataFrame) -> pd.Series:
    """Each image's likely source, from what the dataset documents and what the files show.

    "no tumour" images are Br35H's "no" folder; 512×512 grayscale tumour slices are figshare
    (3064 such slices in the source; 3049 here); the other tumour images (RGB JPEGs, various
    sizes) are SARTAJ. A heuristic, not a provenance record.

    Args:
        index: `btc.data.index_dataset` output (`class`, `width`, `height`, `mode`).

    Returns:
        Series of `SOURCES` values aligned with `index`.
    """
    figshare = (index["width"] == 512) & (index["height"] == 512) & (index["mode"] == "L")
    return pd.Series(
        np.where(index["class"] == "notumor", "br35h", np.where(figshare, "figshare", "sartaj")),
        index=index.index,
        name="source",
    )


def cue_features(index: pd.DataFrame, kinds=("size", "file", "intensity")) -> pd.DataFrame:
    """Feature table of non-anatomical cues: image size, file encoding and intensity statistics."""
    parts = []
    if "size" in kinds:
        parts.append(pd.DataFrame({"width": index["width"], "height": index["height"],
                                   "aspect": index["width"] / index["height"]}))  # fmt: skip
    if "file" in kinds:
        parts.append(pd.DataFrame({
            "bytes_per_pixel": index["bytes"] / (index["width"] * index["height"]),
            "png": (index["format"] == "png").astype(float),
            "rgb": index["mode"].isin(["RGB", "RGBA", "P"]).astype(float),
        }))  # fmt: skip
    if "intensity" in kinds:
        cues = np.stack([np.frombuffer(c, dtype=np.float32) for c in index["cues"]])
        parts.append(pd.DataFrame(cues, columns=CUE_NAMES, index=index.index))
    return pd.concat(parts, axis=1).set_axis(index.index)


def shortcut_size(
    index: pd.DataFrame, manifest: pd.DataFrame, n_bootstrap: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """How well cues with no anatomy predict the class: a gradient-boosted trivial model.

    Trained on the manifest's train split, scored on its test split (accuracy with a 95 %
    bootstrap CI), for each cue family alone and all together. Chance is about 25 %.

    Args:
        index: Index of the same run (with `cues`).
        manifest: Its manifest (`path`, `class`, `split`).
        n_bootstrap: Bootstrap resamples.
        seed: Model and bootstrap seed.

    Returns:
        Table with `cues`, `test_accuracy`, `ci_low`, `ci_high`, `n_test`.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    rows = index[index["readable"]].set_index("path").loc[manifest["path"]].reset_index()
    labels = manifest["class"].to_numpy()
    train, test = (
        (manifest["split"] == "train").to_numpy(),
        (manifest["split"] == "test").to_numpy(),
    )
    rng = np.random.default_rng(seed)
    resample = rng.integers(0, test.sum(), (n_bootstrap, test.sum()))
    out = []
    for kinds in [("size",), ("file",), ("intensity",), ("size", "file", "intensity")]:
        x = cue_features(rows, kinds).to_numpy()
        model = HistGradientBoostingClassifier(max_iter=200, random_state=seed)
        # One thread: OpenMP workers spin-wait, and on a busy 2-core machine that turned seconds
        # into tens of minutes (01 of the cpu preset, load 10). Single-threaded it takes seconds.
        with threadpool_limits(1):
            right = model.fit(x[train], labels[train]).predict(x[test]) == labels[test]
        lo, hi = np.percentile(right[resample].mean(1), [2.5, 97.5])
        out.append({"cues": " + ".join(kinds), "test_accuracy": round(float(right.mean()), 4),
                    "ci_low": round(float(lo), 4), "ci_high": round(float(hi), 4),
                    "n_test": int(test.sum())})  # fmt: skip
    return pd.DataFrame(out)
