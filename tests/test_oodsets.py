"""Tests of btc.oodsets: the OOD folder's select / report parts and the bundled images."""

from __future__ import annotations

import pandas as pd

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
    assert {"synthetic", "dicom_other"} <= kinds  # always there offline
    assert {i["part"] for i in bundled} == {"select"}
    # the dev extras bring brain MRI of other sources (to accept) and more CT / MR / US files
    brains = [i["name"] for i in bundled if i["expect"] == "accept"]
    assert {i["kind"] for i in bundled if i["expect"] == "accept"} == {"brain_mri_other"}
    assert "matplotlib/s1045" in brains and "nilearn/mni152_sagittal" in brains
    assert "pydicom-data/emri_small.dcm" in brains
    assert {"head_ct", "other_medical"} <= {i["kind"] for i in bundled if i["name"].startswith("pydicom-data/")}  # fmt: skip
