"""Tests of btc.models: the registry, normalisation, flat graphs and ImageNet weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from btc import models
from tests.conftest import SHARED_WEIGHTS

EXPECTED_PARAMS_224 = {  # counted from the architectures; a change here is a change of model
    "xception": (21.0e6, 21.6e6),
    "mobilenet": (3.3e6, 3.6e6),
    "mobilenet_v2": (2.4e6, 2.7e6),
    "cnn": (1.2e6, 1.25e6),  # residual, global-average-pool head: independent of input size
    "cnn_plain": (4.6e6, 4.8e6),
}


def test_registry_lists_models_and_rejects_unknown_names():
    assert models.model_names() == sorted(EXPECTED_PARAMS_224)
    with pytest.raises(
        ValueError, match=r"`name` must be one of \['cnn', .*Received: name='resnet'"
    ):
        models.build_model("resnet", weights=None)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS_224))
def test_every_model_is_flat_functional_with_its_normalisation(name):
    spec = models.get_spec(name)
    size = max(spec.min_size, 72)
    model = models.build_model(name, image_size=size, weights=None)
    assert isinstance(model, keras.Model) and not isinstance(model, keras.Sequential)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers), "nested backbone"
    assert model.get_layer(spec.gradcam_layer).output.shape[1] >= 2
    assert model.output_shape == (None, 4)
    x = np.stack([np.zeros((size, size, 3)), np.ones((size, size, 3))]).astype("float32")
    probs = model.predict(x, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    first = model.layers[1]
    if spec.transfer:  # Xception and MobileNet expect [-1, 1]: done once, inside the graph
        assert isinstance(first, keras.layers.Rescaling)
        out = keras.Model(model.input, first.output).predict(x, verbose=0)
        assert out[0].min() == -1.0 and out[1].max() == 1.0
        assert not any(isinstance(layer, keras.layers.Rescaling) for layer in model.layers[2:])
    else:
        assert not any(isinstance(layer, keras.layers.Rescaling) for layer in model.layers)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS_224))
def test_parameter_count_at_224(name):
    low, high = EXPECTED_PARAMS_224[name]
    assert low <= models.build_model(name, image_size=224, weights=None).count_params() <= high


def test_too_small_input_and_bad_alpha_are_rejected():
    with pytest.raises(
        ValueError, match=r"`image_size` must be in \[71, 1024\]\. Received: image_size=64"
    ):
        models.build_model("xception", image_size=64, weights=None)
    with pytest.raises(ValueError, match=r"Received: alpha=0.3"):
        models.build_model("mobilenet", image_size=64, weights=None, alpha=0.3)


def _first_kernel_in_file(path):
    with h5py.File(path, "r") as f:
        group = f["conv1"] if "conv1" in f else f["model_weights"]["conv1"]
        found = []
        group.visititems(lambda n, o: found.append(o[()]) if isinstance(o, h5py.Dataset) else None)
        return found[0]


@pytest.mark.parametrize("size", [64, 128, 224])
def test_shared_mobilenet_weights_load_offline_at_any_size(size):
    if not SHARED_WEIGHTS.is_file():
        pytest.skip(f"shared weights not found at {SHARED_WEIGHTS}")
    model = models.build_model(
        "mobilenet", image_size=size, weights=str(SHARED_WEIGHTS), alpha=0.25
    )
    np.testing.assert_array_equal(
        model.get_layer("conv1").kernel.numpy(), _first_kernel_in_file(SHARED_WEIGHTS)
    )


def test_imagenet_weights_come_from_the_keras_cache(tmp_path, monkeypatch):
    if not SHARED_WEIGHTS.is_file():
        pytest.skip(f"shared weights not found at {SHARED_WEIGHTS}")
    cache = Path(models.keras_cache_dir()) / "models"
    cache.mkdir(parents=True, exist_ok=True)
    (tmp_path / "unused").mkdir()
    monkeypatch.setenv("BTC_WEIGHTS_DIR", str(tmp_path / "unused"))
    monkeypatch.setattr(models, "KERAS_WEIGHTS_URL", "http://127.0.0.1:9/")  # never downloads
    target = cache / SHARED_WEIGHTS.name
    shutil.copy(SHARED_WEIGHTS, target)
    try:
        model = models.build_model("mobilenet", image_size=96, weights="imagenet", alpha=0.25)
    finally:
        target.unlink()
    np.testing.assert_array_equal(
        model.get_layer("conv1").kernel.numpy(), _first_kernel_in_file(SHARED_WEIGHTS)
    )


def test_missing_imagenet_weights_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("BTC_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr(models, "KERAS_WEIGHTS_URL", "http://127.0.0.1:9/")  # closed port: offline
    with pytest.raises(models.WeightsUnavailableError) as err:
        models.build_model("xception", image_size=96, weights="imagenet")
    message = str(err.value)
    assert "$KERAS_HOME/models/" in message and "weights=<path" in message
    assert "xception_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    with pytest.raises(FileNotFoundError, match="Received: weights='/no/such.h5'"):
        models.build_model("mobilenet", image_size=96, weights="/no/such.h5")


def test_phases_freeze_backbone_and_keep_batchnorm_in_inference_mode():
    model = models.build_model("mobilenet", image_size=64, weights=None, alpha=0.25)
    backbone = [layer for layer in model.layers if layer.name in model.backbone_layers]
    head = [layer for layer in model.layers if layer.name not in model.backbone_layers]
    models.set_trainable(model, "head")
    assert not any(layer.trainable for layer in backbone) and all(layer.trainable for layer in head)
    models.set_trainable(model, "finetune", finetune_fraction=0.5)
    bns = [layer for layer in backbone if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and not any(layer.trainable for layer in bns)
    convs = [layer for layer in backbone if isinstance(layer, keras.layers.Conv2D)]
    assert convs[-1].trainable and not convs[0].trainable
