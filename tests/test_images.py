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


def test_fit_and_pad_matches_the_tf_data_geometry():
    from btc.images import decode_and_resize

    wide = np.tile(np.linspace(30, 150, 150), (60, 1)).astype(np.uint8)  # wide: padded above/below
    wide[20:40, 30:120] = 255
    raw = images.encoded(wide, "PNG")
    pil = btc_images.fit_and_pad(Image.fromarray(wide), 96)
    tf_ = decode_and_resize(raw, 96).numpy()[..., 0]
    assert pil.shape == (96, 96) and pil.dtype == np.uint8
    assert (pil[:29] == 0).all() and (pil[-29:] == 0).all()  # black bands where the scan is not
    bright = (pil > 200) & (tf_ > 200)
    assert bright.sum() > 0.9 * min((pil > 200).sum(), (tf_ > 200).sum())  # same place
    assert np.abs(pil.astype(int) - tf_.astype(int)).mean() < 25
