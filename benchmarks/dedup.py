"""Benchmark: indexing + duplicate detection time on the full dataset (target ≤ 120 s).

Run with `make bench` or `python benchmarks/dedup.py [DATA_DIR]`.
"""

from __future__ import annotations

import os
import platform
import sys
import time

from btc import config, data, dedup


def main(data_dir: str | None = None) -> dict:
    data_dir = data_dir or str(config.DATA_DIR)
    start = time.perf_counter()
    index = data.index_dataset(data_dir)
    t_index = time.perf_counter() - start
    start = time.perf_counter()
    pairs, groups = dedup.find_duplicates(index, threshold=4)
    t_dups = time.perf_counter() - start
    total = t_index + t_dups
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(
        f"{'images':>8} {'index s':>8} {'pairs s':>8} {'total s':>8} {'target s':>8} {'ratio':>6}"
    )
    print(
        f"{len(index):>8} {t_index:>8.1f} {t_dups:>8.1f} {total:>8.1f} {120:>8} {total / 120:>6.2f}"
    )
    print(dedup.duplicate_summary(pairs).to_string())
    return {"images": len(index), "seconds": total, "target_ratio": total / 120}


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
