"""Tests of btc.dicom and DICOM input to btc.predict, the CLI and the demo (no internet).

Uses pydicom's bundled MR_small / CT_small files and MR files built here with pydicom: windowed,
MONOCHROME1, rescaled, multi-frame, compressed, without a window, non-MR, corrupt, and carrying
identifying tags (PHI).
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset

from btc import dicom, images, llm, predict

PHI = {
    "PatientName": "DOE^JANE",
    "PatientID": "PID-4711",
    "PatientBirthDate": "19610203",
    "StudyDate": "20240102",
    "SeriesDate": "20240102",
    "AcquisitionDateTime": "20240102101010",
    "InstitutionName": "St Example Hospital",
    "InstitutionAddress": "1 Example Road",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "OperatorsName": "OPERATOR^OLGA",
    "AccessionNumber": "ACC-99887",
    "StudyDescription": "BRAIN FOR DOE",
}
PHI_STRINGS = ["DOE", "JANE", "PID-4711", "19610203", "20240102", "Example", "HOUSE", "OLGA",
               "ACC-99887", "ACME", "secret"]  # fmt: skip
IDENTITY = {"center": 128.0, "width": 256.0}  # LINEAR window that maps stored 0..255 to itself


def phantom(rows: int = 64, cols: int = 64, seed: int = 0, top: int = 3000) -> np.ndarray:
    """A 12-bit 'head': dark background, textured ellipse, one small very bright spot."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:rows, :cols]
    head = ((yy - rows / 2) / (0.45 * rows)) ** 2 + ((xx - cols / 2) / (0.38 * cols)) ** 2 < 1
    img = head * (top / 2 + top / 4 * np.sin(xx / 4.0) * np.cos(yy / 5.0))
    img = np.clip(img + rng.normal(0, top / 40, img.shape) * head + 20, 0, 4095)
    img[rows // 2, cols // 2] = 4095  # an outlier the percentile window must ignore
    return img.astype(np.uint16)


def make_mr(path: Path | None = None, pixels: np.ndarray | None = None, *, modality: str = "MR",
            photometric: str = "MONOCHROME2", window: dict | None = None, slope=None,
            intercept=None, z: float | None = 0.0, instance: int = 1, series_uid: str | None = None,
            series_number: int = 3, phi: bool = True, extra: dict | None = None) -> Dataset:  # fmt: skip
    """An MR image storage dataset (saved to `path` when given), with PHI tags by default."""
    pixels = phantom() if pixels is None else pixels
    frames, rows, cols = (1, *pixels.shape) if pixels.ndim == 2 else pixels.shape
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.MRImageStorage
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = uid.MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), series_uid or uid.generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, instance
    if z is not None:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-100.0, -120.0, z]
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = photometric
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = (
        bits,
        8 if bits == 8 else 12,
        7 if bits == 8 else 11,
    )
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window["center"], window["width"]
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if phi:
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.private_block(0x0011, "ACME 1.0", create=True).add_new(0x01, "LO", "secret PHI note")
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
    return ds


def linear(x, center, width):
    """PS3.3 C.11.2.1.2.1 LINEAR window to 0..255 (the reference the reader must match)."""
    y = ((np.asarray(x, float) - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.clip(np.round(y), 0, 255)


# --- reading and pixel handling --------------------------------------------------------------


def test_dicom_is_detected_by_content_not_extension(tmp_path):
    src = Path(get_testdata_file("MR_small.dcm"))
    for name in ("IM0001", "scan.jpg", "scan.dcm"):
        (tmp_path / name).write_bytes(src.read_bytes())
        assert dicom.is_dicom_file(tmp_path / name)
        [(png, input_name, info)] = predict.expand_input(tmp_path / name)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and input_name == name and info["modality"] == "MR"
    (tmp_path / "fake.dcm").write_bytes(b"\0" * 200)
    assert not dicom.is_dicom_file(tmp_path / "fake.dcm") and not dicom.is_dicom(b"DICM")
    with pytest.raises(predict.ImageError, match="fake.dcm: only JPEG and PNG scans and MR DICOM"):
        predict.expand_input(tmp_path / "fake.dcm")


def test_bundled_mr_gets_its_voi_window():
    path = get_testdata_file("MR_small.dcm")
    stored = pydicom.dcmread(path).pixel_array
    [frame] = dicom.read_dicom(path)
    assert frame.name == "MR_small.dcm" and frame.pixels.dtype == np.uint8
    assert frame.info["window"] == {"center": 600.0, "width": 1600.0, "function": "LINEAR",
                                    "source": "dicom"}  # fmt: skip
    np.testing.assert_array_equal(frame.pixels, linear(stored, 600, 1600))
    assert frame.pixels.max() == 255 and frame.pixels.min() > 0  # a window, not a min-max stretch


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                                  "MR_small_bigendian.dcm"])  # fmt: skip
def test_bundled_compressed_and_big_endian_mr_decode_to_the_same_pixels(name):
    reference = dicom.read_dicom(get_testdata_file("MR_small.dcm"))[0].pixels
    [frame] = dicom.read_dicom(get_testdata_file(name))
    np.testing.assert_array_equal(frame.pixels, reference)
    assert frame.info["transfer_syntax"] == pydicom.dcmread(get_testdata_file(name)).file_meta.TransferSyntaxUID.name  # fmt: skip


