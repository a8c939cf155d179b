"""Training stage: transfer learning, resumable runs, self-describing artifacts.

Recipe `one_phase` (default): every layer trains from the start, batch normalisation included
(ImageNet statistics do not fit grayscale MRI), Adam warmed up to `lr_head` then cosine-decayed.
Recipe `two_phase`: the head on a frozen backbone, then the top `finetune_fraction` of the
backbone (BN frozen, inference mode) at a lower warmed-up, cosine-decayed rate. The CNN trains
from scratch in one phase. When 01 wrote an external set (`btc.external`), its `train` groups join
the training split as "tumour, type unknown" with the partial-label loss
−log(p_glioma + p_meningioma + p_pituitary), so the softmax learns that these scans hold a tumour
without being told which. A run killed mid-way resumes from its last finished epoch when started
again (BackupAndRestore + a phase marker).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from btc import artifacts, datasets, distribute, external, models, plots
from btc.config import (
    CLASS_NAMES,
    MANIFEST_PATH,
    MODELS_DIR,
    RESULTS_DIR,
    StageConfig,
    atomic_path,
    check_choice,
    check_image_size,
    check_range,
)

# The epoch kept: highest validation accuracy. The lowest loss came in the noisy high-LR start of the
# schedule (later epochs: higher accuracy, over-confident loss, which temperature scaling fixes).
MONITOR = "val_accuracy"
RECIPES = ("one_phase", "two_phase")


@dataclasses.dataclass(frozen=True)
class TrainConfig(StageConfig):
    """Validated parameters of one model's training run.

    Args:
        model: Registry name (`btc.models.model_names()`).
        image_size: Input side length.
        batch_size: Global batch size (split across replicas under a strategy).
        epochs_head: Phase-1 epochs (frozen backbone); for the CNN, its only phase.
        epochs_finetune: Phase-2 epochs (top of the backbone unfrozen); ignored for the CNN.
        lr_head: Learning rate of phase 1.
        lr_finetune: Peak learning rate of phase 2 (after warm-up, then cosine decay).
        finetune_fraction: Share of backbone layers (from the top) unfrozen in phase 2.
        warmup_epochs: Linear warm-up length of phase 2, in epochs.
        patience: EarlyStopping patience on validation accuracy (`MONITOR`; the best epoch's
            weights are restored).
        recipe: `"one_phase"` (every layer and BN trains, warm-up + cosine decay to `lr_head`
            over `epochs_head + epochs_finetune` epochs) or `"two_phase"` (frozen backbone,
            then the top `finetune_fraction` at `lr_finetune` with BN frozen).
        style_augment: Also augment against acquisition style: gamma, resolution and noise.
        external: Train on the external set's `train` groups (if 01 wrote one) as "tumour,
            type unknown" with the partial-label loss.
        external_repeat: How many times each external training image is repeated per epoch.
        weights: `"imagenet"`, `""`/`"none"` for random initialisation, or a weights-file path.
        alpha: MobileNet width multiplier.
        dropout: Head dropout.
        class_weights: Weight the loss by inverse class frequency.
        label_smoothing: Share of each target spread evenly over the classes (0: none).
        mixed_precision: Use float16 compute (GPU only).
        strategy: `"default"`, `"mirrored"` (all local GPUs/devices) or `"multiworker"`
            (`TF_CONFIG` cluster).
        seed: Seed of weights initialisation, shuffling and augmentation.
        name: Artifact folder name under `models/`; defaults to `model`.
    """

    model: str = "cnn"
    image_size: int = 128
    batch_size: int = 32
    epochs_head: int = 5
    epochs_finetune: int = 5
    lr_head: float = 1e-3
    lr_finetune: float = 1e-4
    finetune_fraction: float = 0.3
    warmup_epochs: int = 1
    patience: int = 3
    recipe: str = "one_phase"
    style_augment: bool = True
    external: bool = True
    external_repeat: int = 2
    weights: str = "imagenet"
    alpha: float = 1.0
    dropout: float = 0.3
    class_weights: bool = False
    label_smoothing: float = 0.0
    mixed_precision: bool = False
    strategy: str = "default"
    seed: int = 42
    name: str = ""

    def __post_init__(self):
        check_choice("model", self.model, models.model_names())
        spec = models.get_spec(self.model)
        check_image_size(self.image_size, spec.min_size)
        check_range("batch_size", self.batch_size, 1, 4096, types=int)
        check_range("epochs_head", self.epochs_head, 1, 1000, types=int)
        check_range("epochs_finetune", self.epochs_finetune, 0, 1000, types=int)
        check_range("lr_head", self.lr_head, 0, 1, low_inclusive=False)
        check_range("lr_finetune", self.lr_finetune, 0, 1, low_inclusive=False)
        check_range("finetune_fraction", self.finetune_fraction, 0, 1)
        check_range("warmup_epochs", self.warmup_epochs, 0, 100, types=int)
        check_range("patience", self.patience, 1, 1000, types=int)
        check_range("dropout", self.dropout, 0, 1, high_inclusive=False)
        check_range("label_smoothing", self.label_smoothing, 0, 1, high_inclusive=False)
        check_range("seed", self.seed, 0, types=int)
        check_choice("alpha", self.alpha, (1.0, 0.75, 0.5, 0.25))
        check_choice("strategy", self.strategy, distribute.STRATEGIES)
        check_choice("recipe", self.recipe, RECIPES)
        check_range("external_repeat", self.external_repeat, 1, 20, types=int)
        if str(self.weights).lower() in ("", "none"):
            object.__setattr__(self, "weights", "none")
        if not self.name:
            object.__setattr__(self, "name", self.model)

    @property
    def weights_arg(self) -> str | None:
        """`weights` as `build_model` takes it (`None` for random initialisation)."""
        return None if self.weights == "none" else self.weights


def _warmup_cosine(peak: float, steps: int, warmup_steps: int):
    decay_steps = max(steps - warmup_steps, 1)
    if warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            peak / 10, decay_steps, alpha=0.05, warmup_target=peak, warmup_steps=warmup_steps
        )
    return keras.optimizers.schedules.CosineDecay(peak, decay_steps, alpha=0.05)


def _compile(model: keras.Model, learning_rate, label_smoothing: float = 0.0) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=models.PartialLabelCrossentropy(label_smoothing),
        metrics=[keras.metrics.MeanMetricWrapper(models.partial_label_accuracy, name="accuracy")],
    )


def _class_weights(manifest: pd.DataFrame) -> dict[int, float]:
    counts = manifest.loc[manifest.split == "train", "class"].value_counts()
    total = counts.sum()
    return {
        i: float(total / (len(CLASS_NAMES) * counts.get(c, 1))) for i, c in enumerate(CLASS_NAMES)
    }


def train(
    config: TrainConfig,
    manifest: pd.DataFrame | str | Path = MANIFEST_PATH,
    models_dir: str | Path = MODELS_DIR,
    results_dir: str | Path = RESULTS_DIR,
    callbacks: list | None = None,
    verbose: int | str = "auto",
) -> dict:
    """Train one model on a manifest's train split, validating on its val split.

    Starting the same run again after a crash resumes from the last finished epoch. The finished
    model, its metadata and history go to `models_dir/<name>/`; the curves figure to
    `results_dir/02_train/<name>_curves.png`.

    Args:
        config: Validated training parameters.
        manifest: Manifest DataFrame or CSV path (from 01_preprocess).
        models_dir: Parent folder of model artifacts.
        results_dir: Parent folder of figures.
        callbacks: Extra Keras callbacks, run after btc's own (e.g. for tests).
        verbose: Keras `fit` verbosity (progress bars by default).

    Returns:
        The metadata dict written to `metadata.json`.

    Raises:
        ValueError: On bad parameters or an empty split.
        WeightsUnavailableError: If ImageNet weights are requested but unavailable.
    """
    manifest_path = Path(manifest) if not isinstance(manifest, pd.DataFrame) else None
    frame = (
        datasets.load_manifest(manifest_path, check_leakage=False) if manifest_path else manifest
    )
    if datasets.crossing_groups(frame, ["train", "val"]):  # test leakage is evaluation's gate
        raise ValueError("The manifest's train and val splits share duplicate groups; re-run 01")
    # the strategy before other TF calls (multi-worker needs that)
    strategy = distribute.get_strategy(config.strategy)
    scratch = None
    if not strategy.extended.should_checkpoint:  # a non-chief worker: Keras/TF convention, it
        # writes the same files to `workertemp_<task>` (kept for resuming, removed at the end)
        scratch = Path(models_dir) / f"workertemp_{strategy.cluster_resolver.task_id}"
        models_dir, results_dir = scratch / "models", scratch / "results"
    out = Path(models_dir) / config.name
    work = out / "run"  # checkpoints and backups of an unfinished run
    work.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    spec = models.get_spec(config.model)
    ext_rows = (
        external.training_rows(manifest_path, config.external_repeat) if config.external else None
    )
    train_frame = frame if ext_rows is None or ext_rows.empty else pd.concat([frame, ext_rows])
    train_ds = datasets.make_dataset(train_frame, "train", config.image_size, config.batch_size,
                                 seed=config.seed, style=config.style_augment)  # fmt: skip
    val_ds = datasets.make_dataset(
        frame, "val", config.image_size, config.batch_size, seed=config.seed
    )
    train_ds, val_ds = distribute.shard_by_element(train_ds), distribute.shard_by_element(val_ds)
    steps_per_epoch = math.ceil((train_frame.split == "train").sum() / config.batch_size)
    with strategy.scope():
        model = models.build_model(
            config.model, len(CLASS_NAMES), config.image_size, config.weights_arg,
            alpha=config.alpha, dropout=config.dropout,
        )  # fmt: skip
    pretrained = spec.transfer and config.weights_arg is not None
    if pretrained and config.recipe == "two_phase":
        phases = [("head", config.epochs_head, config.lr_head)]
        if config.epochs_finetune:
            phases.append(("finetune", config.epochs_finetune, config.lr_finetune))
    elif pretrained:  # one phase: every layer, BN included, adapts from the first step
        phases = [("all", config.epochs_head + config.epochs_finetune, config.lr_head)]
    else:  # random weights: freezing them would be pointless, so one phase, every layer trains
        epochs = config.epochs_head + (config.epochs_finetune if spec.transfer else 0)
        phases = [("scratch", epochs, config.lr_head)]  # a random backbone gets the same budget
    history_csv = work / "history.csv"
    start, epoch0, phase_starts = time.perf_counter(), 0, []
    n_train = int((frame.split == "train").sum())
    n_ext = 0 if ext_rows is None else len(ext_rows) // config.external_repeat
    if verbose:  # one line per model, so a streamed log says what the epoch lines belong to
        n_epochs = sum(epochs for _, epochs, _ in phases)
        print(f"training {config.name} ({config.model}, {config.image_size} px): {n_epochs} "
              f"epoch{'s' * (n_epochs != 1)}, {n_train} scans + {n_ext} external tumour scans",
              flush=True)  # fmt: skip
    for phase, epochs, lr in phases:
        marker = work / f"{phase}.done.weights.h5"
        models.set_trainable(model, phase, config.finetune_fraction)
        if marker.is_file():  # finished before a crash: reuse it, do not retrain
            model.load_weights(marker)
            epoch0 += epochs
            phase_starts.append(epoch0 - epochs)
            continue
        phase_starts.append(epoch0)
        if phase in ("finetune", "all"):
            warm = config.warmup_epochs * steps_per_epoch
            lr = _warmup_cosine(lr, epochs * steps_per_epoch, warm)
        elif phase == "scratch":  # one phase, decayed to settle BN and weights
            lr = _warmup_cosine(lr, epochs * steps_per_epoch, 0)
        with strategy.scope():
            _compile(model, lr, config.label_smoothing)
        cbs = [
            keras.callbacks.BackupAndRestore(str(work / f"backup_{phase}")),
            keras.callbacks.EarlyStopping(
                monitor=MONITOR, mode="max", patience=config.patience, restore_best_weights=True
            ),
            keras.callbacks.ModelCheckpoint(str(work / "best.keras"), monitor=MONITOR, mode="max",
                                            save_best_only=True),
            keras.callbacks.CSVLogger(str(history_csv), append=True),
            *(callbacks or []),
        ]  # fmt: skip
        model.fit(
            train_ds, validation_data=val_ds, initial_epoch=epoch0, epochs=epoch0 + epochs,
            callbacks=cbs, verbose=verbose, shuffle=False,  # tf.data shuffles (Keras warns otherwise)
            class_weight=_class_weights(frame) if config.class_weights else None,
        )  # fmt: skip
        distribute.average_over_replicas(model, strategy)
        model.save_weights(marker)
        epoch0 += epochs
    seconds = time.perf_counter() - start
    history = pd.read_csv(history_csv).drop_duplicates("epoch", keep="last").reset_index(drop=True)
    history["phase"] = [_phase_of(e, phase_starts, phases) for e in history["epoch"]]
    best = best_epoch_row(history)
    if verbose:
        print(f"{config.name}: best val accuracy {best['val_accuracy']:.3f} at epoch "
              f"{int(best['epoch']) + 1}, {seconds / 60:.1f} min", flush=True)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    artifacts.save_model_atomic(model, out / artifacts.MODEL_FILE)
    with atomic_path(out / "history.csv") as tmp:
        history.to_csv(tmp, index=False)
    metadata = artifacts.Metadata.from_dict({
        "name": config.name, "model": config.model, "class_names": list(CLASS_NAMES),
        "image_size": config.image_size,
        "input": "float32 [0,1] grayscale replicated to 3 channels, padded to square",
        "normalisation": spec.normalisation, "gradcam_layer": spec.gradcam_layer,
        "config": config.to_dict(),
        "manifest_sha256": datasets.file_sha256(manifest_path) if manifest_path else None,
        "train_images": n_train, "external_train_images": int(n_ext),
        "val_images": int((frame.split == "val").sum()),
        "versions": artifacts.package_versions(),
        "params_total": int(model.count_params()),
        "params_trainable_last_phase": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "training_seconds": round(seconds, 1), "epochs_run": int(len(history)),
        "phase_starts": phase_starts, "best_epoch": int(best["epoch"]) + 1,
        "best_val_loss": float(best["val_loss"]), "best_val_accuracy": float(best["val_accuracy"]),
        "temperature": 1.0, "strategy": config.strategy,
        "replicas": int(strategy.num_replicas_in_sync),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })  # fmt: skip
    artifacts.write_metadata(out, metadata)
    plots.training_curves(
        history, phase_starts[1:], title=config.name,
        path=Path(results_dir) / "02_train" / f"{config.name}_curves.png",
    )  # fmt: skip
    shutil.rmtree(scratch or work, ignore_errors=True)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("float32")
    return metadata


def train_all(configs: list[TrainConfig], manifest: pd.DataFrame | str | Path = MANIFEST_PATH,
              models_dir: str | Path = MODELS_DIR, results_dir: str | Path = RESULTS_DIR,
              verbose: int | str = "auto") -> list[dict]:  # fmt: skip
    """Train one `TrainConfig` after the other (`train`) and record the run in `models/run.json`.

    03 and the demo default to this run's models (`artifacts.run_model_names`), so a model that an
    earlier run left in `models_dir` is not evaluated with them unless named. Other arguments: as
    for `train`.

    Returns:
        The metadata of each trained model, in order.
    """
    trained = [train(cfg, manifest, models_dir, results_dir, verbose=verbose) for cfg in configs]
    if distribute.is_chief():  # only the chief writes shared outputs
        artifacts.record_run([m["name"] for m in trained], models_dir)
    return trained


def _phase_of(epoch: int, starts: list[int], phases: list) -> str:
    index = max(i for i, s in enumerate(starts) if epoch >= s)
    return phases[index][0]


def best_epoch_row(history: pd.DataFrame) -> pd.Series:
    """The epoch whose weights a run keeps: the first with the highest validation accuracy.

    Args:
        history: One row per epoch with `epoch`, `val_accuracy` and `val_loss`.

    Returns:
        That epoch's row.
    """
    return history.loc[history[MONITOR].idxmax()]


def configs_for(
    model_names: list[str] | str,
    epochs_cnn: int,
    mobilenet_alpha: float,
    image_sizes: Mapping[str, int] | None = None,
    **common,
) -> list[TrainConfig]:
    """Build one `TrainConfig` per model from the notebook's shared parameters.

    Args:
        model_names: Registry names (a list or a comma-separated string).
        epochs_cnn: Epochs of models trained from scratch (one phase).
        mobilenet_alpha: Width multiplier of MobileNet backbones.
        image_sizes: Input size per model name (e.g. `{"mobilenet": 224}`); models not named
            use `common["image_size"]`. Prediction, evaluation and the ensemble read each
            model's size from its metadata, so members may differ.
        **common: Other `TrainConfig` fields, shared by every model.

    Returns:
        Validated configs, in the given order.

    Raises:
        ValueError: On an unknown model name or parameter, or an `image_sizes` key that is not
            one of the models trained.
    """
    if isinstance(model_names, str):
        model_names = [n.strip() for n in model_names.split(",") if n.strip()]
    if not model_names:
        raise ValueError(
            f"`models` must name at least one of {models.model_names()}. Received: models=[]"
        )
    image_sizes = dict(image_sizes or {})
    stray = sorted(set(image_sizes) - set(model_names))
    if stray:
        raise ValueError(f"`image_sizes` keys must be among the models trained, {list(model_names)}. "
                         f"Received: image_sizes={image_sizes!r}")  # fmt: skip
    configs = []
    for name in model_names:
        check_choice("models", name, models.model_names())
        extra = {"alpha": mobilenet_alpha} if name.startswith("mobilenet") else {}
        if name in image_sizes:
            extra["image_size"] = image_sizes[name]
        if not models.get_spec(name).transfer:
            extra.update(epochs_head=epochs_cnn, epochs_finetune=0, weights="none")
        configs.append(TrainConfig.from_params(common, model=name, **extra))
    return configs
