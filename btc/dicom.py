"""DICOM input: MR slices to 8-bit grayscale, series in slice order (de-identification: `btc.deidentify`).

Read with pydicom; compressed transfer syntaxes are decoded by the pylibjpeg plugins that
`make setup` installs. Only MR is accepted, and no trunk or limb body part. Pixel handling
follows PS3.3 C.11: rescale slope/intercept (per frame for enhanced multi-frame files), then the
first VOI window (WindowCenter/Width, LINEAR, LINEAR_EXACT or SIGMOID), else a robust percentile
window, then MONOCHROME1 is inverted. Pixels leave as plain arrays; the `info` that travels with
them names no patient, date, institution or UID, only how the pixels were made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from btc.config import CLASS_NAMES, check_range
from btc.images import MAX_PIXELS, MIN_SIDE

MAGIC = b"DICM"
MAGIC_OFFSET = 128
ACCEPTED_MODALITIES = ("MR",)
PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")
PERCENTILES = (0.5, 99.5)
MODALITY_WORDS = {"CT": "CT (Hounsfield units of X-ray attenuation)", "PT": "PET", "US": "ultrasound",
                  "CR": "radiograph", "DX": "radiograph", "MG": "mammogram", "NM": "nuclear medicine",
                  "SEG": "segmentation", "SR": "structured report", "PR": "presentation state"}  # fmt: skip
# Body Part Examined (0018,0015) terms of DICOM PS3.16 Annex L that cannot hold a brain slice (trunk,
# limbs, lower spine), compared without spaces or underscores; other values, missing ones included,
# go on to the pixel checks (a mislabelled or localised head value must not refuse a brain)
NON_HEAD_PARTS = frozenset(
    "ABDOMEN ABDOMENPELVIS ADRENAL ANKLE ARM AXILLA BACK BLADDER BREAST BUTTOCK CALF CHEST "
    "CHESTABDOMEN CHESTABDPELVIS CLAVICLE COCCYX COLON ELBOW EXTREMITY FEMUR FINGER FOOT FOREARM "
    "GALLBLADDER HAND HEART HIP HUMERUS KIDNEY KNEE LEG LIVER LSPINE LSSPINE LUNG PANCREAS PELVIS "
    "PROSTATE RIB SACRUM SCAPULA SHOULDER SPLEEN STERNUM STOMACH THIGH TIBIA TLSPINE TOE TSPINE "
    "UTERUS WRIST".split()
)


class DicomError(ValueError):
    """A DICOM file btc cannot use (the message names the file, the reason and what to do)."""


@dataclasses.dataclass(frozen=True)
class Frame:
    """One 2-D image of a DICOM file: `pixels` `(H, W)` uint8, display `name`, technical `info`."""

    pixels: np.ndarray
    name: str
    info: dict


def is_dicom(head: bytes) -> bool:
    """Whether bytes start like a DICOM Part 10 file (`DICM` after the 128-byte preamble)."""
    return bytes(head[MAGIC_OFFSET : MAGIC_OFFSET + 4]) == MAGIC


def is_dicom_file(path: str | Path) -> bool:
    """Whether `path` is a file whose content (not its name) is DICOM."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return is_dicom(f.read(MAGIC_OFFSET + 4))


@contextlib.contextmanager
def _quiet():
    """Silence pydicom's warnings and log lines on damaged files: btc's errors report them."""
    logger = logging.getLogger("pydicom")
    disabled, logger.disabled = logger.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled


def load_dataset(source: str | Path | bytes, name: str, header_only: bool = False):
    """Read a DICOM file with pydicom, its warnings silenced (btc's error names the problem).

    Args:
        source: A path or the file's bytes.
        name: Display name used in error messages.
        header_only: Stop before the pixel data (for grouping a folder into series).

    Returns:
        The `pydicom.Dataset`.

    Raises:
        DicomError: If the content is not DICOM (no `DICM` marker) or pydicom cannot read it.
    """
    import pydicom

    is_path = isinstance(source, str | Path)
    if not (is_dicom_file(source) if is_path else is_dicom(source)):
        raise DicomError(f"{name}: not a DICOM file (no 'DICM' marker at byte 128)")
    try:
        with _quiet():
            return pydicom.dcmread(source if is_path else io.BytesIO(bytes(source)),
                                   stop_before_pixels=header_only)  # fmt: skip
    except Exception as exc:  # pydicom raises many types on damaged files
        raise DicomError(f"{name}: unreadable DICOM ({type(exc).__name__}: {exc})") from exc


