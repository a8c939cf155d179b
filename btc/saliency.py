"""Saliency evaluation for 03: example figures, the sanity check, faithfulness and the pointing game.

The maps themselves come from `btc.explain`, which needs only Keras and tf-keras-vis; this module
loads the trained models (`btc.artifacts`), reads the splits (`btc.datasets`) and the external
boxes (`btc.external`), and writes the reports and figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from btc import artifacts, calibration, config, datasets, external, oodfeatures, plots
from btc.explain import (
    METHODS,
    Explainer,
    cascading_randomisation,
    check_method,
    faithfulness_table,
    select_examples,
)


def saliency_report(
    model_names: Sequence[str] | None = None, methods: Sequence[str] = METHODS,
    images_per_class: int = 4, sanity_check: bool = True, sanity_images: int = 24,
    manifest_path=None, models_dir=None, results_dir=None, n_bootstrap: int = 1000, seed: int = 0,
    cam_layers: dict | None = None,
) -> dict:  # fmt: skip
    """Saliency figures, sanity check and faithfulness for trained models on the test split.

    The CAM methods use each model's layer from `cam_layers` (`choose_cam_layers`), else its last
    convolutional layer. Writes `results/saliency_maps/<model>/<class>/<file>.png` (scan and
    every method, titled with truth, prediction and calibrated confidence),
    `results/03_evaluate/<model>_sanity.png` and `results/03_evaluate/saliency_report.json`.

    Returns:
        The report: per model, the sanity-check table and the faithfulness table.
    """
    for method in methods:
        check_method(method)
    models_dir = Path(models_dir or config.MODELS_DIR)
    results_dir = Path(results_dir or config.RESULTS_DIR)
    manifest = datasets.load_manifest(manifest_path or config.MANIFEST_PATH, check_leakage=False)
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    report = {"methods": list(methods), "images_per_class": images_per_class, "models": {}}
    for name in model_names or artifacts.run_model_names(models_dir):
        model, meta = artifacts.load_trained(name, models_dir)
        raw, labels = datasets.predict_split(model, meta, manifest, "test")
        probs = calibration.calibrate(raw, meta)
        chosen = select_examples(labels, probs, images_per_class, seed)
        subset = test.loc[chosen].assign(split="test")
        images = np.concatenate([x.numpy() for x, _ in datasets.make_dataset(
            subset, "test", meta.image_size, 64, augment=False, shuffle=False, cache=False,
            class_names=meta.class_names)])  # fmt: skip
        targets = probs[chosen].argmax(1)  # explain what the model predicted
        layer = (cam_layers or {}).get(name) or meta.gradcam_layer
        explainer = Explainer(model, layer)
        maps = {m: explainer(images, targets, m) for m in methods}
        classes = meta.class_names
        for k, i in enumerate(chosen):
            truth, pred = classes[labels[i]], classes[targets[k]]
            verdict = "correct" if truth == pred else "WRONG"
            plots.saliency_overlay(
                images[k], {m: maps[m][k] for m in methods},
                f"{name} · true {truth} · predicted {pred} ({probs[i].max():.0%} calibrated) · {verdict}",
                path=results_dir / "saliency_maps" / name / truth / f"{Path(test.loc[i, 'path']).stem}.png",
            )  # fmt: skip
            plt_close()
        faithfulness = faithfulness_table(model, explainer, images, targets, methods, n_bootstrap,
                                          seed).to_dict("records")  # fmt: skip
        entry = {"cam_layer": layer, "faithfulness": faithfulness}
        if sanity_check:
            table = cascading_randomisation(model, layer, images[:sanity_images],
                                            targets[:sanity_images], methods, seed=seed)  # fmt: skip
            plots.sanity_curves(table, name, results_dir / "03_evaluate" / f"{name}_sanity.png")
            entry["sanity_check"] = table.to_dict("records")
        report["models"][name] = entry
        plt_close()
    config.write_json_atomic(results_dir / "03_evaluate" / "saliency_report.json", report)
    return report


def _external_inputs(model, meta, frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """External scans at the model's input size, the tumour class it rates highest, box masks."""
    size, classes = meta.image_size, meta.class_names
    images = np.concatenate([x.numpy() for x, _ in datasets.make_dataset(
        frame.assign(split="test"), "test", size, 64, augment=False, shuffle=False, cache=False,
        class_names=classes)])  # fmt: skip
    probs = np.concatenate([model.predict_on_batch(images[i : i + 64])
                            for i in range(0, len(images), 64)])  # fmt: skip
    tumour = np.array([c != "notumor" for c in classes])
    targets = np.where(tumour, probs, -1.0).argmax(1)  # the tumour class rated highest
    return images, targets, external.box_masks(frame, size)


def _maps(explainer, images, targets, method: str) -> np.ndarray:
    return np.concatenate([explainer(images[i : i + 16], targets[i : i + 16], method)
                           for i in range(0, len(images), 16)])  # bounded memory  # fmt: skip


def rank_cam_layers(model, candidates: Sequence[str], images, targets, masks,
                    method: str = "gradcam") -> dict:  # fmt: skip
    """Pointing game and energy in the box of a CAM method at each candidate layer.

    Args:
        model: A flat functional Keras model.
        candidates: Layer names, shallowest first.
        images: `(n, size, size, 3)` images in [0, 1].
        targets: Class index to explain per image.
        masks: `(n, size, size)` boolean boxes of what the maps should find.
        method: A CAM method of `btc.explain` (`"gradcam"`, `"gradcam++"`, `"scorecam"`).

    Returns:
        `{"layer": the best-pointing layer (the deepest on a tie), "scores": {layer:
        {"pointing", "energy"}}}`.
    """
    scores = {}
    for layer in candidates:
        found = external.box_scores(_maps(Explainer(model, layer), images, targets, method), masks)
        scores[layer] = {k: found[k] for k in ("pointing", "energy")}
    best = max(reversed(list(candidates)), key=lambda layer: scores[layer]["pointing"])
    return {"layer": best, "scores": scores}


