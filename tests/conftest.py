"""Test set-up: every write goes to a temp folder, seeds are pinned, shared data is located."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="btc-tests-"))
for var, sub in {
    "KERAS_HOME": "keras",
    "MPLCONFIGDIR": "mpl",
    "IPYTHONDIR": "ipython",
    "JUPYTER_CONFIG_DIR": "jupyter/config",
    "JUPYTER_DATA_DIR": "jupyter/data",
    "JUPYTER_RUNTIME_DIR": "jupyter/runtime",
    "BTC_PROCESSED_DIR": "processed",
    "BTC_MODELS_DIR": "models",
    "BTC_RESULTS_DIR": "results",
}.items():
    os.environ[var] = str(_TMP / sub)
    (_TMP / sub).mkdir(parents=True, exist_ok=True)
os.environ["MPLBACKEND"] = "Agg"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["PYTHONHASHSEED"] = "0"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("BTC_SHARED_DIR", PROJECT_ROOT.parent / "shared"))
SHARED_DATA = SHARED_DIR / "datasets" / "brain-tumor-mri"
SHARED_WEIGHTS = SHARED_DIR / "weights" / "mobilenet_2_5_224_tf_no_top.h5"
SHARED_EXTERNAL = SHARED_DIR / "datasets" / "br35h-tumour"
OOD_DEV = SHARED_DIR / "ood-dev"
os.environ.setdefault("BTC_WEIGHTS_DIR", str(SHARED_WEIGHTS.parent))  # ImageNet weights offline
os.environ.setdefault("BTC_EXTERNAL_DIR", str(SHARED_EXTERNAL))  # external tumour scans


# `make test-fast` deselects `slow`: tests that preprocess the real sample, train or use trained
# models, index the full set, build the big backbones, drive a browser or start a papermill
# kernel. Marked here, by fixture, parameter and name, so test files need no marks.
SLOW_FIXTURES = {"real_sample", "tiny_models", "tiny_manifest", "full_index", "quadrant_model"}
SLOW_PARAMS = {"xception", "mobilenet_v2"}  # full-size ImageNet graphs
SLOW_TESTS = {
    "test_failing_notebook_stops_with_the_cell_and_keeps_partial_output",  # a papermill kernel
    "test_run_notebook_streams_what_it_prints_without_tensorflow_noise",  # two kernels
    "test_stage_survives_bad_files_and_writes_a_manifest",  # the whole data stage
    "test_the_command_keeps_tensorflow_start_up_lines_out_unless_verbose",  # two TF start-ups
}


def _is_slow(item) -> bool:
    callspec = getattr(item, "callspec", None)
    params = {str(v) for v in callspec.params.values()} if callspec else set()
    return bool(
        set(getattr(item, "fixturenames", ())) & SLOW_FIXTURES
        or params & SLOW_PARAMS
        or getattr(item, "originalname", item.name) in SLOW_TESTS
        or item.get_closest_marker("browser")
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _is_slow(item):
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed():
    np.random.seed(0)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared dataset not found at {SHARED_DATA} (set BTC_SHARED_DIR)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def full_index(shared_data):
    """The index of all 7023 real images (about 10 s on 2 cores)."""
    from btc import data

    return data.index_dataset(shared_data)


@pytest.fixture(scope="session")
def real_sample(shared_data, tmp_path_factory) -> Path:
    """A small stratified copy-free sample: symlinks to real files, Kaggle layout."""
    from btc import data

    files = data._sample(data.discover_files(shared_data), 10, seed=0)
    root = tmp_path_factory.mktemp("sample")
    for row in files.itertuples():
        src = Path(row.path)
        dst = root / src.parent.parent.name / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src)
    return root


@pytest.fixture(scope="session")
def tiny_manifest(real_sample, tmp_path_factory) -> str:
    """A leakage-free manifest of the real sample (80 images), as a CSV path."""
    from btc import config, data

    out = tmp_path_factory.mktemp("manifest") / "manifest.csv"
    data.preprocess(config.PreprocessConfig(data_dir=real_sample, workers=1), manifest_path=out)
    return str(out)


TINY_SIZES = {"cnn": 64, "mobilenet": 72}  # input size per tiny model


@pytest.fixture(scope="session")
def tiny_models(tiny_manifest, tmp_path_factory):
    """Two tiny models trained one epoch on the sample: (models_dir, manifest).

    The CNN takes 64 px and MobileNet 72 px, as the cpu preset gives each model its own size:
    every consumer (evaluation, the ensemble, prediction, saliency, OOD, export) must read each
    model's size from its metadata.
    """
    from btc import train

    models_dir = tmp_path_factory.mktemp("models")
    configs = [train.TrainConfig(model=name, image_size=size, batch_size=16, epochs_head=1,
                                 epochs_finetune=1, alpha=0.25) for name, size in TINY_SIZES.items()]  # fmt: skip
    train.train_all(configs, tiny_manifest, models_dir, models_dir / "results", verbose=0)
    return models_dir, tiny_manifest


@pytest.fixture
def tiny_models_copy(tiny_models, tmp_path):
    """A private copy of `tiny_models` for tests that write into the models folder."""
    models_dir, manifest = tiny_models
    return shutil.copytree(models_dir, tmp_path / "models"), manifest


@pytest.fixture(scope="session")
def tiny_loaded(tiny_models):
    """The tiny models loaded for prediction: (models, models_dir, manifest, three test files)."""
    import pandas as pd

    from btc import predict

    models_dir, manifest = tiny_models
    frame = pd.read_csv(manifest, keep_default_na=False)
    test_files = frame[frame.split == "test"]["path"].tolist()[:3]
    return predict.load_models(models_dir=models_dir), models_dir, manifest, test_files


@pytest.fixture(scope="session")
def real_groups(full_index):
    """Near-copy groups of the full index (test_data's splits, test_shortcut's source shortcut)."""
    from btc import dedup

    return dedup.find_duplicates(full_index, threshold=4)[1]


# --- a synthetic task whose evidence region is known (test_explain, test_saliency) ---------------

SIZE = 96
# The plain CNN: its 6×6 last map resolves quadrants. The residual `cnn` (3×3 at 96 px) fails this
# Grad-CAM check (mass share 0.20 against 0.25 by chance), which is why 03 chooses each model's
# map method by the sanity check and the pointing game instead of assuming Grad-CAM.
QUADRANT_MODEL = "cnn_plain"


def _quadrant_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A square in every quadrant; the one with a stripe texture decides the class.

    All four squares have the same mean brightness, so a map that merely follows image
    intensity (as a randomised network's does) cannot single out the evidence quadrant.
    """
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 0.1, (n, SIZE, SIZE, 1)).astype(np.float32)
    y = rng.integers(0, 4, n)
    masks = np.zeros((n, SIZE, SIZE), bool)
    half, side = SIZE // 2, 16
    stripes = np.where(np.arange(side) % 4 < 2, 1.0, 0.2)[:, None] * np.ones((1, side))
    for i, label in enumerate(y):
        for q in range(4):
            oy, ox = (q // 2) * half, (q % 2) * half
            top, left = oy + rng.integers(2, half - side - 2), ox + rng.integers(2, half - side - 2)
            patch = stripes if q == label else np.full((side, side), 0.6)
            x[i, top : top + side, left : left + side, 0] = patch
            if q == label:
                masks[i, oy : oy + half, ox : ox + half] = True
    return np.repeat(x, 3, axis=-1), y, masks


@pytest.fixture(scope="session")
def quadrant_model():
    import keras

    from btc import models, train

    keras.utils.set_random_seed(0)
    x, y, _ = _quadrant_images(800, seed=0)
    model = models.build_model(QUADRANT_MODEL, image_size=SIZE, weights=None)
    train._compile(model, 1e-3)
    model.fit(x, y, epochs=10, batch_size=32, verbose=0)
    xt, yt, masks = _quadrant_images(24, seed=1)
    accuracy = float((model.predict(xt, verbose=0).argmax(1) == yt).mean())
    assert accuracy > 0.9, f"synthetic model did not learn the task ({accuracy:.2f})"
    return model, xt, yt, masks


# --- the tiny models exported to LiteRT (test_export, test_litert) -------------------------------

TEMPERATURE = 0.5  # not 1 (a runtime that skipped it is caught); sharpens the tiny models' outputs


@pytest.fixture(scope="session")
def exported(tiny_models, tmp_path_factory):
    """A copy of the tiny models (temperature 0.5), each exported in all three variants."""
    import json

    from btc import export

    models_dir = tmp_path_factory.mktemp("litert") / "models"
    shutil.copytree(tiny_models[0], models_dir, ignore=shutil.ignore_patterns("results"))
    for name in ("cnn", "mobilenet"):
        meta_path = models_dir / name / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps({**meta, "temperature": TEMPERATURE}))
        for quantize in export.QUANTIZE:
            export.export_tflite(name, quantize, models_dir=models_dir, manifest=tiny_models[1],
                                 representative_images=40)  # fmt: skip
    return models_dir, tiny_models[1]


