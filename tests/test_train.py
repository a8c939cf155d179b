"""Tests of btc.train: phases, resumable runs, artifacts, strategies (tiny real data, 64 px)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pandas as pd
import pytest

from btc import artifacts, config, datasets, models, train
from tests.conftest import PROJECT_ROOT, SHARED_WEIGHTS


def test_train_config_validates_and_builds_per_model_configs():
    with pytest.raises(ValueError, match=r"`model` must be one of .*Received: model='resnet'"):
        train.TrainConfig(model="resnet")
    with pytest.raises(ValueError, match=r"`image_size` must be in \[71, 1024\]"):
        train.TrainConfig(model="xception", image_size=64)
    cnn, mobile = train.configs_for("cnn, mobilenet", epochs_cnn=7, mobilenet_alpha=0.25, seed=1)
    assert (cnn.epochs_head, cnn.epochs_finetune, cnn.alpha, cnn.weights) == (7, 0, 1.0, "none")
    assert (mobile.alpha, mobile.seed, mobile.weights) == (0.25, 1, "imagenet")
    with pytest.raises(ValueError, match="Unknown TrainConfig parameter"):
        train.configs_for(["cnn"], epochs_cnn=1, mobilenet_alpha=0.25, epochs=3)
    cnn, mobile = train.configs_for(["cnn", "mobilenet"], epochs_cnn=7, mobilenet_alpha=0.25,
                                    image_sizes={"mobilenet": 224}, image_size=128)  # fmt: skip
    assert (cnn.image_size, mobile.image_size) == (128, 224)  # a size per model
    with pytest.raises(ValueError, match=r"`image_sizes` keys must be among the models trained, "
                       r"\['cnn'\]. Received: image_sizes=\{'xception': 299\}"):  # fmt: skip
        train.configs_for(
            ["cnn"], epochs_cnn=1, mobilenet_alpha=0.25, image_sizes={"xception": 299}
        )
    with pytest.raises(ValueError, match=r"`image_size` must be in \[32, 1024\]"):
        train.configs_for(["cnn"], epochs_cnn=1, mobilenet_alpha=0.25, image_sizes={"cnn": 8})


def test_loss_falls_on_a_tiny_real_subset(tiny_manifest):
    keras.utils.set_random_seed(0)
    ds = datasets.make_dataset(tiny_manifest, "train", 64, 16, augment=False, shuffle=False)
    model = models.build_model("cnn", image_size=64, weights=None)
    train._compile(model, 1e-3)
    losses = model.fit(ds, epochs=5, verbose=0).history["loss"]
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason="shared MobileNet weights not found")
def test_two_phase_run_writes_complete_artifacts(tiny_manifest, tmp_path, capsys):
    cfg = train.TrainConfig(
        model="mobilenet", image_size=64, batch_size=16, epochs_head=1, epochs_finetune=1,
        weights=str(SHARED_WEIGHTS), alpha=0.25, class_weights=True, recipe="two_phase",
    )  # fmt: skip
    meta = train.train(cfg, tiny_manifest, tmp_path / "models", tmp_path / "results", verbose=2)
    shown = capsys.readouterr().out  # the log names the model before its epoch lines
    assert shown.startswith("training mobilenet (mobilenet, 64 px): 2 epochs, ")
    assert f"best val accuracy {meta.best_val_accuracy:.3f} at epoch {meta.best_epoch}" in shown
    folder = tmp_path / "models" / "mobilenet"
    assert json.loads((folder / "metadata.json").read_text()) == meta.to_dict()
    assert meta.image_size == 64 and meta.class_names == tuple(config.CLASS_NAMES)  # typed
    for key in ["class_names", "image_size", "normalisation", "config", "manifest_sha256",
                "versions", "params_total", "training_seconds", "best_val_accuracy",
                "best_val_loss", "epochs_run", "gradcam_layer"]:  # fmt: skip
        assert meta[key] not in (None, "", []), key
    assert meta["class_names"] == list(config.CLASS_NAMES)
    assert meta["manifest_sha256"] == datasets.file_sha256(tiny_manifest)
    assert meta["config"]["weights"] == str(SHARED_WEIGHTS) and meta["phase_starts"] == [0, 1]
    history = pd.read_csv(folder / "history.csv")
    assert history["phase"].tolist() == ["head", "finetune"] and meta["epochs_run"] == 2
    assert (tmp_path / "results" / "02_train" / "mobilenet_curves.png").stat().st_size > 1000
    assert not (folder / "run").exists(), "unfinished-run folder left behind"
    model, loaded_meta = artifacts.load_trained("mobilenet", tmp_path / "models")
    assert model.input_shape == (None, 64, 64, 3) and loaded_meta["name"] == "mobilenet"


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason="shared MobileNet weights not found")
def test_one_phase_recipe_trains_every_layer_and_batch_norm(tiny_manifest, tmp_path):
    cfg = train.TrainConfig(model="mobilenet", image_size=64, batch_size=16, epochs_head=1,
                            epochs_finetune=1, weights=str(SHARED_WEIGHTS), alpha=0.25)  # fmt: skip
    assert cfg.recipe == "one_phase"
    meta = train.train(cfg, tiny_manifest, tmp_path / "models", tmp_path / "results", verbose=0)
    assert meta["phase_starts"] == [0] and meta["epochs_run"] == 2
    history = pd.read_csv(tmp_path / "models" / "mobilenet" / "history.csv")
    assert history["phase"].tolist() == ["all", "all"]
    model, _ = artifacts.load_trained("mobilenet", tmp_path / "models")
    bn = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and all(layer.trainable for layer in bn)
    fresh = models.build_model("mobilenet", 4, 64, str(SHARED_WEIGHTS), alpha=0.25)
    moved = [not np.allclose(a.moving_mean.numpy(), fresh.get_layer(a.name).moving_mean.numpy())
             for a in bn]  # fmt: skip
    assert np.mean(moved) > 0.9  # BN statistics adapted to grayscale MRI, not ImageNet's


class _Killed(Exception):
    pass


class _KillAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise _Killed("simulated crash after epoch 1")


class _EpochRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_interrupted_run_resumes_at_the_next_epoch(tiny_manifest, tmp_path):
    cfg = train.TrainConfig(model="cnn", image_size=64, batch_size=16, epochs_head=3, patience=5)
    with pytest.raises(_Killed):
        train.train(cfg, tiny_manifest, tmp_path, tmp_path, [_KillAfterFirstEpoch()], verbose=0)
    assert (tmp_path / "cnn" / "run").is_dir() and not (tmp_path / "cnn" / "model.keras").exists()
    recorder = _EpochRecorder()
    meta = train.train(cfg, tiny_manifest, tmp_path, tmp_path, [recorder], verbose=0)
    assert recorder.epochs == [1, 2]  # resumed at epoch 2 (index 1), epoch 1 not repeated
    assert meta["epochs_run"] == 3
    assert pd.read_csv(tmp_path / "cnn" / "history.csv")["epoch"].tolist() == [0, 1, 2]


def test_mirrored_strategy_on_two_logical_cpu_devices(tiny_manifest, tmp_path):
    script = textwrap.dedent(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from btc import train
        cfg = train.TrainConfig(model="cnn", image_size=64, batch_size=16, epochs_head=1,
                                strategy="mirrored")
        meta = train.train(cfg, {tiny_manifest!r}, {str(tmp_path)!r}, {str(tmp_path)!r}, verbose=0)
        print("REPLICAS", meta["replicas"], meta["epochs_run"])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "REPLICAS 2 1" in done.stdout


def test_the_kept_weights_are_the_epoch_of_highest_validation_accuracy(tiny_models):
    history = pd.DataFrame({"epoch": [0, 1, 2, 3], "val_accuracy": [0.5, 0.9, 0.7, 0.9],
                            "val_loss": [0.2, 0.6, 0.5, 0.4]})  # fmt: skip
    assert train.best_epoch_row(history)["epoch"] == 1  # not the lowest loss; the first of a tie
    models_dir, manifest = tiny_models  # MobileNet: one phase of 2 epochs
    model, meta = artifacts.load_trained("mobilenet", models_dir)
    logged = pd.read_csv(models_dir / "mobilenet" / "history.csv")
    assert meta.best_val_accuracy == logged["val_accuracy"].max() and meta.epochs_run == 2
    probs, y = datasets.predict_split(
        model, meta, pd.read_csv(manifest, keep_default_na=False), "val"
    )
    assert float((probs.argmax(1) == y).mean()) == pytest.approx(meta.best_val_accuracy, abs=1e-6)
