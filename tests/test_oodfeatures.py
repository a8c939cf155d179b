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


def _head(size: int = 96) -> np.ndarray:
    """A synthetic axial head: brain texture inside a bright skull ring, on black (round, so
    the ring stays where it is when a style copy is turned)."""
    yy, xx = np.mgrid[:size, :size] / (size - 1) - 0.5
    r = np.hypot(xx, yy)
    rng = np.random.default_rng(1)
    img = np.where(r < 0.40, 0.45 + 0.1 * rng.random((size, size)), 0.0)
    img = np.where((r >= 0.40) & (r < 0.46), 0.95, img)  # scalp and skull
    return np.repeat(img[..., None], 3, -1).astype(np.float32)


def test_style_augment_blurs_changes_contrast_and_strips_the_skull_reproducibly():
    x = np.stack([_head()] * 16)
    out = oodfeatures.style_augment(x, np.random.default_rng(0))
    again = oodfeatures.style_augment(x, np.random.default_rng(0))
    np.testing.assert_array_equal(out, again)
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1 and np.allclose(out[..., 0], out[..., 2])
    size = x.shape[1]
    yy, xx = np.mgrid[:size, :size] / (size - 1) - 0.5
    r = np.hypot(xx, yy)
    ring, centre = (r >= 0.41) & (r < 0.45), r < 0.2
    ring_mean = out[..., 0][:, ring].mean(1)
    stripped = ring_mean < 0.15  # the skull ring is gone (blur spills a little), the brain kept
    assert 0 < stripped.sum() < len(x)
    assert (out[..., 0][:, centre].mean(1) > 0.1).all()
    assert (ring_mean[~stripped] > 0.3).all()

    # blur: less pixel-to-pixel texture in the brain, relative to its brightness
    pairs = centre[:, 1:] & centre[:, :-1]

    def roughness(a):
        a = a[..., 0]
        return np.abs(np.diff(a, axis=-1))[:, pairs].mean(1) / a[:, centre].mean(1)

    assert (roughness(out) < 0.6 * roughness(x)).all()


def test_style_augment_turns_or_flips_about_half_of_the_copies():
    x = _head()
    x[20:30, 24:32] = 1.0  # a bright mark inside the brain, off every axis of symmetry
    out = oodfeatures.style_augment(np.stack([x] * 64), np.random.default_rng(0))[..., 0]
    orbit = [np.rot90(x[..., 0], k) for k in range(4)]
    orbit += [o.T for o in orbit]  # the 8 symmetries of the square
    where = [int(np.argmax([np.corrcoef(o.ravel(), c.ravel())[0, 1] for o in orbit])) for c in out]
    moved = np.mean(np.array(where) > 0)
    assert 0.3 < moved < 0.7  # STYLE_ORIENT = 0.5 of 64 copies
    assert len(set(where)) >= 6  # turns and flips, not one fixed transform


def test_style_augment_crops_and_enlarges_about_a_quarter_of_the_copies():
    x = _head()
    out = oodfeatures.style_augment(np.stack([x] * 64), np.random.default_rng(1))[..., 0]
    head = (out > oodfeatures.STRIP_LEVEL).mean((1, 2))  # share of the frame the head fills
    border = np.concatenate([out[:, :3], out[:, -3:]], 1).mean((1, 2))  # background at the edge
    cropped = (head > (x[..., 0] > oodfeatures.STRIP_LEVEL).mean() + 0.1) & (border > 0.1)
    assert 0.12 < cropped.mean() < 0.4  # STYLE_CROP = 0.25 of 64 copies
    assert (out[cropped].max((1, 2)) > 0.3).all()  # a region of the head, never a blank corner


def test_style_augment_never_blanks_a_small_head():
    size = 96
    yy, xx = np.mgrid[:size, :size] / (size - 1) - 0.5
    small = np.where(np.hypot(xx, yy) < 0.08, 0.6, 0.0)  # erosion by 12 % of the side empties it
    x = np.repeat(np.repeat(small[None, ..., None], 3, -1), 16, 0).astype(np.float32)
    out = oodfeatures.style_augment(x, np.random.default_rng(0))
    assert (out[..., 0].max((1, 2)) > 0.3).all()