@pytest.mark.parametrize(
    "syntax", [uid.RLELossless, uid.JPEGLSLossless, uid.JPEG2000Lossless], ids=lambda u: u.name
)
def test_built_compressed_files_decode_losslessly(tmp_path, syntax):
    plain = make_mr(window={"center": 1500, "width": 3000})
    compressed = make_mr(window={"center": 1500, "width": 3000})
    compressed.compress(syntax, generate_instance_uid=False)
    assert compressed.file_meta.TransferSyntaxUID == syntax
    compressed.save_as(tmp_path / "c.dcm", enforce_file_format=True)
    assert compressed.file_meta.TransferSyntaxUID.is_compressed
    plain.save_as(tmp_path / "p.dcm", enforce_file_format=True)
    [got], [want] = dicom.read_dicom(tmp_path / "c.dcm"), dicom.read_dicom(tmp_path / "p.dcm")
    np.testing.assert_array_equal(got.pixels, want.pixels)
    assert got.info["transfer_syntax"] == syntax.name


def test_undecodable_transfer_syntax_is_refused_clearly(tmp_path):
    from pydicom.encaps import encapsulate

    ds = make_mr()
    ds.file_meta.TransferSyntaxUID = uid.MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\0" * 60])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "video.dcm", enforce_file_format=True)
    with pytest.raises(dicom.DicomError, match=r"video.dcm: pixel data compressed as MPEG2 .* "
                       r"cannot be decoded: no installed pydicom plugin"):  # fmt: skip
        dicom.read_dicom(tmp_path / "video.dcm")


def test_monochrome1_is_inverted(tmp_path):
    pixels, window = phantom(), {"center": 1500, "width": 3000}
    make_mr(tmp_path / "m2.dcm", pixels, window=window)
    make_mr(tmp_path / "m1.dcm", pixels, window=window, photometric="MONOCHROME1")
    [m1], [m2] = dicom.read_dicom(tmp_path / "m1.dcm"), dicom.read_dicom(tmp_path / "m2.dcm")
    np.testing.assert_array_equal(m2.pixels, linear(pixels, 1500, 1500 * 2))
    np.testing.assert_allclose(m1.pixels.astype(int), 255 - m2.pixels.astype(int), atol=1)
    assert m1.pixels[0, 0] > 250 and m2.pixels[0, 0] < 5  # dark background shows white
    assert m1.pixels[32, 32] == 0 and m2.pixels[32, 32] == 255  # the brightest value black
    assert m1.info["photometric"] == "MONOCHROME1"


def test_rescale_is_applied_before_a_multi_valued_window(tmp_path):
    pixels = phantom()
    window = {"center": [1900.0, 40.0], "width": [5000.0, 80.0]}  # the first is the default
    make_mr(tmp_path / "r.dcm", pixels, window=window, slope=2.0, intercept=-100.0)
    [frame] = dicom.read_dicom(tmp_path / "r.dcm")
    np.testing.assert_array_equal(frame.pixels, linear(pixels * 2.0 - 100.0, 1900, 5000))
    assert frame.info["window"]["center"] == 1900.0 and frame.info["window"]["width"] == 5000.0


