"""Tests of btc.inputs: uploads are checked before anything decodes them."""

from __future__ import annotations

import pytest

from btc import inputs, predict
from tests import images


@pytest.mark.parametrize(
    "content, fragment",
    [(b"", "empty"), (b"GIF89a" + b"\0" * 40, "only JPEG and PNG"), (b"hello", "only JPEG and PNG"),
     (images.png_bomb(), "decompression bomb")],
)  # fmt: skip
def test_bad_uploads_are_rejected_with_the_reason(content, fragment):
    with pytest.raises(predict.ImageError, match=fragment):
        inputs.check_image_bytes(content, "upload.jpg")
