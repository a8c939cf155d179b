"""Tests of btc.oodsets: the OOD folder's select / report parts and the bundled images."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from btc import oodsets
from tests import images
from tests.images import noise as _noise


def test_folder_parts_alternate_within_each_kind_and_brain_is_reported(tmp_path):
    for kind, n in (("chest_xray", 4), ("other_medical", 3), ("brain_mri_other", 2)):
        for i in range(n):
            name = f"CT_head_{i}.png" if kind == "other_medical" and i < 2 else f"{kind}_{i}.png"
            images.save(tmp_path / kind / name, _noise(i + 10 * n), "PNG")
    (tmp_path / "chest_xray" / "notes.txt").write_text("not an image")
    items = oodsets.folder_images(tmp_path)
    parts = pd.DataFrame(items).groupby(["kind", "part"]).size().to_dict()
    assert parts == {("brain_mri_other", "report"): 2, ("chest_xray", "report"): 2,
                     ("chest_xray", "select"): 2, ("head_ct", "report"): 1,
                     ("head_ct", "select"): 1, ("other_medical", "report"): 1}  # fmt: skip
    assert {i["expect"] for i in items if i["kind"].startswith("brain")} == {"accept"}
    assert [i["part"] for i in oodsets.folder_images(tmp_path)] == [i["part"] for i in items]
    bundled = oodsets.bundled_images()
    kinds = {i["kind"] for i in bundled}
    assert {"synthetic", "head_ct", "other_medical"} <= kinds  # always there offline
    assert {i["kind"] for i in bundled if i["name"] == "pydicom/J2K_pixelrep_mismatch.dcm"} == {
        "head_ct"
    }
    assert {i["part"] for i in bundled} == {"select"}
    # the dev extras bring brain MRI of other sources (to accept) and more CT / MR / US files
    brains = [i["name"] for i in bundled if i["expect"] == "accept"]
    assert {i["kind"] for i in bundled if i["expect"] == "accept"} == {"brain_mri_other"}
    assert "matplotlib/s1045" in brains and "nilearn/mni152_sagittal" in brains
    assert "pydicom-data/emri_small.dcm" in brains
    assert {"head_ct", "other_medical"} <= {i["kind"] for i in bundled if i["name"].startswith("pydicom-data/")}  # fmt: skip
    # what `btc predict` does with each original DICOM file: its header refuses CT and trunk MR
    refused = {i["name"]: i["dicom_refused"] for i in bundled if "dicom_refused" in i}
    assert refused["pydicom/693_J2KI.dcm"].startswith("modality CT")
    assert refused["pydicom/examples_overlay.dcm"] == "body part ABDOMEN refused"
    assert refused["pydicom-data/emri_small.dcm"] is None  # BodyPartExamined HEAD: read
    assert refused["pydicom/MR_small.dcm"] is None  # no BodyPartExamined: left to the pixels
    assert "dicom_refused" not in next(i for i in bundled if i["kind"] == "synthetic")


def test_system_volumes_and_metaimages_become_oriented_pngs(tmp_path):
    import nibabel

    volume = np.zeros((6, 5, 4))
    volume[1, 3, 2] = 7.0  # x=1, y=3 (anterior), slice z=2
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), tmp_path / "v.nii.gz")
    with Image.open(io.BytesIO(oodsets._system_png(tmp_path / "v.nii.gz", (2, 2)))) as img:
        plane = np.asarray(img)
    assert plane.shape == (5, 6) and plane.max() == 255
    assert np.argwhere(plane == 255).tolist() == [[5 - 1 - 3, 1]]  # anterior at the top
    raw = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)  # 3 rows of width 4
    raw.tofile(tmp_path / "s.raw")
    (tmp_path / "s.mha").write_text("ObjectType = Image\nDimSize = 4 3\nElementType = MET_UCHAR\n"
                                    "ElementDataFile = s.raw\n")  # fmt: skip
    with Image.open(io.BytesIO(oodsets._system_png(tmp_path / "s.mha", None))) as img:
        np.testing.assert_array_equal(np.asarray(img), raw)


def test_invesalius_projects_give_a_brain_window_axial_slice(tmp_path):
    import plistlib
    import tarfile

    hu = np.zeros((3, 4, 5), np.int16)
    hu[1] = [[-1000], [0], [40], [2000]]  # air, water, grey matter, bone along the rows of slice 1
    hu[1, 0, 0] = 60
    files = {"main.plist": plistlib.dumps({"matrix": {"dtype": "int16", "filename": "matrix.dat",
                                                      "shape": [3, 4, 5]}}),
             "matrix.dat": hu.tobytes()}  # fmt: skip
    with tarfile.open(tmp_path / "p.inv3", "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"tmpdir/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    plane = oodsets._invesalius_slice(tmp_path / "p.inv3", 1)
    assert plane.shape == (4, 5)
    # rows flipped (anterior up); brain window L40 W80: 0 HU and below black, 40 mid-grey, 80+ white
    np.testing.assert_array_equal(plane[:, 1], [255, 128, 0, 0])
    assert plane[3, 0] == 191  # 60 HU
    assert not oodsets._invesalius_slice(tmp_path / "p.inv3", 0).any()


@pytest.mark.skipif(not oodsets.ITK_DATA.is_dir(), reason="insighttoolkit5-examples not installed")
def test_system_images_are_all_held_out_for_the_report():
    items = oodsets.system_images()
    assert len(items) >= 9 and {i["part"] for i in items} == {"report"}
    accept = {i["name"] for i in items if i["kind"] == "brain_mri_other"}
    assert {"itk/BrainT1Slice", "itk/BrainMidSagittalSlice"} <= accept
    assert all(i["expect"] == "accept" for i in items if i["name"] in accept)
    assert "itk/FatMRISlice" in {i["name"] for i in items if i["expect"] == "reject"}
    turned = {i["name"]: i for i in items if i["kind"] == "brain_mri_turned"}
    assert len(turned) == 3 * len(accept) and {i["expect"] for i in turned.values()} == {"accept"}
    by_name = {i["name"]: i for i in items}
    with Image.open(io.BytesIO(by_name["itk/BrainT1Slice"]["raw"])) as img:
        upright = np.asarray(img.convert("L"))
    with Image.open(io.BytesIO(turned["itk/BrainT1Slice@rot90"]["raw"])) as img:
        np.testing.assert_array_equal(np.asarray(img), np.rot90(upright))
    for item in items:  # every one decodes as an image of a sensible size
        with Image.open(io.BytesIO(item["raw"])) as img:
            assert min(img.size) >= 100, item["name"]
