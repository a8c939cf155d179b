"""The images the OOD check is chosen and tested on: an OOD folder, synthetic and bundled images.

An OOD folder has one sub-folder per kind (`chest_xray/`, `photo/`, ...); folders named `brain*`
hold brain MRI from other sources, which must be *accepted*. Head CT files (`CT_head...`) form a
kind of their own. Within each non-brain kind, files alternate by sha256 between the *select* part
(choosing the method) and the *report* part; `brain*` kinds are all reported. Synthetic images
(blank, noise, gradients), scikit-image's sample photographs, the non-brain-MR files bundled with
pydicom and pydicom-data, and brain MRI from other sources (slices of nilearn's MNI152 template,
matplotlib's sample head MRI, a pydicom-data brain MR crop; to be accepted) are always in the
select part, so the method can be chosen offline (each set is skipped when its package is not
installed). Images from three Debian packages (ITK's examples, mricron's templates, InVesalius'
example head CT) are always in the report part: a check on sources nothing was chosen on.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from btc import dicom, images

SKIMAGE_SAMPLES = ("astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea",
                   "clock", "coffee", "coins", "colorwheel", "grass", "gravel", "horse",
                   "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon",
                   "page", "retina", "rocket", "text")  # fmt: skip
# pydicom's bundled images that are not brain MR, by kind: two head CTs (693_J2KI, and
# J2K_pixelrep_mismatch: a skull-base slice whose bone wraps to black), chest CT, abdominal and
# joint MR, ultrasound
PYDICOM_FILES = {
    "693_J2KI.dcm": "head_ct", "J2K_pixelrep_mismatch.dcm": "head_ct", "CT_small.dcm": "other_medical",
    "JPEG2000.dcm": "other_medical", "examples_overlay.dcm": "other_medical",
    "MR_small.dcm": "other_medical", "examples_rgb_color.dcm": "other_medical",
    "examples_jpeg2k.dcm": "other_medical", "examples_palette.dcm": "other_medical",
}  # fmt: skip
# pydicom-data's larger files (`pip install pydicom-data`), by kind; `brain_mri_other` must be
# accepted (emri_small: a 64 px crop of a brain MR). 693_UNCI is 693_J2KI uncompressed: left out.
PYDICOM_DATA_FILES = {
    "eCT_Supplemental.dcm": "head_ct", "MR-SIEMENS-DICOM-WithOverlays.dcm": "other_medical",
    "MR2_UNCI.dcm": "other_medical", "explicit_VR-UN.dcm": "other_medical",
    "bad_sequence.dcm": "other_medical", "OBXXXX1A.dcm": "other_medical",
    "US1_UNCI.dcm": "other_medical", "gdcm-US-ALOKA-16.dcm": "other_medical",
    "JPGLosslessP14SV1_1s_1f_8b.dcm": "other_medical", "JPEG-LL.dcm": "other_medical",
    "RG3_UNCI.dcm": "other_medical", "RG1_UNCI.dcm": "chest_xray",
    "emri_small.dcm": "brain_mri_other",
}  # fmt: skip
MNI_FILE = "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"  # inside nilearn
# slices of the MNI152 2009a T1 template (skull-stripped): (axis, index) in its 197×233×189 grid
MNI_SLICES = {"axial_low": (2, 70), "axial_mid": (2, 95), "axial_high": (2, 125),
              "sagittal": (0, 80), "coronal": (1, 130)}  # fmt: skip
HEAD_CT_NAMES = ("ct_head", "head_ct", "ct-head", "head-ct")
# Held-out images from Debian packages (`apt-get install insighttoolkit5-examples mricron-data
# invesalius-examples`), never used to choose anything: ITK's example brain MR slices (BrainWeb
# T1 / PD, a mid-sagittal slice, a low-resolution coronal T1 volume) and slices of mricron's
# Colin27 T1 with skull (`ch2`) to accept; 4 slices of InVesalius' head CT (one patient, brain
# window), ITK's abdominal MR slice, a rat thorax MR slice and Visible Woman cryosection
# photographs to reject. (kind, expect, file, slice as (axis, index) of a volume or None)
# turned and flipped copies of the held-out brains (kind `brain_mri_turned`, to accept)
TURNS = {"rot90": np.rot90, "rot180": lambda a: np.rot90(a, 2), "flip_lr": np.fliplr}
ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
MRICRON_DATA = Path("/usr/share/mricron/templates")
INVESALIUS_DATA = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
SYSTEM_FILES = {
    "itk/BrainT1Slice": ("brain_mri_other", "accept", ITK_DATA / "BrainT1Slice.png", None),
    "itk/BrainProtonDensitySlice": ("brain_mri_other", "accept", ITK_DATA / "BrainProtonDensitySlice.png", None),
    "itk/BrainMidSagittalSlice": ("brain_mri_other", "accept", ITK_DATA / "BrainMidSagittalSlice.png", None),
    "itk/KmeansTest_T1_coronal": ("brain_mri_other", "accept", ITK_DATA / "KmeansTest_T1UCharRaw.nii.gz", (2, 31)),
    "mricron/ch2_axial_mid": ("brain_mri_other", "accept", MRICRON_DATA / "ch2.nii.gz", (2, 100)),
    "mricron/ch2_axial_low": ("brain_mri_other", "accept", MRICRON_DATA / "ch2.nii.gz", (2, 60)),
    "mricron/ch2_coronal": ("brain_mri_other", "accept", MRICRON_DATA / "ch2.nii.gz", (1, 108)),
    "mricron/ch2_sagittal": ("brain_mri_other", "accept", MRICRON_DATA / "ch2.nii.gz", (0, 90)),
    **{f"invesalius/Cranium_CT_{z}": ("head_ct", "reject", INVESALIUS_DATA, (0, z)) for z in (40, 55, 70, 85)},
    "itk/FatMRISlice": ("other_medical", "reject", ITK_DATA / "FatMRISlice.png", None),
    "itk/RatLungSlice1": ("other_medical", "reject", ITK_DATA / "RatLungSlice1.mha", None),
    "itk/VisibleWomanHeadSlice": ("photo", "reject", ITK_DATA / "VisibleWomanHeadSlice.png", None),
    "itk/VisibleWomanEyeSlice": ("photo", "reject", ITK_DATA / "VisibleWomanEyeSlice.png", None),
}  # fmt: skip


def png(array: np.ndarray) -> bytes:
    """Encode a uint8 array (gray or RGB) as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _item(kind: str, name: str, raw: bytes, part: str = "select", expect: str = "reject") -> dict:
    sha = hashlib.sha256(raw).hexdigest()
    return {"kind": kind, "name": name, "part": part, "expect": expect, "sha256": sha, "raw": raw}


