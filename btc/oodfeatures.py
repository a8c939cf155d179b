"""The features the OOD scores are computed from (`btc.ood`), and the Gaussians fitted to them.

From a trained model: its pooled last-conv features (`pool`), the pooled outputs of its last
`N_STAGES` stages (`stages`) and its penultimate dense features (`dense`). From a frozen ImageNet
MobileNet α 0.25 (`generic_model`, stored with each model as `GENERIC_FILE`): three pooled stages
(`generic`, log1p) and `joint` (`stages` and `generic` side by side).

Beside the Gaussians, `fit_knn` keeps the train features themselves (standardised, unit length)
for a nearest-neighbour score (`knn_distance`; Sun et al., 2022): no Gaussian assumption, so an
image lying between the clusters, where a shared covariance sees nothing odd, is far from every
scan.

The Gaussians are fitted on the train scans and on a *style-augmented* copy of them
(`style_augment`: blur, gamma, simulated skull stripping, turns and flips, crops). Brain MRI from
other sources differs from the Kaggle scans in exactly these ways (resolution, contrast, research
pipelines that strip the skull, orientation, a figure's zoomed panel); anatomy is never augmented,
so a chest film or an abdominal slice stays far.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

METHODS = ("mahalanobis_pool", "mahalanobis_stages", "mahalanobis_dense", "mahalanobis_generic",
           "mahalanobis_joint", "knn_stages", "knn_joint", "mahalanobis_stages+knn_stages",
           "mahalanobis_joint+knn_joint", "energy", "msp")  # fmt: skip
# `a+b`: the larger of the two scaled scores (`btc.ood.method_score`). Nearest neighbours are
# fitted on the feature sets in `KNN_FEATURES` only (their bank is stored with the model).
KNN_FEATURES = ("stages", "joint")
# k = 50: the union's best kind-balanced AUROC on the quick model's *select* part among 5, 10,
# 20 and 50 (0.966, against 0.964 for 5–20); ~9,300 train, style and Br35H scans in the bank
KNN_K = 50
KNN_FLOOR = 0.01  # the smallest spread a unit is standardised by, as a share of the median one
# the feature sets the Mahalanobis methods score; `generic` and `joint` need the generic extractor
FEATURES = ("pool", "stages", "dense", "generic", "joint")
GENERIC_FILE = "ood_generic.keras"  # the frozen ImageNet extractor, stored with each model
GENERIC_LAYERS = ("conv_pw_5_relu", "conv_pw_11_relu", "conv_pw_13_relu")
N_STAGES = 3  # stage outputs pooled for `mahalanobis_stages` (the last three resolutions)
STYLE_BLUR = (0.8, 2.5)  # Gaussian blur sigma in px at 224 px (scaled with the image size)
STYLE_GAMMA = (0.6, 1.6)
STYLE_STRIP = 0.5  # share of the copies whose skull is stripped
STRIP_LEVEL, STRIP_ERODE = 0.08, 0.12  # head mask: intensity > 8 %, eroded by 12 % of the side
STRIP_KEEP = 0.4  # strip only when the eroded mask keeps at least 40 % of the head mask
STYLE_ORIENT = 0.5  # share of the copies turned or flipped (one of the square's 7 other symmetries)
STYLE_CROP, CROP_ZOOM = 0.25, (1.3, 2.2)  # share of the copies cropped to a region, and its zoom


def style_augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Acquisition-style variants of brain scans: what other MRI sources look like.

    Each batch gets one Gaussian blur (sigma drawn from `STYLE_BLUR`, in px at 224 px); each
    image a gamma from `STYLE_GAMMA`; `STYLE_STRIP` of them a simulated skull stripping (the
    head mask, intensity above `STRIP_LEVEL`, eroded by `STRIP_ERODE` of the side, keeps the
    brain and drops the scalp and skull ring, as research pipelines do) — unless the eroded mask
    keeps less than `STRIP_KEEP` of the head, which would leave a near-blank image; and
    `STYLE_ORIENT` of them a turn by 90°, 180° or 270° or a flip (a slice written from a NIfTI
    volume without reorienting it, or shown in the other left–right convention); and
    `STYLE_CROP` of them cropped to a region of the head and enlarged by `CROP_ZOOM` (a figure's
    panel or a zoomed view: a crop of a brain MRI is still one).

    Args:
        images: `(n, size, size, 3)` float array in [0, 1] (gray scans repeated over channels).
        rng: Random generator (the augmentation is reproducible from its seed).

    Returns:
        A float32 array of the same shape, in [0, 1].
    """
    import tensorflow as tf

    x = np.asarray(images, np.float32)[..., :1]
    n, size = len(x), x.shape[1]
    sigma = rng.uniform(*STYLE_BLUR) * size / 224
    radius = int(3 * sigma) + 1
    taps = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    kernel = np.outer(taps, taps) / taps.sum() ** 2
    x = tf.nn.conv2d(x, kernel[:, :, None, None].astype(np.float32), 1, "SAME").numpy()
    x = np.clip(x, 0.0, 1.0) ** rng.uniform(*STYLE_GAMMA, (n, 1, 1, 1)).astype(np.float32)
    mask = (x > STRIP_LEVEL).astype(np.float32)
    width = int(size * STRIP_ERODE) | 1  # odd: the erosion stays centred
    brain = -tf.nn.max_pool2d(-mask, width, 1, "SAME").numpy()  # erosion = −max-pool(−mask)
    # strip only where a brain is left: eroding a small or fragmented mask leaves a blank image,
    # and a blank image must stay far from every cluster
    kept = brain.sum((1, 2, 3)) >= STRIP_KEEP * np.maximum(mask.sum((1, 2, 3)), 1.0)
    strip = (rng.random(n) < STYLE_STRIP) & kept
    x[strip] *= brain[strip]
    for i in np.flatnonzero(rng.random(n) < STYLE_ORIENT):
        k = int(rng.integers(1, 8))  # 1–3: turns; 4–7: a turn by (k − 4) × 90°, then transposed
        x[i] = np.rot90(x[i], k % 4) if k < 4 else np.rot90(x[i], k % 4).swapaxes(0, 1)
    crop = np.flatnonzero(rng.random(n) < STYLE_CROP)
    side = 1.0 / rng.uniform(*CROP_ZOOM, len(crop))  # the window, as a share of the side
    corner = (1.0 - side)[:, None] * rng.uniform(0.25, 0.75, (len(crop), 2))  # within the head
    boxes = np.concatenate([corner, corner + side[:, None]], 1).astype(np.float32)
    if len(crop):
        x[crop] = tf.image.crop_and_resize(
            x[crop], boxes, np.arange(len(crop)), (size, size)
        ).numpy()
    return np.repeat(x, 3, -1).astype(np.float32)


