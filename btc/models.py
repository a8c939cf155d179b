"""Model registry: Xception, MobileNet (v1, v2) transfer models and a fast custom CNN.

Every model is a flat functional Keras model (backbone layers inline, built with
`input_tensor=`) that takes the pipeline's [0, 1] 3-channel images and applies its own
normalisation inside the graph, so a saved `.keras` file is self-contained and tf-keras-vis can
reach every layer. This module knows no data.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import keras

from btc.config import CLASS_NAMES, check_image_size

_REGISTRY: dict[str, ModelSpec] = {}
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


class WeightsUnavailableError(RuntimeError):
    """ImageNet weights are neither cached nor downloadable."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a model.

    Args:
        name: Registry name.
        builder: `builder(inputs, num_classes, weights, **kwargs) -> (outputs, backbone)`.
        default_size: Default input side length.
        min_size: Smallest input side length the architecture accepts.
        normalisation: What the graph does to the [0, 1] input (recorded in metadata).
        gradcam_layer: Name of the last convolutional feature layer (for Grad-CAM).
        transfer: Whether the model has a pretrained backbone trained in two phases.
    """

    name: str
    builder: Callable
    default_size: int
    min_size: int
    normalisation: str
    gradcam_layer: str
    transfer: bool


def register_model(name: str, **spec) -> Callable:
    """Decorator: register a builder under `name` with its `ModelSpec` fields."""

    def wrap(builder: Callable) -> Callable:
        _REGISTRY[name] = ModelSpec(name=name, builder=builder, **spec)
        return builder

    return wrap


def model_names() -> list[str]:
    """Return the registered model names."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """Return the `ModelSpec` of `name`.

    Raises:
        ValueError: If `name` is not registered (the message lists the valid names).
    """
    if name not in _REGISTRY:
        raise ValueError(f"`name` must be one of {model_names()}. Received: name={name!r}")
    return _REGISTRY[name]


# --- ImageNet weights --------------------------------------------------------------------------


def keras_cache_dir() -> str:
    """Return Keras' cache folder (`$KERAS_HOME`, else `~/.keras`); weights go in `models/`."""
    from keras.src.backend.config import keras_home

    return keras_home()


def imagenet_weights_file(name: str, alpha: float = 1.0) -> tuple[str, str]:
    """Return the Keras cache file name and download URL of a backbone's no-top weights.

    The same file serves every input size: convolution weights do not depend on it.
    """
    if name == "xception":
        fname = "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
        return fname, f"{KERAS_WEIGHTS_URL}xception/{fname}"
    if name == "mobilenet":
        alpha_text = {1.0: "1_0", 0.75: "7_5", 0.5: "5_0", 0.25: "2_5"}[alpha]
        fname = f"mobilenet_{alpha_text}_224_tf_no_top.h5"
        return fname, f"{KERAS_WEIGHTS_URL}mobilenet/{fname}"
    if name == "mobilenet_v2":
        fname = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_224_no_top.h5"
        return fname, f"{KERAS_WEIGHTS_URL}mobilenet_v2/{fname}"
    raise ValueError(f"`name` has no ImageNet weights. Received: name={name!r}")