def choose_cam_layers(model_names: Sequence[str] | None = None, external_path=None,
                      models_dir=None, results_dir=None, method: str = "gradcam") -> dict:  # fmt: skip
    """Choose each model's CAM layer by the pointing game on the external *train* groups' boxes.

    A CAM map is as fine as its layer: MobileNet's last layer is 5 × 5 at 160 px. The
    candidates are the deepest activations at the three smallest resolutions
    (`btc.oodfeatures.stage_layers`). The choice uses the train groups (their scans are in
    training as "tumour, type unknown", their boxes never are), so the test groups' pointing
    game in `external_saliency` stays a held-out number. Without an external set each model
    keeps its last convolutional layer.

    Writes `results/03_evaluate/cam_layers.json`.

    Returns:
        `{"layers": {name: layer}, "models": {name: rank_cam_layers result}, "split": "train"}`.
    """
    check_method(method)
    models_dir = Path(models_dir or config.MODELS_DIR)
    results_dir = Path(results_dir or config.RESULTS_DIR)
    ext = external.load_external(external_path or config.EXTERNAL_PATH)
    report = {"method": method, "split": "train", "layers": {}, "models": {}}
    names = model_names or artifacts.run_model_names(models_dir)
    train = None if ext is None else ext[ext.split == "train"].reset_index(drop=True)
    for name in names:
        model, meta = artifacts.load_trained(name, models_dir)
        if train is None or train.empty:
            report["layers"][name] = meta.gradcam_layer
            continue
        candidates = oodfeatures.stage_layers(model, meta.gradcam_layer)
        ranked = rank_cam_layers(model, candidates, *_external_inputs(model, meta, train), method)
        report["models"][name] = ranked
        report["layers"][name] = ranked["layer"]
    if not report["models"]:
        report["skipped"] = "no external train groups: each model keeps its last conv layer"
    config.write_json_atomic(results_dir / "03_evaluate" / "cam_layers.json", report)
    return report


def external_saliency(
    model_names: Sequence[str] | None = None, methods: Sequence[str] = ("gradcam", "gradcam++"),
    external_path=None, models_dir=None, results_dir=None, n_bootstrap: int = 1000, seed: int = 0,
    sanity: dict | None = None, cam_layers: dict | None = None,
) -> dict:  # fmt: skip
    """Score saliency maps on the external tumour boxes: pointing game and energy in the box.

    Each external test scan (held-out groups) is explained for the tumour class the model rates
    highest, at the model's input size, and compared with an image-centre baseline. The CAM
    methods use each model's layer from `cam_layers` (else its last convolutional layer). A
    method is recommended as the demo's default only if its sanity check passes with the CI's
    upper bound below 0.5 (`sanity`: a `saliency_report` result) and it has the best pointing
    game.

    Writes `results/03_evaluate/external_saliency.json` and `models/saliency.json` (the
    recommended method and the CAM layer per model, for the demo).

    Returns:
        `{"models": {name: {method: scores}}, "recommended": {name: method or None},
        "cam_layers": {name: layer}}`.
    """
    for method in methods:
        check_method(method)
    models_dir = Path(models_dir or config.MODELS_DIR)
    results_dir = Path(results_dir or config.RESULTS_DIR)
    ext = external.load_external(external_path or config.EXTERNAL_PATH)
    report = {"methods": list(methods), "models": {}, "recommended": {},
              "cam_layers": dict(cam_layers or {})}  # fmt: skip
    if ext is None or not (ext.split == "test").any():
        report["skipped"] = "no external set (01 found no external_dir)"
        return report
    test = ext[ext.split == "test"].reset_index(drop=True)
    groups = test["group"].to_numpy()
    for name in model_names or artifacts.run_model_names(models_dir):
        model, meta = artifacts.load_trained(name, models_dir)
        images, targets, masks = _external_inputs(model, meta, test)
        layer = report["cam_layers"].setdefault(name, meta.gradcam_layer)
        explainer = Explainer(model, layer)
        entry = {}
        for method in methods:
            scores = external.box_scores(_maps(explainer, images, targets, method), masks)
            scores["pointing_ci"] = external.group_bootstrap(
                np.array(scores.pop("pointing_hits")), groups, n_bootstrap, seed
            )
            scores["centre_pointing_ci"] = external.group_bootstrap(
                np.array(scores.pop("centre_hits")), groups, n_bootstrap, seed
            )
            entry[method] = scores
        report["models"][name] = entry
        checked = (sanity or {}).get("models", {}).get(name, {}).get("sanity_check", [])
        trusted = {r["method"] for r in checked if r.get("passes_ci")}
        ranked = sorted((m for m in entry if m in trusted), key=lambda m: -entry[m]["pointing"])
        report["recommended"][name] = ranked[0] if ranked else None
        plt_close()
    config.write_json_atomic(results_dir / "03_evaluate" / "external_saliency.json", report)
    config.write_json_atomic(models_dir / "saliency.json", {
        "recommended": report["recommended"], "cam_layers": report["cam_layers"],
        "rule": "sanity-check CI below 0.5, then best pointing game; CAM layer by the pointing "
                "game on the external train groups"})  # fmt: skip
    return report


def plt_close() -> None:
    """Close every open matplotlib figure (long reports would otherwise pile them up)."""
    import matplotlib.pyplot as plt

    plt.close("all")
