"""Task scores against hand computations, and the paired bootstrap against closed forms."""

import numpy as np
import pytest

from flex_bert.task_eval import paired_bootstrap, scores


def test_single_label_scores_by_hand():
    truth, pred = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 2]
    s = scores(truth, pred, ["a", "b", "c", "d"], "single_label")
    # a: TP 1, FP 1, FN 1 -> 2/4; b: TP 2, FP 1 -> 4/5; c: TP 1, FN 1 -> 2/3; d: absent from both -> None
    assert s["per_class_f1"] == pytest.approx({"a": 0.5, "b": 0.8, "c": 2 / 3, "d": None})
    assert s["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert s["accuracy"] == pytest.approx(4 / 6) and s["items"] == 6


def test_multi_label_scores_by_hand():
    truth = [[1, 0], [1, 1], [0, 0]]
    pred = [[1, 0], [0, 1], [0, 1]]
    s = scores(truth, pred, ["x", "y"], "multi_label")
    # exact match 1 of 3; x: TP 1, FN 1 -> 2/3; y: TP 1, FP 1 -> 2/3
    assert s["accuracy"] == pytest.approx(1 / 3)
    assert s["per_class_f1"] == pytest.approx({"x": 2 / 3, "y": 2 / 3})
    assert s["macro_f1"] == pytest.approx(2 / 3)


def test_paired_bootstrap_matches_the_closed_form():
    """B is right wherever A is, and on m more of n examples: a resample shows no gain exactly when it draws
    none of those m, with probability ((n - m) / n) ** n; the difference is never negative."""
    n, m = 20, 2
    truth = np.zeros(n, dtype=int)
    a = np.array([0] * 10 + [1] * 10)
    b = a.copy()
    b[10 : 10 + m] = 0
    out = paired_bootstrap(truth, [a, a], [b, b], 2, "single_label", "accuracy", resamples=20000, seed=1)
    assert out["diff"] == pytest.approx(m / n)
    assert out["ci95"][0] >= 0.0
    assert out["p"] == pytest.approx(2 * ((n - m) / n) ** n, abs=0.015)  # 0.243; Monte Carlo SE ~0.005


def test_paired_bootstrap_resamples_sentences_for_token_tasks():
    """10 sentences of 2 scored words; B gets both words of one more sentence right. Resampling sentences:
    P(no gain) = (9/10) ** 10 = 0.349 (resampling words would give (18/20) ** 20 = 0.122)."""
    truth = np.zeros(20, dtype=int)
    groups = np.repeat(np.arange(10), 2)
    a = np.array([0] * 10 + [1] * 10)
    b = a.copy()
    b[10:12] = 0
    out = paired_bootstrap(truth, [a], [b], 2, "token", "accuracy", groups=groups, resamples=20000, seed=2)
    assert out["p"] == pytest.approx(2 * 0.9**10, abs=0.02)
    equal = paired_bootstrap(truth, [a], [a], 2, "token", "macro_f1", groups=groups, resamples=400)
    assert equal["diff"] == 0.0 and equal["p"] == 1.0
