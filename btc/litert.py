"""The LiteRT runtime: run exported `.tflite` files with the `predict_on_batch` interface of Keras.

LiteRT (`ai-edge-litert`) is an optional extra (`pip install 'btc[litert]'`); TensorFlow's own
interpreter is deprecated and never used. `LiteRTModel` quantises [0, 1] float32 images for
int8 files and dequantises their output from the file's own quantisation parameters, so callers
pass float32 images and get float32 softmax probabilities whatever the variant. Exporting and
loading with the sidecar metadata are in `btc.export`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

INSTALL_HINT = "pip install 'btc[litert]'"


def interpreter_class():
    """Return LiteRT's `Interpreter` class.

    Raises:
        ImportError: If `ai-edge-litert` is not installed (the message says how to install it).
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise ImportError(
            f"Running .tflite models needs LiteRT (the `ai-edge-litert` package): {INSTALL_HINT}"
        ) from exc
    return Interpreter


class LiteRTModel:
    """A `.tflite` file run by LiteRT, with the `predict_on_batch` interface of a Keras model.

    Args:
        path: The `.tflite` file.
        num_threads: CPU threads of the interpreter; `None` uses every core.

    Raises:
        ImportError: If LiteRT is not installed.
    """

    def __init__(self, path: str | Path, num_threads: int | None = None):
        self.path = Path(path)
        self.interpreter = interpreter_class()(
            model_path=str(self.path), num_threads=num_threads or os.cpu_count() or 1
        )
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    @staticmethod
    def _quantise(x: np.ndarray, details: dict) -> np.ndarray:
        scale, zero_point = details["quantization"]
        if not scale:
            return x.astype(details["dtype"])
        dtype = details["dtype"]
        q = np.round(x / scale + zero_point)
        return np.clip(q, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)

    @staticmethod
    def _dequantise(q: np.ndarray, details: dict) -> np.ndarray:
        scale, zero_point = details["quantization"]
        if not scale:
            return q.astype(np.float32)
        return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)

    def predict_on_batch(self, images) -> np.ndarray:
        """Run a batch of [0, 1] images one at a time.

        Args:
            images: `float32 (n, size, size, 3)` images in [0, 1] (or one `(size, size, 3)`).

        Returns:
            `float32 (n, classes)` softmax probabilities (dequantised for int8 files).

        Raises:
            ValueError: If the images do not have the file's input shape.
        """
        x = np.asarray(images, dtype=np.float32)
        x = x[None] if x.ndim == 3 else x
        expected = tuple(int(d) for d in self.input["shape"][1:])
        if x.ndim != 4 or x.shape[1:] != expected:
            raise ValueError(f"`images` must have shape (n, {', '.join(map(str, expected))}). "
                             f"Received: images.shape={x.shape}")  # fmt: skip
        out = np.zeros((len(x), int(self.output["shape"][-1])), np.float32)
        for i, image in enumerate(x):
            self.interpreter.set_tensor(
                self.input["index"], self._quantise(image[None], self.input)
            )
            self.interpreter.invoke()
            out[i] = self._dequantise(
                self.interpreter.get_tensor(self.output["index"]), self.output
            )[0]
        return out
