"""Regenerate the README "Results" section from results/*.json (numbers are never typed by hand).

Usage: `python tools/readme_results.py [PRESET] [--also quick=DIR]` after `make pipeline PRESET=...` (and `make bench` for the
benchmark table). Replaces the text between the results markers in README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "benchmarks"))

from litert import markdown as litert_table  # noqa: E402
from recipes import table as recipe_table  # noqa: E402

from btc import config  # noqa: E402
from btc.reports import comparison_markdown, ood_markdown  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def stage_minutes(results_dir: Path) -> dict:
    """Minutes each executed notebook in `results_dir` ran, from papermill's metadata."""
    out = {}
    for nb in sorted(results_dir.glob("0*.ipynb")):
        duration = (
            json.loads(nb.read_text()).get("metadata", {}).get("papermill", {}).get("duration")
        )
        if duration is not None:
            out[nb.stem.split("_")[0]] = round(duration / 60, 1)
    return out


def times_line(results_dir: Path) -> str:
    """One line with each stage's minutes and the total (empty without executed notebooks)."""
    minutes = stage_minutes(results_dir)
    if not minutes:
        return ""
    stages = ", ".join(f"{k} {v}" for k, v in minutes.items())
    return f"Pipeline minutes on this machine: {stages} (total {sum(minutes.values()):.1f})."


def sizes_text(training: list[dict]) -> str:
    """Input sizes of a run's models: `160 px`, or `cnn 128 px, mobilenet 224 px` when they differ."""
    sizes = {t["model"]: t["image_size"] for t in training}
    if not sizes:
        return "? px"
    if len(set(sizes.values())) == 1:
        return f"{next(iter(sizes.values()))} px"
    return ", ".join(f"{name} {size} px" for name, size in sizes.items())


def other_preset(spec: str, manifest_sha256: str | None) -> list[str]:
    """The test table and stage times of another preset's run, `NAME=RESULTS_DIR`."""
    name, _, folder = spec.partition("=")
    metrics = _load(Path(folder) / "metrics.json")
    if metrics is None:
        raise SystemExit(f"`--also` needs NAME=RESULTS_DIR with a metrics.json. Received: {spec!r}")
    training = _load(Path(folder) / "02_train" / "summary.json") or []
    split = "same split" if metrics.get("manifest_sha256") == manifest_sha256 else "ANOTHER split"
    return [f"`{name}` preset ({sizes_text(training)}), {split}:", "", comparison_markdown(metrics),
            times_line(Path(folder)), ""]  # fmt: skip


