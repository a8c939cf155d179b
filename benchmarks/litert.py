"""Benchmark: LiteRT exports (none, float16, int8) against the Keras model, on the test split.

For every trained model: file size, single-image latency (median of `repeats` after a warm-up,
LiteRT with one thread per core), test accuracy with its 95 % bootstrap CI, and top-1 agreement
with the Keras model. Variants that are missing or stale are exported first (into the models
folder, as `btc export` would). Targets for int8 (issue 16), all against the Keras model:
agreement ≥ 99 %, accuracy within 0.5 points, file ≥ 3× smaller (the ratio to the float32 .tflite
is printed too: per-channel scales and int32 biases weigh more in a small model).

The Keras row also carries `noise_agreement`: the Keras model's top-1 agreement with itself when
each test image gets uniform noise of ±1 and ±2 gray levels (of 255). Int8 adds errors of about
that size inside the network, so a model that already flips under such noise cannot reach 100 %
agreement with any int8 export; this is the stability floor to read the int8 agreement against.

`python litert.py [MODELS_DIR [MANIFEST]]` runs it on other folders (e.g. tiny test models).
Run on the project's models folder, the rows also go to `results/litert.json` and the table is
printed as Markdown too (for the README). Latency is measured for Keras and LiteRT side by side
in the same process, so the ratios are fair; on a busy machine the numbers are upper bounds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from latency import median_ms

from btc import artifacts, config, datasets, evaluate, export, litert


def _variant(name: str, quantize: str, models_dir: Path, manifest: Path):
    try:
        return export.load_litert(name, quantize, models_dir)
    except (FileNotFoundError, ValueError):  # missing or stale: export it
        export.export_tflite(name, quantize, models_dir=models_dir, manifest=manifest)
        return export.load_litert(name, quantize, models_dir)


NOISE_LEVELS = (1, 2)  # gray levels of 255


def noise_agreement(model, images: np.ndarray, top1: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Top-1 agreement of a Keras model with itself under ±k/255 uniform input noise, per k."""
    rng = np.random.default_rng(seed)
    found = {}
    for level in NOISE_LEVELS:
        noise = rng.uniform(-level / 255, level / 255, images.shape[:3] + (1,)).astype("float32")
        noisy = np.clip(images + noise, 0.0, 1.0)  # the same noise on the three gray channels
        found[str(level)] = float((model.predict(noisy, verbose=0).argmax(1) == top1).mean())
    return found


def main(models_dir: str | Path = config.MODELS_DIR, manifest: str | Path = config.MANIFEST_PATH,
         repeats: int = 30, n_bootstrap: int = 1000) -> list[dict]:  # fmt: skip
    models_dir, manifest = Path(models_dir), Path(manifest)
    names = artifacts.trained_model_names(models_dir)
    if not names or not manifest.is_file():
        print(f"skipped: needs trained models in {models_dir} and {manifest} (make pipeline)")
        return []
    try:
        litert.interpreter_class()
    except ImportError as exc:
        print(f"skipped: {exc}")
        return []
    frame = datasets.load_manifest(manifest)
    rows, sizes = [], {}
    for name in names:
        model, meta = artifacts.load_trained(name, models_dir)
        sizes[name] = meta["image_size"]
        images = np.concatenate([x.numpy() for x, _ in datasets.make_dataset(
            frame, "test", meta["image_size"], 64, augment=False, shuffle=False, cache=False)])  # fmt: skip
        x1 = images[:1]
        probs, labels = datasets.predict_split(model, meta, frame, "test")
        keras_top1 = probs.argmax(1)
        variants = [("keras", model, (models_dir / name / "model.keras").stat().st_size, probs)]
        for quantize in export.QUANTIZE:
            lite, lite_meta = _variant(name, quantize, models_dir, manifest)
            lite_probs, _ = datasets.predict_split(lite, lite_meta, frame, "test")
            variants.append((quantize, lite, lite_meta["tflite_bytes"], lite_probs))
        noise = noise_agreement(model, images, keras_top1)
        for variant, runner, size, p in variants:
            ci = evaluate.bootstrap_ci(labels, p, n_bootstrap, class_names=meta["class_names"])
            extra = {"noise_agreement": noise} if variant == "keras" else {}
            rows.append({**extra, "model": name, "variant": variant, "mb": size / 1e6,
                         "ms": median_ms(lambda r=runner, x=x1: r.predict_on_batch(x), repeats),
                         "accuracy": float((p.argmax(1) == labels).mean()),
                         "accuracy_ci": ci["accuracy"],
                         "agreement": float((p.argmax(1) == keras_top1).mean()),
                         "images": len(labels)})  # fmt: skip
    _print(rows)
    print(markdown(rows))
    models_note = ", ".join(f"{n} {size} px" for n, size in sizes.items())
    if models_dir.resolve() == Path(config.MODELS_DIR).resolve():
        config.write_json_atomic(
            config.RESULTS_DIR / "litert.json",
            {"rows": rows, "load": os.getloadavg(), "models_note": models_note},
        )
    return rows


