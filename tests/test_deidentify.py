"""Tests of btc.deidentify: PS3.15 Basic Profile copies of MR files built by test_dicom."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid

from btc import cli, deidentify, dicom
from tests.test_dicom import IDENTITY, PHI_STRINGS, make_mr


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_deidentify_folder_follows_the_basic_profile(tmp_path):
    series_uid = uid.generate_uid()
    src = tmp_path / "in"
    for i in range(2):
        make_mr(
            src / "s1" / f"IM{i}",
            z=float(i),
            instance=i + 1,
            series_uid=series_uid,
            window=IDENTITY,
        )
    (src / "readme.txt").write_text("not dicom")
    before = {p: _sha(p) for p in src.rglob("*") if p.is_file()}
    report = deidentify.deidentify(src, tmp_path / "out")
    assert {p: _sha(p) for p in src.rglob("*") if p.is_file()} == before  # input untouched
    assert len(report["written"]) == 2 and list(report["skipped"]) == [str(src / "readme.txt")]
    assert report["skipped"][str(src / "readme.txt")].startswith("not a DICOM file")
    assert not list((tmp_path / "out").rglob(".*tmp*"))  # no partial files left behind
    originals = [pydicom.dcmread(src / "s1" / f"IM{i}") for i in range(2)]
    outs = [pydicom.dcmread(tmp_path / "out" / "s1" / f"IM{i}") for i in range(2)]
    for orig, out, path in zip(originals, outs, sorted((tmp_path / "out" / "s1").iterdir())):
        raw = path.read_bytes()
        assert not [s for s in PHI_STRINGS if s.encode() in raw], (
            "identifying text left in the file"
        )
        assert str(out.get("PatientName", "")) in ("", "ANONYMIZED") and out.PatientID in (
            "",
            "ANONYMIZED",
        )
        for keyword in ("InstitutionName", "InstitutionAddress", "StudyDescription"):
            assert str(out.get(keyword, "")) in ("", "ANONYMIZED")
        for keyword in ("StudyDate", "SeriesDate", "PatientBirthDate", "AcquisitionDateTime"):
            assert str(out.get(keyword, "")) in ("", "00010101", "00010101010101.000000+0000")
        assert not any(e.tag.is_private for e in out)
        assert out.PatientIdentityRemoved == "YES" and "PS3.15" in out.DeidentificationMethod
        assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert out.SOPInstanceUID != orig.SOPInstanceUID
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        np.testing.assert_array_equal(out.pixel_array, orig.pixel_array)  # pixels kept
        assert out.Modality == "MR" and out.InstanceNumber == orig.InstanceNumber
    assert outs[0].SeriesInstanceUID == outs[1].SeriesInstanceUID != series_uid  # consistent
    assert outs[0].StudyInstanceUID not in (originals[0].StudyInstanceUID,)
    assert dicom.read_dicom(tmp_path / "out" / "s1" / "IM0")[0].pixels.shape == (64, 64)


def test_deidentify_refuses_to_touch_its_input_and_burned_in_text(tmp_path):
    make_mr(tmp_path / "in" / "a.dcm")
    make_mr(tmp_path / "in" / "b.dcm", extra={"BurnedInAnnotation": "YES"})
    with pytest.raises(ValueError, match="`dst` must lie outside `src`"):
        deidentify.deidentify(tmp_path / "in", tmp_path / "in" / "out")
    with pytest.raises(ValueError, match="`dst` must lie outside `src`"):
        deidentify.deidentify(tmp_path / "in" / "a.dcm", tmp_path / "in")
    with pytest.raises(ValueError, match="Received: src="):
        deidentify.deidentify(tmp_path / "missing", tmp_path / "out")
    report = deidentify.deidentify(tmp_path / "in", tmp_path / "out")
    assert [Path(p).name for p in report["written"]] == ["a.dcm"]
    assert "BurnedInAnnotation=YES" in report["skipped"][str(tmp_path / "in" / "b.dcm")]


def test_cli_deidentify(tmp_path, capsys):
    make_mr(tmp_path / "scan.dcm")
    assert cli.main(["deidentify", str(tmp_path / "scan.dcm"), str(tmp_path / "clean.dcm")]) == 0
    assert "1 de-identified file(s)" in capsys.readouterr().out
    assert pydicom.dcmread(tmp_path / "clean.dcm").PatientIdentityRemoved == "YES"
    (tmp_path / "n.txt").write_text("x")
    assert cli.main(["deidentify", str(tmp_path / "n.txt"), str(tmp_path / "o")]) == 1
    assert "not a DICOM file" in capsys.readouterr().err