def section(preset: str = "quick", also: list[str] | None = None) -> str:
    metrics = _load(config.RESULTS_DIR / "metrics.json")
    if metrics is None:
        return "_No results yet: run `make pipeline`, then `python tools/readme_results.py`._"
    summary = _load(config.RESULTS_DIR / "01_preprocess" / "summary.json") or {}
    training = _load(config.RESULTS_DIR / "02_train" / "summary.json") or []
    bench = _load(config.RESULTS_DIR / "bench.json")
    sal = _load(config.RESULTS_DIR / "03_evaluate" / "saliency_report.json")
    ext_sal = _load(config.RESULTS_DIR / "03_evaluate" / "external_saliency.json")
    recipes = _load(config.RESULTS_DIR / "recipes.json")
    sizes = metrics["split_sizes"]
    lines = [
        f"`{preset}` preset (CPU; {sizes_text(training)}) on "
        f"{platform.machine()} with {os.cpu_count()} CPU cores; leakage-free grouped split "
        f"(train {sizes.get('train')}, val {sizes.get('val')}, test {sizes.get('test')} images; "
        f"leakage check: {metrics['leakage']['test_images_leaked']} test images with a copy in "
        f"train/val). TTA: {metrics['tta']}.",
        "",
        comparison_markdown(metrics),
        times_line(config.RESULTS_DIR),
        "",
    ]
    for spec in also or []:
        lines += other_preset(spec, metrics.get("manifest_sha256"))
    if training:
        lines += ["Training (02):", "", "| model | params | px | epochs | minutes | best val acc |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {t['model']} | {t['params']:,} | {t['image_size']} | {t['epochs']} | "
                  f"{t['minutes']} | {100 * t['best_val_accuracy']:.1f} |" for t in training]  # fmt: skip
        lines.append("")
    if recipes:
        lines += ["Recipe study (`benchmarks/recipes.py`; MobileNet α0.25 unless noted, same manifest; "
                  "validation accuracy chooses, external = held-out Br35H tumour groups, group-bootstrap "
                  "95 % CI; minutes on this 2-core machine):", "", recipe_table(recipes), ""]  # fmt: skip
    if summary.get("shortcut"):
        lines += ["The source shortcut (01): test accuracy of a gradient-boosted model on cues with no "
                  "anatomy (chance ≈ 25 %):", "", "| cues | test accuracy [95 % CI] |", "|---|---|"]  # fmt: skip
        lines += [f"| {r['cues']} | {100 * r['test_accuracy']:.1f} [{100 * r['ci_low']:.1f}, "
                  f"{100 * r['ci_high']:.1f}] |" for r in summary["shortcut"]]  # fmt: skip
        lines.append("")
    if sal:
        lines += ["Saliency sanity check (Spearman ρ at full randomisation, 95 % CI over images; a method "
                  "passes when the CI's upper bound is below 0.5) and deletion / insertion AUC:", "",
                  "| model | method | ρ full random [95 % CI] | n | deletion AUC | insertion AUC |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for name, entry in sal["models"].items():
            rho = {}
            for row in entry.get("sanity_check", []):
                if row["fraction"] == 1.0:
                    rho[row["method"]] = row
            for row in entry["faithfulness"]:
                r = rho.get(row["method"])
                cell = (
                    "–"
                    if r is None
                    else (
                        f"{r['spearman']:.2f} [{r['spearman_ci'][0]:.2f}, {r['spearman_ci'][1]:.2f}]"
                    )
                )
                lines.append(f"| {name} | {row['method']} | {cell} | {'' if r is None else r['n']} | "
                             f"{row['deletion_auc']:.3f} | {row['insertion_auc']:.3f} |")  # fmt: skip
        lines.append("")
    cam = _load(config.RESULTS_DIR / "03_evaluate" / "cam_layers.json")
    if cam and cam.get("models"):
        lines += ["CAM layer per model, chosen by Grad-CAM's pointing game on the external *train* "
                  "groups' boxes (the test groups below stay held out):", "",
                  "| model | layer: pointing on train groups (%) | chosen |", "|---|---|---|"]  # fmt: skip
        for name, r in cam["models"].items():
            cells = ", ".join(
                f"`{layer}` {100 * v['pointing']:.1f}" for layer, v in r["scores"].items()
            )
            lines.append(f"| {name} | {cells} | `{r['layer']}` |")
        lines.append("")
    if ext_sal and ext_sal.get("models"):
        lines += ["Saliency on the external tumour boxes (held-out Br35H groups): pointing game (map peak "
                  "inside the box) and share of the map's energy inside the box, against the image centre:",
                  "", "| model | method | pointing [95 % CI] | energy in box | centre pointing | "
                  "centre energy | box area |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, entry in ext_sal["models"].items():
            for method, sc in entry.items():
                lines.append(f"| {name} | {method} | {100 * sc['pointing']:.1f} [{100 * sc['pointing_ci'][0]:.1f}, "
                             f"{100 * sc['pointing_ci'][1]:.1f}] | {100 * sc['energy']:.1f} | "
                             f"{100 * sc['centre_pointing']:.1f} | {100 * sc['centre_energy']:.1f} | "
                             f"{100 * sc['box_area']:.1f} |")  # fmt: skip
        lines += ["", f"Recommended demo method per model (sanity CI below 0.5 and best pointing): "
                      f"{ext_sal['recommended']}.", ""]  # fmt: skip
    ood_report = _load(config.RESULTS_DIR / "03_evaluate" / "ood_report.json")
    if ood_report:
        lines += ["Out-of-distribution rejection and selective prediction (03, `ood_report.json`):", "",
                  ood_markdown(ood_report), ""]  # fmt: skip
    lite = _load(config.RESULTS_DIR / "litert.json")  # benchmarks/litert.py on the run's models
    if lite:
        lines += [f"LiteRT export (`benchmarks/litert.py`, test split, the models in `models/` when it "
                  f"ran: {lite.get('models_note', f'{preset} preset')}; load average "
                  f"{lite['load'][0]:.1f} on 2 cores, so latencies are upper bounds):", "",
                  litert_table(lite["rows"]), ""]  # fmt: skip
    if not bench:
        lines += ["Benchmarks (`make bench`), the transfer-learning and the official-split leakage "
                  "comparisons were measured on the previous split and recipe (README in commit "
                  "ddee038) and have not been re-run since.", ""]  # fmt: skip
    if bench:
        lines += ["Benchmarks (`make bench`):", "", "```", bench.get("text", "").strip(), "```", ""]
    e2e = _load(config.RESULTS_DIR / "e2e.json")
    if e2e:
        lines += [f"End-to-end `make pipeline PRESET={e2e['preset']}`: {e2e['minutes']} min, peak RSS "
                  f"{e2e['peak_gb']} GB on {e2e['cores']} cores (targets ≤ 20 min, ≤ 6 GB).", ""]  # fmt: skip
    transfer = _load(config.RESULTS_DIR / "transfer_effect.json")
    if transfer:
        lines += ["Transfer learning, same architecture (MobileNet α0.25), settings and epoch budget:", "",
                  "| initialisation | best val acc | epochs | minutes |", "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {k} | {100 * v['best_val_accuracy']:.1f} | {v['epochs']} | {v['minutes']} |"
                  for k, v in transfer.items()]  # fmt: skip
        lines.append("")
    leak = _load(config.RESULTS_DIR / "leakage_effect.json")
    if leak:

        def cell(r, key):
            lo, hi = r[f"{key}_ci"]
            return f"{100 * r[key]:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"

        lines += [f"How much the official split's leakage inflates scores — the same {leak['model']} "
                  "(trained on the official Training folder) on two test sets:", "",
                  "| test set | images | accuracy | macro-F1 |", "|---|---|---|---|",
                  f"| official Testing folder (LEAKY) | {leak['test_images_leaky']} | "
                  f"{cell(leak['leaky'], 'accuracy')} | {cell(leak['leaky'], 'f1_macro')} |",
                  f"| Testing images without a copy in Training | {leak['test_images_clean']} | "
                  f"{cell(leak['clean'], 'accuracy')} | {cell(leak['clean'], 'f1_macro')} |", ""]  # fmt: skip
    lines += [
        "Compared with the seed project's claims (99 % for Xception and MobileNet, 91 % for the CNN): "
        "those were measured on the official split, where most Testing images have an exact, "
        "re-encoded or mirrored copy in Training, with RGB inputs that leak the source through colour "
        "mode, on a GPU at 299 px. btc's numbers come from a grouped split with no duplicate group "
        "across splits, grayscale inputs, and CPU presets (128–224 px, MobileNet α0.25 — the only "
        "ImageNet weights available offline here), so they are lower and honest.",
        "",
    ]
    if summary:
        rep = summary["report"]
        lines.append(
            f"Data: {rep['official_leakage']['testing_images_with_training_copy']} of "
            f"{rep['official_leakage']['testing_images']} official Testing images have a duplicate in "
            f"Training; {rep['exact_copies_removed']} byte-identical copies removed; "
            f"{rep['label_conflict_images']} images in label-conflicting duplicate groups dropped."
        )
    return "\n".join(lines)


def main(preset: str = "quick", also: list[str] | None = None) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text:
        raise SystemExit(f"README.md has no {START} marker")
    new = re.sub(
        f"{re.escape(START)}.*{re.escape(END)}",
        f"{START}\n{section(preset, also)}\n{END}",
        text,
        flags=re.S,
    )
    config.write_text_atomic(readme, new)
    print("README results section regenerated")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", nargs="?", default="quick", help="the preset results/ came from")
    parser.add_argument("--also", nargs="*", default=[], metavar="NAME=RESULTS_DIR",
                        help="another preset's results folder, shown after the main table")  # fmt: skip
    args = parser.parse_args()
    main(args.preset, args.also)
