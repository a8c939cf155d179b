"""Tests of btc.oodmetrics: AUROC, FPR at TPR, risk–coverage, bootstrap and Clopper–Pearson."""

from __future__ import annotations

import numpy as np
import pytest

from btc import oodmetrics


def test_evaluation_helpers_on_known_values():
    inside, outside = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.35, 0.9, 1.0])
    assert oodmetrics.auroc(inside, outside) == pytest.approx(11 / 12)
    assert oodmetrics.fpr_at_tpr(inside, outside, 0.95) == pytest.approx(
        1 / 3
    )  # 0.35 ≤ 0.4 accepted
    score = np.array([0.9, 0.9, 0.8, 0.7, -1.0])
    correct = np.array([1, 0, 1, 1, 0], bool)
    coverage, risk = oodmetrics.risk_coverage(score, correct)
    np.testing.assert_allclose(coverage, [0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(risk, [0.5, 1 / 3, 0.25, 0.4])
    m = oodmetrics.selective_metrics(score, correct, score >= 0.8)
    assert m["coverage"] == 0.6 and m["accuracy_at_coverage"] == pytest.approx(2 / 3)
    assert m["aurc"] == pytest.approx(0.4 * 0.5 + 0.2 / 3 + 0.2 * 0.25 + 0.2 * 0.4)
    assert m["coverage_at_99_accuracy"] == 0.0
    ci = oodmetrics.bootstrap(
        lambda a, b: {"auroc": oodmetrics.auroc(a, b)}, [[inside], [outside]], 200, 0
    )
    assert 0 <= ci["auroc"][0] <= 11 / 12 <= ci["auroc"][1] <= 1
    assert oodmetrics.clopper_pearson(0, 5)[0] == 0 and oodmetrics.clopper_pearson(5, 5) == (pytest.approx(0.478, abs=1e-3), 1.0)  # fmt: skip


def test_rates_by_kind_counts_each_part_and_what_the_rejections_said():
    images = [{"kind": k, "part": p} for k, p in
              [("photo", "select"), ("photo", "report"), ("photo", "report"), ("brain", "report")]]  # fmt: skip
    rejected, not_brain = np.array([1, 1, 0, 1], bool), np.array([1, 0, 0, 0], bool)
    rates = oodmetrics.rates_by_kind(images, rejected, not_brain)
    assert rates["photo"]["select"]["count"] == 1 and rates["photo"]["report"]["count"] == 1
    assert (rates["photo"]["all"]["count"], rates["photo"]["all"]["n"]) == (2, 3)
    assert rates["photo"]["not_brain"]["count"] == 1 and rates["brain"]["not_brain"]["count"] == 0
    assert "select" not in rates["brain"] and rates["brain"]["all"]["rate"] == 1.0
    test = {"a": np.array([0.1, 0.2]), "b": np.array([0.9, 0.8])}
    images_ = {"a": np.array([0.5, 0.0, 0.6]), "b": np.array([0.5, 0.0, 0.6])}
    aurocs = oodmetrics.method_aurocs(test, images_, np.array([1, 0, 1], bool))
    assert aurocs == {"a": 1.0, "b": 0.0}
    assert oodmetrics.method_aurocs(test, images_, np.zeros(3, bool)) is None
