"""The OOD report of one model (or the ensemble): held-out scans and images, said "not a brain".

Called by `btc.oodeval.fit_and_report` after the fit; reads the test split, the external test
groups and the report part of the OOD images, which the fit never sees.
"""

from __future__ import annotations

import numpy as np

from btc import ood, oodmetrics


def model_report(
    info: dict, member: dict, colours: dict, images: list[dict], n_bootstrap, seed
) -> dict:
    """Test split, external test groups and OOD images of one model (or the ensemble)."""
    score = {s: ood.combine(v, colours[s]) for s, v in member["scaled"].items()}
    t, cal, y = info["ood_threshold"], member["calibrated"]["test"], member["labels"]["test"]
    said = {s: ood.ood_kinds(v, colours[s], t, member["ct"].get(s, False), info["ood_far"])
            for s, v in score.items()}  # fmt: skip
    out_of = {s: k != "" for s, k in said.items()}
    rejected = out_of["test"]
    limit = info["confidence_threshold"] if info["target_met"] else np.inf
    answered = ~rejected & (cal.max(1) >= limit)
    correct = cal.argmax(1) == y
    ranking = np.where(rejected, -1.0, cal.max(1))  # rejected scans are abstained from first
    selective = oodmetrics.bootstrap(oodmetrics.selective_metrics, [[ranking, correct, answered]], n_bootstrap, seed)  # fmt: skip
    out = {
        "method": info["method"], "ood_threshold": t,
        "confidence_threshold": info["confidence_threshold"], "target_met": info["target_met"],
        "val_selective": info["val_selective"], "test_rejected": oodmetrics.rate(rejected),
        "status_counts": {"predicted": int(answered.sum()), "out_of_distribution": int(rejected.sum()),
                          "uncertain": int((~rejected & ~answered).sum())},
        "selective": oodmetrics.with_ci(oodmetrics.selective_metrics(ranking, correct, answered), selective),
        "external_accepted": oodmetrics.rate(~out_of["ext_test"]) if "ext_test" in score else None,
        "external_rejected": oodmetrics.external_rejected(out_of),
        "rejected_by_kind": {}, "curve": oodmetrics.risk_coverage(ranking, correct),
        "ood_far": info["ood_far"],  # brain scans btc calls "not a brain MRI" (should be none):
        "not_brain": {s: oodmetrics.rate(said[s] == ood.OOD_KINDS[0]) for s in ("test", "ext_test") if s in said},
    }  # fmt: skip
    for kind in sorted({i["kind"] for i in images}):
        for part in ("report", "select"):
            mask = np.array([i["kind"] == kind and i["part"] == part for i in images])
            if mask.any():
                out["rejected_by_kind"].setdefault(kind, {})[part] = oodmetrics.rate(out_of["images"][mask])  # fmt: skip
        mask = np.array([i["kind"] == kind for i in images])
        out["rejected_by_kind"][kind]["all"] = oodmetrics.rate(out_of["images"][mask])
        out["rejected_by_kind"][kind]["not_brain"] = oodmetrics.rate(said["images"][mask] == ood.OOD_KINDS[0])  # fmt: skip
    reported = np.array([i["part"] == "report" and i["expect"] == "reject" for i in images])
    if reported.any():
        out["report"] = oodmetrics.with_ci(
            *oodmetrics.separation(score["test"], score["images"][reported], n_bootstrap, seed)
        )
    ct = np.broadcast_to(member["ct"].get("images", False), len(images))
    for image, s, r, c, k in zip(images, score["images"], out_of["images"], ct, said["images"]):
        image.setdefault("scores", {})[info["model"]] = round(float(s), 4)
        image.setdefault("rejected", {})[info["model"]] = bool(r)
        image.setdefault("ood_kind", {})[info["model"]] = str(k) or None
        image.setdefault("ct_like", {})[info["model"]] = bool(c)
    return out


def method_aurocs(scaled: dict, colours: dict, reported: np.ndarray) -> dict | None:
    """Every method's AUROC on the report part (test split vs reported OOD images)."""
    if not reported.any():
        return None
    return {m: round(oodmetrics.auroc(ood.combine(scaled[m]["test"], colours["test"]),
                               ood.combine(scaled[m]["images"], colours["images"])[reported]), 6)
            for m in scaled}  # fmt: skip
