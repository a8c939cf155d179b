"""Small generated images, good and bad, for the tests."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def brain_like(size: int = 96, seed: int = 0, blob: tuple[int, int] | None = None) -> np.ndarray:
    """A uint8 grayscale 'scan': dark background, bright ellipse, noise, optional bright blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    head = ((xx - 0.5) / 0.38) ** 2 + ((yy - 0.5) / 0.45) ** 2 < 1
    img = head * (110 + 40 * np.sin(xx * rng.uniform(5, 15)) * np.cos(yy * rng.uniform(5, 15)))
    img += rng.normal(0, 12, (size, size)) * head
    if blob is not None:
        by, bx = blob
        img += 120 * (((xx - bx / size) ** 2 + (yy - by / size) ** 2) < (0.08**2))
    return np.clip(img, 0, 255).astype(np.uint8)


def save(path: Path, array: np.ndarray, fmt: str = "JPEG", mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if mode:
        img = img.convert(mode)
    img.save(path, fmt)
    return path


def png_bomb() -> bytes:
    """A valid PNG header declaring 60000×60000 pixels with almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def encoded(array: np.ndarray, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise(seed: int = 0, colour: bool = False) -> np.ndarray:
    """96×96 uniform uint8 noise, gray or RGB: nothing like a scan."""
    shape = (96, 96, 3) if colour else (96, 96)
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)
