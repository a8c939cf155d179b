"""Tests of btc.data: index, audit, split and the preprocessing stage (duplicates: test_dedup.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from btc import config, data, datasets, oodct
from tests import images

# --- index and bad input -------------------------------------------------------------------------


@pytest.fixture
def messy_dir(tmp_path) -> Path:
    """A Kaggle-layout folder with good images and every kind of bad file."""
    root = tmp_path / "messy"
    tr = root / "Training"
    for i, cls in enumerate(["glioma", "meningioma", "notumor", "pituitary"]):
        for j in range(3):
            images.save(tr / cls / f"good {cls} {j}.jpg", images.brain_like(80, seed=10 * i + j))
    g = tr / "glioma"
    (g / "truncated.jpg").write_bytes(images.encoded(images.brain_like(80, 99))[:400])
    (g / "zero.jpg").write_bytes(b"")
    (g / "text.jpg").write_text("this is not an image\n")
    images.save(g / "really_png.jpg", images.brain_like(80, 98), fmt="PNG")
    images.save(g / "sixteen.png", images.brain_like(80, 97).astype(np.uint16) * 257, fmt="PNG")
    images.save(g / "rgba.png", images.brain_like(80, 96), fmt="PNG", mode="RGBA")
    images.save(g / "cmyk.jpg", images.brain_like(80, 95), fmt="JPEG", mode="CMYK")
    images.save(g / "tiny.png", np.zeros((1, 1), np.uint8), fmt="PNG")
    (g / "bomb.png").write_bytes(images.png_bomb())
    images.save(tr / "meningioma" / "Ünïcødé scan ñ.jpg", images.brain_like(80, 94))
    (root / "Testing" / "pituitary").mkdir(parents=True)  # empty class folder
    return root


def test_index_reports_every_bad_file_and_keeps_the_rest(messy_dir, caplog):
    with caplog.at_level(logging.WARNING):
        index = data.index_dataset(messy_dir, workers=1)
    by_name = index.set_index(index["path"].map(lambda p: Path(p).name))
    expected_errors = {
        "truncated.jpg": "cannot decode jpeg",
        "zero.jpg": "empty file",
        "text.jpg": "not an image",
        "cmyk.jpg": "CMYK",
        "tiny.png": "1x1 px",
        "bomb.png": "decompression bomb",
    }
    for name, fragment in expected_errors.items():
        assert not by_name.loc[name, "readable"], name
        assert fragment in by_name.loc[name, "error"], (name, by_name.loc[name, "error"])
        assert any(name in r.getMessage() for r in caplog.records), f"no log naming {name}"
    for name in [
        "really_png.jpg",
        "sixteen.png",
        "rgba.png",
        "Ünïcødé scan ñ.jpg",
        "good glioma 0.jpg",
    ]:
        assert by_name.loc[name, "readable"], (name, by_name.loc[name, "error"])
    assert by_name.loc["really_png.jpg", "format"] == "png"
    assert any("Empty class folder" in r.getMessage() for r in caplog.records)
    assert data.audit(index)["unreadable"]["path"].map(lambda p: Path(p).name).tolist() == sorted(
        expected_errors, key=lambda n: str(messy_dir / "Training" / "glioma" / n)
    )


def test_stage_survives_bad_files_and_writes_a_manifest(messy_dir, tmp_path):
    cfg = config.PreprocessConfig(
        data_dir=messy_dir, workers=1, val_fraction=0.2, test_fraction=0.2
    )
    result = data.preprocess(cfg, manifest_path=tmp_path / "m.csv")
    manifest = datasets.load_manifest(tmp_path / "m.csv")
    report = result["report"]
    dropped = report["exact_copies_removed"] + report["label_conflict_images"]
    assert len(manifest) == result["index"]["readable"].sum() - dropped > 0
    assert not manifest["path"].str.contains("truncated|zero|text|cmyk|tiny|bomb").any()
    assert (tmp_path / "m.json").is_file()


@pytest.mark.parametrize("layout", ["sartaj", "flat"])
def test_class_folder_aliases_and_layouts(tmp_path, layout):
    names = ["Glioma_Tumor", "meningioma_tumor", "NO_TUMOR", "pituitary_tumor"]
    root = tmp_path / "d"
    for i, name in enumerate(names):
        folder = root / ("Training" if layout == "sartaj" else "") / name
        images.save(folder / "a.jpg", images.brain_like(64, i))
    files = data.discover_files(root)
    assert sorted(files["class"]) == sorted(config.CLASS_NAMES)
    assert set(files["official_split"]) == ({"Training"} if layout == "sartaj" else {""})


def test_unknown_class_folder_lists_known_names(tmp_path):
    images.save(tmp_path / "Training" / "astrocytoma" / "a.jpg", images.brain_like(64))
    with pytest.raises(data.DataError, match="astrocytoma") as err:
        data.discover_files(tmp_path)
    assert "glioma_tumor" in str(err.value) and "Received:" in str(err.value)


def test_missing_data_dir_says_where_to_put_the_data(tmp_path):
    with pytest.raises(data.DataError, match="BTC_DATA_DIR"):
        data.discover_files(tmp_path / "nope")


# --- audit ---------------------------------------------------------------------------------------


def test_shortcut_table_shows_colour_mode_predicts_class(full_index):
    modes = data.audit(full_index)["modes"]
    assert modes.loc["notumor", "RGB"] > 0.9 and modes.loc["glioma", "L"] > 0.8
    formats = data.audit(full_index)["formats"]
    assert formats.loc["notumor", "png as .jpg"] > 0


# --- split -----------------------------------------------------------------------------------------


def test_grouped_split_has_no_leakage_and_is_stratified(full_index, real_groups):
    cfg = config.PreprocessConfig()
    manifest, report = data.split_dataset(full_index, real_groups, cfg)
    assert report["groups_crossing_splits"] == 0 == datasets.crossing_groups(manifest)
    assert manifest.groupby("group")["split"].nunique().max() == 1
    assert manifest.groupby("sha256")["split"].nunique().max() == 1
    shares = pd.crosstab(manifest["class"], manifest["split"], normalize="index")
    assert np.allclose(shares["train"], 0.70, atol=0.02)
    assert np.allclose(shares[["val", "test"]], 0.15, atol=0.02)
    assert report["official_leakage"]["testing_images_with_training_copy"] > 500


def test_split_is_reproducible_and_seed_dependent(full_index, real_groups):
    a, _ = data.split_dataset(full_index, real_groups, config.PreprocessConfig(seed=1))
    b, _ = data.split_dataset(full_index, real_groups, config.PreprocessConfig(seed=1))
    c, _ = data.split_dataset(full_index, real_groups, config.PreprocessConfig(seed=2))
    pd.testing.assert_frame_equal(a, b)
    assert (a["split"] != c["split"]).any()


def test_official_split_drops_leaked_test_images(full_index, real_groups):
    cfg = config.PreprocessConfig(split_mode="official")
    manifest, report = data.split_dataset(full_index, real_groups, cfg)
    dropped = report["official_test_dropped_for_leakage"]
    assert dropped == report["official_leakage"]["testing_images_with_training_copy"] > 0
    assert set(manifest.loc[manifest.split == "test", "official_split"]) == {"Testing"}
    assert datasets.crossing_groups(manifest) == 0


def test_ct_slices_filed_as_mri_are_found_and_their_groups_dropped(full_index, real_groups):
    flagged = full_index[full_index["ct_like"]]
    table = data.audit(full_index)["ct_slices"]
    # seen on a montage: about 80 head CTs, nearly all under notumor and meningioma
    assert 40 <= len(flagged) <= 160 and table["total"].sum() == len(flagged)
    assert flagged["class"].isin(["notumor", "meningioma"]).mean() > 0.9
    assert table.loc["notumor", "share"] > 0.02 > table.loc["glioma", "share"]
    manifest, report = data.split_dataset(full_index, real_groups, config.PreprocessConfig())
    kept, kept_report = data.split_dataset(
        full_index, real_groups, config.PreprocessConfig(ct_slices="keep")
    )
    groups = set(real_groups[flagged.index])
    assert not manifest["group"].isin(groups).any()  # whole groups leave, copies included
    assert len(kept) - len(manifest) == report["ct_slices"]["in_their_groups"]
    assert report["ct_slices"]["flagged"] <= report["ct_slices"]["in_their_groups"]
    assert set(report["ct_slices"]["paths"]) == set(kept.loc[kept["group"].isin(groups), "path"])
    assert kept_report["ct_slices"]["policy"] == "keep" and datasets.crossing_groups(manifest) == 0


def test_ct_like_reads_the_pixels_as_prediction_does(shared_data):
    ct = shared_data / "Testing" / "notumor" / "Te-no_0010.jpg"  # a head CT filed as MRI
    mri = sorted((shared_data / "Testing" / "glioma").glob("*"))[:20]
    for path in [ct, *mri]:
        raw = path.read_bytes()
        assert oodct.ct_slice(raw) == oodct.skull_flag(raw)
    assert oodct.ct_slice(ct.read_bytes()) and not any(oodct.ct_slice(p.read_bytes()) for p in mri)
    assert oodct.ct_slice(b"not an image") is False
    row = data.inspect_bytes(ct.read_bytes())
    assert row["readable"] and row["ct_like"] is True
