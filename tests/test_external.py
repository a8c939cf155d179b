"""Tests of btc.external: the external tumour set, its group split, sensitivity and box scores."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from btc import config, data, datasets, external, models, train
from tests.conftest import SHARED_EXTERNAL


def test_read_boxes_parses_yolo_and_names_bad_lines(tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("0 0.5 0.4 0.2 0.1\n\n0 0.1 0.2 0.3 0.4\n")
    assert external.read_boxes(good) == [[0.5, 0.4, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]]
    assert external.read_boxes(tmp_path / "missing.txt") == []
    bad = tmp_path / "b.txt"
    bad.write_text("0 0.5 0.4 0.2\n")
    with pytest.raises(ValueError, match=r"b\.txt:1: expected `class cx cy w h`"):
        external.read_boxes(bad)


@pytest.fixture(scope="module")
def prepared(full_index):
    if not SHARED_EXTERNAL.is_dir():
        pytest.skip(f"external set not found at {SHARED_EXTERNAL}")
    return external.prepare_external(SHARED_EXTERNAL, full_index, seed=0)


def test_external_set_is_split_by_group_and_free_of_kaggle_copies(prepared, full_index):
    frame, report = prepared
    assert report["images"] == 344 and report["unreadable"] == 0
    assert 0 < report["dropped_copy_of_kaggle"] < 30  # a few Br35H scans are Kaggle images
    assert frame.groupby("group")["split"].nunique().max() == 1  # near-copies stay together
    assert 60 < report["groups"] < 200 < len(frame)  # many near-copies: far fewer groups
    shares = frame["split"].value_counts(normalize=True)
    assert 0.35 < shares["train"] < 0.65
    assert set(frame["class"]) == {config.UNKNOWN_TUMOUR}
    assert all(json.loads(b) for b in frame["boxes"])  # every scan has its tumour box
    assert not set(frame["sha256"]) & set(full_index["sha256"])


def test_box_masks_follow_the_pipelines_padding():
    frame = pd.DataFrame({"width": [200], "height": [100],
                          "boxes": [json.dumps([[0.75, 0.5, 0.1, 0.2]])]})  # fmt: skip
    mask = external.box_masks(frame, 100)[0]
    ys, xs = np.nonzero(mask)
    # scale 0.5: the image becomes 100×50, padded by 25 rows above; box centre (150, 50) in the
    # original → (75, 25 + 25) in the square
    assert abs(xs.mean() - 75) <= 1 and abs(ys.mean() - 50) <= 1
    assert xs.max() - xs.min() + 1 in (10, 11) and ys.max() - ys.min() + 1 in (10, 11)


def test_box_scores_pointing_energy_and_centre_baseline():
    masks = np.zeros((2, 32, 32), bool)
    masks[0, 2:8, 2:8] = True  # off-centre tumour
    masks[1, 12:20, 12:20] = True  # central tumour
    maps = np.zeros((2, 32, 32), np.float32)
    maps[0, 4, 4] = 1.0  # peak inside the box
    maps[1, 30, 30] = 1.0  # peak outside
    scores = external.box_scores(maps, masks)
    assert scores["pointing_hits"] == [1, 0] and scores["pointing"] == 0.5
    assert scores["energy"] == 0.5  # all mass in the box, then none
    assert scores["centre_hits"] == [0, 1]
    assert 0 < scores["centre_energy"] < 0.5


def test_tumour_sensitivity_and_group_bootstrap():
    probs = np.array([[0.1, 0.1, 0.7, 0.1]] * 4 + [[0.8, 0.1, 0.05, 0.05]] * 6)
    groups = np.array(["a"] * 4 + [f"g{i}" for i in range(6)])
    result = external.tumour_sensitivity(probs, groups, config.CLASS_NAMES, 500, seed=0)
    assert result["sensitivity"] == 0.6 and result["groups"] == 7
    assert result["called"] == {"glioma": 6, "meningioma": 0, "notumor": 4, "pituitary": 0}
    lo, hi = result["ci"]
    assert lo < 0.6 < hi
    # one group of four misses weighs as one draw: the CI is wider than for independent images
    independent = external.group_bootstrap(probs.argmax(1) != 2, np.arange(10), 500, seed=0)
    assert hi - lo >= independent[1] - independent[0] - 1e-9


def test_partial_label_loss_and_accuracy():
    p = np.array([[0.2, 0.3, 0.4, 0.1], [0.2, 0.3, 0.4, 0.1], [0.1, 0.1, 0.7, 0.1]], np.float32)
    y = np.array([1, 4, 4])  # meningioma; tumour of unknown type twice
    loss = np.asarray(models.partial_label_crossentropy(y, p))
    assert np.allclose(loss, [-np.log(0.3), -np.log(0.6), -np.log(0.3)], atol=1e-6)
    acc = np.asarray(models.partial_label_accuracy(y, p))
    assert acc.tolist() == [0.0, 0.0, 0.0]  # argmax notumor is wrong for both labels
    acc = np.asarray(models.partial_label_accuracy(np.array([2, 4]), p[[0, 0]][:, [2, 1, 0, 3]]))
    assert acc.tolist() == [0.0, 1.0]  # glioma predicted: wrong for notumor, right for "tumour"


def test_label_smoothing_matches_keras_for_known_labels_and_survives_saving(tmp_path):
    import keras

    p = np.array([[0.2, 0.3, 0.4, 0.1], [0.05, 0.05, 0.85, 0.05]], np.float32)
    y = np.array([1, 2])
    smoothed = models.PartialLabelCrossentropy(0.1)
    reference = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)
    assert np.isclose(float(smoothed(y, p)), float(reference(np.eye(4)[y], p)), atol=1e-5)
    assert float(smoothed(y, p)) != float(models.PartialLabelCrossentropy()(y, p))
    unknown = np.asarray(models.partial_label_crossentropy(np.array([4]), p[:1], 0.1))
    assert np.isclose(unknown[0], 0.9 * -np.log(0.6) + 0.1 * -np.log(p[0]).mean(), atol=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        models.PartialLabelCrossentropy(1.0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Softmax()(inputs))
    model.compile(loss=smoothed)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.loss.get_config()["label_smoothing"] == 0.1


def test_training_uses_external_groups_as_unknown_tumour(tiny_manifest, tmp_path):
    if not SHARED_EXTERNAL.is_dir():
        pytest.skip(f"external set not found at {SHARED_EXTERNAL}")
    manifest = tmp_path / "manifest.csv"
    frame = pd.read_csv(tiny_manifest, keep_default_na=False)
    frame.to_csv(manifest, index=False)
    ext, _ = external.prepare_external(SHARED_EXTERNAL, data.index_dataset(
        SHARED_EXTERNAL.parent / "brain-tumor-mri", sample_per_class=2, workers=1), seed=0)  # fmt: skip
    external.write_external(ext, manifest.with_name("external.csv"))
    ds = datasets.make_dataset(
        pd.concat([frame, ext]), "train", 64, 512, augment=False, shuffle=False
    )
    labels = np.concatenate([y.numpy() for _, y in ds])
    assert (labels == len(config.CLASS_NAMES)).sum() == (ext.split == "train").sum()
    cfg = train.TrainConfig(model="cnn", image_size=64, batch_size=32, epochs_head=1,
                            weights="none", external_repeat=1)  # fmt: skip
    meta = train.train(cfg, manifest, tmp_path / "models", tmp_path / "results", verbose=0)
    assert meta["external_train_images"] == (ext.split == "train").sum() > 0
    assert np.isfinite(meta["best_val_loss"])
