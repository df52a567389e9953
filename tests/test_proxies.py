"""What a validation proxy is worth: regret and rank correlation, against values worked out by hand."""

import math

from unleash_ood.run.proxies import pick, proxy_table, rank_correlation

PAIRS = [("base", "Energy"), ("base", "KNN"), ("umap", "Energy"), ("umap", "KNN")]


def test_the_regret_is_the_test_cost_of_the_validation_pick() -> None:
    val = {"near-proxy": dict(zip(PAIRS, [30.0, 20.0, 25.0, 10.0]))}  # picks umap/KNN
    test = {"near": dict(zip(PAIRS, [40.0, 15.0, 35.0, 31.0])),      # best is base/KNN (15)
            "far": dict(zip(PAIRS, [50.0, 40.0, 30.0, 12.0]))}       # best is umap/KNN: no regret
    rows = {r["group"]: r for r in proxy_table(val, test, seed=3)}
    assert rows["near"]["pick"] == "umap/KNN" and rows["near"]["best"] == "base/KNN"
    assert rows["near"]["regret"] == 31.0 - 15.0 and rows["near"]["seed"] == 3
    assert rows["far"]["regret"] == 0.0 and rows["far"]["pairs"] == 4


def test_spearman_by_hand() -> None:
    val = dict(zip(PAIRS, [1.0, 2.0, 3.0, 4.0]))
    assert rank_correlation(val, dict(zip(PAIRS, [10.0, 20.0, 30.0, 40.0]))) == 1.0
    assert rank_correlation(val, dict(zip(PAIRS, [40.0, 30.0, 20.0, 10.0]))) == -1.0
    # ranks 1,2,3,4 against 2,1,4,3: d² = 4 → ρ = 1 − 6·4 / (4·15) = 0.6
    assert math.isclose(rank_correlation(val, dict(zip(PAIRS, [2.0, 1.0, 4.0, 3.0]))), 0.6)
    assert math.isnan(rank_correlation(val, dict(zip(PAIRS, [5.0] * 4))))


def test_pairs_missing_from_the_test_side_are_left_out() -> None:
    val = {"p": dict(zip(PAIRS, [5.0, 1.0, 2.0, 3.0]))}
    test = {"near": {PAIRS[0]: 10.0, PAIRS[2]: 20.0}}  # the validation pick (base/KNN) has no test value
    (row,) = proxy_table(val, test)
    assert row["pick"] == "umap/Energy" and row["regret"] == 10.0 and row["pairs"] == 2
    assert pick({PAIRS[1]: 3.0, PAIRS[0]: 3.0}) == PAIRS[1]  # ties: the first