def resolve_weights(name: str, weights: str | Path | None, alpha: float = 1.0) -> str | None:
    """Turn `weights` into a local file path (or `None` for random initialisation).

    `"imagenet"` looks in `$BTC_WEIGHTS_DIR`, then the Keras cache (`$KERAS_HOME/models`), and
    downloads into the cache when neither has the file.

    Args:
        name: Registry name of the backbone.
        weights: `"imagenet"`, `None`, or a path to a weights file.
        alpha: Width multiplier (MobileNet).

    Returns:
        Path of a weights file, or `None`.

    Raises:
        WeightsUnavailableError: If ImageNet weights are not cached and cannot be downloaded.
        FileNotFoundError: If `weights` is a path that does not exist.
    """
    if weights is None:
        return None
    if str(weights) != "imagenet":
        if not Path(weights).is_file():
            raise FileNotFoundError(
                f"`weights` must be 'imagenet', None or an existing weights file. "
                f"Received: weights={str(weights)!r}"
            )
        return str(weights)
    fname, url = imagenet_weights_file(name, alpha)
    local = Path(os.environ.get("BTC_WEIGHTS_DIR", "/nonexistent")) / fname
    if local.is_file():
        return str(local)
    try:
        return keras.utils.get_file(fname, url, cache_subdir="models")
    except Exception as exc:
        cache = Path(keras_cache_dir())
        raise WeightsUnavailableError(
            f"ImageNet weights for {name!r} (alpha={alpha}) are not cached and could not be "
            f"downloaded ({type(exc).__name__}). Provide them offline by copying {fname!r} to "
            f"$KERAS_HOME/models/ (here: {cache / 'models' / fname}) or $BTC_WEIGHTS_DIR, or "
            f"pass weights=<path to the .h5 file>; weights=None trains from scratch. "
            f"Source: {url}"
        ) from None


# --- shared head ---------------------------------------------------------------------------------


def classification_head(x, num_classes: int, dense_units: int = 256, dropout: float = 0.3):
    """Pooling → dropout → dense → dropout → softmax (float32 even under mixed precision)."""
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout1")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout2")(x)
    return keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="predictions"
    )(x)


def _to_minus_one_one(inputs):
    return keras.layers.Rescaling(2.0, offset=-1.0, name="normalise_to_pm1")(inputs)


def _transfer(application: Callable, width_multiplier: bool) -> Callable:
    """Builder of a Keras application backbone, inline on the normalised input, plus the head."""

    def build(inputs, num_classes, weights, alpha=1.0, dropout=0.3, **_):
        extra = {"alpha": alpha} if width_multiplier else {}
        backbone = application(
            include_top=False, weights=None, input_tensor=_to_minus_one_one(inputs), **extra
        )
        return classification_head(backbone.output, num_classes, dropout=dropout), backbone

    return build


register_model(
    "xception", default_size=299, min_size=71, normalisation="[0,1] -> [-1,1]",
    gradcam_layer="block14_sepconv2_act", transfer=True,
)(_transfer(keras.applications.Xception, width_multiplier=False))  # fmt: skip
register_model(
    "mobilenet", default_size=224, min_size=32, normalisation="[0,1] -> [-1,1]",
    gradcam_layer="conv_pw_13_relu", transfer=True,
)(_transfer(keras.applications.MobileNet, width_multiplier=True))  # fmt: skip
register_model(
    "mobilenet_v2", default_size=224, min_size=32, normalisation="[0,1] -> [-1,1]",
    gradcam_layer="out_relu", transfer=True,
)(_transfer(keras.applications.MobileNetV2, width_multiplier=True))  # fmt: skip


def _conv_bn_relu(x, filters: int, name: str, strides: int = 1, relu: bool = True):
    x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                            name=f"{name}_conv")(x)  # fmt: skip
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)  # short runs
    return keras.layers.Activation("relu", name=f"{name}_act")(x) if relu else x


