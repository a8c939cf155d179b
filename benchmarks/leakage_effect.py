"""How much does the official split's leakage inflate accuracy? Same model, two test sets.

Builds the `official` split keeping the leaked Testing images (`drop_leaked=False`), trains one
model with the quick preset's settings on its train/val part, then scores the same model on
(a) the whole official Testing folder (LEAKY, what the seed project reported) and (b) only the
Testing images with no duplicate in Training. Writes `results/leakage_effect.json`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd

from btc import config, data, evaluate, pipeline, train


def main(model: str = "mobilenet") -> dict:
    preset = pipeline.load_preset("quick")
    work = Path(tempfile.mkdtemp(prefix="btc-leak-"))
    cfg = config.PreprocessConfig(split_mode="official", drop_leaked=False, seed=preset["seed"],
                                  near_threshold=preset["near_threshold"])  # fmt: skip
    result = data.preprocess(cfg, manifest_path=work / "official_leaky.csv")
    manifest = result["manifest"]
    tcfg = train.configs_for([model], epochs_cnn=preset["epochs_cnn"],
                             mobilenet_alpha=preset["mobilenet_alpha"], image_size=preset["image_size"],
                             batch_size=preset["batch_size"], epochs_head=preset["epochs_head"],
                             epochs_finetune=preset["epochs_finetune"], lr_head=preset["lr_head"],
                             lr_finetune=preset["lr_finetune"], patience=preset["patience"],
                             finetune_fraction=preset["finetune_fraction"], weights=preset["weights"])[0]  # fmt: skip
    train.train(tcfg, work / "official_leaky.csv", work / "models", work / "results", verbose=2)
    seen = set(manifest.loc[manifest.split != "test", "group"]) | set(
        manifest.loc[manifest.split != "test", "sha256"]
    )
    test = manifest[manifest.split == "test"]
    clean = test[~(test.group.isin(seen) | test.sha256.isin(seen))]
    clean_manifest = pd.concat([manifest[manifest.split != "test"], clean])
    clean_manifest.to_csv(work / "official_clean.csv", index=False)
    leaky = evaluate.evaluate([tcfg.name], work / "official_leaky.csv", work / "models", work / "leaky",
                              allow_leaky=True, use_ensemble=False)  # fmt: skip
    honest = evaluate.evaluate([tcfg.name], work / "official_clean.csv", work / "models", work / "clean",
                               use_ensemble=False)  # fmt: skip
    out = {"model": model, "test_images_leaky": len(test), "test_images_clean": len(clean),
           "leaky": {k: leaky["table"][0][k] for k in ("accuracy", "accuracy_ci", "f1_macro", "f1_macro_ci")},
           "clean": {k: honest["table"][0][k] for k in ("accuracy", "accuracy_ci", "f1_macro", "f1_macro_ci")}}  # fmt: skip
    print(f"{'test set':>28} {'images':>7} {'accuracy':>22} {'macro-F1':>22}")
    for key, label, n in (("leaky", "official Testing (LEAKY)", len(test)),
                          ("clean", "Testing without copies", len(clean))):  # fmt: skip
        r = out[key]
        print(f"{label:>28} {n:>7} {100 * r['accuracy']:>6.1f} [{100 * r['accuracy_ci'][0]:.1f}, "
              f"{100 * r['accuracy_ci'][1]:.1f}] {100 * r['f1_macro']:>6.1f} [{100 * r['f1_macro_ci'][0]:.1f}, "
              f"{100 * r['f1_macro_ci'][1]:.1f}]")  # fmt: skip
    config.write_json_atomic(config.RESULTS_DIR / "leakage_effect.json", out)
    return out


if __name__ == "__main__":
    main(*sys.argv[1:])
