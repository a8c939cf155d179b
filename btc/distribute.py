"""Distribution strategies for training: one device, all local devices, or several machines.

`get_strategy` maps the `strategy` parameter to a `tf.distribute` strategy; the helpers make Keras 3
training under it correct: the multi-worker strategy's `reduce` accepts what `fit` passes it, data
is sharded by element, and BatchNorm's moving statistics are averaged over replicas.
"""

from __future__ import annotations

import keras

from btc.config import check_choice

STRATEGIES = ("default", "mirrored", "multiworker")


def get_strategy(name: str = "default"):
    """Return a `tf.distribute` strategy by name.

    `"mirrored"` replicates over every local GPU (or every logical CPU device when there is no
    GPU); `"multiworker"` reads the cluster from `TF_CONFIG` (one process per machine).
    """
    import tensorflow as tf

    check_choice("strategy", name, STRATEGIES)
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multiworker":
        return multi_worker_strategy()
    return tf.distribute.get_strategy()


def is_chief() -> bool:
    """Whether this process writes shared outputs: no `TF_CONFIG`, the chief, or worker 0 of a
    cluster without a chief (TensorFlow's convention)."""
    import json
    import os

    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    tf_config = json.loads(raw)
    task = tf_config.get("task", {})
    if task.get("type") == "chief":
        return True
    return (
        task.get("type") == "worker"
        and task.get("index") == 0
        and ("chief" not in tf_config.get("cluster", {}))
    )


def multi_worker_strategy():
    """A `MultiWorkerMirroredStrategy` whose `reduce` accepts what Keras 3's `fit` passes it.

    Keras 3 reduces a nested `(x, y)` batch, and scalar metrics along `axis=0`; the stock strategy
    rejects both (keras-team/keras#20585). Each leaf is reduced on its own; a scalar has no axis 0,
    so it is reduced across replicas only, which is what the mean over `axis=0` means for it.
    """
    import tensorflow as tf

    class Strategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis=None):
            def one(v):
                scalar = self.experimental_local_results(v)[0].shape.rank == 0
                return super(Strategy, self).reduce(reduce_op, v, None if scalar else axis)

            return tf.nest.map_structure(one, value)

    return Strategy()


def average_over_replicas(model: keras.Model, strategy) -> None:
    """Give every replica the mean of the replicas' non-trainable float weights (BN statistics).

    Gradients are all-reduced, so trainable weights are identical everywhere; but Keras 3 updates
    BatchNormalization moving statistics from each replica's own batches, so each worker (and each
    GPU) would otherwise end with its own, and the chief would save the statistics of its shard.
    """
    import tensorflow as tf

    stats = [w for w in model.non_trainable_weights if "float" in str(w.dtype)]
    if strategy.num_replicas_in_sync == 1 or not stats:
        return

    @tf.function
    def average():
        ctx = tf.distribute.get_replica_context()
        local = [tf.identity(w.value) for w in stats]  # this replica's own copy
        means = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, local)
        for w, mean in zip(stats, means):
            w.assign(mean)

    strategy.run(average)


def shard_by_element(ds):
    """Under a multi-worker strategy each worker keeps every n-th batch of the same seeded order.

    DATA, not FILE, auto-sharding: the images are read by `map` from a list of paths, so there is
    no file reader to shard by. The batch size stays global: each batch is split across replicas.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)
