"""Numbers of the OOD check and of selective prediction: AUROC, FPR at 95 % TPR, risk–coverage.

Used by `btc.oodeval` (03_evaluate) to choose and report the OOD method; `clopper_pearson` also
bounds the validation error of the confidence threshold (`btc.ood.fit_confidence_threshold`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) binomial CI of `k / n`, for rates over a handful of images.

    A bootstrap of 5 of 5 collapses to [1, 1]; this interval stays honest at 0 and n.

    Args:
        k: Successes.
        n: Trials (`(0, 1)` for none).
        level: Confidence level.

    Returns:
        `(low, high)`.
    """
    if n == 0:
        return (0.0, 1.0)
    a = (1 - level) / 2
    lo = stats.beta.ppf(a, k, n - k + 1) if k > 0 else 0.0
    return (float(lo), float(binomial_upper(k, n, 1 - a)))


def binomial_upper(k: np.ndarray, n: np.ndarray, level: float = 0.95) -> np.ndarray:
    """One-sided exact (Clopper–Pearson) upper bounds of error rates `k / n`, elementwise.

    Args:
        k: Errors.
        n: Trials (each > 0).
        level: One-sided confidence level.

    Returns:
        Upper bounds; 1 where `k == n`.
    """
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        upper = stats.beta.ppf(level, k + 1, np.maximum(n - k, 1e-12))
    return np.where(k >= n, 1.0, upper)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """AUROC of telling OOD images (positives) from in-distribution ones by their score.

    Args:
        in_scores: `(n,)` scores of in-distribution images.
        out_scores: `(m,)` scores of OOD images (higher should mean OOD).

    Returns:
        The area under the ROC curve (0.5 = chance, 1 = perfect).
    """
    y = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    return float(skm.roc_auc_score(y, np.r_[in_scores, out_scores]))


def fpr_at_tpr(in_scores: np.ndarray, out_scores: np.ndarray, tpr: float = 0.95) -> float:
    """FPR at `tpr` TPR, positives being in-distribution images (Liu et al., 2020).

    Args:
        in_scores: `(n,)` scores of in-distribution images.
        out_scores: `(m,)` scores of OOD images.
        tpr: Share of in-distribution images the threshold accepts.

    Returns:
        The share of OOD images still accepted at that threshold.
    """
    return float(np.mean(out_scores <= np.quantile(in_scores, tpr, method="higher")))