def stage_layers(model, last: str, n: int = N_STAGES) -> list[str]:
    """The last activation at each of the `n` smallest spatial resolutions, up to `last`.

    Args:
        model: A flat functional Keras model.
        last: Name of the last convolutional feature layer (included).
        n: Number of stages.

    Returns:
        Layer names, shallowest first (MobileNet at 128 px: `conv_pw_5_relu`,
        `conv_pw_11_relu`, `conv_pw_13_relu`; the CNN: `block2_act` to `block4_act`).
    """
    import keras

    by_size: dict[tuple, str] = {}  # spatial size -> its deepest activation (sizes only shrink)
    for layer in model.layers:
        shape = tuple(layer.output.shape) if hasattr(layer, "output") else ()
        activation = isinstance(layer, keras.layers.Activation | keras.layers.ReLU)
        if len(shape) == 4 and (activation or layer.name == last):
            by_size[shape[1:3]] = layer.name
        if layer.name == last:
            break
    return list(by_size.values())[-n:]


def generic_model(image_size: int, weights: str | Path | None = "imagenet"):
    """The generic feature extractor: a frozen ImageNet MobileNet α 0.25, three pooled stages.

    Args:
        image_size: Input side length (the trained model's).
        weights: `"imagenet"` (found offline as in `btc.models.resolve_weights`) or a file.

    Returns:
        A Keras model mapping `(n, size, size, 3)` images in [0, 1] to `(n, 448)` features, or
        `None` when the ImageNet weights cannot be had (the generic methods are then skipped).
    """
    import keras

    from btc import models

    try:
        path = models.resolve_weights("mobilenet", weights, 0.25)
    except (models.WeightsUnavailableError, FileNotFoundError) as exc:
        log.warning("generic OOD features skipped: %s", exc)
        return None
    inputs = keras.Input((image_size, image_size, 3), name="generic_input")
    scaled = keras.layers.Rescaling(2.0, -1.0, name="generic_to_pm1")(inputs)
    try:
        base = keras.applications.MobileNet(input_tensor=scaled, alpha=0.25, include_top=False,
                                            weights=path)  # fmt: skip
    except Exception as exc:  # e.g. no internet for the download
        log.warning("generic OOD features skipped: %s", exc)
        return None
    pool = keras.layers.GlobalAveragePooling2D
    stages = [pool(name=f"generic_pool{i}")(base.get_layer(n).output)
              for i, n in enumerate(GENERIC_LAYERS)]  # fmt: skip
    model = keras.Model(
        inputs, keras.layers.Concatenate(name="generic")(stages), name="ood_generic"
    )
    model.trainable = False
    return model


