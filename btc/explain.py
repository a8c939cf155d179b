"""Saliency maps that can be trusted: tf-keras-vis methods, a sanity check and faithfulness.

Maps come from tf-keras-vis (scores before softmax via `ReplaceToLinear`, the Grad-CAM layer the
registry records). No fixed mask or percentile threshold is applied: a map shows what the model
used. `cascading_randomisation` (Adebayo et al., 2018) checks that a method depends on the
weights; `deletion_insertion` (Petsiuk et al., 2018) checks that it points at evidence.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import pandas as pd
from scipy import ndimage, stats

METHODS = ("saliency", "smoothgrad", "gradcam", "gradcam++", "scorecam")
DEFAULT_METHOD = "gradcam"


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {list(METHODS)}. Received: method={method!r}")
    return method


class Explainer:
    """Computes saliency maps for one model, reusing the tf-keras-vis objects between calls.

    Args:
        model: Flat functional Keras model with a softmax output.
        gradcam_layer: Name of the last convolutional feature layer (from the metadata).
        smooth_samples: Noisy samples of SmoothGrad.
        smooth_noise: Noise level of SmoothGrad (fraction of the input range).
        scorecam_max_n: Channels used by Faster-ScoreCAM.
        seed: Seed of SmoothGrad's noise (tf-keras-vis draws it from NumPy's global generator,
            which is restored afterwards), so that a call's maps do not depend on what ran before.
        clone: Work on a copy (default). `False` modifies `model` in place (its output becomes
            linear for the gradient methods), which lets a caller change weights between calls.
    """

    def __init__(self, model: keras.Model, gradcam_layer: str, smooth_samples: int = 20,
                 smooth_noise: float = 0.15, scorecam_max_n: int = 16, clone: bool = True,
                 seed: int = 0):  # fmt: skip
        self.model, self.layer, self.clone, self.seed = model, gradcam_layer, clone, seed
        self.smooth_samples, self.smooth_noise, self.max_n = (
            smooth_samples,
            smooth_noise,
            scorecam_max_n,
        )
        self._tools: dict[str, object] = {}

    def _tool(self, method: str):
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
        from tf_keras_vis.saliency import Saliency
        from tf_keras_vis.scorecam import Scorecam
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

        kind = {"saliency": Saliency, "smoothgrad": Saliency, "gradcam": Gradcam,
                "gradcam++": GradcamPlusPlus, "scorecam": Scorecam}[method]  # fmt: skip
        if kind not in self._tools:  # ScoreCAM scores the softmax itself, as its authors do
            modifier = None if kind is Scorecam else ReplaceToLinear()
            self._tools[kind] = kind(self.model, model_modifier=modifier, clone=self.clone)
        return self._tools[kind]

    def __call__(self, images: np.ndarray, targets: Sequence[int], method: str = DEFAULT_METHOD):
        """Return maps of `(n, H, W)` in [0, 1] at input resolution for the target classes.

        Args:
            images: `(n, H, W, 3)` float32 images in [0, 1].
            targets: Class index per image.
            method: One of `METHODS`.

        Returns:
            Float32 maps, each scaled to [0, 1] (all-zero when the model's gradient is zero).
        """
        from tf_keras_vis.utils.scores import CategoricalScore

        check_method(method)
        images = np.asarray(images, dtype=np.float32)
        score = CategoricalScore(list(np.asarray(targets).astype(int)))
        tool = self._tool(method)
        if method in ("saliency", "smoothgrad"):
            if method == "smoothgrad":  # SmoothGrad-Squared: the variant that passes ROAR
                state = np.random.get_state()
                np.random.seed(self.seed)
                try:
                    maps = tool(score, images, smooth_samples=self.smooth_samples,
                                smooth_noise=self.smooth_noise, gradient_modifier=lambda g: g * g)  # fmt: skip
                finally:
                    np.random.set_state(state)
            else:
                maps = tool(score, images)
        elif method == "scorecam":
            maps = tool(score, images, penultimate_layer=self.layer, max_N=self.max_n)
        else:
            maps = tool(
                score, images, penultimate_layer=self.layer, seek_penultimate_conv_layer=False
            )
        maps = np.nan_to_num(np.asarray(maps, dtype=np.float32).reshape(images.shape[:3]))
        return np.clip(maps, 0.0, 1.0)


# --- where the mass lies (for text explanations and tests) -----------------------------------------


def mass_in_region(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Share of each map's total saliency that lies inside a boolean mask `(H, W)` or `(n, H, W)`."""
    maps = np.asarray(maps, dtype=np.float64)
    total = maps.sum(axis=(1, 2))
    inside = (maps * np.broadcast_to(mask, maps.shape)).sum(axis=(1, 2))
    return np.where(total > 0, inside / np.maximum(total, 1e-12), 0.0)


def describe_map(saliency_map: np.ndarray) -> dict:
    """Summarise where a map's mass lies: centroid, quadrant/side shares and spread.

    Left/right are the image's left and right (radiological convention puts the patient's right
    on the image's left; the data carry no orientation metadata, so this is not asserted).
    """
    m = np.asarray(saliency_map, dtype=np.float64)
    h, w = m.shape
    total = m.sum() or 1.0
    yy, xx = np.mgrid[:h, :w]
    cy, cx = (m * yy).sum() / total / h, (m * xx).sum() / total / w
    top_10 = m >= np.quantile(m, 0.9)
    return {
        "centroid_x": round(float(cx), 3), "centroid_y": round(float(cy), 3),
        "left_share": round(float(m[:, : w // 2].sum() / total), 3),
        "upper_share": round(float(m[: h // 2].sum() / total), 3),
        "top10_area_mass": round(float(m[top_10].sum() / total), 3),
        "region": ("upper " if cy < 0.4 else "lower " if cy > 0.6 else "central ")
        + ("left" if cx < 0.4 else "right" if cx > 0.6 else "middle"),
    }  # fmt: skip


# --- sanity check: cascading model randomisation -------------------------------------------------


def _reinitialise(layer: keras.layers.Layer, rng: np.random.Generator) -> None:
    for var in layer.weights:
        name = var.name.split("/")[-1]
        key = {"depthwise_kernel": "depthwise_initializer", "pointwise_kernel": "pointwise_initializer"}.get(
            name, f"{name}_initializer"
        )  # fmt: skip
        init = getattr(layer, key, None) or keras.initializers.GlorotUniform()
        if isinstance(init, str):
            init = keras.initializers.get(init)
        if hasattr(init, "seed"):
            init = init.__class__.from_config(
                {**init.get_config(), "seed": int(rng.integers(1 << 30))}
            )
        var.assign(keras.ops.convert_to_numpy(init(tuple(var.shape), dtype=var.dtype)))


def randomisation_depths(model: keras.Model, n_depths: int = 5) -> list[int]:
    """Numbers of top weighted layers to re-initialise: 0, the head, ..., all of them."""
    total = sum(1 for layer in model.layers if layer.weights)
    return sorted({0, 1, 2, *np.linspace(0, total, n_depths).round().astype(int).tolist()})


def cascading_randomisation(
    model: keras.Model, gradcam_layer: str, images: np.ndarray, targets: Sequence[int],
    methods: Sequence[str] = ("gradcam", "smoothgrad"), depths: Sequence[int] | None = None,
    seed: int = 0,
) -> pd.DataFrame:  # fmt: skip
    """Re-initialise layers from the top down and correlate the maps with the trained ones.

    Args:
        model: Trained model (not modified: a copy is randomised).
        gradcam_layer: Grad-CAM layer name.
        images: `(n, H, W, 3)` images in [0, 1].
        targets: Class per image (kept fixed across depths).
        methods: Methods to check.
        depths: Numbers of top weighted layers to re-initialise (default `randomisation_depths`).
        seed: Seed of the re-initialisation.

    Returns:
        Table with `method`, `depth` (layers randomised), `fraction`, `spearman` (mean over
        images of the rank correlation with the trained model's maps), `spearman_ci` (95 %
        bootstrap CI over images), `passes` (at full randomisation: mean below 0.5) and
        `passes_ci` (at full randomisation: the CI's upper bound below 0.5 — the verdict that
        does not hinge on which few images were drawn).
    """
    depths = list(depths or randomisation_depths(model))
    reference = {m: Explainer(model, gradcam_layer)(images, targets, m) for m in methods}
    copies = []
    for _ in range(2):  # linear-output copy for gradient methods, softmax copy for ScoreCAM
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        copies.append(copy)
    linear = Explainer(copies[0], gradcam_layer, clone=False)
    softmax = Explainer(copies[1], gradcam_layer, clone=False)
    layers = [[lay for lay in c.layers if lay.weights][::-1] for c in copies]
    rng = np.random.default_rng(seed)
    resample = np.random.default_rng(seed + 1).integers(0, len(images), (1000, len(images)))
    rows, done = [], 0
    for depth in sorted(depths):
        for a, b in zip(layers[0][done:depth], layers[1][done:depth]):
            _reinitialise(a, rng)
            b.set_weights(a.get_weights())
        done = max(done, depth)
        for method in methods:
            explainer = softmax if method == "scorecam" else linear
            maps = reference[method] if depth == 0 else explainer(images, targets, method)
            rho = [
                stats.spearmanr(a.ravel(), b.ravel()).statistic
                for a, b in zip(reference[method], maps)
            ]
            rho = np.nan_to_num(np.asarray(rho, dtype=float), nan=0.0)
            ci = np.percentile(rho[resample].mean(1), [2.5, 97.5]).round(4).tolist()
            rows.append({"method": method, "depth": depth, "fraction": round(depth / len(layers[0]), 3),
                         "spearman": float(rho.mean()), "spearman_ci": ci, "n": len(rho)})  # fmt: skip
    table = pd.DataFrame(rows)
    full = table[table.depth == max(depths)].set_index("method")
    table["passes"] = table["method"].map(full["spearman"] < 0.5)
    table["passes_ci"] = table["method"].map(full["spearman_ci"].map(lambda ci: ci[1] < 0.5))
    return table


# --- faithfulness: deletion and insertion --------------------------------------------------------


def baseline_maps(shape: tuple[int, int, int], kind: str, seed: int = 0) -> np.ndarray:
    """Baseline maps: `"random"` (uniform noise) or `"centre"` (a Gaussian blob at the centre)."""
    n, h, w = shape
    if kind == "random":
        return np.random.default_rng(seed).random(shape).astype(np.float32)
    yy, xx = np.mgrid[:h, :w]
    blob = np.exp(-(((yy - h / 2) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2) / 2)
    return np.broadcast_to(blob, shape).astype(np.float32).copy()


def deletion_insertion(
    model: keras.Model, images: np.ndarray, targets: Sequence[int], maps: np.ndarray,
    steps: int = 20, blur_sigma: float = 8.0,
) -> pd.DataFrame:  # fmt: skip
    """Deletion and insertion AUC of saliency maps (Petsiuk et al., 2018), per image.

    Deletion blacks out pixels in order of decreasing saliency and tracks the target class's
    probability (lower AUC = more faithful). Insertion starts from a blurred image and restores
    pixels in the same order (higher AUC = more faithful).

    Returns:
        Table with one row per image: `deletion_auc`, `insertion_auc`.
    """
    images = np.asarray(images, dtype=np.float32)
    fractions = np.linspace(0, 1, steps + 1)
    rows = []
    for img, target, m in zip(images, targets, maps):
        order = np.argsort(-m.ravel(), kind="stable")
        h, w = m.shape
        blurred = ndimage.gaussian_filter(img, sigma=(blur_sigma, blur_sigma, 0))
        deleted, inserted = [], []
        for f in fractions:
            mask = np.zeros(h * w, bool)
            mask[order[: int(round(f * h * w))]] = True
            mask = mask.reshape(h, w, 1)
            deleted.append(np.where(mask, 0.0, img))
            inserted.append(np.where(mask, img, blurred))
        batch = np.concatenate([deleted, inserted]).astype(np.float32)
        probs = model.predict(batch, verbose=0, batch_size=len(batch))[:, int(target)]
        rows.append({"deletion_auc": float(np.trapezoid(probs[: len(fractions)], fractions)),
                     "insertion_auc": float(np.trapezoid(probs[len(fractions):], fractions))})  # fmt: skip
    return pd.DataFrame(rows)


def faithfulness_table(
    model: keras.Model, explainer: Explainer, images: np.ndarray, targets: Sequence[int],
    methods: Sequence[str], n_bootstrap: int = 1000, seed: int = 0,
) -> pd.DataFrame:  # fmt: skip
    """Deletion/insertion AUC per method and baseline with 95 % bootstrap CIs over images."""
    maps = {m: explainer(images, targets, m) for m in methods}
    maps["random baseline"] = baseline_maps(images.shape[:3], "random", seed)
    maps["centre-blob baseline"] = baseline_maps(images.shape[:3], "centre")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(images), (n_bootstrap, len(images)))
    rows = []
    for name, m in maps.items():
        scores = deletion_insertion(model, images, targets, m)
        row = {"method": name, "n": len(images)}
        for col in ("deletion_auc", "insertion_auc"):
            values = scores[col].to_numpy()
            lo, hi = np.percentile(values[idx].mean(1), [2.5, 97.5])
            row.update({col: float(values.mean()), f"{col}_ci": [float(lo), float(hi)]})
        rows.append(row)
    return pd.DataFrame(rows)


# --- the report (a section of 03_evaluate) -----------------------------------------------------------


def select_examples(labels, probs, per_class: int, seed: int = 0) -> list[int]:
    """Pick up to `per_class` test images per true class: about half correct, half mistakes."""
    rng = np.random.default_rng(seed)
    pred, chosen = probs.argmax(1), []
    for c in range(probs.shape[1]):
        right = rng.permutation(np.flatnonzero((labels == c) & (pred == c)))
        wrong = np.flatnonzero((labels == c) & (pred != c))
        wrong = wrong[np.argsort(-probs[wrong].max(1))]  # most confident mistakes first
        n_wrong = min(len(wrong), per_class // 2)
        chosen += list(wrong[:n_wrong]) + list(right[: per_class - n_wrong])
    return [int(i) for i in chosen]
