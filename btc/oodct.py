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

The features of a network trained on MRI do not always see the bone (tightly framed head CTs with
the skull at the image edge were accepted by every feature part). `skull_ring` looks at the pixels
instead: the median brightness at each depth below the head's edge. On CT the ring just inside the
edge is at the brightest level and a large share of the head is saturated bone, while the brain
inside is a flat grey well below it; on MRI the band under the scalp is dark (cortical bone). The
levels are round, physical ones (bone within 15 % of the head's 99th percentile, brain at most
60 % of it, saturated bone at least 8 % of the head, no band between bone and brain darker than
90 % of the brain). Nothing is fitted, but they were chosen with the OOD folder's head CTs and the
flagged Br35H scans in view, so head CT results on those images are optimistic (README).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from btc.images import decode_and_resize, fit_and_pad, to_grayscale

CT_SEED = 1
HEAD_LEVEL = 0.08  # head mask: intensity above 8 % (as `oodfeatures.STRIP_LEVEL`)
CT_SKIN = (0.003, 0.025)  # scalp between the head edge and the bone, share of the side
CT_BONE = (0.015, 0.06)  # bone ring thickness, share of the side
CT_LEVEL = (0.25, 0.7)  # grey level of the brain (the window level)
CT_CONTRAST = (0.1, 0.4)  # the brain's remaining contrast, relative to the MRI's
CT_BONE_LEVEL = (0.85, 1.0)  # bone is saturated or nearly so in every soft-tissue window
CT_NOISE = (0.01, 0.04)  # quantum noise, standard deviation
RING_SIZE = 128  # `skull_ring` works at this size (px)
RING_DEPTHS = (0.0, 0.04, 0.08, 0.12, 0.16, 0.22, 0.3, 0.45, 0.7, np.inf)  # depth bands / radius
RING_BONE = 0.85  # the brightest band under the edge: at least this share of the 99th percentile
RING_BRAIN = 0.6  # the brain's median (bands from depth 0.22): at most this share of the ring
RING_SATURATED = 0.08  # share of the head at >= 95 % of the 99th percentile (the bone)
RING_GAP = 0.9  # no band between the ring and the brain below this share of the brain's median


def _head(slice_: np.ndarray) -> np.ndarray:
    """The head mask of one slice: thresholded, opened (drops specks and thin lines, such as a
    thin scalp outside the dark skull), holes filled, largest component."""
    from scipy import ndimage

    head = ndimage.binary_fill_holes(ndimage.binary_opening(slice_ > HEAD_LEVEL, iterations=2))
    labels, n = ndimage.label(head)
    if n > 1:
        head = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return head


def ring_profile(gray: np.ndarray) -> np.ndarray:
    """The bone-ring features of one grayscale slice (`skull_ring`).

    Args:
        gray: `(RING_SIZE, RING_SIZE)` float array in [0, 1].

    Returns:
        `(len(RING_DEPTHS),)`: the median brightness in each depth band below the head's edge
        (depth over the head's equivalent radius; the image border counts as an edge, as in a
        tightly framed slice), relative to the head's 99th percentile, then the saturated share.
        All zero for a slice without a head (fewer than 1 % of the pixels).
    """
    from scipy import ndimage

    head = _head(np.pad(gray, 1))
    inside = head[1:-1, 1:-1]
    if inside.sum() < 0.01 * gray.size:
        return np.zeros(len(RING_DEPTHS))
    depth = ndimage.distance_transform_edt(head)[1:-1, 1:-1] / np.sqrt(inside.sum() / np.pi)
    values, depth = gray[inside], depth[inside]
    top = max(float(np.quantile(values, 0.99)), 1e-3)
    band = np.digitize(depth, RING_DEPTHS) - 1
    medians = [np.median(values[band == b]) / top if np.any(band == b) else 0.0
               for b in range(len(RING_DEPTHS) - 1)]  # fmt: skip
    return np.array([*medians, np.mean(values >= 0.95 * top)])


def skull_ring(gray: np.ndarray) -> bool:
    """Whether a grayscale slice has a CT's skull: a saturated ring around a darker, flat brain.

    Args:
        gray: `(RING_SIZE, RING_SIZE)` float array in [0, 1].

    Returns:
        `True` when the brightest band within 16 % of the radius under the edge reaches
        `RING_BONE`, the brain's median is at most `RING_BRAIN` of that band, no band between
        them is darker than `RING_GAP` of the brain (MRI's dark cortical bone under bright scalp
        fat) and at least `RING_SATURATED` of the head is saturated.
    """
    profile = ring_profile(gray)
    peak = 1 + int(np.argmax(profile[1:4]))  # depths 0.04–0.16: under a thin scalp
    ring, brain = profile[peak], np.median(profile[5:-1])  # brain: depths from 0.22 of the radius
    gap = profile[peak + 1 : 5].min()  # MRI: a dark band (cortical bone, CSF) under bright fat
    return bool(ring >= RING_BONE and brain <= RING_BRAIN * ring and gap >= RING_GAP * brain
                and profile[-1] >= RING_SATURATED)  # fmt: skip


def skull_flag(raw: bytes) -> bool:
    """The pixel CT check (`skull_ring`) of one encoded image at prediction time.

    Decoded by `decode_and_resize`, as the classifier sees it (the data stage's `ct_slice` decodes
    without TensorFlow; the two agree on the Kaggle files, and may differ on a transparent PNG).

    Args:
        raw: Encoded image bytes.

    Returns:
        `True` when the slice has a CT's skull (a saturated ring around a darker, flat brain).
    """
    return skull_ring(decode_and_resize(raw, RING_SIZE).numpy()[..., 0] / 255.0)


def ct_slice(data: bytes) -> bool:
    """Whether a readable image is a CT slice by the pixel skull check (`skull_ring`).

    The Kaggle set files some head CT slices as MRI (mostly under notumor and meningioma): the
    saturated bone ring of CT around a flat grey brain. The image is decoded at the check's
    working size with the tf.data geometry (fit, pad with black), as `skull_flag` does at
    prediction time.

    Args:
        data: Encoded bytes of an image that `read_checked` accepted.

    Returns:
        `True` when the slice has a CT's skull; `False` also when it cannot be decoded.
    """
    try:
        img = Image.open(io.BytesIO(data))
        if img.format == "JPEG":
            img.draft("L", (2 * RING_SIZE, 2 * RING_SIZE))
        gray = fit_and_pad(to_grayscale(img), RING_SIZE)
    except Exception:  # read_checked already reported why a file is unreadable
        return False
    return bool(skull_ring(gray / 255.0))


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
