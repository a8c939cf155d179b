"""Tests of btc.dedup: exact, near, mirrored and re-windowed copies, groups and the checks of 01."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from btc import data, dedup
from tests import images


def _stripes(size: int = 128) -> np.ndarray:
    """An image whose low frequencies differ from `images.brain_like`'s (a different pHash)."""
    yy, xx = np.mgrid[:size, :size] / size
    return (127 + 120 * np.sin(6 * np.pi * xx) * np.cos(2 * np.pi * yy)).astype(np.uint8)


@pytest.fixture
def copies_index(tmp_path):
    """Index of a generated scan, its byte copy, a resized PNG, a mirror and two unrelated images."""
    root = tmp_path / "set" / "Training" / "glioma"
    scan = images.brain_like(128, seed=1, blob=(40, 30))
    first = images.save(root / "scan.jpg", scan)
    (root / "byte_copy.jpg").write_bytes(first.read_bytes())
    images.save(root / "resized.png", np.asarray(Image.fromarray(scan).resize((200, 200))), "PNG")
    images.save(root / "mirrored.jpg", np.ascontiguousarray(scan[:, ::-1]))
    images.save(tmp_path / "set" / "Testing" / "glioma" / "copy_in_test.jpg", scan)
    images.save(root.parent / "notumor" / "stripes.jpg", _stripes())
    index = data.index_dataset(tmp_path / "set", workers=1)
    index["name"] = index["path"].map(lambda p: Path(p).name)
    return index


def _groups_by_name(index: pd.DataFrame, groups: pd.Series) -> dict[str, int]:
    return dict(zip(index["name"], groups.reindex(index.index)))


def test_exact_near_and_mirrored_copies_form_one_group(copies_index):
    pairs, groups = dedup.find_duplicates(copies_index, threshold=4)
    g = _groups_by_name(copies_index, groups)
    copies = ["byte_copy.jpg", "resized.png", "mirrored.jpg", "copy_in_test.jpg"]
    assert {g[n] for n in copies} == {g["scan.jpg"]}
    assert g["stripes.jpg"] != g["scan.jpg"]
    kinds = {frozenset((Path(a).name, Path(b).name)): k
             for a, b, k in zip(pairs.path_a, pairs.path_b, pairs.kind)}  # fmt: skip
    assert kinds[frozenset(("scan.jpg", "byte_copy.jpg"))] == "exact"
    assert kinds[frozenset(("scan.jpg", "resized.png"))] == "near"
    assert kinds[frozenset(("scan.jpg", "mirrored.jpg"))] == "mirrored"
    assert (pairs.distance <= 4).all() and pairs.similarity.isna().all()  # no re-windowed pairs
    assert set(pairs.split_a) | set(pairs.split_b) == {"Training", "Testing"}


def test_summary_counts_pairs_within_and_across_the_official_split(copies_index):
    pairs, _ = dedup.find_duplicates(copies_index, threshold=4)
    table = dedup.duplicate_summary(pairs)
    assert table.loc["total", "total"] == len(pairs)
    crossing = ((pairs.split_a == "Testing") ^ (pairs.split_b == "Testing")).sum()
    assert table.loc["total", "across"] == crossing > 0
    assert (table.loc[["exact", "near", "mirrored"], "same label"] == 1.0).all()


def test_threshold_check_admits_more_pairs_as_the_threshold_grows(copies_index):
    check = dedup.threshold_check(copies_index, thresholds=[0, 4, 32])
    assert check["threshold"].tolist() == [0, 4, 32]
    assert check["pairs"].is_monotonic_increasing
    assert check["new_pairs"].sum() == check["pairs"].iloc[-1]
    assert check.loc[1, "same_label_share"] == 1.0  # at the default, only the scan's copies
    assert check.loc[2, "same_label_share"] < 1.0  # 32 bits pairs the stripes with the scan


def test_similarity_check_lists_every_cut_in_order(copies_index):
    check = dedup.similarity_check(copies_index, similarities=[0.99, 0.5])
    assert check["min_similarity"].tolist() == [0.5, 0.99]
    assert check["pairs"].iloc[0] >= check["pairs"].iloc[1]


def test_bad_arguments_are_rejected_keras_style(copies_index):
    with pytest.raises(
        ValueError, match=r"`threshold` must be in \[0, 32\]\. Received: threshold=40"
    ):
        dedup.find_duplicates(copies_index, threshold=40)
    with pytest.raises(
        TypeError, match=r"`threshold` must be of type int\. Received: threshold=4.0"
    ):
        dedup.find_duplicates(copies_index, threshold=4.0)
    with pytest.raises(ValueError, match=r"Received: min_similarity=0\.2"):
        dedup.find_duplicates(copies_index, min_similarity=0.2)


# --- on real scans (moved from tests/test_data.py) -----------------------------------------------