def feature_model(model, metadata: dict, generic=None):
    """The features the OOD scores need, from a trained flat functional model.

    Args:
        model: A `btc.models` Keras model (softmax layer named `predictions`).
        metadata: Its metadata (`gradcam_layer`: the last convolutional feature layer).
        generic: The `generic_model` (its features are added as a fifth output), or `None`.

    Returns:
        A Keras model mapping images to `[pooled last-conv features (n, c), pooled stage
        outputs concatenated (n, s) (see `stage_layers`), penultimate features (n, d), softmax
        (n, classes)]` (+ `generic` features), sharing the trained weights.
    """
    import keras

    pool = keras.layers.GlobalAveragePooling2D
    last = metadata["gradcam_layer"]
    pooled = pool(name="ood_pool")(model.get_layer(last).output)
    stages = [pool(name=f"ood_stage{i}")(model.get_layer(name).output)
              for i, name in enumerate(stage_layers(model, last))]  # fmt: skip
    stages = stages[0] if len(stages) == 1 else keras.layers.Concatenate(name="ood_stages")(stages)
    outputs = [pooled, stages, model.get_layer("predictions").input, model.outputs[0]]
    if generic is not None:
        outputs.append(generic(model.inputs[0]))
    return keras.Model(model.inputs, outputs)