# --- the tiny models with fitted OOD statistics (test_ood, test_oodeval) -------------------------

# thresholds come from validation-type data only: the validation split and, with an external set,
# its train groups scored by a fit without their fold (never the test split or the OOD images)
THRESHOLDS_FROM = "val + ext_train_held_out" if SHARED_EXTERNAL.is_dir() else "val"
FIT = dict(target_error=0.3, min_answered=3, n_bootstrap=20)


def ood_copy(tiny_models, root: Path, test_rows: int | None = None) -> tuple[Path, Path]:
    """Copy the tiny models and their manifest (+ 16 Br35H scans as an external set) to `root`."""
    import pandas as pd

    models_dir, manifest = tiny_models
    shutil.copytree(models_dir, root / "models", ignore=shutil.ignore_patterns("results"))
    frame = pd.read_csv(manifest, keep_default_na=False, dtype={"official_split": str})
    if test_rows is not None:  # a different test split: fewer rows
        frame = frame.drop(frame.index[frame.split == "test"][test_rows:])
    (root / "data").mkdir()
    frame.to_csv(root / "data" / "manifest.csv", index=False)
    brain = sorted((SHARED_EXTERNAL / "images").glob("*.jpg"))[:16]
    if brain:  # Br35H scans as an external set: 8 to choose with, 8 to report
        pd.DataFrame({"path": [str(p) for p in brain], "sha256": "", "class": "tumour",
                      "split": ["train", "test"] * 8, "group": [f"ext-{i}" for i in range(16)],
                      "width": 0, "height": 0, "boxes": "[]"}).to_csv(root / "data" / "external.csv", index=False)  # fmt: skip
    return root / "models", root / "data" / "manifest.csv"


@pytest.fixture(scope="session")
def ood_fitted(tiny_models, tmp_path_factory):
    """OOD statistics fitted on a copy of the tiny models (the shared fixture stays unfitted)."""
    from btc import oodeval

    root = tmp_path_factory.mktemp("ood")
    models_dir, manifest = ood_copy(tiny_models, root)
    ood_dir = OOD_DEV if OOD_DEV.is_dir() else None
    report = oodeval.fit_and_report(None, manifest, models_dir, root / "results", ood_dir, **FIT)
    return models_dir, manifest, report, root


@pytest.fixture(scope="session")
def ood_loaded(ood_fitted):
    """The `ood_fitted` models loaded for prediction, OOD statistics included."""
    from btc import predict

    return predict.load_models(models_dir=ood_fitted[0])
