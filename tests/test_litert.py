"""Tests of btc.litert: the LiteRT runtime runs int8 files and says how to install itself."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from btc import cli, export, predict
from btc.litert import LiteRTModel


@pytest.fixture(scope="module")
def scans(tiny_models):
    """Every image of the tiny manifest (80 real scans, all splits)."""
    return pd.read_csv(tiny_models[1], keep_default_na=False)["path"].tolist()


def test_int8_io_is_quantised_and_handled_by_the_runtime(exported):
    model, meta = export.load_litert("mobilenet", "int8", exported[0])
    assert model.input["dtype"] == np.int8 and model.output["dtype"] == np.int8
    assert meta["input"]["dtype"] == "int8" and meta["output"]["dtype"] == "int8"
    assert meta["input"]["scale"] == pytest.approx(1 / 255, rel=1e-3)
    assert meta["input"]["zero_point"] == -128
    assert (
        meta["output"]["scale"] == pytest.approx(1 / 256) and meta["output"]["zero_point"] == -128
    )
    assert meta["float_ops"] == []  # every op runs in int8
    pixels = np.arange(256, dtype=np.float32) / 255
    q = model._quantise(pixels, model.input)
    np.testing.assert_array_equal(q.astype(int), np.arange(256) - 128)  # lossless for 8-bit pixels
    size = int(model.input["shape"][1])  # MobileNet's own size (72 px), not the CNN's
    batch = np.random.default_rng(0).random((3, size, size, 3), dtype=np.float32)
    out = model.predict_on_batch(batch)
    assert out.dtype == np.float32 and out.shape == (3, 4)
    np.testing.assert_allclose(out.sum(1), 1, atol=0.02)


def test_missing_runtime_says_how_to_install(exported, scans, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(ImportError, match=r"pip install 'btc\[litert\]'"):
        predict.load_models(["cnn"], exported[0], runtime="litert")
    with pytest.raises(ImportError, match=r"pip install 'btc\[litert\]'"):
        LiteRTModel(export.tflite_path("cnn", "none", exported[0]))
    assert cli.main(["predict", scans[0], "--model", "cnn", "--runtime", "litert"]) == 2
    assert "pip install 'btc[litert]'" in capsys.readouterr().err