def forward(model, fmodel, images, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Run `feature_model` over images in one pass.

    Args:
        model: The trained model (its `predictions` weights give the logits).
        fmodel: `feature_model(model, metadata)`.
        images: `(n, size, size, 3)` float32 array in [0, 1], or a dataset of `(x, y)` batches.
        batch_size: Batch size for an array.

    Returns:
        `pool`, `stages`, `dense`, `logits` and `probs` (uncalibrated softmax), each `(n, ...)`;
        with a generic extractor also `generic` (log1p of its features) and `joint`
        (`stages` and `generic` side by side).
    """
    batches = ([images[i : i + batch_size] for i in range(0, len(images), batch_size)]
               if isinstance(images, np.ndarray) else (x for x, _ in images))  # fmt: skip
    outs = [fmodel.predict_on_batch(b) for b in batches]
    parts = [np.concatenate([o[i] for o in outs]).astype(np.float32) for i in range(len(outs[0]))]
    pool, stages, dense, probs = parts[:4]
    kernel, bias = model.get_layer("predictions").get_weights()
    out = {"pool": pool, "stages": stages, "dense": dense, "probs": probs,
           "logits": dense @ kernel + bias}  # fmt: skip
    if len(parts) > 4:  # ReLU6 features are heavy-tailed: log1p makes them closer to Gaussian
        out["generic"] = np.log1p(parts[4])
        out["joint"] = np.concatenate([stages, out["generic"]], 1)
    return out


def fit_gaussian(features: np.ndarray, labels: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Class means and one shared covariance (Ledoit–Wolf shrinkage), as Lee et al. (2018).

    Args:
        features: `(n, d)` train-split features.
        labels: `(n,)` integer labels in `[0, k)`.
        k: Number of classes (a class absent from `labels` is skipped).

    Returns:
        `whiten` `(d, d)` (the covariance's inverse square root, from its eigen-decomposition)
        and `means_w` `(k, d)` (the whitened class means), so that the squared Mahalanobis
        distance is `‖f·whiten − means_w‖²`.
    """
    from sklearn.covariance import LedoitWolf

    present = [c for c in range(k) if np.any(labels == c)]
    means = np.stack([features[labels == c].mean(0) for c in present])
    centred = features - means[np.searchsorted(present, labels)]
    cov = LedoitWolf().fit(centred.astype(np.float64)).covariance_
    # eigh, not a Cholesky of the precision: real features have dead (ReLU) units, and the
    # precision of a near-singular covariance is not numerically positive definite.
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    floor = max(float(values.max()) * 1e-6, 1e-12)
    whiten = vectors / np.sqrt(np.clip(values, floor, None))  # d² = ‖(f − μ) V Λ^-½‖²
    return {"means_w": (means @ whiten).astype(np.float32), "whiten": whiten.astype(np.float32)}


def fit_knn(features: np.ndarray, part: str) -> dict[str, np.ndarray]:
    """The bank of the nearest-neighbour score: every fit scan, standardised and of unit length.

    Args:
        features: `(n, d)` features of the scans the Gaussians are fitted on.
        part: Their feature set (`FEATURES`); only those in `KNN_FEATURES` get a bank.

    Returns:
        `knn_mean` and `knn_scale` `(d,)` (the standardisation) and `knn_bank` `(n, d)` float16
        (unit rows: the cosine similarity is a dot product); `{}` outside `KNN_FEATURES`.
    """
    if part not in KNN_FEATURES:
        return {}
    x = np.asarray(features, np.float64)
    # a unit dead on every fit scan (ReLU) gets a floor of 1 % of the median unit's spread, so
    # that a faint activation on a new scan is not blown up a millionfold and decides alone
    std = x.std(0)
    mean, scale = x.mean(0), np.maximum(std, KNN_FLOOR * float(np.median(std)) + 1e-12)
    bank = (x - mean) / scale
    bank /= np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
    return {"knn_mean": mean.astype(np.float32), "knn_scale": scale.astype(np.float32),
            "knn_bank": bank.astype(np.float16)}  # fmt: skip


def knn_distance(features: np.ndarray, arrays: dict, prefix: str, k: int = KNN_K) -> np.ndarray:
    """One minus the cosine similarity to the `k`-th nearest scan of the bank (`fit_knn`).

    Args:
        features: `(n, d)` features to score.
        arrays: Arrays holding `<prefix>knn_mean`, `<prefix>knn_scale` and `<prefix>knn_bank`.
        prefix: Key prefix of the feature set, e.g. `"joint_"`.
        k: Neighbour rank (capped at the bank's size).

    Returns:
        `(n,)` distances in [0, 2]; higher = less like the fit scans.
    """
    bank, mean = np.asarray(arrays[f"{prefix}knn_bank"], np.float32), arrays[f"{prefix}knn_mean"]
    x = (np.asarray(features, np.float32) - mean) / arrays[f"{prefix}knn_scale"]
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = min(k, len(bank))
    out = np.empty(len(x), np.float32)
    for i in range(0, len(x), 256):  # bounded memory: 256 × bank similarities at a time
        sim = x[i : i + 256] @ bank.T
        out[i : i + 256] = 1.0 - np.partition(sim, len(bank) - k, axis=1)[:, len(bank) - k]
    return out


def method_arrays(arrays: dict, method: str) -> dict:
    """The fitted arrays without the kNN banks `method` does not use (they are large).

    Args:
        arrays: `<part>_*` arrays of `fit_gaussian` and `fit_knn`.
        method: The chosen method of `METHODS`.

    Returns:
        `arrays` with only the `<part>_knn_*` arrays of the feature sets `method` scores by kNN.
    """
    used = {m.removeprefix("knn_") for m in method.split("+") if m.startswith("knn_")}
    return {k: v for k, v in arrays.items() if "_knn_" not in k or k.split("_knn_")[0] in used}
