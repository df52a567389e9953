"""OOD scores by hand, ODIN, Mahalanobis against numpy, and the evaluation pass."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import f32_tol

from unleash_ood.data.batches import TensorBatches
from unleash_ood.detectors.base import FitData, build_detector
from unleash_ood.detectors.logit import (
    energy_score,
    max_logit_score,
    msp_score,
    odin_score,
)
from unleash_ood.errors import UserError
from unleash_ood.eval.evaluate import Evaluation, evaluate, input_scores
from unleash_ood.eval.forward import collect_outputs
from unleash_ood.metrics import ood_metrics

E = math.e
LOGITS = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [-1.0, 4.0, 0.5]], dtype=torch.float64)


def test_msp_by_hand() -> None:
    """MSP is reported as log max-softmax (float64): the same ranking as the probability."""
    expected = [E**3 / (E + E**2 + E**3), 1 / 3, E**4 / (E**-1 + E**4 + E**0.5)]
    assert msp_score(LOGITS).exp().tolist() == pytest.approx(expected, rel=1e-12)
    assert msp_score(LOGITS).tolist() == pytest.approx([math.log(p) for p in expected], rel=1e-12)


def test_msp_does_not_tie_for_large_margins() -> None:
    """A float32 softmax saturates to exactly 1.0 at margins above ≈17; the log-space MSP keeps the order."""
    logits = torch.tensor([[0.0, 20.0], [0.0, 30.0], [0.0, 45.0], [0.0, 80.0]], dtype=torch.float32)
    assert logits.softmax(1).amax(1).unique().numel() == 1  # the old float32 MSP: a four-way tie
    got = msp_score(logits)
    assert (got.diff() > 0).all()
    assert got[-1].item() == pytest.approx(-math.exp(-80.0), rel=1e-9)


def test_max_logit_by_hand() -> None:
    assert max_logit_score(LOGITS).tolist() == [3.0, 0.0, 4.0]


def test_energy_by_hand() -> None:
    expected = [math.log(E**1 + E**2 + E**3), math.log(3.0), math.log(E**-1 + E**4 + E**0.5)]
    assert energy_score(LOGITS).tolist() == pytest.approx(expected, rel=1e-12)


def test_energy_with_temperature() -> None:
    # T · log Σ exp(z / T), T = 2: 2 · log(e^0.5 + e^1 + e^1.5)
    expected0 = 2 * math.log(E**0.5 + E**1 + E**1.5)
    assert energy_score(LOGITS, temperature=2.0)[0].item() == pytest.approx(expected0, rel=1e-12)
    # large T: T·log C + mean(z); small T: max(z)
    assert energy_score(LOGITS, 1e-3)[0].item() == pytest.approx(3.0, abs=1e-6)
    assert energy_score(LOGITS, 1e4)[0].item() == pytest.approx(1e4 * math.log(3) + 2.0, abs=1e-3)


def test_scores_higher_for_peaked_logits() -> None:
    peaked = torch.tensor([[10.0, 0.0, 0.0]])
    flat = torch.tensor([[0.1, 0.0, 0.0]])
    for fn in (msp_score, max_logit_score, energy_score):
        assert fn(peaked).item() > fn(flat).item()


# ------------------------------------------------------------------------------------ ODIN

def test_odin_epsilon_zero_is_tempered_msp(trained_cnn, fmnist_small) -> None:
    x = fmnist_small[2][:64]
    for temperature in (1.0, 1000.0):
        got = odin_score(trained_cnn, x, temperature=temperature, epsilon=0.0)
        with torch.no_grad():
            expected = (trained_cnn(x) / temperature).double().softmax(1).amax(1).log()
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)


def test_odin_perturbation_raises_id_scores(trained_cnn, fmnist_small) -> None:
    x = fmnist_small[2][:128]
    base = odin_score(trained_cnn, x, temperature=1000.0, epsilon=0.0)
    perturbed = odin_score(trained_cnn, x, temperature=1000.0, epsilon=0.0014)
    assert perturbed.mean() > base.mean()
    assert (perturbed >= base - 1e-7).float().mean() > 0.8
    # a larger step (still small) moves further
    further = odin_score(trained_cnn, x, temperature=1000.0, epsilon=0.005)
    assert further.mean() > perturbed.mean()


def test_odin_scores_over_batches_restore_mode(trained_cnn, fmnist_small) -> None:
    x = fmnist_small[2][:100]
    trained_cnn.train()
    got = input_scores(trained_cnn, TensorBatches(x, batch_size=33), build_detector("ODIN", {"epsilon": 0.001}))
    assert trained_cnn.training
    trained_cnn.eval()
    expected = odin_score(trained_cnn, x, epsilon=0.001).numpy()
    assert got.shape == (100,)
    # other batch sizes round the logits otherwise (conftest.linear_tol: ≲ 1e-4); the score, log p_max of z/T with
    # T = 1000, moves ≤ 2·|δz|/T ≈ 2e-7, and a gradient sign that rounding can flip belongs to a pixel whose
    # gradient (and so effect) is ~0: 1e-5 relative leaves ample room
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------------------------ Mahalanobis

def _clusters(seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0, 0.0], [6.0, 0.0, 1.0, 0.0], [0.0, 6.0, 0.0, -2.0]])
    a = rng.normal(size=(4, 4))
    cov = a @ a.T / 4 + 0.2 * np.eye(4)
    labels = np.repeat(np.arange(3), [60, 80, 100])
    feats = centers[labels] + rng.multivariate_normal(np.zeros(4), cov, size=len(labels))
    return feats, labels


def _fit_mahalanobis(feats, labels, num_classes: int = 3):
    """A fitted Mahalanobis detector on given features (a dummy classifier of ``num_classes`` rows)."""
    maha = build_detector("Mahalanobis")
    maha.fit(FitData(logits=None, features=torch.as_tensor(feats, dtype=torch.float32), labels=torch.as_tensor(labels),
                     weight=torch.zeros(num_classes, feats.shape[1]), bias=None))
    return maha


def test_mahalanobis_fit_and_score_by_hand() -> None:
    feats, labels = _clusters()
    maha = _fit_mahalanobis(feats, labels)
    means = np.stack([feats[labels == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(maha.stats["means"].numpy(), means, rtol=1e-5, atol=1e-5)
    centered = feats - means[labels]
    precision = np.linalg.pinv(centered.T @ centered / len(feats))
    np.testing.assert_allclose(maha.stats["precision"].numpy(), precision, rtol=1e-4, atol=1e-4)

    queries = np.random.default_rng(1).normal(2.0, 4.0, size=(50, 4))
    diffs = queries[:, None, :] - means[None]
    dist = np.einsum("ncd,de,nce->nc", diffs, precision, diffs)
    expected = -dist.min(1)
    got = maha.score(None, torch.tensor(queries, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_mahalanobis_near_means_score_higher() -> None:
    feats, labels = _clusters()
    maha = _fit_mahalanobis(feats, labels)
    means = maha.stats["means"]
    near_s, far_s = maha.score(None, means + 0.01), maha.score(None, means + 25.0)
    assert (near_s > -0.1).all()
    assert near_s.min() > far_s.max()
    # exactly at a class mean the distance is zero (float64 features: h − μ is exactly 0)
    torch.testing.assert_close(maha.score(None, means), torch.zeros(3, dtype=means.dtype), atol=0, rtol=0)


def test_mahalanobis_needs_all_classes() -> None:
    feats, labels = _clusters()
    with pytest.raises(UserError, match="all 4 classes"):
        _fit_mahalanobis(feats, labels, num_classes=4)


# ------------------------------------------------------------------------------------ evaluation pass

def test_collect_outputs_features_are_classifier_input(trained_cnn, fmnist_small) -> None:
    x, y = fmnist_small[2][:100], fmnist_small[3][:100]
    trained_cnn.train()  # collect_outputs must use eval mode and restore the mode
    out = collect_outputs(trained_cnn, TensorBatches(x, y, batch_size=30))
    assert trained_cnn.training
    trained_cnn.eval()
    with torch.no_grad():  # by hand, in the same batches: the same kernels, so the same numbers
        feats = torch.cat([trained_cnn.features(trained_cnn.normalize(xb)) for xb in x.split(30)])
        logits = trained_cnn.fc(feats)
    assert out.features.shape == (100, 32)
    torch.testing.assert_close(out.features, feats, rtol=0, atol=0)
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=0)
    assert torch.equal(out.labels, y)
    # unlabelled batches work too
    assert collect_outputs(trained_cnn, TensorBatches(x, batch_size=64)).labels is None


def test_collect_outputs_empty() -> None:
    from conftest import small_cnn

    with pytest.raises(UserError, match="empty"):
        collect_outputs(small_cnn(), [])


def test_evaluate_arrays_accuracy_and_mean_row(trained_cnn, fmnist_small) -> None:
    x_train, y_train, x_test, y_test = fmnist_small
    g = torch.Generator().manual_seed(0)
    ood_sets = {
        "noise": TensorBatches(torch.rand(70, 1, 28, 28, generator=g), batch_size=32),
        "flipped": TensorBatches(x_test[:90].flip(-2), batch_size=32),
    }
    id_test = TensorBatches(x_test[:150], y_test[:150], batch_size=64)
    ev = evaluate(trained_cnn, id_test, ood_sets, train=TensorBatches(x_train, y_train, batch_size=128),
                  num_classes=10,
                  scores=["MSP", build_detector("ODIN", {"epsilon": 0.001}), "Mahalanobis", "Energy", "MaxLogit"])
    assert list(ev.scores) == ["id", "noise", "flipped"]
    sizes = {"id": 150, "noise": 70, "flipped": 90}
    for ds, by_score in ev.scores.items():
        assert list(by_score) == ["MSP", "ODIN", "Mahalanobis", "Energy", "MaxLogit"]
        for name, arr in by_score.items():
            assert arr.shape == (sizes[ds],), (ds, name)
            assert np.isfinite(arr).all()
    with torch.no_grad():  # the evaluation's batches of 64: the same logits, bit for bit
        logits = torch.cat([trained_cnn(xb) for xb in x_test[:150].split(64)])
    manual_acc = 100.0 * float((logits.argmax(1) == y_test[:150]).float().mean())
    assert ev.id_acc == pytest.approx(manual_acc)
    assert ev.id_acc > 50  # 2 epochs on 512 images: well above chance (10%)
    # a float32 softmax: exp, a sum of 10 positive terms and a division, relative to itself
    np.testing.assert_allclose(np.exp(ev.scores["id"]["MSP"]), logits.softmax(1).amax(1).numpy(),
                               rtol=f32_tol(1.0, 10 + 2))
    np.testing.assert_array_equal(ev.scores["id"]["Energy"], torch.logsumexp(logits, 1).numpy())  # the same op

    rows = ev.records("cnn")
    assert len(rows) == 5 * 4  # two sets, their "far" group (every set, without groups) and the mean
    keys = ("fpr95", "fpr95_ood_positive", "auroc", "aupr_in", "aupr_out")
    for score in ev.scores["id"]:
        per_set = [r for r in rows if r["score"] == score and r["group"] != "aggregate"]
        (mean,) = [r for r in rows if r["score"] == score and r["ood"] == "mean"]
        (far,) = [r for r in rows if r["score"] == score and r["ood"] == "far"]
        assert {r["ood"] for r in per_set} == {"noise", "flipped"} and {r["group"] for r in per_set} == {"far"}
        for k in keys:
            assert mean[k] == pytest.approx((per_set[0][k] + per_set[1][k]) / 2, abs=1e-12)
            assert far[k] == mean[k]
        assert mean["id_acc"] == ev.id_acc and mean["model"] == "cnn"
    # per-set rows are the metrics of the stored scores
    from unleash_ood.metrics import auroc

    row = next(r for r in rows if r["score"] == "MSP" and r["ood"] == "noise")
    assert row["auroc"] == pytest.approx(100 * auroc(ev.scores["id"]["MSP"], ev.scores["noise"]["MSP"]))


def test_records_group_aggregates() -> None:
    rng = np.random.default_rng(0)
    id_s = rng.normal(2.0, 1.0, 200)
    ood = {"a": rng.normal(1.5, 1.0, 150), "b": rng.normal(1.0, 1.0, 100), "c": rng.normal(-1.0, 1.0, 120)}
    ev = Evaluation(scores={"id": {"Energy": id_s}, **{k: {"Energy": v} for k, v in ood.items()}}, id_acc=91.0)
    rows = ev.records("um", groups={"a": "near", "b": "near"})  # c: far by default
    by = {r["ood"]: r for r in rows}
    assert list(by) == ["a", "b", "c", "near", "far", "mean"]
    assert [by[k]["group"] for k in by] == ["near", "near", "far", "aggregate", "aggregate", "aggregate"]
    m = {k: ood_metrics(id_s, v) for k, v in ood.items()}
    for key in ("fpr95", "fpr95_ood_positive", "auroc", "aupr_in", "aupr_out"):
        assert by["near"][key] == pytest.approx((m["a"][key] + m["b"][key]) / 2)
        assert by["far"][key] == pytest.approx(m["c"][key])
        assert by["mean"][key] == pytest.approx((m["a"][key] + m["b"][key] + m["c"][key]) / 3)  # not of groups
    assert by["near"]["auroc"] < by["far"]["auroc"]  # the nearer sets are harder here
    assert all(r["id_acc"] == 91.0 and r["model"] == "um" for r in rows)
    # only near sets: no far row
    assert [r["ood"] for r in ev.records("x", {"a": "near", "b": "near", "c": "near"})][-2:] == ["near", "mean"]
    with pytest.raises(UserError, match="unknown OOD group"):
        ev.records("x", {"a": "middle"})
    bad = Evaluation(scores={"id": {"Energy": id_s}, "mean": {"Energy": ood["a"]}}, id_acc=91.0)
    with pytest.raises(UserError, match="may not be named 'mean'"):
        bad.records("x")


def test_evaluate_subset_and_errors(trained_cnn, fmnist_small) -> None:
    x_test, y_test = fmnist_small[2][:40], fmnist_small[3][:40]
    ev = evaluate(trained_cnn, TensorBatches(x_test, y_test), {"o": TensorBatches(x_test.flip(-1))},
                  scores=["Energy", "MSP"])
    assert list(ev.scores["id"]) == ["Energy", "MSP"]
    with pytest.raises(UserError, match="unknown score"):
        evaluate(trained_cnn, TensorBatches(x_test, y_test), {}, scores=["Bogus"])
    with pytest.raises(UserError, match="Mahalanobis"):
        evaluate(trained_cnn, TensorBatches(x_test, y_test), {}, scores=["Mahalanobis"])
    with pytest.raises(UserError, match="labels"):
        evaluate(trained_cnn, TensorBatches(x_test), {}, scores=["MSP"])