def _check_usable(ds, name: str) -> None:
    if "PixelData" not in ds:
        raise DicomError(f"{name}: the DICOM file holds no image (no PixelData): damaged, "
                         "truncated, or not an image object")  # fmt: skip
    modality = str(ds.get("Modality", "") or "").upper()
    if modality not in ACCEPTED_MODALITIES:
        what = MODALITY_WORDS.get(modality, modality or "missing")
        raise DicomError(
            f"{name}: modality {what} refused: btc was trained on brain MR slices only and its "
            "output on other modalities is meaningless. `Modality` must be one of "
            f"{list(ACCEPTED_MODALITIES)}. Received: Modality={modality!r}"
        )
    part = str(ds.get("BodyPartExamined", "") or "")
    if re.sub(r"[^A-Z]", "", part.upper()) in NON_HEAD_PARTS:
        raise DicomError(f"{name}: body part {part.strip()} refused: btc was trained on brain MR slices only. `BodyPartExamined` must be a head region (e.g. 'BRAIN', 'HEAD') or empty. Received: BodyPartExamined={part!r}")  # fmt: skip
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in PHOTOMETRIC or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomError(
            f"{name}: `PhotometricInterpretation` must be one of {list(PHOTOMETRIC)} (grayscale "
            f"MR). Received: PhotometricInterpretation={photometric!r}"
        )
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if min(rows, cols) < MIN_SIDE or rows * cols > MAX_PIXELS or frames * rows * cols > 25 * MAX_PIXELS:  # fmt: skip
        raise DicomError(f"{name}: {frames} frame(s) of {cols}×{rows} pixels: too small or too large")  # fmt: skip