def test_missing_window_uses_a_robust_percentile_window(tmp_path):
    pixels = phantom()
    make_mr(tmp_path / "nowin.dcm", pixels)
    [frame] = dicom.read_dicom(tmp_path / "nowin.dcm")
    assert frame.info["window"]["source"] == "percentile 0.5-99.5"
    lo, hi = np.percentile(pixels, [0.5, 99.5])
    np.testing.assert_allclose(frame.pixels, np.clip(np.round((pixels - lo) / (hi - lo) * 255), 0, 255), atol=1)  # fmt: skip
    head = frame.pixels[pixels > 100]
    assert head.std() > 40  # the 4095 outlier did not squash the head into a few grey levels
    minmax = np.round((pixels - pixels.min()) / (pixels.max() - pixels.min()) * 255)
    assert head.std() > 1.1 * minmax[pixels > 100].std()


def test_non_square_pixels_are_resampled(tmp_path):
    make_mr(
        tmp_path / "ns.dcm", phantom(64, 128), window=IDENTITY, extra={"PixelSpacing": [1.0, 0.5]}
    )
    [frame] = dicom.read_dicom(tmp_path / "ns.dcm")
    assert frame.pixels.shape == (128, 128)  # 64 rows of 1 mm → 128 rows of 0.5 mm


def test_multi_frame_gives_one_frame_each_with_per_frame_windows(tmp_path):
    stack = np.stack([phantom(seed=i, top=1000 * (i + 1)) for i in range(3)])
    ds = make_mr(pixels=stack)
    per_frame = []
    for i in range(3):
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = 500 * (i + 1), 1000 * (i + 1)
        item = Dataset()
        item.FrameVOILUTSequence = [voi]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.save_as(tmp_path / "cine.dcm", enforce_file_format=True)
    frames = dicom.read_dicom(tmp_path / "cine.dcm")
    assert [f.name for f in frames] == [f"cine.dcm#frame{i}" for i in (1, 2, 3)]
    assert [f.info["frame"] for f in frames] == [1, 2, 3] and frames[0].info["frames"] == 3
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(f.pixels, linear(stack[i], 500 * (i + 1), 1000 * (i + 1)))
    assert len(predict.expand_input(tmp_path / "cine.dcm")) == 3


@pytest.mark.parametrize("modality", ["CT", "PT", ""])
def test_non_mr_is_refused_with_the_reason(tmp_path, modality):
    make_mr(tmp_path / "x.dcm", modality=modality)
    with pytest.raises(dicom.DicomError, match=rf"x.dcm: modality .* refused: btc was trained on brain MR slices only.*Received: Modality='{modality}'"):  # fmt: skip
        dicom.read_dicom(tmp_path / "x.dcm")


@pytest.mark.parametrize("part", ["ABDOMEN", "Chest", "abdomen pelvis", "L_SPINE", "KNEE"])
def test_trunk_and_limb_body_parts_are_refused_with_the_reason(tmp_path, part):
    make_mr(tmp_path / "x.dcm", extra={"BodyPartExamined": part})
    with pytest.raises(dicom.DicomError, match=rf"x.dcm: body part {part} refused: .*must be a head region.*Received: BodyPartExamined='{part}'"):  # fmt: skip
        dicom.read_dicom(tmp_path / "x.dcm")


@pytest.mark.parametrize("part", ["BRAIN", "HEAD", "HEADNECK", "SKULL", "KOPF", "CSPINE", ""])
def test_head_unknown_and_missing_body_parts_are_read(tmp_path, part):
    make_mr(
        tmp_path / "x.dcm", extra={"BodyPartExamined": part}
    )  # a localised value is not refused
    assert len(dicom.read_dicom(tmp_path / "x.dcm")) == 1


def test_bundled_abdominal_mr_is_refused_by_its_body_part():
    with pytest.raises(dicom.DicomError, match=r"examples_overlay.dcm: body part ABDOMEN refused"):
        dicom.read_dicom(get_testdata_file("examples_overlay.dcm"))


def test_bundled_ct_is_refused_as_ct():
    with pytest.raises(dicom.DicomError, match=r"CT \(Hounsfield.*must be one of \['MR'\]"):
        dicom.read_dicom(get_testdata_file("CT_small.dcm"))


