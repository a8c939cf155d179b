"""Benchmark: btc's tf.data pipeline vs Keras' legacy ImageDataGenerator.flow_from_directory.

Same augmentation (horizontal flip, ±10° rotation, brightness), same batch size, images/s over
the first `n_images` of the Training data, at 299 and 128 px. btc is measured cold (first epoch,
decoding) and warm (later epochs, from its cache). Target: btc ≥ 5× the legacy generator.
"""

from __future__ import annotations

import time
from pathlib import Path

from btc import config, datasets


def _rate(iterator, n_images: int) -> float:
    seen, start = 0, time.perf_counter()
    for x, _ in iterator:
        seen += len(x)
        if seen >= n_images:
            break
    return seen / (time.perf_counter() - start)


def legacy_rate(data_dir: Path, size: int, n_images: int) -> float:
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    gen = ImageDataGenerator(rescale=1 / 255, rotation_range=10, horizontal_flip=True,
                             brightness_range=(0.9, 1.1))  # fmt: skip
    flow = gen.flow_from_directory(str(data_dir / "Training"), target_size=(size, size),
                                   batch_size=32, class_mode="sparse", seed=0)  # fmt: skip
    return _rate(flow, n_images)


def btc_rates(manifest, size: int, n_images: int) -> tuple[float, float]:
    ds = datasets.make_dataset(manifest, "train", size, 32, augment=True, seed=0, cache=True)
    cold = _rate(iter(ds), n_images)  # first pass decodes and fills the cache
    for _ in ds:  # finish the epoch so the cache is complete
        pass
    return cold, _rate(iter(ds), n_images)


def main(n_images: int = 1024) -> list[dict]:
    manifest = datasets.load_manifest(config.MANIFEST_PATH)
    rows = []
    for size in (299, 128):
        legacy = legacy_rate(Path(config.DATA_DIR), size, n_images)
        cold, warm = btc_rates(manifest, size, n_images)
        rows.append({"size": size, "legacy": legacy, "btc_cold": cold, "btc_warm": warm})
    print(
        f"{'px':>4} {'legacy img/s':>13} {'btc cold':>9} {'btc warm':>9} {'cold ×':>7} {'warm ×':>7}"
    )
    for r in rows:
        print(f"{r['size']:>4} {r['legacy']:>13.0f} {r['btc_cold']:>9.0f} {r['btc_warm']:>9.0f} "
              f"{r['btc_cold'] / r['legacy']:>7.1f} {r['btc_warm'] / r['legacy']:>7.1f}")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