def test_resized_reencoded_and_mirrored_copies_are_grouped(shared_data, tmp_path):
    src = next((shared_data / "Training" / "glioma").glob("*.jpg"))
    original = Image.open(src).convert("L")
    root = tmp_path / "copies" / "glioma"
    root.mkdir(parents=True)
    original.save(root / "original.jpg", quality=95)
    original.resize((300, 300)).save(root / "resized_reencoded.png")
    ImageOps.mirror(original).save(root / "mirrored.jpg", quality=80)
    other = sorted((shared_data / "Training" / "pituitary").glob("*.jpg"))[5]
    Image.open(other).convert("L").save(tmp_path / "copies" / "glioma" / "unrelated.jpg")
    index = data.index_dataset(tmp_path / "copies", workers=1)
    pairs, groups = dedup.find_duplicates(index, threshold=4)
    names = index["path"].map(lambda p: Path(p).name)
    g = dict(zip(names, groups.reindex(index.index)))
    assert g["original.jpg"] == g["resized_reencoded.png"] == g["mirrored.jpg"]
    assert g["unrelated.jpg"] != g["original.jpg"]
    kinds = set(pairs["kind"])
    assert {"near", "mirrored"} <= kinds


def test_rewindowed_copies_are_grouped_where_the_raw_phash_misses_them(shared_data, tmp_path):
    src = sorted((shared_data / "Training" / "notumor").glob("*.jpg"))[7]
    original = np.asarray(Image.open(src).convert("L"), dtype=np.float64) / 255.0
    root = tmp_path / "windows" / "notumor"
    copies = {  # the same slice re-windowed: gamma, contrast stretch with clipping, darker
        "gamma.jpg": original**0.5,
        "stretched.png": np.clip((original - 0.1) * 1.8, 0, 1),
        "darker.jpg": original**1.8 * 0.8,
    }
    images.save(root / "original.jpg", (original * 255).astype(np.uint8))
    for name, arr in copies.items():
        images.save(
            root / name,
            (arr * 255).round().astype(np.uint8),
            fmt=name[-3:].upper().replace("JPG", "JPEG"),
        )
    other = sorted((shared_data / "Training" / "notumor").glob("*.jpg"))[40]
    Image.open(other).convert("L").save(root / "unrelated.jpg")
    index = data.index_dataset(tmp_path / "windows", workers=1)
    names = index["path"].map(lambda p: Path(p).name).tolist()
    _, raw_groups = dedup.find_duplicates(index, threshold=4, min_similarity=1.0)
    pairs, groups = dedup.find_duplicates(index, threshold=4)
    raw = dict(zip(names, raw_groups.reindex(index.index)))
    g = dict(zip(names, groups.reindex(index.index)))
    assert any(raw[n] != raw["original.jpg"] for n in copies)  # the raw pHash misses some
    assert all(g[n] == g["original.jpg"] for n in copies)  # the equalised search does not
    assert g["unrelated.jpg"] != g["original.jpg"]
    rewindowed = pairs[pairs.kind == "rewindowed"]
    assert len(rewindowed) and (rewindowed.similarity >= dedup.DEFAULT_SIMILARITY).all()


def test_real_dataset_duplicates_and_threshold(full_index):
    assert len(full_index) == 7023 and full_index["readable"].all()
    pairs, groups = dedup.find_duplicates(full_index, threshold=4)
    summary = dedup.duplicate_summary(pairs)
    for kind in ("exact", "near", "mirrored"):
        assert summary.loc[kind, "across"] > 0, kind  # Training↔Testing leakage exists
        assert summary.loc[kind, "within Training"] > 0, kind
    assert summary.loc["exact", "same label"] > 0.99
    check = dedup.threshold_check(full_index, thresholds=[0, 2, 4, 8])
    at = check.set_index("threshold")
    assert at.loc[4, "same_label_share"] > 0.98  # the default keeps pairs label-consistent
    assert at.loc[8, "new_pairs_same_label_share"] < 0.9  # a loose threshold would not
    assert groups.value_counts().max() < 100  # no giant chained component
    assert summary.loc["rewindowed", "across"] > 0  # re-windowed copies cross the split too
    assert summary.loc["rewindowed", "same label"] > 0.99
    # pairs reported in issue 13: the same slice re-windowed, missed by the raw pHash
    names = full_index["path"].map(lambda p: Path(p).name)
    g = dict(zip(names, groups.reindex(full_index.index)))
    for a, b in [("Tr-no_0611.jpg", "Te-no_0267.jpg"), ("Tr-no_1306.jpg", "Te-no_0344.jpg"),
                 ("Tr-no_1470.jpg", "Te-no_0291.jpg"), ("Tr-gl_1288.jpg", "Tr-gl_1289.jpg")]:  # fmt: skip
        assert g[a] == g[b], (a, b)
    check = dedup.similarity_check(full_index, similarities=[0.85, 0.97]).set_index(
        "min_similarity"
    )
    assert check.loc[0.97, "same_label_share"] > 0.99  # the default cut keeps labels consistent
    assert check.loc[0.85, "new_pairs_same_label_share"] < 0.8  # a loose cut pairs other slices