def _decode(ds, name: str) -> np.ndarray:
    from pydicom.pixels import get_decoder

    syntax = getattr(ds.file_meta, "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_compressed:
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise DicomError(
                f"{name}: pixel data compressed as {syntax.name} ({syntax}) cannot be decoded: no "
                "installed pydicom plugin supports it. Decompress the file first (e.g. "
                "`gdcmconv --raw` or `dcmdjpeg`) and try again."
            )
    try:
        arr = ds.pixel_array
    except Exception as exc:
        raise DicomError(f"{name}: pixel data could not be decoded ({exc})") from exc
    return arr.reshape(-1, *arr.shape[-2:]) if arr.ndim == 3 else arr[None]


def _functional(ds, frame: int, sequence: str, keyword: str):
    """An attribute for one frame: per-frame group, else shared group, else top level."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame),
                          ("SharedFunctionalGroupsSequence", 0)):  # fmt: skip
        items = ds.get(groups)
        if items is not None and index < len(items) and sequence in items[index]:
            inner = items[index].get(sequence)
            if inner and keyword in inner[0]:
                return inner[0].get(keyword)
    return ds.get(keyword)


def _first(value) -> float | None:
    if value is None or value == "":
        return None
    value = value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value
    return float(value)


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR"):
    """Map values through a DICOM VOI window (PS3.3 C.11.2.1.2) to [0, 1].

    Args:
        values: Modality values (after rescale).
        center: Window center.
        width: Window width (≥ 1 for `LINEAR`, > 0 otherwise).
        function: `"LINEAR"`, `"LINEAR_EXACT"` or `"SIGMOID"` (VOILUTFunction).

    Returns:
        float32 array of the same shape in [0, 1].

    Raises:
        ValueError: On an unknown function or a width out of range.
    """
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise ValueError(f"`function` must be one of ['LINEAR', 'LINEAR_EXACT', 'SIGMOID']. "
                         f"Received: function={function!r}")  # fmt: skip
    check_range(
        "width", width, 1 if function == "LINEAR" else 0, None, low_inclusive=function == "LINEAR"
    )
    x = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -500, 500)))
    elif function == "LINEAR_EXACT":
        out = (x - center) / width + 0.5
    else:
        out = (x - (center - 0.5)) / max(width - 1, 1e-6) + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def percentile_window(values: np.ndarray, percentiles: tuple[float, float] = PERCENTILES):
    """A robust `(center, width)` window spanning the given percentiles of `values`."""
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), percentiles)
    return float((lo + hi) / 2 + 0.5), float(max(hi - lo, 0.0) + 1.0)


def frame_pixels(ds, stored: np.ndarray, frame: int, percentiles) -> tuple[np.ndarray, dict]:
    """One stored grayscale frame to display-ready 8-bit pixels (PS3.3 C.11).

    Args:
        ds: The `pydicom.Dataset` (MONOCHROME1 or MONOCHROME2).
        stored: `(H, W)` stored pixel values of frame `frame`.
        frame: 0-based frame index (per-frame functional groups of enhanced files).
        percentiles: Lower and upper percentile of the fallback window when the file has none.

    Returns:
        `(pixels, extra)`: `(H', W')` uint8 after rescale, VOI window, MONOCHROME1 inversion and
        resampling of non-square pixels; `extra` is `{"window": {center, width, function,
        source}}`.
    """
    slope = _first(_functional(ds, frame, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _first(_functional(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept"))  # fmt: skip
    values = stored.astype(np.float64) * (1.0 if slope is None else slope) + (intercept or 0.0)
    center = _first(_functional(ds, frame, "FrameVOILUTSequence", "WindowCenter"))
    width = _first(_functional(ds, frame, "FrameVOILUTSequence", "WindowWidth"))
    function = str(_functional(ds, frame, "FrameVOILUTSequence", "VOILUTFunction") or "").upper()
    function = function if function in ("LINEAR_EXACT", "SIGMOID") else "LINEAR"
    source = "dicom"
    if center is None or width is None or not (width >= 1 or (width > 0 and function != "LINEAR")):
        center, width, function, source = (*percentile_window(values, percentiles), "LINEAR",
                                           f"percentile {percentiles[0]}-{percentiles[1]}")  # fmt: skip
    unit = apply_window(values, center, width, function)
    if source != "dicom" and width <= 1:
        unit = np.zeros_like(unit)  # a constant frame has no contrast to show
    if ds.PhotometricInterpretation == "MONOCHROME1":
        unit = 1.0 - unit  # MONOCHROME1: the lowest value is displayed white
    pixels = np.round(unit * 255).astype(np.uint8)
    spacing = _functional(ds, frame, "PixelMeasuresSequence", "PixelSpacing")
    if spacing is not None and len(spacing) == 2 and min(map(float, spacing)) > 0:
        row, col = (float(s) for s in spacing)
        if abs(row / col - 1) > 0.01:  # non-square pixels: resample so anatomy is not squashed
            h, w = pixels.shape
            size = (round(w * col / min(row, col)), round(h * row / min(row, col)))
            pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))
    window = {"center": round(center, 3), "width": round(width, 3), "function": function, "source": source}  # fmt: skip
    return pixels, {"window": window}


def read_dicom(source: str | Path | bytes, name: str | None = None,
               percentiles: tuple[float, float] = PERCENTILES) -> list[Frame]:  # fmt: skip
    """Read an MR DICOM file into 8-bit grayscale frames, one per frame of the file.

    Args:
        source: A path or the file's bytes.
        name: Display name (default: the file name, or `"DICOM"` for bytes).
        percentiles: Lower and upper percentile of the fallback window when the file has none.

    Returns:
        One `Frame` per frame. Multi-frame files name frames `file.dcm#frame3` (1-based).
        `info` holds modality, frame, instance number, slice position, photometric
        interpretation, window, transfer syntax and burned-in annotation: no patient data.

    Raises:
        DicomError: If the file is not DICOM, damaged, not MR, not grayscale, or compressed
            with a transfer syntax no installed plugin decodes.
    """
    name = name or (Path(source).name if isinstance(source, str | Path) else "DICOM")
    if not 0 <= percentiles[0] < percentiles[1] <= 100:
        raise ValueError(f"`percentiles` must satisfy 0 <= low < high <= 100. Received: percentiles={percentiles!r}")  # fmt: skip
    ds = load_dataset(source, name)
    _check_usable(ds, name)
    stored = _decode(ds, name)
    syntax = getattr(ds.file_meta, "TransferSyntaxUID", None)
    base = {
        "modality": "MR",
        "frames": len(stored),
        "instance": _int(ds, "InstanceNumber"),
        "series_number": _int(ds, "SeriesNumber"),
        "slice_position": slice_position(ds),
        "photometric": str(ds.PhotometricInterpretation),
        "transfer_syntax": syntax.name if syntax is not None else "unknown",
        "burned_in_annotation": str(ds.get("BurnedInAnnotation", "")).upper() == "YES",
    }
    frames = []
    for i, arr in enumerate(stored):
        pixels, extra = frame_pixels(ds, arr, i, percentiles)
        frame_name = f"{name}#frame{i + 1}" if len(stored) > 1 else name
        frames.append(Frame(pixels, frame_name, {**base, "frame": i + 1, **extra}))
    return frames


def _int(ds, keyword: str) -> int | None:
    return int(ds.get(keyword)) if ds.get(keyword) not in (None, "") else None


def slice_position(ds) -> float | None:
    """Position of a slice along its normal (ImagePositionPatient · row × column), or `None`."""
    position, orientation = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if position is None or orientation is None or len(orientation) != 6 or len(position) != 3:
        return None
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    return round(float(np.dot(normal, np.asarray(position, float))), 4)


def find_series(folder: str | Path) -> list[tuple[str | None, list[Path]]]:
    """Group a folder's files (recursively) into DICOM series in slice order.

    Args:
        folder: A folder, e.g. a PACS export of one or more series.

    Returns:
        `(label, files)` per series, ordered by SeriesNumber; files are sorted by position along
        the slice normal, else InstanceNumber, else name. The label is `"series <number>"`.
        Every non-DICOM file (and unreadable one) comes as its own `(None, [file])` entry so the
        caller can report it. `DICOMDIR` and hidden files are skipped.
    """
    groups: dict[str, list] = {}
    others: list[tuple[None, list[Path]]] = []
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        if path.name.startswith(".") or path.name.upper() == "DICOMDIR":
            continue
        try:
            ds = load_dataset(path, path.name, header_only=True)
        except DicomError:
            ds = None
        if ds is None or not ds.get("SeriesInstanceUID"):
            others.append((None, [path]))  # not DICOM, damaged or series-less: reported alone
        else:
            groups.setdefault(str(ds.SeriesInstanceUID), []).append((ds, path))
    series = []
    for members in groups.values():
        number = _int(members[0][0], "SeriesNumber")
        positions = [slice_position(ds) for ds, _ in members]
        instances = [_int(ds, "InstanceNumber") for ds, _ in members]
        if None not in positions and len(set(positions)) == len(positions):
            order = positions
        elif None not in instances:
            order = instances
        else:
            order = [str(p) for _, p in members]
        files = [p for _, (_, p) in sorted(zip(order, members), key=lambda t: t[0])]
        series.append((math.inf if number is None else number, f"series {number or '?'}", files))
    series.sort(key=lambda s: s[0])
    labels = [label for _, label, _ in series]
    result = [(label if labels.count(label) == 1 else f"{label} ({i + 1})", files)
              for i, (_, label, files) in enumerate(series)]  # fmt: skip
    return [*result, *others]


def sort_records(records: Sequence[dict]) -> list[dict]:
    """Prediction records of one series in slice order: position along the normal when every
    slice has a distinct one, else InstanceNumber, then frame; non-DICOM records keep order."""
    infos = [r.get("dicom") or {} for r in records]
    positions = [i.get("slice_position") for i in infos]
    by_position = None not in positions and len(set(positions)) == len(positions)
    keys = [(p if by_position else 0, i.get("instance") or 0, i.get("frame") or 0)
            for p, i in zip(positions, infos)]  # fmt: skip
    return [records[k] for k in sorted(range(len(records)), key=keys.__getitem__)]


def series_summary(records: Sequence[dict], label: str | None = None) -> dict:
    """The series-level answer: the slice with the highest tumour probability, and agreement.

    The tumour probability of a slice is `1 − p(notumor)`. If the highest is ≥ 0.5 the answer
    is that slice's most probable tumour class, else `notumor`. A simple max rule, not
    validated on series: read `agreeing_slices` next to it.

    Args:
        records: Per-slice prediction records (failed ones, `ok` false, are counted apart).
        label: The series label.

    Returns:
        `kind="series"`, `series`, `ok`, `error`, `class`, `tumour_probability`, `key_slice`
        (its `input`), `slices`, `agreeing_slices` and `failed_slices`.
    """
    good = [r for r in records if r.get("ok", True) and "probabilities" in r]
    out = {"kind": "series", "series": label, "failed_slices": len(records) - len(good)}
    if not good:
        return {**out, "ok": False, "error": f"{label or 'series'}: no slice could be predicted"}
    tumour = [1.0 - r["probabilities"]["notumor"] for r in good]
    key = good[int(np.argmax(tumour))]
    tumour_classes = [c for c in CLASS_NAMES if c != "notumor"]
    answer = max(tumour_classes, key=key["probabilities"].get) if max(tumour) >= 0.5 else "notumor"
    return {**out, "ok": True, "error": None, "class": answer,
            "tumour_probability": round(max(tumour), 6), "key_slice": key.get("input"),
            "slices": len(good), "agreeing_slices": sum(r["class"] == answer for r in good)}  # fmt: skip
