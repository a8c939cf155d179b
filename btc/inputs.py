"""Inputs to prediction: paths, bytes, arrays and DICOM turned into checked, encoded scans.

Every input becomes `(encoded PNG/JPEG bytes, display name, DICOM info or None)` per image it
holds, or an `ImageError` that names the input and what is wrong with it. `preprocess` then applies
exactly the training decoding (`btc.images.decode_and_resize`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from btc import dicom, images

UPLOAD_FORMATS = ("jpeg", "png")


class ImageError(ValueError):
    """An input that is not a usable JPEG/PNG scan or MR DICOM (the message says which and why)."""


def to_bytes(source, name: str = "image") -> tuple[bytes, str]:
    """Turn a path, bytes, PIL image or array into encoded image bytes and a display name.

    Raises:
        ImageError: If the file is missing, not JPEG/PNG by content, too large or too small.
    """
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{path}: file not found")
        name, raw = path.name, path.read_bytes()
    elif isinstance(source, bytes | bytearray | memoryview):
        raw = bytes(source)
    elif isinstance(source, Image.Image | np.ndarray):
        arr = np.asarray(source)
        if arr.dtype != np.uint8:
            arr = (
                (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
                if arr.max() <= 1
                else arr.astype(np.uint8)
            )
        buf = io.BytesIO()
        Image.fromarray(arr.squeeze()).save(buf, "PNG")  # lossless: the same pixels as given
        raw = buf.getvalue()
    else:
        raise ImageError(f"{name}: unsupported input type {type(source).__name__}")
    return check_image_bytes(raw, name), name


def check_image_bytes(raw: bytes, name: str = "image") -> bytes:
    """Validate uploaded bytes as a decodable JPEG/PNG scan; return them unchanged.

    Raises:
        ImageError: Naming the input and the problem (empty, wrong format, bomb, tiny, corrupt).
    """
    fmt = images.detect_format(raw[:16])
    if not raw:
        raise ImageError(f"{name}: empty file")
    if fmt not in UPLOAD_FORMATS:
        raise ImageError(
            f"{name}: only JPEG and PNG scans and MR DICOM files are accepted (content is {fmt})"
        )
    checked, _ = images.read_checked(raw)
    if not checked["readable"]:
        raise ImageError(f"{name}: {checked['error']}")
    return raw


def expand_input(source, name: str = "image") -> list[tuple[bytes, str, dict | None]]:
    """One input → `(encoded bytes, display name, DICOM info or None)` per image it holds.

    DICOM (by content) goes through `btc.dicom.read_dicom`: one entry per frame, as lossless
    8-bit PNG. A folder gives its DICOM series in slice order. Anything else goes to `to_bytes`.

    Raises:
        ImageError: If an input is not a usable image or MR DICOM (the message says why).
    """
    if isinstance(source, str | Path) and Path(source).is_dir():
        files = [f for _, group in dicom.find_series(source) for f in group]
        if not files:
            raise ImageError(f"{source}: the folder holds no file")
        return [item for f in files for item in expand_input(f)]
    is_path = isinstance(source, str | Path)
    in_memory = isinstance(source, bytes | bytearray | memoryview) and dicom.is_dicom(source)
    if in_memory or (is_path and dicom.is_dicom_file(source)):
        try:
            frames = dicom.read_dicom(
                source if is_path else bytes(source), None if is_path else name
            )
        except dicom.DicomError as exc:
            raise ImageError(str(exc)) from exc
        return [(*to_bytes(f.pixels, f.name), f.info) for f in frames]
    return [(*to_bytes(source, name), None)]


def preprocess(raw: bytes, image_size: int) -> np.ndarray:
    """Encoded bytes → `(size, size, 3)` float32 in [0, 1], as in training."""
    import tensorflow as tf

    gray = images.decode_and_resize(tf.constant(raw), image_size)
    return tf.image.grayscale_to_rgb(tf.cast(gray, tf.float32) / 255.0).numpy()
