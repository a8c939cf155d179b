"""Tests of btc.fetch without internet: a pre-filled kagglehub cache, an incomplete one, none."""

from __future__ import annotations

import importlib
import os
import shutil
import time
from pathlib import Path

import pytest

from btc import fetch


@pytest.fixture
def offline_kaggle(tmp_path, monkeypatch):
    """kagglehub pointed at a temp cache and at a closed loopback port (no internet needed)."""
    cache = tmp_path / "kagglehub"
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(cache))
    monkeypatch.setenv("KAGGLE_API_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("BTC_DATA_DIR", raising=False)
    import kagglehub.config

    importlib.reload(kagglehub.config)
    return cache


def _fill_cache(cache: Path, shared: Path, per_class: int, complete: bool = True) -> dict:
    """Lay a real sample out as kagglehub caches a versioned dataset."""
    owner, name = fetch.KAGGLE_DATASET.split("/")
    root = cache / "datasets" / owner / name / "versions" / str(fetch.KAGGLE_VERSION)
    counts = {}
    for split in ("Training", "Testing"):
        for cls in ("glioma", "meningioma", "notumor", "pituitary"):
            files = sorted((shared / split / cls).iterdir())[:per_class]
            (root / split / cls).mkdir(parents=True)
            for f in files:
                shutil.copy(f, root / split / cls / f.name)
            counts[(split, cls)] = len(files)
    if complete:
        (cache / "datasets" / owner / name / f"{fetch.KAGGLE_VERSION}.complete").touch()
    return counts


def test_cached_download_is_resolved_verified_and_linked(
    offline_kaggle, shared_data, tmp_path, capsys
):
    expected = _fill_cache(offline_kaggle, shared_data, per_class=3)
    dest = tmp_path / "data" / "raw" / "brain-tumor-mri"
    assert fetch.fetch_dataset(dest, expected) == dest
    assert dest.is_symlink() and fetch.verify(dest, expected) == []
    assert (
        not os.access(next((dest / "Training" / "glioma").iterdir()), os.W_OK) or os.geteuid() == 0
    )
    out = capsys.readouterr().out
    assert "Nickparvar" in out and "Licence" in out
    # an existing folder is used as it is and never overwritten
    before = sorted(p.name for p in (dest / "Testing" / "notumor").iterdir())
    assert fetch.fetch_dataset(dest, expected) == dest
    assert sorted(p.name for p in (dest / "Testing" / "notumor").iterdir()) == before


def test_incomplete_cache_is_rejected_not_used(offline_kaggle, shared_data, tmp_path):
    expected = _fill_cache(offline_kaggle, shared_data, per_class=3)
    expected[("Testing", "pituitary")] += 2  # two files "missing" from the download
    dest = tmp_path / "dest"
    with pytest.raises(fetch.DatasetUnavailableError) as err:
        fetch.fetch_dataset(dest, expected)
    assert not dest.exists()
    assert fetch.KAGGLE_URL in str(err.value) and "BTC_DATA_DIR" in str(err.value)


def test_offline_with_nothing_cached_gives_a_clear_message_fast(offline_kaggle, tmp_path):
    start = time.perf_counter()
    with pytest.raises(fetch.DatasetUnavailableError) as err:
        fetch.fetch_dataset(tmp_path / "dest")
    message = str(err.value)
    assert "Traceback" not in message and fetch.KAGGLE_URL in message
    assert str(tmp_path / "dest") in message and "BTC_DATA_DIR" in message
    assert time.perf_counter() - start < 30


def test_existing_wrong_folder_is_never_overwritten(tmp_path):
    dest = tmp_path / "brain-tumor-mri"
    (dest / "Training" / "glioma").mkdir(parents=True)
    (dest / "Training" / "glioma" / "mine.jpg").write_bytes(b"keep me")
    with pytest.raises(fetch.DatasetUnavailableError, match="never overwrites"):
        fetch.fetch_dataset(dest)
    assert (dest / "Training" / "glioma" / "mine.jpg").read_bytes() == b"keep me"


def test_the_shared_copy_matches_the_pinned_counts(shared_data):
    assert fetch.verify(shared_data) == []
    assert sum(fetch.EXPECTED_COUNTS.values()) == 7023
