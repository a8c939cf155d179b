"""Fetch the public Kaggle dataset with kagglehub when no local copy exists, and verify it.

The download is pinned to a dataset version, verified (layout and file counts) before use, and
linked into `data/raw/brain-tumor-mri`. A partial or corrupted download is re-fetched once and
never used; an existing local folder is never overwritten. Offline, a clear message says where to
put the data instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from btc.config import CLASS_NAMES, DATA_DIR, canonical_class

KAGGLE_DATASET = "masoudnickparvar/brain-tumor-mri-dataset"
KAGGLE_VERSION = 1
KAGGLE_URL = f"https://www.kaggle.com/datasets/{KAGGLE_DATASET}"
EXPECTED_COUNTS: dict[tuple[str, str], int] = {
    ("Training", "glioma"): 1321,
    ("Training", "meningioma"): 1339,
    ("Training", "notumor"): 1595,
    ("Training", "pituitary"): 1457,
    ("Testing", "glioma"): 300,
    ("Testing", "meningioma"): 306,
    ("Testing", "notumor"): 405,
    ("Testing", "pituitary"): 300,
}  # fmt: skip  (7023 files in the pinned version)
LICENCE = (
    "Brain Tumor MRI Dataset by Masoud Nickparvar, Kaggle. Licence: as listed on the Kaggle page "
    f"({KAGGLE_URL}; CC0: Public Domain when btc pinned it). Compiled from figshare (Cheng et al.), "
    "SARTAJ and Br35H; check their terms before redistributing."
)
CITATION = (
    f"Nickparvar, M. Brain Tumor MRI Dataset [Data set]. Kaggle. {KAGGLE_URL} (version "
    f"{KAGGLE_VERSION}). Also cite Cheng J. et al., PLoS ONE 10(10): e0140381 (2015)."
)


class DatasetUnavailableError(RuntimeError):
    """The dataset is not present locally and could not be downloaded and verified."""


def count_files(root: str | Path) -> dict[tuple[str, str], int]:
    """Count image files per (official split, canonical class) in a Kaggle-layout folder."""
    counts: dict[tuple[str, str], int] = {}
    for split in ("Training", "Testing"):
        for class_dir in sorted((Path(root) / split).glob("*")):
            label = canonical_class(class_dir.name) if class_dir.is_dir() else None
            if label:
                n = sum(
                    1 for p in class_dir.iterdir() if p.is_file() and not p.name.startswith(".")
                )
                counts[(split, label)] = counts.get((split, label), 0) + n
    return counts


def verify(root: str | Path, expected: dict[tuple[str, str], int] = EXPECTED_COUNTS) -> list[str]:
    """Return the problems of a dataset folder (empty when it matches the pinned version)."""
    root = Path(root)
    if not root.is_dir():
        return [f"{root} is not a folder"]
    counts = count_files(root)
    problems = []
    for key, want in expected.items():
        have = counts.get(key, 0)
        if have != want:
            problems.append(f"{key[0]}/{key[1]}: {have} files, expected {want}")
    for split in ("Training", "Testing"):
        for name in CLASS_NAMES:
            if (split, name) not in expected and counts.get((split, name)):
                problems.append(f"{split}/{name}: unexpected folder")
    return problems


def offline_message(dest: Path, reason: str) -> str:
    """What to do when the download is impossible: where to put the folder, or BTC_DATA_DIR."""
    return (
        f"The brain-tumour MRI dataset is not available locally and could not be downloaded "
        f"({reason}). Download it from {KAGGLE_URL} (version {KAGGLE_VERSION}, 7023 images), unzip "
        f"it so that {dest}/Training/<class>/ and {dest}/Testing/<class>/ exist, or set "
        f"BTC_DATA_DIR to the folder that holds Training/ and Testing/."
    )


def _download(force: bool) -> Path:
    import kagglehub

    handle = f"{KAGGLE_DATASET}/versions/{KAGGLE_VERSION}"
    return Path(kagglehub.dataset_download(handle, force_download=force))


def _dataset_root(path: Path) -> Path:
    """The folder holding Training/ and Testing/ (the archive may add one level)."""
    if (path / "Training").is_dir():
        return path
    nested = [p for p in path.iterdir() if (p / "Training").is_dir()] if path.is_dir() else []
    return nested[0] if nested else path


def fetch_dataset(
    dest: str | Path = DATA_DIR, expected: dict[tuple[str, str], int] = EXPECTED_COUNTS
) -> Path:
    """Make the pinned dataset available at `dest`, downloading it with kagglehub if needed.

    Args:
        dest: Where the dataset should be (`data/raw/brain-tumor-mri`); an existing folder is
            verified and used, never overwritten.
        expected: File counts per (split, class) of the pinned version.

    Returns:
        `dest`, now a verified dataset folder (a link into the kagglehub cache).

    Raises:
        DatasetUnavailableError: Offline, blocked, or the download fails verification twice;
            the message says where to put the folder instead.
    """
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        problems = verify(dest, expected)
        if problems:
            raise DatasetUnavailableError(
                f"{dest} exists but is not the expected dataset ({'; '.join(problems[:4])}). "
                "btc never overwrites an existing folder: fix or remove it, or set BTC_DATA_DIR."
            )
        return dest
    root = None
    for attempt, force in enumerate((False, True)):
        try:
            root = _dataset_root(_download(force))
        except Exception as exc:  # network, DNS, HTTP, quota: no traceback for the user
            raise DatasetUnavailableError(offline_message(dest, type(exc).__name__)) from None
        problems = verify(root, expected)
        if not problems:
            break
        print(f"Download incomplete or corrupted ({'; '.join(problems[:3])}); "
              + ("re-fetching." if attempt == 0 else "giving up."))  # fmt: skip
        root = None
    if root is None:
        raise DatasetUnavailableError(offline_message(dest, "verification failed twice"))
    _make_read_only(root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(root, dest, target_is_directory=True)
    except OSError:
        shutil.copytree(root, dest)
    print(LICENCE)
    print(f"Cite: {CITATION}")
    return dest


def _make_read_only(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(0o444)


def ensure_dataset(data_dir: str | Path | None = None) -> Path:
    """Return the data folder to use, fetching the dataset only when none is configured.

    `BTC_DATA_DIR` (or an explicit `data_dir`) is used as it is; otherwise the default
    `data/raw/brain-tumor-mri` is fetched when it does not exist yet.
    """
    if data_dir:
        return Path(data_dir)
    if os.environ.get("BTC_DATA_DIR"):
        return Path(os.environ["BTC_DATA_DIR"])
    return fetch_dataset(DATA_DIR)
