"""Tests of btc.explain on a synthetic task whose evidence region is known (`quadrant_model`: conftest)."""

from __future__ import annotations

import numpy as np
import pytest

from btc import explain, models
from tests.conftest import QUADRANT_MODEL


@pytest.mark.parametrize("method", ["gradcam", "smoothgrad"])
def test_maps_put_their_mass_on_the_evidence_quadrant(quadrant_model, method):
    model, x, y, masks = quadrant_model
    maps = explain.Explainer(model, models.get_spec(QUADRANT_MODEL).gradcam_layer)(x, y, method)
    assert maps.shape == x.shape[:3] and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    share = explain.mass_in_region(maps, masks)
    assert share.mean() > 0.5, share  # a quarter of the image holds most of the mass


def test_maps_beat_the_random_baseline_on_deletion(quadrant_model):
    model, x, y, _ = quadrant_model
    explainer = explain.Explainer(model, models.get_spec(QUADRANT_MODEL).gradcam_layer)
    table = explain.faithfulness_table(
        model, explainer, x[:12], y[:12], ["gradcam"], n_bootstrap=200
    )
    by = table.set_index("method")
    assert by.loc["gradcam", "deletion_auc"] < by.loc["random baseline", "deletion_auc"]
    assert 0 <= by.loc["gradcam", "insertion_auc"] <= 1  # blur keeps this task's evidence
    lo, hi = by.loc["gradcam", "deletion_auc_ci"]
    assert lo <= by.loc["gradcam", "deletion_auc"] <= hi


def test_maps_decorrelate_after_full_randomisation(quadrant_model):
    model, x, y, _ = quadrant_model
    before = model.get_weights()
    table = explain.cascading_randomisation(
        model,
        models.get_spec(QUADRANT_MODEL).gradcam_layer,
        x[:8],
        y[:8],
        ["gradcam", "smoothgrad"],
    )
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights())), "model changed"
    full = table[table.depth == table.depth.max()].set_index("method")
    assert table[table.depth == 0]["spearman"].min() > 0.99
    assert full.loc["gradcam", "spearman"] < 0.5 and full.loc["gradcam", "passes"]
    # SmoothGrad keeps some input structure (square edges) after randomisation, as Adebayo et
    # al. found for gradient maps; measured 0.55 here. It must still lose most of its rank order.
    assert full.loc["smoothgrad", "spearman"] < 0.7
    assert full.loc["smoothgrad", "passes"] == (full.loc["smoothgrad", "spearman"] < 0.5)


@pytest.mark.parametrize("name", models.model_names())
def test_every_registry_model_gives_finite_unit_range_maps(name):
    spec = models.get_spec(name)
    size = max(spec.min_size, 72)
    model = models.build_model(name, image_size=size, weights=None)
    x = np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32)
    explainer = explain.Explainer(model, spec.gradcam_layer, smooth_samples=2, scorecam_max_n=2)
    for method in explain.METHODS:
        maps = explainer(x, [0, 3], method)
        assert maps.shape == (2, size, size), method
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, method


def test_unknown_method_is_rejected(quadrant_model):
    model, x, y, _ = quadrant_model
    with pytest.raises(ValueError, match=r"`method` must be one of .*Received: method='lime'"):
        explain.Explainer(model, "block4_act")(x[:1], y[:1], "lime")


def test_describe_map_locates_the_mass():
    m = np.zeros((40, 40))
    m[2:10, 30:38] = 1.0
    d = explain.describe_map(m)
    assert d["region"] == "upper right" and d["left_share"] == 0.0 and d["upper_share"] == 1.0


def test_smoothgrad_is_reproducible_and_leaves_the_global_generator_alone(quadrant_model):
    model, x, y, _ = quadrant_model
    layer = models.get_spec(QUADRANT_MODEL).gradcam_layer
    explainer = explain.Explainer(model, layer, smooth_samples=4)
    np.random.seed(123)
    first = explainer(x[:4], y[:4], "smoothgrad")
    after = np.random.random()
    np.random.seed(7)  # whatever ran before, the same seed gives the same maps
    np.testing.assert_array_equal(explainer(x[:4], y[:4], "smoothgrad"), first)
    np.random.seed(123)  # the caller's generator did not move: SmoothGrad drew from its own seed
    assert np.random.random() == after
    other = explain.Explainer(model, layer, smooth_samples=4, seed=1)(x[:4], y[:4], "smoothgrad")
    assert not np.array_equal(other, first)
