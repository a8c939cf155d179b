"""Recipe study: which training choices find tumours rather than the dataset's sources.

Each row trains one model on the current manifest (01) and reports its best **validation**
accuracy (internal; only validation chooses), its tumour sensitivity on the held-out external
Br35H groups (`data/processed/external.csv`, split `test`, group-bootstrap 95 % CI) and the
minutes it took. Test numbers with CIs come from 03 for the chosen rows only.

    python benchmarks/recipes.py                      # every row
    python benchmarks/recipes.py --only B D           # some rows

Rows run one after another (never two trainings at once on 2 cores); results are appended to
`results/recipes.json` as each row finishes, so an interrupted study keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from btc import artifacts, config, datasets, external, train

BASE = dict(model="mobilenet", alpha=0.25, image_size=128, batch_size=32, weights="imagenet",
            patience=4, seed=42, epochs_head=2, epochs_finetune=8, lr_head=1e-3,
            lr_finetune=2e-4, finetune_fraction=1.0)  # fmt: skip
ROWS = {
    "A": ("two phases, BN frozen (the old recipe), 10 epochs",
          dict(recipe="two_phase", style_augment=False, external=False)),
    "B": ("one phase, BN adapts, warm-up + cosine to 1e-3",
          dict(recipe="one_phase", style_augment=False, external=False)),
    "C": ("B + style augmentation (gamma, resolution, noise)",
          dict(recipe="one_phase", style_augment=True, external=False)),
    "D": ("B + style augmentation + external train groups as 'tumour, type unknown'",
          dict(recipe="one_phase", style_augment=True, external=True)),
    "E": ("D at 160 px", dict(recipe="one_phase", style_augment=True, external=True,
                              image_size=160)),
    "F": ("cnn_plain (4 conv blocks, flatten + dense head) from scratch, D's data, 12 epochs",
          dict(model="cnn_plain", weights="none", epochs_head=12, epochs_finetune=0,
               style_augment=True, external=True, patience=12)),
    "G": ("cnn (residual blocks, global-average-pool head) from scratch, D's data, 12 epochs",
          dict(model="cnn", weights="none", epochs_head=12, epochs_finetune=0,
               style_augment=True, external=True, patience=12)),
    "H": ("G with peak learning rate 3e-3", dict(model="cnn", weights="none", epochs_head=12,
          epochs_finetune=0, style_augment=True, external=True, patience=12, lr_head=3e-3)),
    "I": ("D + class weights (inverse class frequency)",
          dict(recipe="one_phase", style_augment=True, external=True, class_weights=True)),
    "J": ("D + label smoothing 0.1",
          dict(recipe="one_phase", style_augment=True, external=True, label_smoothing=0.1)),
    "K": ("D at 224 px (the ImageNet weights' own input size)",
          dict(recipe="one_phase", style_augment=True, external=True, image_size=224)),
}  # fmt: skip


def external_sensitivity(model, metadata: dict, ext) -> dict:
    """Tumour sensitivity of one model on the external test groups."""
    test = ext[ext.split == "test"]
    probs, _ = datasets.predict_split(model, metadata, test, "test")
    return external.tumour_sensitivity(probs, test["group"].to_numpy(), metadata["class_names"])


def run_row(key: str, work: Path, ext) -> dict:
    label, overrides = ROWS[key]
    cfg = train.TrainConfig(**{**BASE, **overrides, "name": f"recipe_{key}"})
    start = time.perf_counter()
    meta = train.train(cfg, config.MANIFEST_PATH, work / "models", work / "results", verbose=2)
    minutes = (time.perf_counter() - start) / 60
    model, meta = artifacts.load_trained(cfg.name, work / "models")
    sens = external_sensitivity(model, meta, ext) if ext is not None else None
    return {"row": key, "recipe": label, "image_size": cfg.image_size, "model": cfg.model,
            "best_val_accuracy": round(meta["best_val_accuracy"], 4), "epochs": meta["epochs_run"],
            "minutes": round(minutes, 1), "external_sensitivity": sens,
            "selection": train.MONITOR}  # the epoch kept  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = ["| row | recipe | px | val acc | external sensitivity [95 % CI] | epochs | minutes |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        s = r["external_sensitivity"]
        ext = (
            f"{100 * s['sensitivity']:.1f} [{100 * s['ci'][0]:.1f}, {100 * s['ci'][1]:.1f}]"
            if s
            else "–"
        )
        mark = " ‡" if r.get("selection", "val_loss") == "val_loss" else ""
        lines.append(f"| {r['row']}{mark} | {r['recipe']} | {r['image_size']} | "
                     f"{100 * r['best_val_accuracy']:.1f} | {ext} | {r['epochs']} | {r['minutes']} |")  # fmt: skip
    if any(r.get("selection", "val_loss") == "val_loss" for r in rows):
        lines += ["", "‡ kept the epoch of lowest validation loss (btc before 15414fd); its val acc is "
                  "that epoch's. Later rows keep the epoch of highest validation accuracy."]  # fmt: skip
    return "\n".join(lines)


def main(only: list[str] | None = None) -> list[dict]:
    ext = external.load_external(config.EXTERNAL_PATH)
    out_path = config.RESULTS_DIR / "recipes.json"
    done = json.loads(out_path.read_text()) if out_path.is_file() else []
    work = Path(tempfile.mkdtemp(prefix="btc-recipes-"))
    for key in only or list(ROWS):
        row = run_row(key, work, ext)
        done = [r for r in done if r["row"] != key] + [row]
        config.write_json_atomic(out_path, sorted(done, key=lambda r: r["row"]))
        print(table([row]), flush=True)
    print(table(sorted(done, key=lambda r: r["row"])))
    return done


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(ROWS))
    main(parser.parse_args().only)
