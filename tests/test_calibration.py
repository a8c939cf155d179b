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


def _under_predicted(n: int, seed: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Over-confident probabilities whose class 1 is under-predicted by a logit `shift`."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    logits = rng.normal(0, 1, (n, 4))
    logits[np.arange(n), labels] += 1.5
    logits[:, 1] -= shift
    probs = np.exp(3 * logits)
    return probs / probs.sum(1, keepdims=True), labels


def test_vector_scaling_recovers_an_under_predicted_class_on_held_out_data():
    fit_p, fit_y = _under_predicted(2000, 0, shift=1.0)
    held_p, held_y = _under_predicted(2000, 1, shift=1.0)
    t, bias = calibration.fit_vector_scaling(fit_p, fit_y)
    assert bias[1] == max(bias) and bias[1] > 1.0  # about 3 × the shift, the logits' scale
    assert sum(bias) == pytest.approx(0.0, abs=1e-9)
    t_only = calibration.apply_temperature(held_p, calibration.fit_temperature(fit_p, fit_y))
    vector = calibration.apply_temperature(held_p, t, bias)
    assert log_loss(held_y, vector) < log_loss(held_y, t_only) - 0.02
    sens = [(p.argmax(1)[held_y == 1] == 1).mean() for p in (t_only, vector)]
    assert sens[1] > sens[0] + 0.15  # the biases move the argmax: the class is found again


def test_auto_calibration_keeps_vector_scaling_only_when_validation_wants_it():
    probs, labels = _under_predicted(1500, 2, shift=1.0)
    fit = calibration.fit_calibration(probs, labels, "auto")
    assert fit["method"] == "vector" and fit["cv_nll"]["vector"] < fit["cv_nll"]["temperature"]
    assert len(fit["class_bias"]) == 4
    balanced, labels = _under_predicted(300, 3, shift=0.0)  # nothing to correct, few scans
    fit = calibration.fit_calibration(balanced, labels, "auto")
    assert fit["method"] == "temperature" and fit["class_bias"] is None
    with pytest.raises(ValueError, match=r"one of \['temperature', 'vector', 'auto'\].*method='x'"):
        calibration.fit_calibration(balanced, labels, "x")


def test_stored_calibration_is_what_prediction_applies():
    probs, _ = _under_predicted(20, 4, shift=1.0)
    meta = {"temperature": 1.5, "class_bias": [-0.5, 1.5, -0.5, -0.5]}
    expected = calibration.apply_temperature(probs, 1.5, [-0.5, 1.5, -0.5, -0.5])
    np.testing.assert_allclose(calibration.calibrate(probs, meta), expected)
    tta = {**meta, "temperature_tta": 1.2, "class_bias_tta": None}
    np.testing.assert_allclose(calibration.calibrate(probs, tta, tta=True),
                               calibration.apply_temperature(probs, 1.2))  # fmt: skip
    assert calibration.same_calibration((1.5, None), (1.5, None))
    assert not calibration.same_calibration((1.5, None), (1.5, [0.0, 0.0, 0.0, 0.0]))
    assert not calibration.same_calibration((1.5, [0.1, 0, 0, -0.1]), (1.5, [0, 0, 0, 0]))
