"""Benchmark: `make pipeline PRESET=quick` wall time and peak memory (RSS of the process tree).

Targets: ≤ 20 minutes and ≤ 6 GB on a 2-core machine. Slow (the whole pipeline), so
`make bench` runs it only with BENCH_E2E=1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from btc import config


def main(preset: str = "quick") -> dict:
    cmd = [sys.executable, "-m", "btc.cli", "pipeline", "--preset", preset]
    start, peak = time.perf_counter(), 0
    proc = subprocess.Popen(cmd, cwd=config.PROJECT_ROOT, stdout=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.5)
    minutes = (time.perf_counter() - start) / 60
    print(f"{'preset':>7} {'exit':>5} {'minutes':>8} {'target':>7} {'peak GB':>8} {'target':>7}")
    print(
        f"{preset:>7} {proc.returncode:>5} {minutes:>8.1f} {'≤ 20':>7} {peak / 1e9:>8.2f} {'≤ 6':>7}"
    )
    return {
        "minutes": minutes,
        "peak_gb": peak / 1e9,
        "exit": proc.returncode,
        "cores": os.cpu_count(),
    }


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "quick")
