"""Tests of btc.datasets: the atomic manifest write and the tf.data pipeline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from btc import config, data, datasets


def test_manifest_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "manifest.csv"
    good = pd.DataFrame(
        [["a", "s", "glioma", "train", 0, "", "jpeg", "L"]], columns=datasets.MANIFEST_COLUMNS
    )
    datasets.write_manifest(good, path, {"params": {}})
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", boom)
    with pytest.raises(OSError):
        datasets.write_manifest(good, path, {"params": {}})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv", "manifest.json"]


# --- tf.data ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_manifest(real_sample, tmp_path_factory):
    cfg = config.PreprocessConfig(data_dir=real_sample, workers=1)
    out = tmp_path_factory.mktemp("m") / "manifest.csv"
    return data.preprocess(cfg, manifest_path=out)["manifest"]


def test_pipeline_yields_grayscale_replicated_unit_range_tensors(sample_manifest):
    ds = datasets.make_dataset(sample_manifest, "val", image_size=72, batch_size=4)
    x, y = next(iter(ds))
    x = x.numpy()
    assert x.shape == (4, 72, 72, 3) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5
    assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2])
    val = sample_manifest[sample_manifest.split == "val"]
    expected = val["class"].map(config.CLASS_NAMES.index).to_numpy()[:4]
    assert np.array_equal(y.numpy(), expected)


def test_training_pipeline_augments_and_stays_in_range(sample_manifest):
    plain = datasets.make_dataset(sample_manifest, "train", 64, 8, augment=False, shuffle=False)
    augmented = datasets.make_dataset(sample_manifest, "train", 64, 8, augment=True, shuffle=False)
    (x0, y0), (x1, y1) = next(iter(plain)), next(iter(augmented))
    assert np.array_equal(y0, y1)
    assert not np.allclose(x0, x1)
    assert 0.0 <= x1.numpy().min() and x1.numpy().max() <= 1.0


def test_make_dataset_rejects_bad_arguments(sample_manifest):
    with pytest.raises(ValueError, match=r"`split` must be one of .* Received: split='testing'"):
        datasets.make_dataset(sample_manifest, "testing")
    with pytest.raises(ValueError, match="image_size"):
        datasets.make_dataset(sample_manifest, "train", image_size=8)
