"""OOD metrics (higher score = more ID; FPR95 in both conventions) against scikit-learn and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from unleash_ood.errors import UserError
from unleash_ood.metrics import (
    accuracy,
    aupr_in,
    aupr_out,
    auroc,
    fpr_at_95_tpr,
    fpr_at_95_tpr_ood_positive,
    ood_metrics,
)


def _sk_fpr95(id_s: np.ndarray, ood_s: np.ndarray) -> float:
    labels = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]
    fpr, tpr, _ = roc_curve(labels, np.r_[id_s, ood_s], drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= 0.95)])


def _sk_fpr95_ood_positive(id_s: np.ndarray, ood_s: np.ndarray) -> float:
    """OpenOOD v1.5's recipe: OOD labelled 1, score negated, first point with TPR ≥ 0.95."""
    labels = np.r_[np.zeros(len(id_s)), np.ones(len(ood_s))]
    fpr, tpr, _ = roc_curve(labels, -np.r_[id_s, ood_s], drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= 0.95)])


def _brute_fpr95_ood_positive(id_s: np.ndarray, ood_s: np.ndarray) -> float:
    """Lowest threshold t flagging (score <= t) at least 95% of OOD; fraction of ID flagged there."""
    for t in np.unique(np.r_[id_s, ood_s]):
        if np.mean(ood_s <= t) >= 0.95:
            return float(np.mean(id_s <= t))
    raise AssertionError("unreachable")


def _brute_fpr95(id_s: np.ndarray, ood_s: np.ndarray) -> float:
    """Highest threshold t accepting (score >= t) at least 95% of ID; fraction of OOD accepted there."""
    for t in np.unique(np.r_[id_s, ood_s])[::-1]:
        if np.mean(id_s >= t) >= 0.95:
            return float(np.mean(ood_s >= t))
    raise AssertionError("unreachable")


def _random_scores(seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_id, n_ood = rng.integers(20, 300, size=2)
    id_s = rng.normal(1.0, 1.0, n_id)
    ood_s = rng.normal(0.0, 1.3, n_ood)
    if ties:  # coarse grid: many ties within and across the two sets
        id_s, ood_s = np.round(id_s * 3) / 3, np.round(ood_s * 3) / 3
    return id_s, ood_s


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_metrics_equal_sklearn(seed: int, ties: bool) -> None:
    id_s, ood_s = _random_scores(seed, ties)
    labels = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]
    scores = np.r_[id_s, ood_s]
    assert fpr_at_95_tpr(id_s, ood_s) == pytest.approx(_sk_fpr95(id_s, ood_s), abs=1e-12)
    assert fpr_at_95_tpr(id_s, ood_s) == pytest.approx(_brute_fpr95(id_s, ood_s), abs=1e-12)
    assert fpr_at_95_tpr_ood_positive(id_s, ood_s) == pytest.approx(_sk_fpr95_ood_positive(id_s, ood_s), abs=1e-12)
    assert fpr_at_95_tpr_ood_positive(id_s, ood_s) == pytest.approx(_brute_fpr95_ood_positive(id_s, ood_s),
                                                                    abs=1e-12)
    assert auroc(id_s, ood_s) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert aupr_in(id_s, ood_s) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert aupr_out(id_s, ood_s) == pytest.approx(average_precision_score(1 - labels, -scores), abs=1e-12)
    # the scores are informative, so the metrics are far from chance in the right direction
    assert auroc(id_s, ood_s) > 0.6


def test_fpr95_exact_boundary_with_twenty_id_samples() -> None:
    # 20 ID scores 1..20: accepting 19 of them (tpr exactly 0.95) needs threshold 2.
    id_s = np.arange(1, 21, dtype=float)
    ood_s = np.array([0.5, 1.5, 2.5, 10.0])  # at t=2: 2.5 and 10 accepted -> 2/4
    assert fpr_at_95_tpr(id_s, ood_s) == 0.5
    assert _brute_fpr95(id_s, ood_s) == 0.5


def test_fpr95_conventions_by_hand() -> None:
    # ID 1..20; OOD: 18 at 0.5, then 5.5 and 12.5.
    id_s = np.arange(1, 21, dtype=float)
    ood_s = np.r_[np.full(18, 0.5), 5.5, 12.5]
    # ID positive: accepting 19/20 ID needs t = 2; OOD accepted (>= 2): 5.5 and 12.5 -> 2/20
    assert fpr_at_95_tpr(id_s, ood_s) == pytest.approx(0.10)
    # OOD positive: flagging 19/20 OOD needs t = 5.5; ID flagged (<= 5.5): 1..5 -> 5/20
    assert fpr_at_95_tpr_ood_positive(id_s, ood_s) == pytest.approx(0.25)
    m = ood_metrics(id_s, ood_s)
    assert (m["fpr95"], m["fpr95_ood_positive"]) == (pytest.approx(10.0), pytest.approx(25.0))


