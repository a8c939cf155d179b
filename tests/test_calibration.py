"""Tests of btc.calibration: temperature scaling and the soft-voting ensemble."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss

from btc import calibration


def test_temperature_scaling_lowers_nll_and_keeps_the_argmax():
    rng = np.random.default_rng(1)
    n, k = 3000, 4
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), labels] += 1.0
    probs = np.exp(4 * logits) / np.exp(4 * logits).sum(1, keepdims=True)  # over-confident
    t = calibration.fit_temperature(probs, labels)
    calibrated = calibration.apply_temperature(probs, t)
    assert t > 1.5
    assert log_loss(labels, calibrated) < 0.8 * log_loss(labels, probs)
    assert np.array_equal(calibrated.argmax(1), probs.argmax(1))


def test_ensemble_of_identical_models_equals_the_model():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(4), 50)
    np.testing.assert_allclose(calibration.ensemble([p, p, p]), p)
    np.testing.assert_allclose(calibration.ensemble([p, p], [0.2, 0.8]), p)
    y = p.argmax(1)
    w = calibration.fit_ensemble_weights([p, rng.dirichlet(np.ones(4), 50)], y)
    assert w[0] > w[1] and w.sum() == pytest.approx(1.0)
