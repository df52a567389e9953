"""``scores.tune``: each tunable detector's value chosen per model on the validation OOD proxies only, from
one forward pass per model and set; checked against FPR95s computed by hand from the model's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unleash_ood.config import ScoresConfig, build_config
from unleash_ood.data.prepared import prepare_data
from unleash_ood.detectors.base import build_detector
from unleash_ood.detectors.params import PERCENTILE_GRID, TUNING_GRIDS
from unleash_ood.errors import UserError
from unleash_ood.eval.forward import collect_outputs
from unleash_ood.eval.models import evaluate_models
from unleash_ood.eval.tuning import GROUP_WEIGHTS, tuning_plan, validate_models
from unleash_ood.metrics import fpr_at_95_tpr
from unleash_ood.run import select_keep
from unleash_ood.run.validation import prepare_validation

DATA = {"val_size": 200, "train_size": 300, "test_size": 120, "ood_size": 60, "val_ood_size": 100,
        "near": ["digits"], "far": ["textures"]}


@pytest.fixture(scope="module")
def cfg(fmnist_full):
    return build_config({"data": DATA, "scores": {"use": ["Energy", "KNN", "ViM", "ASH-S"], "tune": True}})


@pytest.fixture(scope="module")
def prep(cfg):
    return prepare_data(cfg.data)


@pytest.fixture(scope="module")
def vsets(cfg, prep, _trained_cnn_master):
    """The real validation proxies: letters of the held-out glyph fonts (near), patch-shuffled ID
    validation images (far), against the ID validation split."""
    return prepare_validation(cfg, prep, _trained_cnn_master)


def _count_forwards(model) -> list[int]:
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _hand_fpr(id_s: np.ndarray, near: np.ndarray, far: np.ndarray) -> float:
    """The rule by hand: 0.5 · FPR95(ID val vs near) + 0.5 · FPR95(ID val vs far), in %."""
    return 50 * fpr_at_95_tpr(id_s, near) + 50 * fpr_at_95_tpr(id_s, far)


def test_tuning_picks_the_lowest_validation_fpr95_from_one_pass(trained_cnn, prep, vsets, cfg) -> None:
    assert vsets.sets.groups == {"val_near": "near", "val_ood": "far", "probe_strokes": "synthetic",
                                 "probe_distorted": "synthetic"}  # probes: scored, weight 0 in the rule
    assert vsets.described["val_near"]["source"] == "glyphs (validation fonts)"
    calls = _count_forwards(trained_cnn)
    val = validate_models({"m": (trained_cnn, None)}, prep, vsets.sets, cfg.scores, progress=False)
    # one forward call per batch of the training split, the ID validation split and each proxy: the 4
    # detectors' 5 + 6 + 5 + 7 grid values are fits and scores of those tensors, never another pass
    n_batches = sum(len(list(prep.batches(x))) for x in (prep.id.train[0], prep.id.val[0], *vsets.sets.ood.values()))
    assert calls[0] == n_batches
    calls[0] = 0
    validate_models({"m": (trained_cnn, None)}, prep, vsets.sets, cfg.scores, tune=False, progress=False)
    assert calls[0] == n_batches  # tuning costs no pass at all

    # by hand, from the model's own outputs
    out = {k: collect_outputs(trained_cnn, prep.batches(x)) for k, x in
           {"train": prep.id.train[0], "id": prep.id.val[0], **vsets.sets.ood}.items()}
    tuning = val.tuning["m"]
    assert set(tuning) == {"Energy", "KNN", "ViM", "ASH-S"}

    # Energy: the same float32 arithmetic as the detector, so the same numbers exactly
    energy = tuning["Energy"]
    assert [r["value"] for r in energy["grid"]] == list(TUNING_GRIDS["Energy"]["temperature"])
    hand = {t: _hand_fpr(*(t * torch.logsumexp(out[k].logits / t, 1).numpy() for k in ("id", "val_near", "val_ood")))
            for t in TUNING_GRIDS["Energy"]["temperature"]}
    assert {r["value"]: r["val_fpr95"] for r in energy["grid"]} == pytest.approx(hand, abs=1e-9)
    best = min(hand.values())
    tied = [t for t, v in hand.items() if v == best]
    assert energy["chosen"] == (1.0 if 1.0 in tied else min(tied, key=lambda t: abs(t - 1.0)))
    assert energy["default"] == 1.0 and energy["default_val_fpr95"] == pytest.approx(hand[1.0])

    # KNN: brute-force float64 distances; float32 may swap scores within rounding, so within 2 samples per set
    knn = tuning["KNN"]
    bank = out["train"].features.double().numpy()
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)

    def knn_scores(k: int, feats: torch.Tensor) -> np.ndarray:
        q = feats.double().numpy()
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        d = np.sqrt(np.maximum((q**2).sum(1)[:, None] + (bank**2).sum(1)[None] - 2 * q @ bank.T, 0))
        return -np.sort(d, axis=1)[:, k - 1]

    assert [r["value"] for r in knn["grid"]] == [1, 5, 10, 20, 50, 100]  # the default 50 is in the grid
    tol = 2 * 100 / len(vsets.sets.ood["val_near"])
    hand = {k: _hand_fpr(*(knn_scores(k, out[s].features) for s in ("id", "val_near", "val_ood")))
            for k in (1, 5, 10, 20, 50, 100)}
    for r in knn["grid"]:
        assert r["val_fpr95"] == pytest.approx(hand[r["value"]], abs=tol), r["value"]
        assert r["val_fpr95"] == pytest.approx(0.5 * r["fpr95"]["val_near"] + 0.5 * r["fpr95"]["val_ood"])
    assert hand[knn["chosen"]] <= min(hand.values()) + tol
    assert knn["val_fpr95"] == min(r["val_fpr95"] for r in knn["grid"])

    # ViM: fractions of the 32-dim feature, the default N/2 among them; ASH-S: the percentile grid
    assert [r["value"] for r in tuning["ViM"]["grid"]] == [3, 8, 16, 24, 29] and tuning["ViM"]["default"] == 16
    ash = tuning["ASH-S"]
    assert [r["value"] for r in ash["grid"]] == list(PERCENTILE_GRID)
    for t in tuning.values():  # every grid row: FPR95 and AUROC per proxy; the choice is a minimum
        assert all(set(r["fpr95"]) == set(r["auroc"]) == set(vsets.sets.ood) for r in t["grid"])
        assert t["val_fpr95"] == min(r["val_fpr95"] for r in t["grid"]) <= t["default_val_fpr95"]

    # the validation rows: every detector's default row, then its tuned row with the chosen params
    scores = [c["score"] for c in val.candidates]
    assert scores == ["Energy", "Energy (tuned)", "KNN", "KNN (tuned)", "ViM", "ViM (tuned)", "ASH-S", "ASH-S (tuned)"]
    row = next(c for c in val.candidates if c["score"] == "KNN (tuned)")
    assert row["params"] == {"k": knn["chosen"]} and row["val_fpr95"] == pytest.approx(knn["val_fpr95"])
    assert val.weights == GROUP_WEIGHTS and val.seconds["tune"] > 0


def test_tuned_rows_in_the_test_evaluation(trained_cnn, prep, vsets, cfg) -> None:
    val = validate_models({"base": (trained_cnn, None)}, prep, vsets.sets, cfg.scores, progress=False)
    dets = [build_detector(n, cfg.scores.params(n)) for n in cfg.scores.use]
    ev = evaluate_models({"base": (trained_cnn, None)}, prep, dets, per_model={"base": val.with_tuned("base", dets)},
                         progress=False)
    order = list(dict.fromkeys(r["score"] for r in ev.records))
    assert order == ["Energy", "Energy (tuned)", "KNN", "KNN (tuned)", "ViM", "ViM (tuned)", "ASH-S", "ASH-S (tuned)"]
    # the tuned row is the detector with the chosen value, fitted and scored like any other
    chosen = val.tuning["base"]["ASH-S"]["params"]
    plain = evaluate_models({"base": (trained_cnn, None)}, prep, [build_detector("ASH-S", chosen)], progress=False)
    for ds, by_score in ev.scores["base"].items():
        np.testing.assert_array_equal(by_score["ASH-S (tuned)"], plain.scores["base"][ds]["ASH-S"])


def test_grid_checks() -> None:
    scores = ScoresConfig(use=["KNN", "ViM", "MSP"], tune=True, grid={"KNN": {"k": [5, 500]}})
    plan = tuning_plan(scores, feature_size=32, train_size=300)
    assert set(plan) == {"KNN", "ViM"} and plan["KNN"].values == [5, 50, 300]  # capped; the default added
    with pytest.raises(UserError, match=r"scores.grid.ViM.dim=32: must be below the feature size 32"):
        tuning_plan(ScoresConfig(use=["ViM"], grid={"ViM": {"dim": [8, 32]}}), feature_size=32, train_size=300)
    for bad, needle in ((["scores.grid.KNN.k=[0, 5]"], "KNN.k=0"), (["scores.grid.ASH-S.percentile=[100]"],
                        "ASH-S.percentile=100"), (["scores.grid.ViM.dim_fraction=[1.5]"], "ViM.dim_fraction=1.5"),
                        (["scores.grid.ODIN.temperature=[1]"], "ODIN has no tuning grid"),
                        (["scores.tune=true", "data.val_size=0"], "data.val_size > 0")):
        with pytest.raises(UserError, match=needle) as e:
            build_config(None, [], bad)
        assert "\n" not in str(e.value)


def test_without_held_out_fonts_validation_uses_the_far_proxy_alone(cfg, prep, trained_cnn, monkeypatch) -> None:
    def no_fonts(*_a, **_k):
        raise UserError("no val fonts for the 'glyphs' set: only one font family is usable")

    monkeypatch.setattr(select_keep, "load_glyphs", no_fonts)
    vs = prepare_validation(cfg, prep, trained_cnn)
    assert [n for n, g in vs.sets.groups.items() if g != "synthetic"] == ["val_ood"] and "no val fonts" in vs.missing["near"]
    val = validate_models({"m": (trained_cnn, None)}, prep, vs.sets, cfg.scores, progress=False)
    knn = val.tuning["m"]["KNN"]
    assert all(r["val_fpr95"] == r["far_fpr95"] == r["fpr95"]["val_ood"] for r in knn["grid"])  # far alone
