"""The CT check of the OOD rejection (`btc.ood`): is an image nearer to a CT than to any brain MRI?

Head CT is the hardest non-brain kind: same anatomy, same grayscale, and a feature distance to the
brain MRI clusters only a little above the threshold. The physics differ in one visible way: on CT
the skull (bone, > 700 HU) is the brightest structure, a thick white ring right around a flat grey
brain; on MRI cortical bone gives no signal and is a dark band.

`ct_like` turns the train scans into simulated CT (bone ring, flat grey brain, dark CSF; window
level, contrast, bone thickness and noise drawn over the range of brain and stroke windows). A
Gaussian with the brain clusters' shared covariance is fitted to their features (`fit`): an image
is flagged when it is nearer (Mahalanobis) to the simulated-CT mean than to every brain cluster
(`margins` > 0). No threshold is tuned: it is the nearest-mean rule, and its rate on the
validation and Br35H scans is reported. No real CT is used to fit it.
"""

from __future__ import annotations

import numpy as np

CT_SEED = 1
HEAD_LEVEL = 0.08  # head mask: intensity above 8 % (as `oodfeatures.STRIP_LEVEL`)
CT_SKIN = (0.003, 0.025)  # scalp between the head edge and the bone, share of the side
CT_BONE = (0.015, 0.06)  # bone ring thickness, share of the side
CT_LEVEL = (0.25, 0.7)  # grey level of the brain (the window level)
CT_CONTRAST = (0.1, 0.4)  # the brain's remaining contrast, relative to the MRI's
CT_BONE_LEVEL = (0.85, 1.0)  # bone is saturated or nearly so in every soft-tissue window
CT_NOISE = (0.01, 0.04)  # quantum noise, standard deviation


def _head(slice_: np.ndarray) -> np.ndarray:
    """The head mask of one slice: thresholded, opened (drops specks and thin lines, such as a
    thin scalp outside the dark skull), holes filled, largest component."""
    from scipy import ndimage

    head = ndimage.binary_fill_holes(ndimage.binary_opening(slice_ > HEAD_LEVEL, iterations=2))
    labels, n = ndimage.label(head)
    if n > 1:
        head = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return head


def ct_like(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Simulated CT slices made from brain MRI slices (the negatives of the CT check).

    Per slice: the head mask; a thin scalp at a soft-tissue grey; inside it a bone ring (distance
    from the edge in `CT_SKIN` + `CT_BONE`) at `CT_BONE_LEVEL`; inside that the brain at a window
    level from `CT_LEVEL` with the MRI's texture at `CT_CONTRAST` of its contrast (CSF stays
    darker); Gaussian noise from `CT_NOISE`; black outside the head.

    Args:
        images: `(n, size, size, 3)` float array in [0, 1] (gray scans repeated over channels).
        rng: Random generator (reproducible from its seed).

    Returns:
        A float32 array of the same shape, in [0, 1].
    """
    from scipy import ndimage

    x = np.asarray(images, np.float32)[..., 0]
    out = np.zeros_like(x)
    for i, slice_ in enumerate(x):
        head = _head(slice_)
        depth = ndimage.distance_transform_edt(head) / slice_.shape[0]
        skin = rng.uniform(*CT_SKIN)
        brain = depth > skin + rng.uniform(*CT_BONE)
        bone = (depth > skin) & ~brain
        level = rng.uniform(*CT_LEVEL)
        mean = slice_[brain].mean() if brain.any() else 0.0
        tissue = level + rng.uniform(*CT_CONTRAST) * (slice_ - mean)
        img = np.where(head, level * rng.uniform(0.6, 1.0), 0.0)
        img = np.where(brain, tissue, img)
        img = np.where(bone, rng.uniform(*CT_BONE_LEVEL), img)
        img = img + rng.normal(0.0, rng.uniform(*CT_NOISE), img.shape)
        out[i] = np.clip(img, 0.0, 1.0) * head
    return np.repeat(out[..., None], 3, -1).astype(np.float32)


def fit(
    brain: np.ndarray, labels: np.ndarray, ct: np.ndarray, k: int, fit_gaussian
) -> dict[str, np.ndarray]:
    """The brain clusters and the simulated-CT cluster, with one shared covariance.

    Args:
        brain: `(n, d)` features of the brain scans the OOD Gaussians are fitted on.
        labels: `(n,)` their cluster labels in `[0, k)`.
        ct: `(m, d)` features of `ct_like` copies.
        k: Number of brain clusters.
        fit_gaussian: `oodfeatures.fit_gaussian` (passed in: this module stays below it).

    Returns:
        `ct_whiten` `(d, d)` and `ct_means_w` `(k + 1, d)` (the last row: simulated CT), as
        `oodfeatures.fit_gaussian`.
    """
    features = np.concatenate([brain, ct])
    fitted = fit_gaussian(features, np.r_[labels, np.full(len(ct), k)], k + 1)
    return {f"ct_{key}": value for key, value in fitted.items()}


def margins(features: np.ndarray, arrays: dict) -> np.ndarray:
    """Squared distance to the nearest brain cluster minus that to the simulated-CT mean.

    Args:
        features: `(n, d)` features (the part `fit` was fitted on).
        arrays: `fit` output (from `ood.npz`).

    Returns:
        `(n,)`; positive = nearer to simulated CT than to every brain cluster (flagged).
    """
    z = features @ arrays["ct_whiten"]
    d2 = ((z[:, None, :] - arrays["ct_means_w"][None]) ** 2).sum(-1)
    return d2[:, :-1].min(1) - d2[:, -1]


def fit_check(
    fit_sets: list[dict], ct: np.ndarray, part: str, features: dict, fit_gaussian
) -> tuple[dict, dict, dict]:
    """Fit the CT check on one feature part and flag every set.

    Args:
        fit_sets: The sets the brain Gaussians are fitted on (each with `part` and `labels`).
        ct: `(m, d)` features of the `ct_like` copies of the train scans.
        part: The feature part (`oodfeatures.FEATURES`) of the chosen OOD method.
        features: `{set: (n, d)}` features to flag.
        fit_gaussian: `oodfeatures.fit_gaussian`.

    Returns:
        `(arrays, info, flags)`: `fit`'s arrays (stored in `ood.npz`), the `ct_check` info of
        `ood.json` (`part`, `rule`, share `flagged` of the in-distribution sets) and
        `{set: (n,) bool}`.
    """
    labels = np.concatenate([s["labels"] for s in fit_sets])
    brain = np.concatenate([s[part] for s in fit_sets])
    arrays = fit(brain, labels, ct, int(labels.max()) + 1, fit_gaussian)
    flags = {s: margins(f, arrays) > 0 for s, f in features.items()}
    info = {"part": part, "rule": "nearer to the simulated-CT mean than to every brain cluster",
            "flagged": {s: round(float(np.mean(flags[s])), 6)
                        for s in ("val", "ext_train", "test", "ext_test") if s in flags}}  # fmt: skip
    return arrays, info, flags
