"""Image bytes: recognise a format by content, convert to grayscale, decode and pad for tf.data.

The lowest floor of the data path: no btc imports, TensorFlow imported only inside
`decode_and_resize`, so indexing can use these in worker processes cheaply.
"""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_PIXELS = 40_000_000  # the largest real scan here is 1920×1080; 40 MP leaves room, stops bombs
MIN_SIDE = 32
_MAGIC = [
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
]
PIPELINE_FORMATS = ("jpeg", "png", "gif", "bmp")  # what tf.io.decode_image reads


def detect_format(head: bytes) -> str:
    """Return the image format named by a file's first bytes (not its extension).

    Args:
        head: At least the first 12 bytes of the file.

    Returns:
        `"jpeg"`, `"png"`, `"gif"`, `"bmp"`, `"tiff"`, `"webp"`, or `"unknown"`.
    """
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return "unknown"


def to_grayscale(img: Image.Image) -> Image.Image:
    """Convert any PIL image (RGBA, palette, CMYK, 16-bit) to 8-bit grayscale `"L"`.

    Transparent pixels become black (the scan background), and 16-bit values are scaled rather
    than clipped.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("L")


def fit_and_pad(img: Image.Image, size: int) -> np.ndarray:
    """Scale a grayscale image to fit a square and pad it with black, like `decode_and_resize`.

    The same geometry as the tf.data pipeline, without TensorFlow (for the data stage).

    Args:
        img: A grayscale (`"L"`) image.
        size: Side of the square, in pixels.

    Returns:
        `(size, size)` uint8 array, the image centred.
    """
    scale = size / max(img.size)
    width, height = (max(1, round(side * scale)) for side in img.size)
    canvas = Image.new("L", (size, size))
    canvas.paste(
        img.resize((width, height), Image.BILINEAR), ((size - width) // 2, (size - height) // 2)
    )
    return np.asarray(canvas)


def read_checked(data: bytes) -> tuple[dict, Image.Image | None]:
    """Check encoded image bytes and decode them to 8-bit grayscale, never raising.

    Checks, in order: empty, format by content, declared size against `MAX_PIXELS` (before
    decoding: decompression bombs), `MIN_SIDE`, formats the pipeline decodes, CMYK JPEG.

    Args:
        data: The encoded file.

    Returns:
        `(row, gray)`: `row` has `bytes`, `sha256`, `format`, `width`, `height`, `mode`,
        `readable` and `error` (why the image was refused, else `None`); `gray` is the decoded
        grayscale image (JPEGs drafted to about 64 px: enough for hashes), or `None` if refused.
    """
    row = dict(sha256=None, width=0, height=0, mode=None, format="unknown", bytes=0,
               readable=False, error=None)  # fmt: skip
    row["bytes"] = len(data)
    row["sha256"] = hashlib.sha256(data).hexdigest()
    row["format"] = detect_format(data[:16])
    if not data:
        row["error"] = "empty file (0 bytes)"
        return row, None
    if row["format"] == "unknown":
        row["error"] = f"not an image: content starts with {data[:8]!r}"
        return row, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            row.update(width=img.width, height=img.height, mode=img.mode)
            if img.width * img.height > MAX_PIXELS:
                row["error"] = (
                    f"declared size {img.width}x{img.height} exceeds {MAX_PIXELS:,} pixels "
                    "(possible decompression bomb); not decoded"
                )
                return row, None
            if min(img.size) < MIN_SIDE:
                row["error"] = f"image is {img.width}x{img.height} px, below {MIN_SIDE} px a side"
                return row, None
            if row["format"] not in PIPELINE_FORMATS:
                row["error"] = f"{row['format']} images are not supported by the pipeline"
                return row, None
            if img.format == "JPEG" and img.mode == "CMYK":
                row["error"] = "CMYK JPEG is not supported by the pipeline; save it as RGB or L"
                return row, None
            if img.format == "JPEG":
                img.draft(img.mode, (64, 64))  # DCT-domain downscale; still reads every byte
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        row["error"] = f"possible decompression bomb, not decoded: {exc}"
        return row, None
    except Exception as exc:  # PIL raises many types for corrupt data
        row["error"] = f"cannot decode {row['format']}: {exc}"
        return row, None
    row["readable"] = True
    return row, to_grayscale(img)


def decode_and_resize(contents, image_size: int):
    """Decode JPEG/PNG/GIF/BMP bytes by content to a `(size, size, 1)` uint8 grayscale tensor.

    The aspect ratio is kept: the image is scaled to fit and padded with black (the scan
    background), so wide Br35H images are not squashed.
    """
    import tensorflow as tf

    image = tf.io.decode_image(contents, channels=1, expand_animations=False, dtype=tf.float32)
    image = tf.image.resize_with_pad(image, image_size, image_size, antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 1.0) * 255.0), tf.uint8)
