"""Tests of btc.plots: every figure is built from small generated data and saved as a real PNG."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from btc import plots
from btc.config import CLASS_NAMES
from tests import images


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def scans(tmp_path) -> pd.DataFrame:
    """Two generated scans per class (one RGB PNG each), as manifest rows."""
    rows = []
    for c, name in enumerate(CLASS_NAMES):
        for k, (fmt, mode) in enumerate([("JPEG", None), ("PNG", "RGB")]):
            path = images.save(tmp_path / name / f"{k}.{fmt.lower()}",
                               images.brain_like(96 + 8 * k, seed=10 * c + k), fmt, mode)  # fmt: skip
            rows.append({"path": str(path), "class": name, "split": ["train", "test"][k],
                         "width": 96 + 8 * k, "height": 96 + 8 * k, "mode": mode or "L"})  # fmt: skip
    return pd.DataFrame(rows)


def _png_size(path) -> tuple[int, int]:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_save_writes_a_png_atomically_and_to_png_closes_the_figure(tmp_path):
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    path = tmp_path / "deep" / "line.png"
    assert plots.save(fig, path) is fig and plots.save(fig, None) is fig
    assert _png_size(path)[0] > 100
    assert [p.name for p in path.parent.iterdir()] == ["line.png"]  # no temporary file left
    data = plots.to_png(fig)
    assert Image.open(io.BytesIO(data)).format == "PNG" and not plt.fignum_exists(fig.number)


def test_load_gray_converts_colour_and_thumbnails(scans):
    rgb = scans[scans["mode"] == "RGB"].iloc[0]
    gray = plots.load_gray(rgb["path"])
    assert gray.dtype == np.uint8 and gray.shape == (rgb["height"], rgb["width"])
    assert max(plots.load_gray(rgb["path"], 32).shape) <= 32


def test_class_distribution_counts_every_image_per_class_and_split(scans, tmp_path):
    fig = plots.class_distribution(scans, tmp_path / "dist.png")
    heights = [bar.get_height() for bar in fig.axes[0].patches if bar.get_height() > 0]
    assert sum(heights) == len(scans) and set(heights) == {1}
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(CLASS_NAMES)
    assert _png_size(tmp_path / "dist.png")[0] > 300


def test_sample_grid_titles_each_image_with_size_and_mode(scans, tmp_path):
    fig = plots.sample_grid(scans, per_class=3, path=tmp_path / "grid.png")
    assert len(fig.axes) == 3 * len(CLASS_NAMES)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == len(scans)  # 2 scans per class: the third column stays empty
    assert any("104×104 RGB" in t for t in titles) and any("96×96 L" in t for t in titles)
    assert (tmp_path / "grid.png").is_file()


def test_duplicate_examples_shows_each_pair_side_by_side(scans, tmp_path):
    a, b = scans["path"].iloc[0], scans["path"].iloc[1]
    pairs = pd.DataFrame([
        {"path_a": a, "path_b": b, "kind": "near", "distance": 2, "similarity": np.nan,
         "class_a": "glioma", "class_b": "glioma", "split_a": "Training", "split_b": "Testing"},
        {"path_a": b, "path_b": a, "kind": "rewindowed", "distance": 8, "similarity": 0.981,
         "class_a": "glioma", "class_b": "glioma", "split_a": "", "split_b": ""},
    ])  # fmt: skip
    fig = plots.duplicate_examples(pairs, per_kind=2, path=tmp_path / "pairs.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 4 and titles[0].startswith("near (d=2) · Training")
    assert "rewindowed (d=8, r=0.981) · folder" in titles[2]


def test_training_curves_mark_where_each_later_phase_starts(tmp_path):
    history = pd.DataFrame({"accuracy": [0.4, 0.6, 0.7], "val_accuracy": [0.3, 0.5, 0.6],
                            "loss": [1.2, 0.9, 0.7], "val_loss": [1.3, 1.0, 0.9]})  # fmt: skip
    fig = plots.training_curves(history, [2], "cnn", tmp_path / "curves.png")
    for ax in fig.axes:
        assert len(ax.lines) == 3  # train, validation and the phase line
        assert ax.lines[-1].get_xdata()[0] == 2.5
    assert [ax.get_title() for ax in fig.axes] == ["cnn accuracy", "cnn loss"]


def test_confusion_matrices_show_counts_and_row_rates(tmp_path):
    labels, predictions = [0, 0, 1, 2, 3, 3], [0, 1, 1, 2, 3, 0]
    fig = plots.confusion_matrices(labels, predictions, CLASS_NAMES, "cnn", tmp_path / "cm.png")
    counts = [t.get_text() for t in fig.axes[0].texts]
    rates = [t.get_text() for t in fig.axes[1].texts]
    assert counts[:2] == ["1", "1"] and counts[-4:] == ["1", "0", "0", "1"]
    assert rates[:2] == ["0.50", "0.50"] and rates[5] == "1.00"
    assert fig.axes[1].get_title() == "cnn — row-normalised"


def test_reliability_roc_and_risk_coverage_have_one_panel_per_input(tmp_path):
    table = pd.DataFrame({"lower": [0.0, 0.5], "upper": [0.5, 1.0], "accuracy": [0.3, 0.9],
                          "confidence": [0.4, 0.8]})  # fmt: skip
    fig = plots.reliability_diagram([table, table], ["before", "after"], "cnn", tmp_path / "r.png")
    assert [ax.get_title() for ax in fig.axes] == ["cnn\nbefore", "cnn\nafter"]
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 5)
    perfect = np.eye(4)[labels] * 0.9 + 0.025
    probs = {"cnn": perfect, "noise": rng.dirichlet(np.ones(4), len(labels))}
    fig = plots.roc_curves(labels, probs, CLASS_NAMES, "", tmp_path / "roc.png")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == [f"{c} (AUC 1.000)" for c in CLASS_NAMES] and len(fig.axes) == 2
    points = {"cnn": {"aurc": 0.05, "coverage": 0.8, "accuracy_at_coverage": 0.97}}
    fig = plots.risk_coverage({"cnn": ([0.2, 0.5, 1.0], [0.0, 0.02, 0.1])}, points, 0.02,
                              tmp_path / "rc.png")  # fmt: skip
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == "cnn (AURC 0.050)"
    assert all(_png_size(tmp_path / f)[0] > 200 for f in ("r.png", "roc.png", "rc.png"))


def test_error_gallery_shows_the_most_confident_mistakes(scans, tmp_path):
    labels = np.array([CLASS_NAMES.index(c) for c in scans["class"]])
    probs = np.eye(4)[labels] * 0.7 + 0.075
    probs[0] = [0.05, 0.9, 0.025, 0.025]  # a glioma called meningioma at 90 %
    fig = plots.error_gallery(scans, labels, probs, CLASS_NAMES, "cnn", tmp_path / "errors.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "true glioma\npred meningioma 90%"
    assert [t.get_text() for t in fig.axes[4].texts] == ["no meningioma errors"]
    assert fig._suptitle.get_text() == "cnn: most confident mistakes"


def test_saliency_overlay_has_the_scan_and_one_panel_per_method(tmp_path):
    image = np.repeat(images.brain_like(64)[..., None] / 255.0, 3, axis=-1)
    maps = {"gradcam": np.zeros((64, 64)), "smoothgrad": np.ones((64, 64))}
    fig = plots.saliency_overlay(image, maps, "cnn · glioma", path=tmp_path / "s.png")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["scan", "gradcam", "smoothgrad"]
    assert len(fig.axes) == 3 + 2  # one colour bar per method
    assert panels[1].images[1].get_clim() == (0, 1)  # maps shown as computed, no rescaling


def test_sanity_curves_draw_each_method_and_the_pass_line(tmp_path):
    table = pd.DataFrame({"method": ["gradcam"] * 3 + ["saliency"] * 3,
                          "fraction": [0.0, 0.5, 1.0] * 2,
                          "spearman": [1.0, 0.4, 0.1, 1.0, 0.8, 0.7]})  # fmt: skip
    fig = plots.sanity_curves(table, "cnn", tmp_path / "sanity.png")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["gradcam", "saliency", "pass threshold"]
    assert fig.axes[0].get_title() == "cnn cascading randomisation"