def markdown(rows: list[dict]) -> str:
    """The benchmark rows as a Markdown table (size, latency, accuracy with CI, agreement)."""
    lines = ["| model | variant | MB | ms/img (2 cores) | test accuracy % [95 % CI] | top-1 agreement % |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lo, hi = (100 * v for v in r["accuracy_ci"])
        lines.append(f"| {r['model']} | {r['variant']} | {r['mb']:.2f} | {r['ms']:.1f} | "
                     f"{100 * r['accuracy']:.1f} [{lo:.1f}, {hi:.1f}] | {100 * r['agreement']:.1f} |")  # fmt: skip
    floors = [f"{r['model']} " + " / ".join(f"{100 * a:.1f} %" for a in r["noise_agreement"].values())
              for r in rows if "noise_agreement" in r]  # fmt: skip
    if floors:
        first = next(r for r in rows if "noise_agreement" in r)
        levels = " / ".join(f"±{k}" for k in first["noise_agreement"])
        lines += ["", f"Stability floor: each Keras model's top-1 agreement with itself under uniform "
                  f"input noise of {levels} gray levels (of 255): {'; '.join(floors)}. Int8 adds "
                  "errors of about that size inside the network."]  # fmt: skip
    return "\n".join(lines)


def _print(rows: list[dict]) -> None:
    print(f"{'model':>10} {'variant':>8} {'MB':>7} {'×keras':>7} {'×fp32':>6} {'ms/img':>7} "
          f"{'speed ×':>8} {'accuracy % [95 % CI]':>21} {'Δacc':>5} {'agree %':>8}")  # fmt: skip
    base = {(r["model"], r["variant"]): r for r in rows if r["variant"] in ("keras", "none")}
    for r in rows:
        k, fp32 = base[r["model"], "keras"], base[r["model"], "none"]
        lo, hi = (100 * v for v in r["accuracy_ci"])
        accuracy = f"{100 * r['accuracy']:.1f} [{lo:.1f}, {hi:.1f}]"
        print(f"{r['model']:>10} {r['variant']:>8} {r['mb']:>7.2f} {k['mb'] / r['mb']:>7.1f} "
              f"{fp32['mb'] / r['mb']:>6.1f} {r['ms']:>7.1f} {k['ms'] / r['ms']:>8.1f} "
              f"{accuracy:>21} {100 * (r['accuracy'] - k['accuracy']):>+5.1f} "
              f"{100 * r['agreement']:>8.1f}")  # fmt: skip
    print(
        "×keras: size ratio to model.keras (which also stores the optimizer state); ×fp32: to "
        "the float32 .tflite; speed ×: Keras latency / this variant's"
    )
    for r in (r for r in rows if "noise_agreement" in r):
        print(f"{r['model']} keras vs itself under ±k/255 input noise: " + ", ".join(
            f"k={k} {100 * a:.1f} %" for k, a in r["noise_agreement"].items()))  # fmt: skip
    for r in (r for r in rows if r["variant"] == "int8"):
        k, fp32 = base[r["model"], "keras"], base[r["model"], "none"]
        checks = {"agreement ≥ 99 %": r["agreement"] >= 0.99,
                  "|Δacc| ≤ 0.5 points": abs(r["accuracy"] - k["accuracy"]) <= 0.005,
                  "≥ 3× smaller than the Keras model": k["mb"] / r["mb"] >= 3}  # fmt: skip
        print(
            f"{r['model']} int8 targets ({r['images']} test images): "
            + ", ".join(f"{c} {'met' if ok else 'NOT met'}" for c, ok in checks.items())
            + f" ({fp32['mb'] / r['mb']:.1f}× smaller than the float32 .tflite)"
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
