"""Tests of btc.cli: every stage is a command with its notebook's parameters, run for real."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pandas as pd

from btc import cli, config, pipeline


def test_bad_parameters_are_rejected_keras_style(tmp_path, capsys):
    cases = {
        ("train", "-p", "image_szie=64"): "Unknown `btc train` parameter(s) ['image_szie']. "
        "Allowed: ['batch_size',",
        ("train", "--seed", "abc"): "`seed` must be an int. Received: seed='abc'",
        ("evaluate", "--tta", "maybe"): "`tta` must be one of ['true', 'yes', '1', 'false', 'no', "
        "'0']. Received: tta='maybe'",
        ("preprocess", "--split-mode", "random"): "`split_mode` must be one of ['grouped', "
        "'official']. Received: split_mode='random'",
        ("train", "--models", "resnet"): "`models` must be one of ['cnn',",
        ("evaluate", "--n-bootstrap", "0"): "`n_bootstrap` must be in [1, inf]. Received: "
        "n_bootstrap=0",
        ("train", "--preset", "fast"): "`preset` must be one of ['cpu', 'full', 'quick', 'smoke'] "
        "or a YAML path. Received: preset='fast'",
    }
    typo = tmp_path / "typo.yaml"
    typo.write_text("image_size: 64\nepochs_cnm: 1\n")
    cases[("train", "--preset", str(typo))] = "parameter(s) ['epochs_cnm']"
    for argv, message in cases.items():
        assert cli.main(list(argv)) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_an_unknown_option_exits_2_with_the_allowed_names():
    done = subprocess.run(
        [sys.executable, "-m", "btc.cli", "train", "--image-szie", "64"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2
    assert "error: Unknown `btc train` parameter(s) ['image_szie']" in done.stderr
    assert "'image_size'" in done.stderr and done.stderr.rstrip().endswith(
        "Received: image_szie='64'"
    )


def test_the_command_keeps_tensorflow_start_up_lines_out_unless_verbose():
    def run(*extra):  # `train` imports TensorFlow before it checks the parameters
        argv = [sys.executable, "-m", "btc.cli", "train", "-p", "epochs_cnm=1", *extra]
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)

    quiet, verbose = run(), run("--verbose")
    assert quiet.returncode == verbose.returncode == 2
    noise = [line for line in verbose.stderr.splitlines() if pipeline.TF_NOISE.match(line)]
    assert noise, verbose.stderr  # TensorFlow does print them ...
    assert not [line for line in quiet.stderr.splitlines() if pipeline.TF_NOISE.match(line)]
    assert quiet.stderr.strip().splitlines() == [  # ... and only the answer is left
        line for line in verbose.stderr.strip().splitlines() if line not in noise
    ]
    assert "Unknown `btc train` parameter(s) ['epochs_cnm']" in quiet.stderr


def test_preprocess_writes_the_manifest_and_summary_the_notebook_writes(
    real_sample, tmp_path, capsys
):
    manifest = tmp_path / "processed" / "manifest.csv"
    argv = ["preprocess", "--data-dir", str(real_sample), "--external-dir", str(tmp_path / "none"),
            "--seed", "3", "--manifest", str(manifest), "--results-dir", str(tmp_path / "results")]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    frame = pd.read_csv(manifest, keep_default_na=False)
    assert set(frame["split"]) == set(config.SPLITS) and len(frame) > 40
    assert f"{len(frame)} images in the manifest; 0 duplicate groups cross splits" in out
    assert "external set: none" in out and not manifest.with_name("external.csv").exists()
    info = json.loads(manifest.with_suffix(".json").read_text())
    summary = json.loads((tmp_path / "results" / "01_preprocess" / "summary.json").read_text())
    assert summary["params"] == info["params"]
    assert summary["params"]["seed"] == 3 and summary["params"]["image_size"] == 128  # notebook's
    assert summary["report"]["groups_crossing_splits"] == 0 and summary["external"] is None


def test_train_runs_one_epoch_at_64_px_and_writes_the_model(tiny_manifest, tmp_path, capsys):
    models_dir, results = tmp_path / "models", tmp_path / "results"
    argv = ["train", "--preset", "smoke", "--models", "cnn", "--manifest", tiny_manifest,
            "--models-dir", str(models_dir), "--results-dir", str(results)]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"\n\d+/\d+ - \d+s - .* - val_accuracy: [\d.]+", out)  # Keras' epoch line
    assert out.startswith("training cnn (cnn, 64 px): 1 epoch, ")  # which model the lines are of
    meta = json.loads((models_dir / "cnn" / "metadata.json").read_text())
    assert (meta["image_size"], meta["epochs_run"]) == (64, 1)
    assert meta["config"]["batch_size"] == 16 and meta["config"]["weights"] == "none"
    assert (models_dir / "cnn" / "model.keras").stat().st_size > 10_000
    assert (results / "02_train" / "cnn_curves.png").is_file()
    [row] = json.loads((results / "02_train" / "summary.json").read_text())
    assert row["model"] == "cnn" and row["epochs"] == 1
    assert str(models_dir / "cnn") in out


def _raise(exc, code):  # a failing stage shows its traceback here, not only the one-line message
    raise exc


def test_evaluate_writes_metrics_reports_and_cards(
    tiny_models_copy, tiny_models, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(cli, "_fail", _raise)  # (one unexplained failure in a CI rehearsal)
    models_dir, manifest = tiny_models_copy
    results = tmp_path / "results"
    argv = ["evaluate", "--preset", "smoke", "--manifest", manifest, "--models-dir", str(models_dir),
            "--results-dir", str(results), "--n-bootstrap", "20", "--saliency-methods", "gradcam",
            "--sanity-images", "4", "--target-error", "0.3"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    metrics = json.loads((results / "metrics.json").read_text())
    assert set(metrics["models"]) == {"cnn", "mobilenet", "ensemble"}
    assert metrics["n_bootstrap"] == 20 and metrics["tta"] is False  # smoke preset
    for name in ("cnn", "mobilenet", "ensemble"):
        assert f"  {name}: accuracy " in out
    assert "| ensemble |" in (results / "03_evaluate" / "comparison.md").read_text()
    sal = json.loads((results / "03_evaluate" / "saliency_report.json").read_text())
    assert sal["methods"] == ["gradcam"] and set(sal["models"]) == {"cnn", "mobilenet"}
    assert (
        json.loads((results / "03_evaluate" / "ood_report.json").read_text())["target_error"] == 0.3
    )
    for name in ("cnn", "mobilenet"):
        assert "Not a diagnostic device" in (models_dir / name / "MODEL_CARD.md").read_text()
        assert json.loads((models_dir / name / "metadata.json").read_text())["temperature"] > 0
    assert (models_dir / "ensemble.json").is_file()
    assert not (tiny_models[0] / "ensemble.json").exists()  # the shared models stay untouched


def test_evaluate_without_trained_models_fails_with_exit_1(tiny_manifest, tmp_path, capsys):
    argv = ["evaluate", "--manifest", tiny_manifest, "--models-dir", str(tmp_path / "empty"),
            "--results-dir", str(tmp_path)]  # fmt: skip
    assert cli.main(argv) == 1
    assert "No trained model in" in capsys.readouterr().err
