"""Benchmark: one training epoch fed by the real pipeline vs the same images in memory.

Target: real / in-memory ≤ 1.10 (the input pipeline hidden behind compute). MobileNet v1
alpha 0.25 at 128 px (the quick preset's fastest model, so the hardest case for hiding input).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from btc import config, datasets, models, train


def main(repeats: int = 2) -> dict:
    manifest = datasets.load_manifest(config.MANIFEST_PATH)
    ds = datasets.make_dataset(manifest, "train", 128, 32, augment=True, seed=0, cache=True)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])  # also fills the cache
    x, y = np.concatenate(xs), np.concatenate(ys)
    model = models.build_model("mobilenet", image_size=128, weights=None, alpha=0.25)
    models.set_trainable(model, "finetune", 1.0)
    train._compile(model, 1e-4)
    model.fit(ds.take(3), verbose=0)  # trace once
    real, memory = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(ds, epochs=1, verbose=0)
        real.append(time.perf_counter() - start)
        start = time.perf_counter()
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=True)
        memory.append(time.perf_counter() - start)
    r, m = statistics.median(real), statistics.median(memory)
    print(f"{'images':>7} {'pipeline s':>11} {'in-memory s':>12} {'ratio':>6} {'target':>7}")
    print(f"{len(y):>7} {r:>11.1f} {m:>12.1f} {r / m:>6.2f} {'≤ 1.10':>7}")
    return {"pipeline_s": r, "memory_s": m, "ratio": r / m}


if __name__ == "__main__":
    main()
