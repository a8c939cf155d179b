"""Tests of btc.quantization: exact gray folding and int8 bias correction, on small generated models."""

from __future__ import annotations

import numpy as np
import pytest

from btc import quantization


def _small_model(normalise=None, seed: int = 0):
    """Conv (colour-opponent kernel) → BN → ReLU → depthwise → BN → pool → dense, random weights."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 3))
    x = normalise(inputs) if normalise is not None else keras.layers.Rescaling(2.0, -1.0)(inputs)
    conv = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="first")
    x = keras.layers.BatchNormalization(name="first_bn")(conv(x))
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax", name="out")(x))
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(3, 3, 3, 8)).astype("float32")
    kernel[:, :, 1] -= kernel[:, :, 0] * 1.5  # large weights whose effect cancels on gray input
    conv.set_weights([kernel])
    for bn in ("first_bn", "dw_bn"):
        layer = model.get_layer(bn)
        gamma, beta, mean, var = layer.get_weights()
        layer.set_weights([gamma * 5, rng.normal(size=beta.shape).astype("float32"), mean, var])
    return model


def _gray(n: int = 12, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).random((n, 16, 16, 1)).astype("float32")
    return np.repeat(x, 3, -1)


def test_gray_folding_is_exact_on_gray_input_and_refused_otherwise():
    import keras

    model, x = _small_model(), _gray()
    before = model.predict_on_batch(x)
    assert quantization.fold_gray_input(model, x) == "first"
    kernel = model.get_layer("first").get_weights()[0]
    assert np.all(kernel[:, :, 1:] == 0) and np.any(kernel[:, :, 0] != 0)
    np.testing.assert_allclose(model.predict_on_batch(x), before, atol=1e-5)
    # per-channel normalisation (ImageNet mean/std style): channels differ, folding would not be exact
    norm = keras.layers.Normalization(mean=[0.2, 0.5, 0.8], variance=[0.05, 0.2, 0.6])
    other = _small_model(normalise=norm)
    kept = other.get_layer("first").get_weights()[0]
    assert quantization.fold_gray_input(other, x) is None
    np.testing.assert_array_equal(other.get_layer("first").get_weights()[0], kept)


def _bn_means(model, x, layer: str, quantised: bool) -> np.ndarray:
    """Mean output of a batch-norm layer, with its producer's folded kernel rounded to int8."""
    import keras

    bn = model.get_layer(layer)
    producer = bn.input._keras_history[0]
    saved = producer.get_weights()
    if quantised:
        gamma, _, _, var = bn.get_weights()
        gain = gamma / np.sqrt(var + bn.epsilon)
        shape = (1, 1, -1, 1) if isinstance(producer, keras.layers.DepthwiseConv2D) else (-1,)
        folded = saved[0] * gain.reshape(shape)
        axes = (0, 1, 3) if len(shape) == 4 else (0, 1, 2)
        scale = np.abs(folded).max(axes, keepdims=True) / 127
        producer.set_weights([np.round(folded / scale) * scale / gain.reshape(shape), *saved[1:]])
    out = keras.Model(model.inputs, bn.output).predict_on_batch(x)
    producer.set_weights(saved)
    return out.reshape(-1, out.shape[-1]).mean(0)


@pytest.mark.parametrize("layer", ["first_bn", "dw_bn"])
def test_bias_correction_cancels_the_mean_shift_of_int8_weights(layer):
    model, x = _small_model(seed=3), _gray(32)
    float_mean = _bn_means(model, x, layer, quantised=False)
    shift_before = np.abs(_bn_means(model, x, layer, quantised=True) - float_mean).mean()
    corrected = quantization.correct_weight_bias(model, x)
    assert {"first", "dw", "out"} <= set(corrected)
    shift_after = np.abs(_bn_means(model, x, layer, quantised=True) - float_mean).mean()
    assert shift_before > 1e-4 and shift_after < shift_before / 4, (shift_before, shift_after)