def synthetic_images(size: int = 256, seed: int = 0) -> list[dict]:
    """Blank, noise, gradient and pattern images nothing should mistake for a scan."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / (size - 1)
    radial = 1 - np.clip(np.hypot(xx - 0.5, yy - 0.5) / 0.5, 0, 1)
    arrays = {
        "black": np.zeros((size, size)), "white": np.ones((size, size)),
        "gray": np.full((size, size), 0.5), "uniform_noise": rng.random((size, size)),
        "gaussian_noise": np.clip(rng.normal(0.5, 0.15, (size, size)), 0, 1),
        "colour_noise": rng.random((size, size, 3)), "horizontal_gradient": xx,
        "radial_gradient": radial, "checkerboard": ((xx * 8).astype(int) + (yy * 8).astype(int)) % 2,
    }  # fmt: skip
    return [_item("synthetic", f"synthetic/{k}", png(np.round(v * 255))) for k, v in arrays.items()]


def skimage_images() -> list[dict]:
    """scikit-image's bundled sample photographs (empty when scikit-image is not installed)."""
    try:
        from skimage import data as samples
    except ImportError:
        return []
    items = []
    for name in SKIMAGE_SAMPLES:
        try:
            arr = np.asarray(getattr(samples, name)())
        except Exception:  # a sample that needs a download is skipped offline
            continue
        arr = (arr * 255 if arr.dtype == bool or arr.max() <= 1 else arr).astype(np.uint8)
        items.append(
            _item("skimage", f"skimage/{name}", png(arr[..., :3] if arr.ndim == 3 else arr))
        )
    return items


