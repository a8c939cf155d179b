"""Tests of btc.oodfeatures: the stage layers, the generic extractor and the Gaussian fit."""

from __future__ import annotations

import numpy as np

from btc import artifacts, oodfeatures


def test_stage_layers_are_the_deepest_activation_per_resolution(tiny_models):
    model, meta = artifacts.load_trained("cnn", tiny_models[0])
    stages = oodfeatures.stage_layers(model, meta["gradcam_layer"])
    assert stages == ["block2_act", "block3_act", "block4_act"]
    outs = oodfeatures.forward(model, oodfeatures.feature_model(model, meta), np.zeros((2, meta["image_size"], meta["image_size"], 3), np.float32))  # fmt: skip
    widths = sum(model.get_layer(n).output.shape[-1] for n in stages)
    assert outs["stages"].shape == (2, widths) and outs["pool"].shape[1] == 256


def test_generic_features_need_imagenet_weights_and_are_skipped_without(tmp_path, monkeypatch):
    model = oodfeatures.generic_model(64)  # the offline MobileNet a 0.25 weights (conftest)
    images = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
    features = model.predict_on_batch(images)
    assert features.shape == (2, 64 + 128 + 256) and np.all(features >= 0)
    assert not any(w.trainable for w in model.weights)
    monkeypatch.setenv("BTC_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setattr("keras.utils.get_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))  # fmt: skip
    assert oodfeatures.generic_model(64) is None


def test_fit_gaussian_handles_dead_and_collinear_units_and_is_exact_mahalanobis():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(0)
    f = rng.normal(size=(400, 6))
    f[:, 2] = 0.0  # a dead ReLU unit
    f = np.c_[f, 2 * f[:, 0]].astype(np.float32)  # a collinear one: a Cholesky used to fail here
    y = rng.integers(0, 3, 400)
    stats = oodfeatures.fit_gaussian(f, y, 3)
    z = f[:5] @ stats["whiten"]
    d2 = ((z[:, None, :] - stats["means_w"][None]) ** 2).sum(-1)
    assert np.isfinite(d2).all()
    g = rng.normal(size=(300, 4))
    yg = rng.integers(0, 2, 300)
    stats = oodfeatures.fit_gaussian(g.astype(np.float32), yg, 2)
    means = np.stack([g[yg == c].mean(0) for c in range(2)])
    precision = np.linalg.inv(LedoitWolf().fit(g - means[yg]).covariance_)
    expected = np.array([[(x - m) @ precision @ (x - m) for m in means] for x in g[:5]])
    got = (((g[:5] @ stats["whiten"])[:, None, :] - stats["means_w"][None]) ** 2).sum(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-3)