def test_fpr95_conventions_differ_on_asymmetric_scores() -> None:
    # narrow ID scores, wide OOD scores: few OOD pass the ID threshold (~20%), but catching 95% of OOD
    # needs a threshold above nearly every ID score (~100% of ID flagged)
    rng = np.random.default_rng(0)
    id_s, ood_s = rng.normal(0.0, 0.1, 2000), rng.normal(-1.0, 1.0, 2000)
    id_pos, ood_pos = fpr_at_95_tpr(id_s, ood_s), fpr_at_95_tpr_ood_positive(id_s, ood_s)
    assert id_pos == pytest.approx(_sk_fpr95(id_s, ood_s)) and 0.15 < id_pos < 0.26
    assert ood_pos == pytest.approx(_sk_fpr95_ood_positive(id_s, ood_s)) and ood_pos > 0.99
    # swapping the roles of the two sets swaps the conventions
    assert fpr_at_95_tpr_ood_positive(-ood_s, -id_s) == pytest.approx(id_pos)


def test_perfect_and_reversed_separation() -> None:
    id_s = np.array([5.0, 6.0, 7.0, 8.0])
    ood_s = np.array([1.0, 2.0, 3.0])
    assert fpr_at_95_tpr(id_s, ood_s) == 0.0 and fpr_at_95_tpr_ood_positive(id_s, ood_s) == 0.0
    assert auroc(id_s, ood_s) == 1.0
    assert aupr_in(id_s, ood_s) == 1.0
    assert aupr_out(id_s, ood_s) == 1.0
    # reversed: every OOD sample outscores every ID sample
    assert fpr_at_95_tpr(ood_s, id_s) == 1.0 and fpr_at_95_tpr_ood_positive(ood_s, id_s) == 1.0
    assert auroc(ood_s, id_s) == 0.0


def test_id_positive_convention_higher_id_scores_better() -> None:
    rng = np.random.default_rng(0)
    id_s, ood_s = rng.normal(0.5, 1, 400), rng.normal(0, 1, 400)
    better = id_s + 1.0
    assert fpr_at_95_tpr(better, ood_s) < fpr_at_95_tpr(id_s, ood_s)
    assert auroc(better, ood_s) > auroc(id_s, ood_s)
    assert aupr_in(better, ood_s) > aupr_in(id_s, ood_s)
    assert aupr_out(better, ood_s) > aupr_out(id_s, ood_s)
    # swapping the roles of ID and OOD (an OOD-positive convention) gives 1 - AUROC
    assert auroc(ood_s, id_s) == pytest.approx(1 - auroc(id_s, ood_s), abs=1e-12)


def test_all_tied_scores_are_chance() -> None:
    id_s, ood_s = np.zeros(10), np.zeros(7)
    assert fpr_at_95_tpr(id_s, ood_s) == 1.0
    assert auroc(id_s, ood_s) == 0.5


@pytest.mark.parametrize("fn", [fpr_at_95_tpr, fpr_at_95_tpr_ood_positive, auroc, aupr_in, aupr_out, ood_metrics])
def test_invalid_inputs(fn) -> None:
    good = np.array([0.1, 0.2, 0.3])
    with pytest.raises(UserError, match="empty"):
        fn(np.array([]), good)
    with pytest.raises(UserError, match="empty"):
        fn(good, np.array([]))
    with pytest.raises(UserError, match="NaN"):
        fn(np.array([0.1, np.nan]), good)
    with pytest.raises(UserError, match="NaN"):
        fn(good, np.array([np.inf, 0.0]))


def test_ood_metrics_in_percent() -> None:
    id_s, ood_s = _random_scores(3, ties=True)
    m = ood_metrics(id_s, ood_s)
    assert set(m) == {"fpr95", "fpr95_ood_positive", "auroc", "aupr_in", "aupr_out"}
    assert m["fpr95"] == pytest.approx(100 * _sk_fpr95(id_s, ood_s))
    assert m["fpr95_ood_positive"] == pytest.approx(100 * _sk_fpr95_ood_positive(id_s, ood_s))
    assert m["auroc"] == pytest.approx(100 * auroc(id_s, ood_s))
    assert m["aupr_in"] == pytest.approx(100 * aupr_in(id_s, ood_s))
    assert m["aupr_out"] == pytest.approx(100 * aupr_out(id_s, ood_s))
    assert 50 < m["auroc"] <= 100


def test_accuracy_percent() -> None:
    logits = np.array([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    assert accuracy(logits, np.array([1, 0, 0, 0])) == 75.0
    assert accuracy(np.array([1, 0, 1, 1]), np.array([1, 0, 0, 0])) == 50.0
