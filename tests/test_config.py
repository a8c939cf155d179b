"""Tests of btc.config: validation messages, unknown parameters and atomic writes."""

from __future__ import annotations

import os

import pytest

from btc import config


def test_check_choice_message_is_keras_style():
    with pytest.raises(ValueError) as err:
        config.check_choice("split_mode", "random", config.SPLIT_MODES)
    assert str(err.value) == (
        "`split_mode` must be one of ['grouped', 'official']. Received: split_mode='random'"
    )


@pytest.mark.parametrize(
    "kwargs, exc, fragment",
    [
        ({"val_fraction": 0.0}, ValueError, "Received: val_fraction=0.0"),
        ({"near_threshold": 2.5}, TypeError, "must be of type int"),
        ({"image_size": 8}, ValueError, "`image_size` must be in [32, 1024]"),
        ({"seed": True}, TypeError, "Received: seed=True"),
        ({"label_conflicts": "merge"}, ValueError, "['drop', 'keep']"),
        ({"ct_slices": "remove"}, ValueError, "Received: ct_slices='remove'"),
    ],
)
def test_preprocess_config_rejects_bad_values(kwargs, exc, fragment):
    with pytest.raises(exc) as err:
        config.PreprocessConfig(**kwargs)
    assert fragment in str(err.value)


def test_from_params_rejects_unknown_names():
    with pytest.raises(
        ValueError, match=r"Unknown PreprocessConfig parameter\(s\) \['image_szie'\]"
    ):
        config.PreprocessConfig.from_params({"image_szie": 128})
    cfg = config.PreprocessConfig.from_params({"image_size": 96}, seed=3, data_dir="")
    assert (cfg.image_size, cfg.seed, cfg.data_dir) == (96, 3, config.DATA_DIR)


def test_canonical_class_is_case_insensitive():
    assert config.canonical_class("No_Tumor") == "notumor"
    assert config.canonical_class("GLIOMA") == "glioma"
    assert config.canonical_class("astrocytoma") is None


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    config.write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with config.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == '{\n  "v": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_quiet_tensorflow_keeps_start_up_lines_off_stderr_and_errors_still_raise():
    import subprocess
    import sys

    def run(code: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, timeout=300)  # fmt: skip

    loud = run("import tensorflow as tf; tf.config.list_physical_devices(); print('ok')")
    quiet = run(
        "from btc import config; import sys; print(config.quiet_tensorflow(), "
        "config.quiet_tensorflow()); import keras; print('after', file=sys.stderr)"
    )
    assert quiet.returncode == 0 and quiet.stdout.split() == ["True", "False"]
    assert quiet.stderr.strip() == "after"  # stderr works again, nothing else was written
    assert loud.returncode == 0 and loud.stderr.strip()  # without it the lines show
