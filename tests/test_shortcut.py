"""Tests of btc.shortcut: image cues without anatomy, the likely source and the shortcut size."""

from __future__ import annotations

import numpy as np
import pytest

from btc import config, data, shortcut


def test_image_cues_see_border_and_exposure():
    framed = np.zeros((100, 100), np.uint8)
    framed[:10], framed[-10:] = 255, 255  # a bright frame, like a scanned film's border
    cues = dict(zip(shortcut.CUE_NAMES, shortcut.image_cues(framed)))
    assert abs(sum(cues[f"hist_{i}"] for i in range(16)) - 1) < 1e-6
    assert cues["border_mean"] > 0.3 and cues["dark_fraction"] == pytest.approx(0.8)
    assert shortcut.image_cues(255 - framed)[16] < cues["border_mean"]


def test_likely_source_and_shortcut_size_on_the_real_set(full_index, real_groups):
    sources = shortcut.likely_source(full_index)
    assert (sources[full_index["class"] == "notumor"] == "br35h").all()
    assert 3000 <= (sources == "figshare").sum() <= 3064  # the figshare set has 3064 slices
    manifest, _ = data.split_dataset(full_index, real_groups, config.PreprocessConfig())
    assert set(manifest["source"]) == set(shortcut.SOURCES)
    table = shortcut.shortcut_size(full_index, manifest, n_bootstrap=200).set_index("cues")
    everything = table.loc["size + file + intensity"]
    assert everything["ci_low"] > 0.5  # cues with no anatomy predict the class far above chance
    assert everything["test_accuracy"] >= table["test_accuracy"].max() - 0.05