def test_corrupt_files_are_refused_with_the_reason(tmp_path):
    good = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    cases = {
        "truncated.dcm": (Path(get_testdata_file("MR_truncated.dcm")).read_bytes(), "pixel data could not be decoded"),
        "garbage.dcm": (good[:132] + b"\xff" * 300, "the DICOM file holds no image"),
        "cut_header.dcm": (good[:400], "the DICOM file holds no image"),
        "not_dicom.dcm": (b"\0" * 128 + b"DICX" + good[132:], "not a DICOM file"),
    }  # fmt: skip
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(dicom.DicomError, match=rf"^{name}: ({reason})"):
            dicom.read_dicom(tmp_path / name)
    rgb = make_mr(window=IDENTITY)
    rgb.PhotometricInterpretation = "RGB"
    rgb.save_as(tmp_path / "rgb.dcm", enforce_file_format=True)
    with pytest.raises(dicom.DicomError, match="Received: PhotometricInterpretation='RGB'"):
        dicom.read_dicom(tmp_path / "rgb.dcm")


def test_apply_window_functions_and_validation():
    x = np.array([0.0, 1024.0, 2048.0, 4095.0])
    np.testing.assert_allclose(dicom.apply_window(x, 2048, 4096), [0.0, 0.25, 0.5, 1.0], atol=1e-3)
    np.testing.assert_allclose(dicom.apply_window(x, 2048, 4096, "LINEAR_EXACT"), [0, 0.25, 0.5, 0.99976], atol=1e-4)  # fmt: skip
    assert dicom.apply_window(np.array([2048.0]), 2048, 100, "SIGMOID")[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"`width` must be in \[1, inf\]. Received: width=0.5"):
        dicom.apply_window(x, 0, 0.5)
    with pytest.raises(ValueError, match="Received: function='GAMMA'"):
        dicom.apply_window(x, 0, 10, "GAMMA")


# --- series ------------------------------------------------------------------------------------


def test_find_series_orders_slices_and_splits_series(tmp_path):
    series_uid = uid.generate_uid()
    # file names and instance numbers disagree with the anatomy: position along the normal wins
    for name, z, instance in (("a", 10.0, 1), ("b", -5.0, 3), ("c", 2.5, 2)):
        make_mr(tmp_path / "exam" / name, z=z, instance=instance, series_uid=series_uid)
    make_mr(tmp_path / "exam" / "other" / "x.dcm", series_number=7, instance=1)
    (tmp_path / "exam" / "notes.txt").write_text("hello")
    (tmp_path / "exam" / "DICOMDIR").write_bytes(b"\0" * 10)
    groups = dicom.find_series(tmp_path / "exam")
    assert [(label, [p.name for p in files]) for label, files in groups] == [
        ("series 3", ["b", "c", "a"]), ("series 7", ["x.dcm"]), (None, ["notes.txt"])]  # fmt: skip


def _rec(name, **probs):
    full = {"glioma": 0.0, "meningioma": 0.0, "notumor": 0.0, "pituitary": 0.0, **probs}
    return {"ok": True, "input": name, "probabilities": full, "class": max(full, key=full.get)}


def test_series_summary_rules():
    s = dicom.series_summary([_rec("a", notumor=0.9, glioma=0.1), _rec("b", glioma=0.6, notumor=0.3, meningioma=0.1),
                              _rec("c", meningioma=0.5, notumor=0.45, glioma=0.05), {"ok": False}], "series 3")  # fmt: skip
    assert s["class"] == "glioma" and s["key_slice"] == "b" and s["tumour_probability"] == 0.7
    assert (s["slices"], s["agreeing_slices"], s["failed_slices"], s["ok"]) == (3, 1, 1, True)
    # above 0.5 tumour probability even though 'notumor' is this slice's single top class
    s = dicom.series_summary([_rec("a", notumor=0.45, glioma=0.3, pituitary=0.25)])
    assert s["class"] == "glioma" and s["agreeing_slices"] == 0
    s = dicom.series_summary(
        [_rec("a", notumor=0.9, glioma=0.1), _rec("b", notumor=0.8, pituitary=0.2)]
    )
    assert s["class"] == "notumor" and s["key_slice"] == "b" and s["agreeing_slices"] == 2
    assert dicom.series_summary([{"ok": False}], "s")["ok"] is False


# --- patient data --------------------------------------------------------------------------------


