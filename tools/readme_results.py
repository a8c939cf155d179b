"""Regenerate the README "Results" section from results/*.json (numbers are never typed by hand).

Usage: `python tools/readme_results.py` after `make pipeline` (and `make bench` for the
benchmark table). Replaces the text between the results markers in README.md.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from btc import config  # noqa: E402
from btc.evaluate import comparison_markdown  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def section() -> str:
    metrics = _load(config.RESULTS_DIR / "metrics.json")
    if metrics is None:
        return "_No results yet: run `make pipeline`, then `python tools/readme_results.py`._"
    summary = _load(config.RESULTS_DIR / "01_preprocess" / "summary.json") or {}
    training = _load(config.RESULTS_DIR / "02_train" / "summary.json") or []
    bench = _load(config.RESULTS_DIR / "bench.json")
    sal = _load(config.RESULTS_DIR / "03_evaluate" / "saliency_report.json")
    sizes = metrics["split_sizes"]
    lines = [
        f"Quick preset (CPU, {training[0]['image_size'] if training else '?'} px) on "
        f"{platform.machine()} with {os.cpu_count()} CPU cores; leakage-free grouped split "
        f"(train {sizes.get('train')}, val {sizes.get('val')}, test {sizes.get('test')} images; "
        f"leakage check: {metrics['leakage']['test_images_leaked']} test images with a copy in "
        f"train/val). TTA: {metrics['tta']}.",
        "",
        comparison_markdown(metrics),
    ]
    if training:
        lines += ["Training (02):", "", "| model | params | epochs | minutes | best val acc |",
                  "|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {t['model']} | {t['params']:,} | {t['epochs']} | {t['minutes']} | "
                  f"{100 * t['best_val_accuracy']:.1f} |" for t in training]  # fmt: skip
        lines.append("")
    if sal:
        lines += ["Saliency sanity check (Spearman ρ at full randomisation; pass < 0.5) and deletion AUC "
                  "(lower is better):", "", "| model | method | ρ full random | deletion AUC | insertion AUC |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for name, entry in sal["models"].items():
            rho = {}
            for row in entry.get("sanity_check", []):
                rho[row["method"]] = (
                    row["spearman"] if row["fraction"] == 1.0 else rho.get(row["method"])
                )
            for row in entry["faithfulness"]:
                r = rho.get(row["method"])
                lines.append(f"| {name} | {row['method']} | {'–' if r is None else f'{r:.2f}'} | "
                             f"{row['deletion_auc']:.3f} | {row['insertion_auc']:.3f} |")  # fmt: skip
        lines.append("")
    if bench:
        lines += ["Benchmarks (`make bench`):", "", "```", bench.get("text", "").strip(), "```", ""]
    if summary:
        rep = summary["report"]
        lines.append(
            f"Data: {rep['official_leakage']['testing_images_with_training_copy']} of "
            f"{rep['official_leakage']['testing_images']} official Testing images have a duplicate in "
            f"Training; {rep['exact_copies_removed']} byte-identical copies removed; "
            f"{rep['label_conflict_images']} images in label-conflicting duplicate groups dropped."
        )
    return "\n".join(lines)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text:
        raise SystemExit(f"README.md has no {START} marker")
    new = re.sub(
        f"{re.escape(START)}.*{re.escape(END)}", f"{START}\n{section()}\n{END}", text, flags=re.S
    )
    config.write_text_atomic(readme, new)
    print("README results section regenerated")


if __name__ == "__main__":
    main()