def _dicom_png(path, middle: bool) -> bytes:
    """One frame of a DICOM file (the first, or the middle one) as an 8-bit PNG."""
    import pydicom
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if ds.PhotometricInterpretation in dicom.PHOTOMETRIC:
        frames = arr.reshape(-1, *arr.shape[-2:])
        arr = dicom.frame_pixels(ds, frames[len(frames) // 2 if middle else 0], 0, dicom.PERCENTILES)[0]  # fmt: skip
    elif ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = (apply_color_lut(arr, ds) // 256).astype(np.uint8)
    return png(arr[0] if arr.ndim == 4 else arr)


def _dicom_refusal(path) -> str | None:
    """Why `btc predict` refuses the DICOM file itself (its header: modality, body part), or None."""
    try:
        dicom.read_dicom(path)
    except dicom.DicomError as exc:
        return str(exc).split(": ")[1]  # "modality CT (…) refused", "body part ABDOMEN refused"
    return None


def pydicom_images() -> list[dict]:
    """pydicom's bundled CT, US and non-brain MR files of `PYDICOM_FILES` (first frame) and, when
    `pydicom-data` is installed, its files of `PYDICOM_DATA_FILES` (middle frame), as PNG. Each
    item's `dicom_refused` says why `btc predict` would refuse the original file (None: it reads
    it): the OOD report is on the PNG pixels, as for an exported slice."""
    from pydicom.data import get_testdata_file

    items = []
    for name, kind in PYDICOM_FILES.items():
        try:
            path = get_testdata_file(name)
            items.append(_item(kind, f"pydicom/{name}", _dicom_png(path, False)))
        except Exception:  # a file this pydicom cannot decode is skipped
            continue
        items[-1]["dicom_refused"] = _dicom_refusal(path)
    try:
        import data_store  # pydicom-data

        folder = Path(data_store.__file__).parent / "data"
    except ImportError:
        return items
    for name, kind in PYDICOM_DATA_FILES.items():
        try:
            raw = _dicom_png(folder / name, True)
        except Exception:  # missing or undecodable
            continue
        expect = "accept" if kind.startswith("brain") else "reject"
        items.append(_item(kind, f"pydicom-data/{name}", raw, expect=expect))
        items[-1]["dicom_refused"] = _dicom_refusal(folder / name)
    return items


def brain_images() -> list[dict]:
    """Brain MRI from other sources, to accept: slices of nilearn's MNI152 T1 template (when
    nilearn is installed) and matplotlib's sample head MRI (`s1045.ima.gz`), as PNG."""
    items = []
    try:
        from matplotlib.cbook import get_sample_data

        with get_sample_data("s1045.ima.gz") as fh:
            mri = np.frombuffer(fh.read(), np.uint16).reshape(256, 256).astype(float)
        items.append(_item("brain_mri_other", "matplotlib/s1045", png(np.round(mri / mri.max() * 255)), expect="accept"))  # fmt: skip
    except Exception:  # an older matplotlib without the sample
        pass
    try:
        import importlib.util

        import nibabel

        spec = importlib.util.find_spec("nilearn")
        volume = nibabel.load(Path(spec.submodule_search_locations[0]) / MNI_FILE).get_fdata()
    except Exception:  # nilearn (or its template) not installed
        return items
    volume = np.round(volume / volume.max() * 255)
    for name, (axis, index) in MNI_SLICES.items():
        plane = np.take(volume, index, axis).T[::-1]  # superior / anterior at the top
        items.append(_item("brain_mri_other", f"nilearn/mni152_{name}", png(plane), expect="accept"))  # fmt: skip
    return items


def _invesalius_slice(path: Path, index: int, level: float = 40, width: float = 80) -> np.ndarray:
    """Axial slice `index` of an InVesalius CT project in a brain window (HU), as uint8."""
    import plistlib
    import tarfile

    with tarfile.open(path) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers()}
        main = plistlib.loads(tar.extractfile(members["main.plist"]).read())["matrix"]
        shape = main["shape"]
        fh = tar.extractfile(members[main["filename"]])
        fh.seek(index * shape[1] * shape[2] * np.dtype(main["dtype"]).itemsize)
        hu = np.frombuffer(fh.read(shape[1] * shape[2] * np.dtype(main["dtype"]).itemsize), main["dtype"])  # fmt: skip
    hu = hu.reshape(shape[1:])[::-1]  # anterior at the top, as a viewer shows it
    return np.round(np.clip((hu - level + width / 2) / width, 0, 1) * 255)


def _system_png(path: Path, plane: tuple[int, int] | None) -> bytes:
    if path.suffix == ".png":
        return path.read_bytes()
    if path.suffix == ".inv3":  # an InVesalius project: a tar.gz with main.plist and matrix.dat
        return png(_invesalius_slice(path, plane[1]))
    if path.suffix == ".mha":  # ITK MetaImage header: `DimSize = w h`, raw uint8 in `.raw`
        header = dict(
            line.split(" = ", 1) for line in path.read_text().splitlines() if " = " in line
        )
        if header.get("ElementType") != "MET_UCHAR":
            raise ValueError(f"{path}: only MET_UCHAR MetaImages are read")
        width, height = (int(v) for v in header["DimSize"].split())
        return png(np.fromfile(path.with_name(header["ElementDataFile"]), np.uint8).reshape(height, width))  # fmt: skip
    import nibabel

    volume = np.take(np.asarray(nibabel.load(path).dataobj, dtype=float), plane[1], plane[0])
    volume = (volume - volume.min()) / max(np.ptp(volume), 1e-9)
    return png(np.round(volume.T[::-1] * 255))  # superior / anterior at the top


def system_images() -> list[dict]:
    """Held-out images from Debian packages (`SYSTEM_FILES`: ITK examples, mricron templates,
    InVesalius' head CT), all in the *report* part; each file is skipped when its package is not
    installed or it cannot be read.

    Returns:
        Dicts as `folder_images` returns, named `itk/...`, `mricron/...` or `invesalius/...`, with
        `held_out: True`; each brain also turned by 90° and 180° and flipped left–right
        (`<name>@rot90`, ..., kind `brain_mri_turned`).
    """
    items = []
    for name, (kind, expect, path, plane) in SYSTEM_FILES.items():
        try:
            raw = _system_png(path, plane)
        except Exception:  # package not installed, or an unreadable file
            continue
        items.append(_item(kind, name, raw, "report", expect) | {"held_out": True})
        if kind == "brain_mri_other":  # the same brain as other pipelines may write it
            with Image.open(io.BytesIO(raw)) as img:
                gray = np.asarray(img.convert("L"))
            for turn, array in TURNS.items():
                items.append(_item("brain_mri_turned", f"{name}@{turn}", png(array(gray)), "report", "accept") | {"held_out": True})  # fmt: skip
    return items


def _thumb(raw: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(raw)) as img:
        t = np.asarray(img.convert("L").resize((32, 32)), dtype=float).ravel()
    return (t - t.mean()) / (t.std() + 1e-6)


def bundled_images(exclude: list[dict] = ()) -> list[dict]:
    """Synthetic, scikit-image, pydicom(-data) images and brain MRI from other sources (all in the
    select part), minus copies of `exclude` (thumbnail ρ ≥ 0.95)."""
    items = synthetic_images() + skimage_images() + pydicom_images() + brain_images()
    if not exclude:
        return items
    seen = np.stack([_thumb(i["raw"]) for i in exclude])
    return [i for i in items if (seen @ _thumb(i["raw"]) / 1024).max() < 0.95]


def folder_images(folder: str | Path) -> list[dict]:
    """The images of an OOD folder with their kind, part and expected answer.

    Args:
        folder: One sub-folder per kind; `brain*` sub-folders must be accepted.

    Returns:
        Dicts with `kind`, `name` (relative path), `part` (`"select"`/`"report"`), `expect`
        (`"accept"`/`"reject"`), `sha256` and `raw` bytes. Files that are not JPEG/PNG by content
        are skipped.
    """
    folder = Path(folder)
    by_kind: dict[str, list[dict]] = {}
    for path in sorted(p for p in folder.glob("*/*") if p.is_file()):
        raw = path.read_bytes()
        if images.detect_format(raw[:16]) not in ("jpeg", "png"):
            continue
        kind = path.parent.name
        if any(h in path.name.lower() for h in HEAD_CT_NAMES):
            kind = "head_ct"
        expect = "accept" if kind.lower().startswith("brain") else "reject"
        by_kind.setdefault(kind, []).append(
            _item(kind, str(path.relative_to(folder)), raw, "report", expect)
        )
    for items in by_kind.values():
        if items[0]["expect"] == "reject":
            for rank, item in enumerate(sorted(items, key=lambda i: i["sha256"])):
                item["part"] = "select" if rank % 2 else "report"
    return [i for items in by_kind.values() for i in items]


def to_arrays(raws: list[bytes], image_size: int) -> np.ndarray:
    """Encoded images → `(n, size, size, 3)` float32 in [0, 1], as in training."""
    import tensorflow as tf

    return np.stack([
        tf.image.grayscale_to_rgb(tf.cast(images.decode_and_resize(tf.constant(r), image_size), tf.float32) / 255.0).numpy()
        for r in raws
    ])  # fmt: skip
