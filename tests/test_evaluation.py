"""One `evaluate_models` behind every evaluation: the tracked epoch record, the validation metrics and
the final evaluation agree with metrics computed by hand from the model's logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unleash_ood.config import DataConfig
from unleash_ood.data.prepared import EVAL_BATCH, prepare_data
from unleash_ood.eval.models import (
    ModelsEvaluation,
    evaluate_models,
    track,
    validation_metrics,
)
from unleash_ood.masking import maskable_layers
from unleash_ood.metrics import accuracy, ood_metrics


@pytest.fixture(scope="module")
def prep(fmnist_full):
    return prepare_data(DataConfig(val_size=200, train_size=300, test_size=400, ood_size=60, val_ood_size=80,
                                   near=["digits"], far=["uniform", "gaussian"]))


# The hand metrics repeat the evaluation's arithmetic exactly — its batches, float32 logits and logsumexp —
# so they are the same numbers: rank metrics would jump by 100/(n_id·n_ood) where float32 rounding
# (other batch sizes or precisions) swapped two near-tied scores.
def _logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(b) for b in x.split(EVAL_BATCH)])


def _energy(logits: torch.Tensor) -> np.ndarray:
    return torch.logsumexp(logits, 1).numpy()


def test_tracked_record_matches_hand_metrics(trained_cnn, prep) -> None:
    rec = track(trained_cnn, prep, ["Energy", "MSP"])
    x, y = prep.id.test
    lt = _logits(trained_cnn, x)
    assert rec["id_acc"] == pytest.approx(accuracy(lt.numpy(), y.numpy()))
    assert rec["test_ce"] == pytest.approx(float(F.cross_entropy(lt, y)), rel=1e-5)
    assert list(rec["ood"]) == list(prep.ood)
    for name, xo in prep.ood.items():
        want = ood_metrics(_energy(lt), _energy(_logits(trained_cnn, xo)))
        assert rec["ood"][name]["Energy"] == pytest.approx(want, rel=1e-6)
        assert set(rec["ood"][name]["MSP"]) == set(want)  # the metric dict, nothing of the record around it
    xv, yv = prep.id.val
    lv = _logits(trained_cnn, xv)
    assert rec["val_acc"] == pytest.approx(accuracy(lv.numpy(), yv.numpy()))
    assert rec["val_ood"]["Energy"] == pytest.approx(ood_metrics(_energy(lv), _energy(_logits(trained_cnn, prep.val_ood))),
                                                      rel=1e-6)


def _kill_classifier(model) -> dict:
    """A mask that drops the whole last layer: every logit equals 0 (plus bias)."""
    return {n: torch.ones_like(m.weight, dtype=torch.bool) if n != list(maskable_layers(model))[-1]
            else torch.zeros_like(m.weight, dtype=torch.bool) for n, m in maskable_layers(model).items()}


def test_one_result_object_for_plain_and_masked_models(trained_cnn, prep) -> None:
    masks = _kill_classifier(trained_cnn)
    ev = evaluate_models({"base": (trained_cnn, None), "masked": (trained_cnn, masks)}, prep, ["Energy", "KNN"],
                         progress=False)
    assert isinstance(ev, ModelsEvaluation)
    assert ev.id_acc["masked"] == ev.id_acc["base"]  # deployed: the unmasked network
    assert ev.masked_acc["masked"] < ev.id_acc["base"] - 20 and "base" not in ev.masked_acc
    assert set(ev.flat()) == {f"{m}/{s}/{d}" for m in ("base", "masked") for s in ("Energy", "KNN")
                              for d in ("id", *prep.ood)}
    near = ev.aggregate("base", "Energy", "near")
    assert near["fpr95"] == pytest.approx(ev.per_set("base")["digits"]["Energy"]["fpr95"])
    synthetic = ev.aggregate("base", "KNN", "synthetic")  # gaussian and uniform, listed under far, keep their group
    assert synthetic["auroc"] == pytest.approx(np.mean([ev.per_set("base")[d]["KNN"]["auroc"]
                                                        for d in ("uniform", "gaussian")]))
    assert ev.aggregate("base", "KNN", "mean")["auroc"] == pytest.approx(ev.per_set("base")["digits"]["KNN"]["auroc"])


def test_validation_metrics_score_the_model_as_masked(trained_cnn, prep) -> None:
    masks = _kill_classifier(trained_cnn)
    val = validation_metrics({"base": (trained_cnn, None), "masked": (trained_cnn, masks)}, prep)
    assert val["masked"]["val_acc"] < val["base"]["val_acc"] - 20
    assert set(val["base"]) == {"val_acc", "Energy", "MSP"}
    lv = _logits(trained_cnn, prep.id.val[0])
    want = ood_metrics(_energy(lv), _energy(_logits(trained_cnn, prep.val_ood)))
    assert val["base"]["Energy"] == pytest.approx(want, rel=1e-6)
