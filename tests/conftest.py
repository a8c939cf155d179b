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


@pytest.fixture(scope="session")
def tiny_models(tiny_manifest, tmp_path_factory):
    """Two tiny models trained one epoch at 64 px on the sample: (models_dir, manifest)."""
    from btc import train

    models_dir = tmp_path_factory.mktemp("models")
    for name in ("cnn", "mobilenet"):
        cfg = train.TrainConfig(model=name, image_size=64, batch_size=16, epochs_head=1,
                                epochs_finetune=1, alpha=0.25)  # fmt: skip
        train.train(cfg, tiny_manifest, models_dir, models_dir / "results", verbose=0)
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
