"""Are real brain MRI with benign acquisition changes still accepted? OOD refusals per change.

Takes `n_per_class` test scans of each class (fixed seed) and feeds the trained model each of
them unchanged and after one change a scanner, an export or a photo of the screen could make:
JPEG at quality 20, 96 px and back, a 10° turn, gamma 0.7, 3 % noise, a 1.5 px blur, a crop
to the central 85 %. Prints how many `btc.predict` answers `out_of_distribution` per change and
writes `results/ood_variants.json`. Needs a manifest and trained models with OOD statistics
(`make pipeline`). Usage: `python ood_variants.py [MODEL]` (default: the ensemble if there is
one, else the only model).
"""

from __future__ import annotations

import io
import sys

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from btc import config, predict


def _jpeg(im: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=20)
    return Image.open(io.BytesIO(buf.getvalue())).convert("L")


def _crop(im: Image.Image, keep: float = 0.85) -> Image.Image:
    m = (1 - keep) / 2
    return im.crop((int(im.width * m), int(im.height * m), int(im.width * (1 - m)), int(im.height * (1 - m))))  # fmt: skip


def changes(rng: np.random.Generator) -> dict:
    """The benign changes, each a function of a grayscale PIL image."""

    def gamma(im):
        return Image.fromarray((255 * (np.asarray(im) / 255.0) ** 0.7).astype(np.uint8))

    def noise(im):
        noisy = np.asarray(im) + rng.normal(0, 0.03 * 255, im.size[::-1])
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))

    return {
        "unchanged": lambda im: im, "jpeg_q20": _jpeg,
        "96px": lambda im: im.resize((96, 96), Image.BILINEAR).resize(im.size, Image.BILINEAR),
        "turn_10deg": lambda im: im.rotate(10, resample=Image.BILINEAR), "gamma_0.7": gamma,
        "noise_3pct": noise, "blur_1.5px": lambda im: im.filter(ImageFilter.GaussianBlur(1.5)),
        "crop_85pct": _crop,
    }  # fmt: skip


def main(model: str | None = None, n_per_class: int = 30, seed: int = 0) -> dict:
    frame = pd.read_csv(config.MANIFEST_PATH, keep_default_na=False)
    test = frame[frame.split == "test"].groupby("class", group_keys=False)
    test = test.apply(lambda g: g.sample(min(n_per_class, len(g)), random_state=seed))
    scans = [Image.open(p).convert("L") for p in test.path]
    loaded = predict.load_models()
    model = model or (predict.ENSEMBLE if len(loaded) > 1 else next(iter(loaded)))
    out = {"model": model, "n": len(scans), "refused": {}}
    for name, change in changes(np.random.default_rng(seed)).items():
        records = predict.predict([np.asarray(change(im)) for im in scans], model, loaded)
        out["refused"][name] = sum(r["status"] == "out_of_distribution" for r in records)
        print(f"{name:12s} {out['refused'][name]:3d} / {len(scans)} refused", flush=True)
    config.write_json_atomic(config.RESULTS_DIR / "ood_variants.json", out)
    return out


if __name__ == "__main__":
    main(*sys.argv[1:2])
