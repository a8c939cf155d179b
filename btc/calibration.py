"""Calibration: temperature scaling and soft-voting ensembles of calibrated probabilities.

Pure NumPy/SciPy on probability arrays (no TensorFlow, no btc imports), so evaluation fits these
on the validation split and prediction applies them with the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import optimize
from sklearn import metrics as skm


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rescale softmax probabilities by a temperature (`softmax(log p / T)`)."""
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """Fit the scalar temperature minimising validation NLL (Guo et al., 2017).

    Args:
        probs: `(n, classes)` softmax probabilities on the validation split.
        labels: `(n,)` integer labels.

    Returns:
        Temperature `T > 0`; dividing log-probabilities by it never changes the argmax.
    """
    classes = list(range(probs.shape[1]))

    def nll(log_t: float) -> float:
        return skm.log_loss(labels, apply_temperature(probs, np.exp(log_t)), labels=classes)

    return float(np.exp(optimize.minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))


def ensemble(probs: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Soft voting: the (weighted) mean of calibrated member probabilities."""
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, dtype=float)
    return np.tensordot(w / w.sum(), np.stack(probs), axes=1)


def fit_ensemble_weights(probs: Sequence[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Fit soft-voting weights on the validation split (minimum NLL on the simplex)."""
    classes = list(range(probs[0].shape[1]))

    def nll(z):
        w = np.exp(z - z.max())
        return skm.log_loss(labels, ensemble(probs, w), labels=classes)

    z = optimize.minimize(nll, np.zeros(len(probs)), method="Nelder-Mead").x
    w = np.exp(z - z.max())
    return w / w.sum()
