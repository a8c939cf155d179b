"""Run every benchmark in one process and print their tables (`make bench`).

Needs the dataset (BTC_DATA_DIR) and, for overhead/latency/LiteRT, a manifest and trained
models (`make pipeline`); the LiteRT section exports missing `.tflite` variants first.
BENCH_E2E=1 also times the whole quick pipeline (about 15 minutes). The printed tables are also
saved to `results/bench.json` for the README results section.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import sys

import dedup
import e2e
import input_pipeline
import latency
import litert
import overhead

from btc import config


class _Tee(io.StringIO):
    def write(self, text):
        sys.__stdout__.write(text)
        return super().write(text)


def main() -> None:
    out = _Tee()
    with contextlib.redirect_stdout(out):
        print(f"hardware: {platform.machine()}, {os.cpu_count()} CPU cores, CPU only")
        print("\n== 1. input pipeline: btc tf.data vs ImageDataGenerator (images/s) ==")
        input_pipeline.main()
        print("\n== 2. pipeline overhead: real pipeline vs in-memory epoch ==")
        overhead.main()
        print("\n== 3. prediction latency per model (median of 30) ==")
        latency.main()
        print("\n== 4. de-duplication on the full dataset ==")
        dedup.main()
        print("\n== 5. LiteRT exports vs the Keras model, test split (latency: median of 30) ==")
        litert.main()
        if os.environ.get("BENCH_E2E") == "1":
            print("\n== 6. end-to-end quick pipeline ==")
            e2e.main()
        else:
            print("\n== 6. end-to-end: skipped (set BENCH_E2E=1; about 15 minutes) ==")
    config.write_json_atomic(config.RESULTS_DIR / "bench.json", {"text": out.getvalue()})


if __name__ == "__main__":
    main()
