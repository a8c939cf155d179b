"""Tests of btc.artifacts: a saved model reloads as the same flat graph."""

from __future__ import annotations

import keras
import numpy as np

from btc import artifacts, models


def test_saved_model_reloads_and_predicts_identically(tmp_path):
    model = models.build_model("mobilenet", image_size=64, weights=None, alpha=0.25)
    x = np.random.default_rng(0).random((3, 64, 64, 3), dtype=np.float32)
    artifacts.save_model_atomic(model, tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(
        reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6
    )
    assert reloaded.get_layer("conv_pw_13_relu") is not None  # still flat after reload
