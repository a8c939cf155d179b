"""Tests of btc.distribute: a real 2-process MultiWorkerMirroredStrategy run, `TF_CONFIG` each.

Both workers run `btc.train.train(strategy="multiworker")` on the tiny real manifest (64 px, global
batch 16, 1 epoch, CNN from random weights). Each also records its final weights through a
callback, so the test can check that both end with bit-identical weights (BatchNormalization
statistics included), that the chief's saved `model.keras` holds those weights, and that only the
chief wrote `models/` and figures.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

from btc import artifacts, distribute
from tests.conftest import PROJECT_ROOT

TIMEOUT = 900  # seconds for both workers together; the run takes well under a minute when idle

WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    import keras
    import numpy as np

    from btc import train

    manifest, models_dir, results_dir, record = sys.argv[1:5]

    class Record(keras.callbacks.Callback):
        # This worker's model, its initial weights and its batch count.
        batches, model_ref = 0, None

        def on_train_begin(self, logs=None):
            np.savez(record + ".initial.npz", *self.model.get_weights())

        def on_train_batch_end(self, batch, logs=None):
            Record.batches += 1

        def on_train_end(self, logs=None):
            Record.model_ref = self.model

    cfg = train.TrainConfig(model="cnn", image_size=64, batch_size=16, epochs_head=1,
                            weights="none", strategy="multiworker", seed=42)
    meta = train.train(cfg, manifest, models_dir, results_dir, callbacks=[Record()], verbose=0)
    np.savez(record + ".npz", *Record.model_ref.get_weights())  # final: what train() saved
    Path(record + ".json").write_text(json.dumps({"replicas": meta["replicas"],
                                                  "batches": Record.batches,
                                                  "train_images": meta["train_images"],
                                                  "external": meta["external_train_images"]}))
""")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _tail(path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no output)"


def _weights(npz_path) -> list[np.ndarray]:
    with np.load(npz_path) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


@pytest.mark.slow
def test_two_worker_multiworker_run_ends_with_identical_weights(tiny_manifest, tmp_path):
    models_dir, results_dir, home = tmp_path / "models", tmp_path / "results", tmp_path / "home"
    home.mkdir()
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    base = dict(os.environ)  # conftest already points KERAS_HOME, MPLCONFIGDIR... at a temp dir
    base.update({
        "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
        "CUDA_VISIBLE_DEVICES": "-1",  # CPU only
        "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0", "PYTHONPATH": str(PROJECT_ROOT),
    })  # fmt: skip
    procs, logs = [], []
    for index in range(2):
        env = base | {"TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                               "task": {"type": "worker", "index": index}})}  # fmt: skip
        out, err = tmp_path / f"worker{index}.out", tmp_path / f"worker{index}.err"
        args = [tiny_manifest, models_dir, results_dir, tmp_path / f"worker{index}"]
        with open(out, "w") as o, open(err, "w") as e:  # files, not pipes: no pipe-full stall
            procs.append(subprocess.Popen([sys.executable, "-c", WORKER, *map(str, args)],
                                          cwd=PROJECT_ROOT, env=env, stdout=o, stderr=e))  # fmt: skip
        logs.append(err)
    deadline, codes = time.monotonic() + TIMEOUT, [None, None]
    try:
        for i, p in enumerate(procs):
            codes[i] = p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    report = "\n".join(f"--- worker {i} (exit {c}) stderr tail ---\n{_tail(logs[i])}"
                       for i, c in enumerate(codes))  # fmt: skip
    assert codes == [0, 0], f"workers did not both finish within {TIMEOUT} s\n{report}"

    records = [json.loads((tmp_path / f"worker{i}.json").read_text()) for i in range(2)]
    assert records[0] == records[1], report
    assert records[0]["replicas"] == 2
    n_train = records[0]["train_images"] + records[0]["external"] * 2  # external_repeat=2
    assert records[0]["batches"] == -(-n_train // 16), "global batch 16: same steps as 1 worker"

    chief, other = (_weights(tmp_path / f"worker{i}.npz") for i in range(2))
    assert len(chief) == len(other) > 0
    for a, b in zip(chief, other, strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical, not merely close
    saved = keras.saving.load_model(models_dir / "cnn" / artifacts.MODEL_FILE, compile=False)
    for a, b in zip(chief, saved.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    initial = _weights(tmp_path / "worker0.initial.npz")
    assert not all(np.array_equal(a, b) for a, b in zip(chief, initial)), "it must have trained"

    # Only the chief wrote: the model folder, its figure; the other worker's temp dir is gone.
    assert sorted(p.name for p in models_dir.iterdir()) == ["cnn"]
    assert (models_dir / "cnn" / artifacts.METADATA_FILE).is_file()
    assert not (models_dir / "cnn" / "run").exists()
    assert sorted(p.name for p in (results_dir / "02_train").iterdir()) == ["cnn_curves.png"]
    assert sorted(p.name for p in results_dir.iterdir()) == ["02_train"]


def test_strategy_names_are_checked_and_the_default_has_one_replica():
    from btc import distribute

    with pytest.raises(ValueError, match=r"`strategy`.*'mirrored'.*Received: strategy='tpu'"):
        distribute.get_strategy("tpu")
    assert distribute.get_strategy("default").num_replicas_in_sync == 1


def test_one_replica_keeps_its_batchnorm_statistics_and_shards_are_by_element():
    import tensorflow as tf

    from btc import distribute

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.BatchNormalization()(inputs))
    model.layers[-1].moving_mean.assign(np.arange(4.0))
    distribute.average_over_replicas(model, distribute.get_strategy("default"))
    np.testing.assert_array_equal(model.layers[-1].moving_mean.numpy(), np.arange(4.0))
    sharded = distribute.shard_by_element(tf.data.Dataset.range(4))
    policy = sharded.options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.DATA
    assert list(sharded.as_numpy_iterator()) == [0, 1, 2, 3]


def test_only_the_chief_writes_shared_outputs(monkeypatch, tmp_path):
    cluster = {"worker": ["a:1", "b:2"]}
    cases = [(None, True),
             ({"cluster": cluster, "task": {"type": "worker", "index": 0}}, True),
             ({"cluster": cluster, "task": {"type": "worker", "index": 1}}, False),
             ({"cluster": {**cluster, "chief": ["c:3"]}, "task": {"type": "worker", "index": 0}}, False),
             ({"cluster": {**cluster, "chief": ["c:3"]}, "task": {"type": "chief", "index": 0}}, True)]  # fmt: skip
    for tf_config, chief in cases:
        if tf_config is None:
            monkeypatch.delenv("TF_CONFIG", raising=False)
        else:
            monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
        assert distribute.is_chief() is chief, tf_config


def test_the_last_run_decides_which_models_are_current(tmp_path):
    for name in ("cnn", "mobilenet"):  # two trained models on disk
        (tmp_path / name).mkdir()
        for f in (artifacts.MODEL_FILE, artifacts.METADATA_FILE):
            (tmp_path / name / f).write_text("{}")
    assert artifacts.run_model_names(tmp_path) == ["cnn", "mobilenet"]  # no run recorded: all
    artifacts.record_run(["mobilenet"], tmp_path)
    assert artifacts.run_model_names(tmp_path) == ["mobilenet"]
    (tmp_path / "mobilenet" / artifacts.MODEL_FILE).unlink()  # its model is gone since
    assert artifacts.run_model_names(tmp_path) == ["cnn"]