def test_frame_info_carries_no_patient_data(tmp_path):
    make_mr(tmp_path / "phi.dcm", window=IDENTITY)
    ds = pydicom.dcmread(tmp_path / "phi.dcm")
    text = json.dumps([f.info for f in dicom.read_dicom(tmp_path / "phi.dcm")])
    leaked = [s for s in [*PHI_STRINGS, ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID] if s in text]  # fmt: skip
    assert not leaked


# --- end to end with the tiny trained models ------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(tiny_loaded):
    models, models_dir, _, test_files = tiny_loaded
    return models, models_dir, test_files


def _real_gray(path) -> np.ndarray:

    return np.asarray(images.to_grayscale(Image.open(path)))


def test_dicom_prediction_equals_the_same_pixels_as_png(loaded):
    models, _, test_files = loaded
    gray = _real_gray(test_files[0])
    content = _bytes(make_mr(pixels=gray, window=IDENTITY))
    [by_dicom] = predict.predict([content], "ensemble", models, names=["upload.dcm"])
    [by_array] = predict.predict([gray], "ensemble", models)
    assert by_dicom["input"] == "upload.dcm" and by_dicom["dicom"]["window"]["source"] == "dicom"
    np.testing.assert_array_equal(by_dicom["image"], by_array["image"])
    np.testing.assert_allclose(list(by_dicom["probabilities"].values()),
                               list(by_array["probabilities"].values()), atol=1e-6)  # fmt: skip


