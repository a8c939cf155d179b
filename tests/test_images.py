"""Tests of btc.images: format detection by content and the grayscale conversion."""

from __future__ import annotations

import numpy as np
from PIL import Image

from btc import images as btc_images
from tests import images


def test_detect_format_reads_content_not_extension():
    assert btc_images.detect_format(images.encoded(images.brain_like(40), "PNG")[:16]) == "png"
    assert btc_images.detect_format(images.encoded(images.brain_like(40), "JPEG")[:16]) == "jpeg"
    assert btc_images.detect_format(b"hello world, no image") == "unknown"


def test_sixteen_bit_png_is_scaled_not_clipped():
    arr = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    gray = np.asarray(btc_images.to_grayscale(Image.fromarray(arr)))
    assert gray.min() == 0 and gray.max() == 255 and len(np.unique(gray)) > 200
