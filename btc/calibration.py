"""Calibration: temperature or vector scaling, and soft-voting ensembles of calibrated probabilities.

Pure NumPy/SciPy on probability arrays (no TensorFlow, no btc imports), so evaluation fits these
on the validation split and prediction applies them with the same code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import optimize
from sklearn import metrics as skm

METHODS = ("temperature", "vector", "auto")


def apply_temperature(
    probs: np.ndarray, temperature: float, class_bias: Sequence[float] | None = None
) -> np.ndarray:
    """Rescale softmax probabilities: `softmax(log p / T + b)` (`b` only for vector scaling)."""
    logits = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    if class_bias is not None:
        logits = logits + np.asarray(class_bias, dtype=float)
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


def fit_vector_scaling(probs: np.ndarray, labels: np.ndarray) -> tuple[float, list[float]]:
    """Fit a temperature and one bias per class minimising validation NLL (Guo et al., 2017).

    The biases correct a class the model under-predicts on unseen scans (it fits its training
    scans of that class more easily than it generalises); unlike a temperature they can change
    the argmax.

    Args:
        probs: `(n, classes)` softmax probabilities on the validation split.
        labels: `(n,)` integer labels.

    Returns:
        `(temperature, class_bias)`; the biases sum to zero (softmax ignores a common shift).
    """
    logp = np.log(np.clip(probs, 1e-12, 1.0))
    onehot = np.eye(probs.shape[1])[labels]

    def nll(x: np.ndarray) -> tuple[float, np.ndarray]:
        z = logp * np.exp(-x[0]) + x[1:]
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = -(z * onehot).sum(1) + np.log(np.exp(z).sum(1))
        grad_z = (p - onehot) / len(labels)
        grad = np.r_[-(grad_z * logp * np.exp(-x[0])).sum(), grad_z.sum(0)]
        return float(loss.mean()), grad

    x = optimize.minimize(nll, np.zeros(probs.shape[1] + 1), jac=True, method="L-BFGS-B",
                          bounds=[(-3, 3)] + [(-5, 5)] * probs.shape[1]).x  # fmt: skip
    bias = x[1:] - x[1:].mean()
    return float(np.exp(x[0])), [float(b) for b in bias]


def fit_calibration(probs: np.ndarray, labels: np.ndarray, method: str = "auto",
                    folds: int = 2, repeats: int = 5, seed: int = 0) -> dict:  # fmt: skip
    """Fit temperature or vector scaling on the validation split; `"auto"` lets validation choose.

    `"auto"` compares both by cross-validated NLL on the validation split itself (fit on one
    fold, score the other; `repeats` random partitions) and keeps vector scaling only when its
    held-out NLL is lower, so that its extra parameters must earn their place.

    Args:
        probs: `(n, classes)` softmax probabilities on the validation split.
        labels: `(n,)` integer labels.
        method: One of `"temperature"`, `"vector"`, `"auto"`.
        folds: Folds of the cross-validation (`"auto"` only).
        repeats: Random partitions averaged (`"auto"` only).
        seed: Partition seed.

    Returns:
        `{"method", "temperature", "class_bias" (None for temperature scaling),
        "cv_nll" ({method: held-out NLL}, `"auto"` only)}`.

    Raises:
        ValueError: If `method` is not one of `METHODS`.
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {list(METHODS)}. Received: method={method!r}")
    labels = np.asarray(labels)
    classes = list(range(probs.shape[1]))
    cv_nll = None
    if method == "auto":
        rng = np.random.default_rng(seed)
        losses: dict[str, list[float]] = {"temperature": [], "vector": []}
        for _ in range(repeats):
            fold = rng.permutation(len(labels)) % folds
            for k in range(folds):
                fit, held = fold != k, fold == k
                t = fit_temperature(probs[fit], labels[fit])
                losses["temperature"].append(skm.log_loss(
                    labels[held], apply_temperature(probs[held], t), labels=classes))  # fmt: skip
                t, b = fit_vector_scaling(probs[fit], labels[fit])
                losses["vector"].append(skm.log_loss(
                    labels[held], apply_temperature(probs[held], t, b), labels=classes))  # fmt: skip
        cv_nll = {m: round(float(np.mean(v)), 5) for m, v in losses.items()}
        method = "vector" if cv_nll["vector"] < cv_nll["temperature"] else "temperature"
    if method == "vector":
        t, b = fit_vector_scaling(probs, labels)
        out = {"method": method, "temperature": t, "class_bias": b}
    else:
        out = {"method": method, "temperature": fit_temperature(probs, labels), "class_bias": None}
    return {**out, "cv_nll": cv_nll}


def calibrate(probs: np.ndarray, meta: Mapping, tta: bool = False) -> np.ndarray:
    """Apply the calibration stored in a model's metadata (`temperature`, `class_bias`).

    Args:
        probs: `(n, classes)` raw softmax probabilities in the model's class order.
        meta: The model's metadata (a mapping with `temperature`, optionally `class_bias`
            and, for TTA, `temperature_tta` / `class_bias_tta`).
        tta: Use the parameters fitted on test-time-augmented predictions.

    Returns:
        Calibrated probabilities, same shape.
    """
    return apply_temperature(probs, *calibration_of(meta, tta))


def calibration_of(meta: Mapping, tta: bool = False) -> tuple[float, list[float] | None]:
    """The `(temperature, class_bias)` stored in a model's metadata (TTA ones if asked)."""
    if tta and meta.get("temperature_tta") is not None:
        return meta["temperature_tta"], meta.get("class_bias_tta")
    return meta.get("temperature", 1.0), meta.get("class_bias")


def same_calibration(a: tuple, b: tuple) -> bool:
    """Whether two `(temperature, class_bias)` pairs are the same calibration."""
    if abs(a[0] - b[0]) > 1e-6 or (a[1] is None) != (b[1] is None):
        return False
    return a[1] is None or bool(np.allclose(a[1], b[1], atol=1e-6))


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
