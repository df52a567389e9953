"""What a validation proxy is worth: does choosing on it pick what the test sets would have picked?

For one seed, every (model variant × detector) pair has a validation FPR95 per proxy and a test FPR95 per
test group. A proxy's **regret** for a group is the test FPR95 of the pair the proxy picks minus the best
test FPR95 among all pairs (0: it picked the best); its **rank correlation** is Spearman's ρ between the
proxy's and the group's FPR95 over all pairs. Only the top of the ranking decides what is deployed, so
the regret is the number that counts; ρ says whether the proxy sees the landscape at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from scipy.stats import spearmanr

Pair = tuple[str, str]  # (model, detector)


def pick(values: Mapping[Pair, float]) -> Pair:
    """The pair with the lowest FPR95 (ties: the first in order)."""
    return min(values, key=lambda p: values[p])


def rank_correlation(val: Mapping[Pair, float], test: Mapping[Pair, float]) -> float:
    """Spearman's ρ between validation and test FPR95 over the shared pairs (NaN when either is constant)."""
    common = [p for p in val if p in test]
    if len(common) < 3 or len({val[p] for p in common}) < 2 or len({test[p] for p in common}) < 2:
        return math.nan
    return float(spearmanr([val[p] for p in common], [test[p] for p in common]).statistic)


def proxy_table(val: Mapping[str, Mapping[Pair, float]], test: Mapping[str, Mapping[Pair, float]],
                seed: int | None = None) -> list[dict]:
    """One row per (proxy, test group): the pick, its test FPR95, the best pair, the regret and ρ.

    ``val[proxy][pair]`` and ``test[group][pair]`` are FPR95 values (×100)."""
    rows = []
    for proxy, v in val.items():
        for group, t in test.items():
            common = {p: v[p] for p in v if p in t}
            if not common:
                continue
            chosen, best = pick(common), pick({p: t[p] for p in common})
            rows.append({"seed": seed, "proxy": proxy, "group": group, "pick": "/".join(chosen),
                         "pick_test_fpr95": t[chosen], "best": "/".join(best), "best_test_fpr95": t[best],
                         "regret": t[chosen] - t[best], "spearman": rank_correlation(common, t),
                         "pairs": len(common)})
    return rows
