"""Figures shown by the notebooks and saved under `results/` (matplotlib + seaborn).

Every function returns the `Figure` and, given `path`, also saves it atomically as PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from PIL import Image

from btc.config import CLASS_NAMES, atomic_path


def save(fig: plt.Figure, path: str | Path | None, dpi: int = 110) -> plt.Figure:
    """Save `fig` atomically as PNG when `path` is given and return it."""
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return fig


def to_png(fig: plt.Figure, dpi: int = 100) -> bytes:
    """Render a figure to PNG bytes and close it."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def load_gray(path: str | Path, size: int | None = None) -> np.ndarray:
    """Load an image file as a uint8 grayscale array, optionally thumbnailed to `size`."""
    from btc.images import to_grayscale

    with Image.open(path) as img:
        if size:
            img.draft(img.mode, (size, size))
        gray = to_grayscale(img)
        if size:
            gray.thumbnail((size, size))
        return np.asarray(gray)


def class_distribution(manifest: pd.DataFrame, path: str | Path | None = None) -> plt.Figure:
    """Bar chart of images per class and split (or official split for an index)."""
    hue = "split" if "split" in manifest else "official_split"
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.countplot(data=manifest, x="class", hue=hue, order=CLASS_NAMES, ax=ax)
    ax.set(title="Images per class", xlabel="", ylabel="images")
    for container in ax.containers:
        ax.bar_label(container, fontsize=7)
    return save(fig, path)


