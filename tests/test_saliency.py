"""Tests of btc.saliency: the 03 saliency report and the choice of each model's CAM layer."""

from __future__ import annotations

from btc import models, saliency
from tests.conftest import QUADRANT_MODEL


def test_saliency_report_writes_titled_figures_and_json(tiny_models, tmp_path):
    import json

    models_dir, manifest = tiny_models
    report = saliency.saliency_report(["cnn"], ["gradcam", "smoothgrad"], images_per_class=2,
                                     sanity_images=4, manifest_path=manifest, models_dir=models_dir,
                                     results_dir=tmp_path, n_bootstrap=100)  # fmt: skip
    figures = list((tmp_path / "saliency_maps" / "cnn").glob("*/*.png"))
    assert len(figures) >= 4 and {p.parent.name for p in figures} <= set(explain_classes())
    saved = json.loads((tmp_path / "03_evaluate" / "saliency_report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    faith = {row["method"] for row in report["models"]["cnn"]["faithfulness"]}
    assert faith == {"gradcam", "smoothgrad", "random baseline", "centre-blob baseline"}
    assert (tmp_path / "03_evaluate" / "cnn_sanity.png").is_file()


def explain_classes():
    from btc.config import CLASS_NAMES

    return CLASS_NAMES


def test_cam_layer_is_the_candidate_that_points_best(quadrant_model):
    from btc import oodfeatures

    model, x, y, masks = quadrant_model
    candidates = oodfeatures.stage_layers(model, models.get_spec(QUADRANT_MODEL).gradcam_layer)
    ranked = saliency.rank_cam_layers(model, candidates, x, y, masks)
    assert len(candidates) >= 2 and set(ranked["scores"]) == set(candidates)
    pointing = {layer: s["pointing"] for layer, s in ranked["scores"].items()}
    assert pointing[ranked["layer"]] == max(pointing.values())
    assert pointing[ranked["layer"]] > 0.5  # the evidence quadrant: chance is 0.25
    assert all(0 <= s["energy"] <= 1 for s in ranked["scores"].values())