def risk_coverage(score: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The risk–coverage curve (Geifman & El-Yaniv, 2017).

    Args:
        score: `(n,)` ranking score (answer the highest first), e.g. calibrated confidence.
        correct: `(n,)` whether each answer is right.

    Returns:
        `(coverage, risk)`: for each distinct score, the share answered at or above it and the
        error rate among those (ties are answered together).
    """
    order = np.argsort(-score, kind="stable")
    s, wrong = score[order], ~np.asarray(correct, bool)[order]
    k = np.arange(1, len(s) + 1)
    ends = np.r_[s[1:] != s[:-1], True]
    return k[ends] / len(s), (np.cumsum(wrong) / k)[ends]


def selective_metrics(score: np.ndarray, correct: np.ndarray, answered: np.ndarray) -> dict:
    """Selective-prediction numbers of one operating point and its whole curve.

    Args:
        score: `(n,)` ranking score (see `risk_coverage`).
        correct: `(n,)` whether each answer is right.
        answered: `(n,)` whether the product answers (status `"predicted"`).

    Returns:
        `aurc` (area under the risk–coverage curve), `coverage` and `accuracy_at_coverage` of
        `answered`, and `coverage_at_99_accuracy` (the most answered at ≥ 99 % accuracy).
    """
    coverage, risk = risk_coverage(score, correct)
    weights = np.diff(np.r_[0.0, coverage])  # each block of tied scores weighs its size
    at99 = coverage[risk <= 0.01]
    return {"aurc": float(np.sum(weights * risk)), "coverage": float(np.mean(answered)),
            "accuracy_at_coverage": float(np.mean(correct[answered])) if answered.any() else None,
            "coverage_at_99_accuracy": float(at99.max()) if len(at99) else 0.0}  # fmt: skip


def bootstrap(fn, groups: Sequence[Sequence[np.ndarray]], n_resamples: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict:  # fmt: skip
    """Percentile CIs of `fn(*arrays)` (a dict of numbers), each group resampled on its own.

    Args:
        fn: Statistic of the resampled arrays, returning `{name: number or None}`.
        groups: Lists of aligned arrays; each list is resampled with one set of indices.
        n_resamples: Bootstrap resamples.
        seed: Resampling seed.
        level: Confidence level.

    Returns:
        `{name: [low, high]}` (`[None, None]` when the statistic is never defined).
    """
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_resamples):
        args = []
        for group in groups:
            idx = rng.integers(0, len(group[0]), len(group[0]))
            args += [np.asarray(a)[idx] for a in group]
        draws.append(fn(*args))
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    out = {}
    for key in draws[0]:
        values = np.array([np.nan if d[key] is None else d[key] for d in draws], dtype=float)
        ok = values[~np.isnan(values)]
        out[key] = [round(float(v), 6) for v in np.percentile(ok, q)] if len(ok) else [None, None]
    return out


def kind_balanced_auroc(inside: dict[str, np.ndarray], outside: dict[str, np.ndarray]) -> float:
    """How well a score separates every kind to accept from every kind to reject, each pair alike.

    Args:
        inside: Scores of each kind that must be accepted (validation scans, held-out Br35H scans,
            brain MRI from other sources).
        outside: Scores of each kind that must be rejected (chest X-ray, head CT, photos, ...).

    Returns:
        The mean AUROC over all (inside kind, outside kind) pairs: 2 head CTs weigh as much as 13
        photographs, and the few brain MRI of other sources as much as 977 validation scans. No
        threshold, so one image near it does not flip the choice.
    """
    pairs = [auroc(a, b) for a in inside.values() for b in outside.values()
             if len(a) and len(b)]  # fmt: skip
    return float(np.mean(pairs)) if pairs else float("nan")


def selection_aurocs(sources: dict[str, np.ndarray], score: np.ndarray, images: list[dict]):
    """One method's plain and kind-balanced AUROC on the select part of the OOD images.

    Args:
        sources: In-distribution scores by source (e.g. `val`), all to accept.
        score: The score of every OOD image (higher = more out of distribution).
        images: Their dicts (`part`, `expect`, `kind`) from `btc.oodsets`; only `part == "select"`
            is used: accepted kinds join `sources` inside, the rejected kinds are outside.

    Returns:
        `(auroc, kind_balanced_auroc)`, rounded to 6 digits.
    """
    select = np.array([i["part"] == "select" for i in images])
    accept = select & np.array([i["expect"] == "accept" for i in images])
    reject, kinds = select & ~accept, np.array([i["kind"] for i in images])
    plain = auroc(np.concatenate([*sources.values(), score[accept]]), score[reject])
    inside = sources | {k: score[accept & (kinds == k)] for k in np.unique(kinds[accept])}
    outside = {k: score[reject & (kinds == k)] for k in np.unique(kinds[reject])}
    return round(plain, 6), round(kind_balanced_auroc(inside, outside), 6)


def separation(inside: np.ndarray, outside: np.ndarray, n_resamples: int, seed: int):
    """AUROC and FPR at 95 % TPR of in-distribution (`inside`) against OOD scores, and their CIs.

    Args:
        inside: Scores of in-distribution scans (higher = less like them).
        outside: Scores of OOD images.
        n_resamples: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        `(point, ci)`: `{"auroc", "fpr_at_95_tpr"}` and `bootstrap`'s CI of each.
    """

    def numbers(a, b):
        return {"auroc": auroc(a, b), "fpr_at_95_tpr": fpr_at_tpr(a, b)}

    return numbers(inside, outside), bootstrap(numbers, [[inside], [outside]], n_resamples, seed)


def rate(flags: np.ndarray) -> dict:
    """`n`, `count` and `rate` of the flagged items, with its 95 % Clopper–Pearson `ci`."""
    k, n = int(np.sum(flags)), len(flags)
    return {"n": n, "count": k, "rate": round(k / n, 6) if n else None,
            "ci": [round(v, 6) for v in clopper_pearson(k, n)]}  # fmt: skip


def with_ci(point: dict, ci: dict) -> dict:
    """Point values rounded to 6 digits, each with its CI as `<name>_ci`."""
    rounded = {k: None if v is None else round(v, 6) for k, v in point.items()}
    return rounded | {f"{k}_ci": v for k, v in ci.items()}


def external_rejected(out_of: dict) -> dict | None:
    """Br35H tumour scans rejected: held-out test groups, all groups (train groups scored by the
    stored fit, which saw them) and the train groups scored by a fit without their fold.

    Args:
        out_of: Rejection flags per set (`ext_test`, `ext_train`, `ext_train_held_out`).

    Returns:
        `rate` of each (`test`, `all`, `train_held_out`), or `None` without an external set.
    """
    if "ext_test" not in out_of:
        return None
    out = {"test": rate(out_of["ext_test"])}
    if "ext_train" in out_of:
        out["all"] = rate(np.r_[out_of["ext_test"], out_of["ext_train"]])
        out["train_held_out"] = rate(out_of["ext_train_held_out"])
    return out


def rates_by_kind(images: list[dict], rejected: np.ndarray, not_brain: np.ndarray) -> dict:
    """`rate` of the rejected images per kind: its `report` and `select` parts, `all`, and of
    those called "not a brain MRI" (`not_brain`, out of all the kind's images)."""
    out, kinds = {}, np.array([i["kind"] for i in images])
    for kind in sorted(set(kinds)):
        for part in ("report", "select"):
            mask = (kinds == kind) & np.array([i["part"] == part for i in images], bool)
            if mask.any():
                out.setdefault(kind, {})[part] = rate(rejected[mask])
        out[kind] |= {
            "all": rate(rejected[kinds == kind]),
            "not_brain": rate(not_brain[kinds == kind]),
        }
    return out


def method_aurocs(test: dict, images: dict, reported: np.ndarray) -> dict | None:
    """Every method's AUROC on the report part: `test[m]` scans vs `images[m][reported]`."""
    if not reported.any():
        return None
    return {m: round(auroc(test[m], images[m][reported]), 6) for m in test}