def test_knn_distance_is_one_minus_the_kth_cosine_similarity_to_the_standardised_bank():
    rng = np.random.default_rng(0)
    bank = rng.normal([5.0, -2.0, 0.0, 1.0], [1.0, 3.0, 0.5, 2.0], (400, 4))
    arrays = {f"joint_{k}": v for k, v in oodfeatures.fit_knn(bank, "joint").items()}
    assert arrays["joint_knn_bank"].dtype == np.float16  # stored with the model: kept small
    queries = np.r_[bank[:3], rng.normal(0.0, 4.0, (297, 4))]  # > 256: more than one block
    got = oodfeatures.knn_distance(queries, arrays, "joint_", k=7)
    z = (bank - bank.mean(0)) / bank.std(0)
    q = (queries - bank.mean(0)) / bank.std(0)
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (z / np.linalg.norm(z, axis=1, keepdims=True)).T  # fmt: skip
    np.testing.assert_allclose(got, 1 - np.sort(cos, 1)[:, -7], atol=2e-3)  # the 7th nearest
    one = oodfeatures.knn_distance(bank[:3], arrays, "joint_", k=1)
    np.testing.assert_allclose(one, 0.0, atol=2e-3)  # a scan of the bank is its own neighbour
    capped = oodfeatures.knn_distance(queries[:2], arrays, "joint_", k=10_000)
    np.testing.assert_allclose(capped, 1 - cos[:2].min(1), atol=2e-3)  # k capped at the bank
    assert oodfeatures.fit_knn(bank, "pool") == {}  # only `KNN_FEATURES` get a bank


def test_knn_sees_an_image_between_the_clusters_that_the_gaussians_call_typical():
    # one class whose scans lie on two separate arms (two kinds of slice): its Gaussian's mean
    # sits between the arms, where no scan is; a probe there is typical to Mahalanobis only
    rng = np.random.default_rng(1)
    arms = np.r_[rng.normal([4.0, 0.0, 2.0], 0.3, (300, 3)), rng.normal([0.0, 4.0, 2.0], 0.3, (300, 3))]  # fmt: skip
    labels = np.zeros(600, int)
    gauss = oodfeatures.fit_gaussian(arms.astype(np.float32), labels, 1)
    arrays = {f"p_{k}": v for k, v in oodfeatures.fit_knn(arms, "joint").items()}
    probe, held = np.array([[2.0, 2.1, 2.1]]), rng.normal([4.0, 0.0, 2.0], 0.3, (50, 3))

    def maha(x):
        return (((x @ gauss["whiten"])[:, None] - gauss["means_w"][None]) ** 2).sum(-1).min(1)

    assert maha(probe)[0] < np.median(maha(held))  # the Gaussian: more typical than real scans
    knn = oodfeatures.knn_distance(np.r_[probe, held], arrays, "p_", k=10)
    assert knn[0] > 3 * knn[1:].max()  # kNN: farther than every real scan


def test_method_arrays_keep_only_the_chosen_methods_knn_bank():
    arrays = {"joint_whiten": 1, "joint_knn_bank": 2, "joint_knn_mean": 3, "stages_knn_bank": 4,
              "stages_means_w": 5, "ct_whiten": 6}  # fmt: skip
    union = oodfeatures.method_arrays(arrays, "mahalanobis_joint+knn_joint")
    assert set(union) == {"joint_whiten", "joint_knn_bank", "joint_knn_mean", "stages_means_w", "ct_whiten"}  # fmt: skip
    assert set(oodfeatures.method_arrays(arrays, "knn_stages")) == set(arrays) - {"joint_knn_bank", "joint_knn_mean"}  # fmt: skip
    assert "_knn_" not in "".join(oodfeatures.method_arrays(arrays, "mahalanobis_joint"))


def test_a_unit_dead_on_every_bank_scan_does_not_decide_the_knn_distance_alone():
    rng = np.random.default_rng(2)
    bank = np.c_[rng.normal(1.0, 0.5, (300, 8)), np.zeros(300)]  # the last unit never fires
    arrays = {f"j_{k}": v for k, v in oodfeatures.fit_knn(bank, "joint").items()}
    faint = bank[:20].copy()
    faint[:, -1] = 1e-3  # a scan of the bank with a faint activation of the dead unit
    assert oodfeatures.knn_distance(faint, arrays, "j_", k=1).max() < 0.05
    strong = bank[:20].copy()
    strong[:, -1] = 1.0  # as strong as a live unit: a real difference, seen as one
    assert oodfeatures.knn_distance(strong, arrays, "j_", k=1).min() > 0.5