def _bytes(ds: Dataset) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_predict_files_series_folder_multiframe_and_bad_files(loaded, tmp_path):
    models, _, test_files = loaded
    grays = [_real_gray(p) for p in test_files[:3]]
    size = min(min(g.shape) for g in grays)
    grays = [np.asarray(Image.fromarray(g).resize((size, size))) for g in grays]
    series_uid, exam = uid.generate_uid(), tmp_path / "exam"
    for name, z, g in (("IM3", 20.0, grays[0]), ("IM1", 0.0, grays[1]), ("IM2", 10.0, grays[2])):
        make_mr(exam / name, g, z=z, series_uid=series_uid, window=IDENTITY)
    make_mr(exam / "ct" / "CT1", grays[0], modality="CT", series_number=9)
    make_mr(exam / "abd" / "AB1", grays[0], series_number=8, extra={"BodyPartExamined": "ABDOMEN"})
    (exam / "junk.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 50)
    make_mr(tmp_path / "cine.dcm", np.stack(grays), window=IDENTITY)
    records = predict.predict_files([exam, tmp_path / "cine.dcm"], "cnn", models)
    slices = [r for r in records if r.get("series") == "series 3" and r.get("kind") != "series"]
    assert [r["input"] for r in slices] == ["IM1", "IM2", "IM3"]  # slice order, not name order
    summary = next(r for r in records if r.get("kind") == "series" and r["series"] == "series 3")
    tumour = [1 - r["probabilities"]["notumor"] for r in slices]
    assert summary["key_slice"] == slices[int(np.argmax(tumour))]["input"]
    assert summary["agreeing_slices"] == sum(r["class"] == summary["class"] for r in slices)
    assert summary["file"] == str(exam) and summary["slices"] == 3 and summary["model"] == "cnn"
    errors = {Path(r["file"]).name: r["error"] for r in records if not r["ok"]}
    assert "modality CT" in errors["CT1"] and "junk.dcm" in errors["junk.dcm"]
    assert "body part ABDOMEN refused" in errors["AB1"]
    frames = [r for r in records if r["file"] == str(tmp_path / "cine.dcm") and "kind" not in r]
    assert [r["input"] for r in frames] == [f"cine.dcm#frame{i}" for i in (1, 2, 3)]
    for frame_rec, slice_rec in zip(frames, [slices[2], slices[0], slices[1]]):  # same pixels
        np.testing.assert_allclose(list(frame_rec["probabilities"].values()),
                                   list(slice_rec["probabilities"].values()), atol=1e-5)  # fmt: skip
    assert any(r.get("kind") == "series" and r["series"] == "cine.dcm" for r in records)
    assert not [s for s in PHI_STRINGS if s in json.dumps(records)]


def test_batch_mode_and_explanations_carry_no_patient_data(loaded, tmp_path, monkeypatch):
    from btc import explain, widgets

    for var in llm.KEY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    models, _, test_files = loaded
    make_mr(
        tmp_path / "in" / "cine.dcm", np.stack([_real_gray(test_files[0])] * 2), window=IDENTITY
    )
    table = widgets.run_batch(
        [str(tmp_path / "in" / "cine.dcm")], models=models, results_dir=tmp_path / "r"
    )
    assert table["ok"].tolist() == [True, True, True]
    out = tmp_path / "r" / "04_predict"
    assert sorted(p.name for p in out.glob("*.png")) == [
        "cine_frame1_gradcam.png",
        "cine_frame2_gradcam.png",
    ]
    for path in out.iterdir():
        assert not [s for s in PHI_STRINGS if s.encode() in path.read_bytes()], path.name
    record = predict.predict(tmp_path / "in" / "cine.dcm", "cnn", models)[0]
    saliency = predict.saliency_for(record, models)
    facts = llm.Facts(
        record["class"], record["probabilities"], "cnn", "gradcam", explain.describe_map(saliency)
    )
    text = llm.build_prompt(facts) + llm.template_explanation(facts)
    assert not [s for s in PHI_STRINGS if s in text] and "cine" not in text


def test_widget_takes_a_dicom_series_upload(loaded, monkeypatch):
    from btc import widgets

    for var in llm.KEY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    models, _, test_files = loaded
    series_uid = uid.generate_uid()
    uploads = [(f"slice{i}.dcm", _bytes(make_mr(pixels=_real_gray(p), z=-float(i), instance=i + 1,
                                                  series_uid=series_uid, window=IDENTITY)))
               for i, p in enumerate(test_files[:2])]  # fmt: skip
    uploads.append(("ct.dcm", Path(get_testdata_file("CT_small.dcm")).read_bytes()))
    uploads.append(("abdomen.dcm", Path(get_testdata_file("examples_overlay.dcm")).read_bytes()))
    app = widgets.PredictApp(models)
    assert ".dcm" in app.upload.accept and app.upload.multiple
    app.upload.value = tuple({"name": n, "type": "application/dicom", "size": len(c), "content": memoryview(c),
                              "last_modified": datetime.datetime(2026, 1, 1)} for n, c in uploads)  # fmt: skip
    assert "Uploaded slice0.dcm, slice1.dcm" in app.status.value
    assert "Rejected: ct.dcm: modality CT" in app.status.value
    assert "Rejected: abdomen.dcm: body part ABDOMEN refused" in app.status.value
    record = app.run_prediction()
    assert [r["input"] for r in app.records] == ["slice1.dcm", "slice0.dcm"]  # z = -1 before z = 0
    assert app.series.value.count("<tr") == 3 and "Series answer" in app.series.value
    assert app.slice.layout.display is None and len(app.slice.options) == 2
    assert record["input"] == dicom.series_summary(app.records)["key_slice"]
    other = 1 - app.slice.value
    app.slice.value = other
    assert app.record is app.records[other] and "not AI-generated" in app.explanation.value
    assert not [s for s in PHI_STRINGS if s in llm.build_prompt(app.facts) + app.explanation.value]


def test_cli_predicts_a_dicom_folder(loaded, tmp_path):
    _, models_dir, test_files = loaded
    for i, p in enumerate(test_files[:2]):
        make_mr(tmp_path / "exam" / f"IM{i}", _real_gray(p), z=float(i), instance=i + 1,
                series_uid="1.2.3.4", window=IDENTITY)  # fmt: skip
    env = {**__import__("os").environ, "BTC_MODELS_DIR": str(models_dir)}
    done = subprocess.run([sys.executable, "-m", "btc.cli", "predict", str(tmp_path / "exam"),
                           get_testdata_file("CT_small.dcm"), "--model", "cnn", "--saliency",
                           str(tmp_path / "maps")], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    records = json.loads(done.stdout)
    assert [r.get("kind", "slice") for r in records] == ["slice", "slice", "series", "slice"]
    assert [r["ok"] for r in records] == [True, True, True, False]
    assert "modality CT" in records[3]["error"] and "CT_small.dcm" in done.stderr
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [
        "series3_IM0_gradcam.png", "series3_IM1_gradcam.png"]  # fmt: skip
    assert not [s for s in PHI_STRINGS if s in done.stdout]
