"""Does transfer learning help? MobileNet with ImageNet weights vs from scratch, same budget.

Trains the quick preset's MobileNet from random initialisation with exactly the quick preset's
settings and compares its best validation accuracy with `models/mobilenet` (ImageNet weights,
trained by `make pipeline`). Writes `results/transfer_effect.json`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from btc import config, pipeline, train


def main() -> dict:
    preset = pipeline.load_preset("quick")
    keys = ["image_size", "batch_size", "epochs_head", "epochs_finetune", "lr_head", "lr_finetune",
            "finetune_fraction", "patience", "seed"]  # fmt: skip
    common = {k: preset[k] for k in keys}
    cfg = train.configs_for(["mobilenet"], epochs_cnn=preset["epochs_cnn"],
                            mobilenet_alpha=preset["mobilenet_alpha"], weights="none", **common)[0]  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="btc-scratch-"))
    scratch = train.train(cfg, config.MANIFEST_PATH, work / "models", work / "results", verbose=2)
    imagenet = json.loads((config.MODELS_DIR / "mobilenet" / "metadata.json").read_text())
    out = {name: {"weights": m["config"]["weights"], "best_val_accuracy": m["best_val_accuracy"],
                  "epochs": m["epochs_run"], "minutes": round(m["training_seconds"] / 60, 1)}
           for name, m in (("imagenet", imagenet), ("scratch", scratch))}  # fmt: skip
    print(f"{'init':>9} {'best val acc':>13} {'epochs':>7} {'minutes':>8}")
    for name, r in out.items():
        print(
            f"{name:>9} {100 * r['best_val_accuracy']:>12.1f}% {r['epochs']:>7} {r['minutes']:>8}"
        )
    config.write_json_atomic(config.RESULTS_DIR / "transfer_effect.json", out)
    return out


if __name__ == "__main__":
    main()
