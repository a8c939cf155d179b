"""Run every benchmark in one process and print their tables side by side (`make bench`)."""

from __future__ import annotations

import dedup

if __name__ == "__main__":
    print("== de-duplication on the full dataset ==")
    dedup.main()
