"""Benchmark: single-image latency, `model(x)` vs `model.predict(x)`, and batch throughput."""

from __future__ import annotations

import statistics
import time

import numpy as np

from btc import artifacts


def median_ms(fn, repeats: int) -> float:
    """Median wall time of `fn()` in milliseconds over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(repeats: int = 30) -> list[dict]:
    rows = []
    for name in artifacts.trained_model_names():
        model, meta = artifacts.load_trained(name)
        s = meta["image_size"]
        x = np.random.default_rng(0).random((1, s, s, 3), dtype=np.float32)
        batch = np.random.default_rng(1).random((256, s, s, 3), dtype=np.float32)
        call = median_ms(lambda m=model, x=x: m(x, training=False), repeats)
        pred = median_ms(lambda m=model, x=x: m.predict(x, verbose=0), repeats)
        on_batch = median_ms(lambda m=model, x=x: m.predict_on_batch(x), repeats)
        start = time.perf_counter()
        model.predict(batch, batch_size=64, verbose=0)
        rows.append({"model": name, "size": s, "call_ms": call, "predict_ms": pred, "on_batch_ms": on_batch,
                     "batch_img_s": len(batch) / (time.perf_counter() - start)})  # fmt: skip
    print(f"{'model':>10} {'px':>4} {'model(x) ms':>12} {'predict ms':>11} {'ratio':>6} "
          f"{'on_batch ms':>12} {'batch img/s':>12}")  # fmt: skip
    for r in rows:
        print(f"{r['model']:>10} {r['size']:>4} {r['call_ms']:>12.1f} {r['predict_ms']:>11.1f} "
              f"{r['predict_ms'] / r['call_ms']:>6.1f} {r['on_batch_ms']:>12.1f} "
              f"{r['batch_img_s']:>12.0f}")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