def sample_grid(
    frame: pd.DataFrame, per_class: int = 5, seed: int = 0, path: str | Path | None = None
) -> plt.Figure:
    """Grid of random images per class (rows), titled with size and colour mode."""
    fig, axes = plt.subplots(
        len(CLASS_NAMES), per_class, figsize=(2 * per_class, 2.1 * len(CLASS_NAMES))
    )
    axes = np.atleast_2d(axes)
    for r, name in enumerate(CLASS_NAMES):
        rows = frame[frame["class"] == name]
        rows = rows.sample(min(per_class, len(rows)), random_state=seed) if len(rows) else rows
        for c in range(per_class):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(rows):
                row = rows.iloc[c]
                ax.imshow(load_gray(row["path"], 256), cmap="gray")
                extra = f"{row['width']}×{row['height']} {row['mode']}" if "width" in row else ""
                ax.set_title(f"{name}\n{extra}", fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def duplicate_examples(
    pairs: pd.DataFrame, per_kind: int = 2, seed: int = 0, path: str | Path | None = None
) -> plt.Figure:
    """Show example duplicate pairs of each kind (exact, near, mirrored, re-windowed) side by side."""
    kinds = [k for k in ("exact", "near", "mirrored", "rewindowed") if (pairs["kind"] == k).any()]
    rows = [
        r
        for k in kinds
        for _, r in pairs[pairs["kind"] == k]
        .sample(min(per_kind, int((pairs["kind"] == k).sum())), random_state=seed)
        .iterrows()
    ]
    fig, axes = plt.subplots(max(len(rows), 1), 2, figsize=(5, 2.4 * max(len(rows), 1)))
    axes = np.atleast_2d(axes)
    for ax_row, row in zip(axes, rows):
        for ax, side in zip(ax_row, "ab"):
            ax.imshow(load_gray(row[f"path_{side}"], 256), cmap="gray")
            ax.axis("off")
            ax.set_title(
                f"{row['kind']} (d={row['distance']}"
                + (f", r={row['similarity']:.3f}" if pd.notna(row.get("similarity")) else "")
                + f") · {row[f'split_{side}'] or 'folder'}\n"
                f"{row[f'class_{side}']} · {Path(row[f'path_{side}']).name}",
                fontsize=7,
            )
    fig.tight_layout()
    return save(fig, path)


def augmentation_preview(
    dataset, n: int = 6, path: str | Path | None = None, title: str = "Training augmentation"
) -> plt.Figure:
    """Show `n` images of one batch of a `make_dataset` training dataset."""
    images, labels = next(iter(dataset))
    n = min(n, len(labels))
    fig, axes = plt.subplots(1, n, figsize=(2 * n, 2.3))
    for i, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(images[i].numpy()[..., 0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(CLASS_NAMES[int(labels[i])], fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def training_curves(
    history: pd.DataFrame, phase_starts: Sequence[int] = (), title: str = "",
    path: str | Path | None = None,
) -> plt.Figure:  # fmt: skip
    """Accuracy and loss, train vs validation, with a line where each later phase starts."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = np.arange(1, len(history) + 1)
    for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.plot(epochs, history[metric], marker="o", label="train")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], marker="o", label="validation")
        for start in phase_starts:
            ax.axvline(start + 0.5, color="grey", linestyle="--", linewidth=1)
            ax.text(start + 0.6, ax.get_ylim()[1], "fine-tune", fontsize=7, va="top")
        ax.set(xlabel="epoch", ylabel=metric, title=f"{title} {metric}".strip())
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def confusion_matrices(
    labels, predictions, class_names, title: str = "", path: str | Path | None = None
) -> plt.Figure:
    """Confusion matrix as counts and row-normalised (sensitivity on the diagonal)."""
    from sklearn.metrics import confusion_matrix

    counts = confusion_matrix(labels, predictions, labels=range(len(class_names)))
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, matrix, fmt, name in (
        (axes[0], counts, "d", "counts"),
        (axes[1], rates, ".2f", "row-normalised"),
    ):
        sns.heatmap(matrix, annot=True, fmt=fmt, cmap="Blues", cbar=False, ax=ax,
                    xticklabels=class_names, yticklabels=class_names)  # fmt: skip
        ax.set(xlabel="predicted", ylabel="true", title=f"{title} — {name}".strip(" —"))
    fig.tight_layout()
    return save(fig, path)


def reliability_diagram(
    tables: Sequence[pd.DataFrame], names: Sequence[str], title: str = "",
    path: str | Path | None = None,
) -> plt.Figure:  # fmt: skip
    """Accuracy vs confidence per bin, one panel per table (e.g. before/after calibration)."""
    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 4), squeeze=False)
    for ax, table, name in zip(axes[0], tables, names):
        width = table["upper"] - table["lower"]
        ax.bar(table["lower"], table["accuracy"], width=width, align="edge", alpha=0.7,
               edgecolor="k", label="accuracy")  # fmt: skip
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.plot(table["confidence"], table["accuracy"], "o", color="C3", label="bin mean conf.")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"{title}\n{name}".strip())  # fmt: skip
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return save(fig, path)


def roc_curves(labels, probs: dict, class_names, title: str = "", path=None) -> plt.Figure:
    """One-vs-rest ROC curve per class, one panel per model."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, axes = plt.subplots(1, len(probs), figsize=(4.2 * len(probs), 4), squeeze=False)
    for ax, (name, p) in zip(axes[0], probs.items()):
        for c, cls in enumerate(class_names):
            truth = np.asarray(labels) == c
            if 0 < truth.sum() < len(truth):
                fpr, tpr, _ = roc_curve(truth, p[:, c])
                ax.plot(fpr, tpr, label=f"{cls} (AUC {roc_auc_score(truth, p[:, c]):.3f})")
        ax.plot([0, 1], [0, 1], "--", color="grey")
        ax.set(xlabel="1 − specificity", ylabel="sensitivity", title=f"{title}{name}")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save(fig, path)


def error_gallery(
    rows: pd.DataFrame, labels, probs, class_names, title: str = "", path=None, per_class: int = 4
) -> plt.Figure:
    """The most confident mistakes per true class, titled with truth, prediction, confidence."""
    pred, conf = probs.argmax(1), probs.max(1)
    fig, axes = plt.subplots(len(class_names), per_class, figsize=(2.2 * per_class, 2.4 * len(class_names)),
                             squeeze=False)  # fmt: skip
    for c, cls in enumerate(class_names):
        wrong = np.flatnonzero((np.asarray(labels) == c) & (pred != c))
        wrong = wrong[np.argsort(-conf[wrong])][:per_class]
        for j, ax in enumerate(axes[c]):
            ax.axis("off")
            if j < len(wrong):
                i = wrong[j]
                ax.imshow(load_gray(rows.loc[i, "path"], 256), cmap="gray")
                ax.set_title(f"true {cls}\npred {class_names[pred[i]]} {conf[i]:.0%}", fontsize=7)
            elif j == 0:
                ax.text(0.5, 0.5, f"no {cls} errors", ha="center", va="center", fontsize=8)
    fig.suptitle(f"{title}: most confident mistakes".strip(": "), fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def all_training_curves(histories: dict[str, pd.DataFrame], path=None) -> plt.Figure:
    """Validation accuracy and loss of every model, with fine-tuning starts marked."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for i, (name, h) in enumerate(histories.items()):
        epochs = np.arange(1, len(h) + 1)
        for ax, metric in zip(axes, ("accuracy", "loss")):
            ax.plot(epochs, h[f"val_{metric}"], marker="o", color=f"C{i}", label=f"{name} val")
            ax.plot(epochs, h[metric], linestyle=":", color=f"C{i}", label=f"{name} train")
            if "phase" in h and (h["phase"] == "finetune").any():
                ax.axvline(
                    int(np.argmax(h["phase"] == "finetune")) + 0.5,
                    color=f"C{i}",
                    linestyle="--",
                    lw=1,
                )
    for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.set(xlabel="epoch", ylabel=metric, title=f"training curves — {metric}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def saliency_overlay(
    image: np.ndarray, maps: dict[str, np.ndarray], title: str = "", cmap: str = "jet",
    alpha: float = 0.45, path: str | Path | None = None,
) -> plt.Figure:  # fmt: skip
    """The grayscale scan, then one overlay per saliency method, each with a colour bar.

    No mask or threshold is applied: the colour shows the map as computed ([0, 1]; in `jet`,
    red = strongest evidence for the target class, blue = none).
    """
    gray = np.asarray(image)[..., 0] if np.asarray(image).ndim == 3 else np.asarray(image)
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3.1 * (len(maps) + 1), 3.3))
    axes[0].imshow(gray, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title("scan", fontsize=8)
    for ax, (name, m) in zip(axes[1:], maps.items()):
        ax.imshow(gray, cmap="gray", vmin=0, vmax=1)
        shown = ax.imshow(m, cmap=cmap, alpha=alpha, vmin=0, vmax=1)
        ax.set_title(name, fontsize=8)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def sanity_curves(table: pd.DataFrame, title: str = "", path=None) -> plt.Figure:
    """Spearman correlation with the trained maps vs share of layers randomised (top down)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method, rows in table.groupby("method"):
        ax.plot(rows["fraction"], rows["spearman"], marker="o", label=method)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="pass threshold")
    ax.set(xlabel="share of weighted layers re-initialised (from the top)", ylabel="Spearman ρ",
           ylim=(-0.2, 1.05), title=f"{title} cascading randomisation".strip())  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def risk_coverage(curves: dict, points: dict, target_error: float, path=None) -> plt.Figure:
    """Risk–coverage curves: error rate of the answered test scans against the share answered.

    Args:
        curves: `{name: (coverage, risk)}` (`btc.oodmetrics.risk_coverage`, most confident first).
        points: `{name: btc.ood.selective_metrics(...)}`; a dot marks each operating point.
        target_error: The error rate the confidence thresholds were fitted for (dashed line).
        path: Where to save the PNG.
    """
    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    for name, (coverage, risk) in curves.items():
        p = points[name]
        (line,) = ax.step(coverage, risk, where="post", label=f"{name} (AURC {p['aurc']:.3f})")
        if p["accuracy_at_coverage"] is not None:
            ax.plot(p["coverage"], 1 - p["accuracy_at_coverage"], "o", color=line.get_color())
    ax.axhline(target_error, ls="--", lw=0.8, c="gray", label=f"target error {target_error:.0%}")
    ax.set(xlabel="coverage (share of test scans answered)", ylabel="error rate of answered scans",
           xlim=(0, 1), ylim=(0, None), title="Selective prediction (dots: fitted thresholds)")  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)
