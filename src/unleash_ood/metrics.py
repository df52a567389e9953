"""OOD metrics in percent. Scores follow "higher = more in-distribution".

Two FPR95 conventions exist and can differ a lot on the same scores:

- ``fpr95`` (ID positive; the paper's and energy_ood's): % of OOD samples accepted at the threshold
  that accepts 95% of ID samples (:func:`fpr_at_95_tpr`).
- ``fpr95_ood_positive`` (OpenOOD v1.5's and pytorch-ood's): % of ID samples flagged as OOD at the
  threshold that catches 95% of OOD samples (:func:`fpr_at_95_tpr_ood_positive`).

OOD sets belong to a group, ``near``, ``far`` or ``synthetic`` (:data:`unleash_ood.config.GROUPS`);
:func:`group_means` gives OpenOOD v1.5's group aggregates (the unweighted mean over a group's sets)
and ``mean``, the unweighted mean over the near and far sets: the synthetic sanity sets (noise) are
reported apart and enter neither ``far`` nor ``mean``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from .config import GROUPS, HEADLINE_GROUPS
from .errors import UserError

AGGREGATES = (*GROUPS, "mean")  # the ``ood`` names of aggregate records: per group, then over near + far
AGGREGATE_GROUP = "aggregate"  # the ``group`` of an aggregate record (a per-set record has its set's)


def _labels_scores(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    id_scores, ood_scores = np.asarray(id_scores, np.float64), np.asarray(ood_scores, np.float64)
    if len(id_scores) == 0 or len(ood_scores) == 0:
        raise UserError("cannot compute OOD metrics on an empty ID or OOD set")
    if not (np.isfinite(id_scores).all() and np.isfinite(ood_scores).all()):
        raise UserError("scores contain NaN or infinity; the model's outputs are not finite")
    labels = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])
    return labels, np.concatenate([id_scores, ood_scores])


def fpr_at_95_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Fraction of OOD samples accepted at the first threshold that accepts ≥ 95% of ID samples."""
    labels, scores = _labels_scores(id_scores, ood_scores)
    fprs, tprs, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fprs[np.searchsorted(tprs, tpr, side="left")])


def fpr_at_95_tpr_ood_positive(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Fraction of ID samples flagged as OOD at the first threshold that flags ≥ 95% of OOD samples."""
    labels, scores = _labels_scores(id_scores, ood_scores)
    fprs, tprs, _ = roc_curve(1 - labels, -scores, drop_intermediate=False)
    return float(fprs[np.searchsorted(tprs, tpr, side="left")])


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Area under the ROC curve, ID positive."""
    return float(roc_auc_score(*_labels_scores(id_scores, ood_scores)))


def aupr_in(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Average precision with ID as the positive class (the paper's AUPR)."""
    return float(average_precision_score(*_labels_scores(id_scores, ood_scores)))


def aupr_out(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Average precision with OOD as the positive class (scores negated)."""
    labels, scores = _labels_scores(id_scores, ood_scores)
    return float(average_precision_score(1 - labels, -scores))


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """FPR95 in both conventions, AUROC, AUPR-In and AUPR-Out, all ×100."""
    return {"fpr95": 100 * fpr_at_95_tpr(id_scores, ood_scores),
            "fpr95_ood_positive": 100 * fpr_at_95_tpr_ood_positive(id_scores, ood_scores),
            "auroc": 100 * auroc(id_scores, ood_scores),
            "aupr_in": 100 * aupr_in(id_scores, ood_scores),
            "aupr_out": 100 * aupr_out(id_scores, ood_scores)}


def accuracy(logits_or_preds: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent."""
    preds = np.asarray(logits_or_preds)
    if preds.ndim == 2:
        preds = preds.argmax(1)
    return 100.0 * float((preds == np.asarray(labels)).mean())


def set_groups(sets: Iterable[str], groups: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each OOD set's group: ``groups[set]``, or ``far`` for a set the mapping does not name."""
    groups = dict(groups or {})
    bad = {g for g in groups.values() if g not in GROUPS}
    if bad:
        raise UserError(f"unknown OOD group(s) {sorted(bad)}; choose from {', '.join(GROUPS)}")
    out = {}
    for name in sets:
        if name in AGGREGATES:
            raise UserError(f"an OOD set may not be named {name!r} (reserved for the aggregate rows)")
        out[name] = groups.get(name, "far")
    return out


def mean_sets(group_of: Mapping[str, str]) -> list[str]:
    """The sets the ``mean`` aggregate averages over: the near and far ones; only when there are none,
    every set (a suite of synthetic sets alone still has a mean)."""
    headline = [s for s, g in group_of.items() if g in HEADLINE_GROUPS]
    return headline or list(group_of)


def group_means(per_set: Mapping[str, Mapping[str, float]], groups: Mapping[str, str] | None = None,
                ) -> dict[str, dict[str, float]]:
    """``{set: {metric: value}}`` → ``{"near"|"far"|"synthetic"|"mean": {metric: unweighted mean}}``: a
    group's entry only when it has sets; ``mean`` averages over the near and far sets (not over the
    group means; see :func:`mean_sets`)."""
    group_of = set_groups(per_set, groups)
    members = {g: [s for s in per_set if group_of[s] == g] for g in GROUPS}
    members["mean"] = mean_sets(group_of)
    out = {}
    for agg, sets in members.items():
        if sets:
            keys = [k for k in per_set[sets[0]] if all(k in per_set[s] for s in sets)]
            out[agg] = {k: float(np.mean([per_set[s][k] for s in sets])) for k in keys}
    return out