@register_model(
    "cnn", default_size=224, min_size=32, normalisation="none ([0,1] input)",
    gradcam_layer="block4_act", transfer=False,
)  # fmt: skip
def _cnn(inputs, num_classes, weights, dropout=0.3, **_):
    """A small residual network trained from scratch, with a global-average-pool head.

    Stem (3×3 stride-2 convolution, max-pool), then four residual blocks (two 3×3 convolutions
    with BN, a 1×1 projection shortcut; 32→64→128→256 filters), a max-pool between blocks, global
    average pooling, dropout and softmax: about 60 M multiply-adds per 128-px image (CPU speed)
    and 1.2 M parameters at any input size. The recipe study (`benchmarks/recipes.py`, rows F–G)
    compares it with `cnn_plain`.
    """
    x = _conv_bn_relu(inputs, 24, "stem", strides=2)
    x = keras.layers.MaxPooling2D(name="stem_pool")(x)
    for block, filters in enumerate((32, 64, 128, 256), start=1):
        if block > 1:
            x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
        shortcut = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"block{block}_proj")(x)
        shortcut = keras.layers.BatchNormalization(momentum=0.9, name=f"block{block}_proj_bn")(
            shortcut
        )
        x = _conv_bn_relu(x, filters, f"block{block}a")
        x = _conv_bn_relu(x, filters, f"block{block}b", relu=False)
        x = keras.layers.Add(name=f"block{block}_add")([x, shortcut])
        x = keras.layers.Activation("relu", name=f"block{block}_act")(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    out = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")
    return out(x), None


@register_model(
    "cnn_plain", default_size=224, min_size=32, normalisation="none ([0,1] input)",
    gradcam_layer="block4_act", transfer=False,
)  # fmt: skip
def _cnn_plain(inputs, num_classes, weights, dropout=0.3, **_):
    """The first CNN: four plain conv blocks (32→64→128→256; conv, BN, ReLU, max-pool, dropout).

    The first convolution has stride 2 and each block one 3×3 convolution (about 60 M
    multiply-adds per 128-px image); a flatten + dense head gives about 4.7 M parameters at
    224 px. Kept for the recipe study; `cnn` does better on validation.
    """
    x = inputs
    for block, filters in enumerate((32, 64, 128, 256), start=1):
        x = _conv_bn_relu(x, filters, f"block{block}", strides=2 if block == 1 else 1)
        x = keras.layers.MaxPooling2D(name=f"block{block}_pool")(x)
        x = keras.layers.Dropout(dropout / 3, name=f"block{block}_dropout")(x)
    x = keras.layers.Flatten(name="head_flatten")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout1")(x)
    x = keras.layers.Dense(344, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout2")(x)
    out = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="predictions")
    return out(x), None


def build_model(
    name: str,
    num_classes: int = 4,
    image_size: int | None = None,
    weights: str | Path | None = "imagenet",
    alpha: float = 1.0,
    dropout: float = 0.3,
) -> keras.Model:
    """Build a registered model as a flat functional Keras model.

    Args:
        name: One of `model_names()`.
        num_classes: Number of output classes.
        image_size: Input side length; defaults to the model's `default_size`.
        weights: Backbone weights: `"imagenet"`, `None` or a weights-file path. Ignored (must be
            `None` or `"imagenet"`) for models without a pretrained backbone.
        alpha: Width multiplier of MobileNet backbones (1.0, 0.75, 0.5 or 0.25).
        dropout: Dropout rate of the head.

    Returns:
        An uncompiled `keras.Model` mapping `(batch, size, size, 3)` [0, 1] images to
        softmax probabilities. `model.backbone_layers` names the backbone's layers.

    Raises:
        ValueError: On an unknown name, a too-small size, or a bad `alpha`.
        WeightsUnavailableError: If ImageNet weights cannot be found or downloaded.
    """
    spec = get_spec(name)
    size = check_image_size(spec.default_size if image_size is None else image_size, spec.min_size)
    if name.startswith("mobilenet") and alpha not in (1.0, 0.75, 0.5, 0.25):
        raise ValueError(
            f"`alpha` must be one of [1.0, 0.75, 0.5, 0.25]. Received: alpha={alpha!r}"
        )
    weights_path = resolve_weights(name, weights, alpha) if spec.transfer else None
    inputs = keras.Input((size, size, 3), name="image")
    outputs, backbone = spec.builder(inputs, num_classes, weights, alpha=alpha, dropout=dropout)
    if weights_path is not None:
        backbone.load_weights(weights_path)
    suffix = f"_{alpha:g}" if name.startswith("mobilenet") else ""
    model = keras.Model(inputs, outputs, name=f"btc_{name}{suffix}")
    model.backbone_layers = [layer.name for layer in backbone.layers] if backbone else []
    return model


# --- losses for partly labelled data (saved with the models, so they live on this floor) ---------


@keras.saving.register_keras_serializable(package="btc")
def partial_label_crossentropy(y_true, y_pred, label_smoothing: float = 0.0):
    """Cross-entropy where label `len(CLASS_NAMES)` means "a tumour of unknown type".

    Known labels give −log p_y; the unknown-tumour label gives −log Σ p_tumour-classes. With
    `label_smoothing` ε the loss is `(1 − ε) ·` that `+ ε ·` the mean of −log p over the classes,
    which for a known label is the cross-entropy with the usual smoothed target
    `(1 − ε) · one_hot + ε / k`.
    """
    import tensorflow as tf

    k = len(CLASS_NAMES)
    y = tf.reshape(tf.cast(y_true, tf.int32), [-1])
    tumour = tf.constant([0.0 if c == "notumor" else 1.0 for c in CLASS_NAMES], y_pred.dtype)
    target = tf.where(
        tf.equal(y, k)[:, None], tumour[None, :], tf.one_hot(y, k, dtype=y_pred.dtype)
    )
    probs = tf.clip_by_value(tf.cast(y_pred, target.dtype), 1e-7, 1.0)
    loss = -tf.math.log(tf.clip_by_value(tf.reduce_sum(target * probs, axis=-1), 1e-7, 1.0))
    if label_smoothing:
        uniform = -tf.reduce_mean(tf.math.log(probs), axis=-1)
        loss = (1.0 - label_smoothing) * loss + label_smoothing * uniform
    return loss


@keras.saving.register_keras_serializable(package="btc")
class PartialLabelCrossentropy(keras.losses.Loss):
    """`partial_label_crossentropy` as a saveable Keras loss with its `label_smoothing`.

    Args:
        label_smoothing: Share ε of the target spread evenly over the classes, in [0, 1).
        name: Loss name.

    Raises:
        ValueError: If `label_smoothing` is outside [0, 1).
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "partial_label_crossentropy",
                 **kwargs):  # fmt: skip
        from btc.config import check_range

        check_range("label_smoothing", label_smoothing, 0, 1, high_inclusive=False)
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        return partial_label_crossentropy(y_true, y_pred, self.label_smoothing)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="btc")
def partial_label_accuracy(y_true, y_pred):
    """Accuracy where the unknown-tumour label counts as right for any tumour class."""
    import tensorflow as tf

    k = len(CLASS_NAMES)
    y = tf.reshape(tf.cast(y_true, tf.int32), [-1])
    pred = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
    notumor = CLASS_NAMES.index("notumor")
    right = tf.where(tf.equal(y, k), tf.not_equal(pred, notumor), tf.equal(pred, y))
    return tf.cast(right, tf.float32)


def set_trainable(model: keras.Model, phase: str, finetune_fraction: float = 0.3) -> int:
    """Freeze or unfreeze backbone layers for a training phase; return trainable layer count.

    Phase `"head"` freezes the whole backbone. Phase `"finetune"` unfreezes the top
    `finetune_fraction` of backbone layers, keeping every BatchNormalization layer frozen (in
    Keras 3 a frozen BN layer runs in inference mode, so its statistics are not disturbed).
    Phases `"scratch"` (random initialisation) and `"all"` (one-phase fine-tuning) make every
    layer trainable, BN included.
    """
    if phase in ("scratch", "all"):
        for layer in model.layers:
            layer.trainable = True
        return sum(1 for layer in model.layers if layer.weights)
    backbone = set(getattr(model, "backbone_layers", []))
    ordered = [layer for layer in model.layers if layer.name in backbone]
    first_unfrozen = len(ordered) - int(round(finetune_fraction * len(ordered)))
    for layer in model.layers:
        if layer.name not in backbone:
            layer.trainable = True
            continue
        position = ordered.index(layer)
        layer.trainable = (
            phase == "finetune"
            and position >= first_unfrozen
            and not isinstance(layer, keras.layers.BatchNormalization)
        )
    return sum(1 for layer in model.layers if layer.trainable and layer.weights)
