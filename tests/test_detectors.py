"""The detectors: each formula by hand, KNN and ViM against independent numpy references, state_dict
round-trips, per-model fitting, features.npz, the ``scores`` config section and its errors."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import assert_within, energy_tol, f32_tol, knn_tol, linear_tol
from torch import nn

from unleash_ood.config import DemoConfig, ScoresConfig, validate
from unleash_ood.data.batches import TensorBatches
from unleash_ood.detectors import distance
from unleash_ood.detectors import DETECTORS, FitData, build_detector  # the package: every built-in registered
from unleash_ood.detectors.params import TABLE_ORDER
from unleash_ood.detectors.subspace import vim_default_dim
from unleash_ood.errors import UserError
from unleash_ood.eval.evaluate import configured_detectors, evaluate
from unleash_ood.eval.features import flatten_features, save_features
from unleash_ood.eval.forward import collect_outputs
from unleash_ood.masking import apply_masks, random_layer_masks, remove_masks

RNG = np.random.default_rng(0)


def _fit(name: str, feats: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
         labels: np.ndarray | None = None, **params):
    """A detector fitted on given features with the classifier (weight, bias); logits = h Wᵀ + b."""
    h = torch.tensor(feats, dtype=torch.float32)
    w = torch.tensor(weight, dtype=torch.float32)
    b = torch.tensor(bias, dtype=torch.float32) if bias is not None else None
    logits = h @ w.T + (b if b is not None else 0)
    y = torch.as_tensor(labels) if labels is not None else logits.argmax(1)
    return build_detector(name, params).fit(FitData(logits=logits, features=h, labels=y, weight=w, bias=b))


# The by-hand energies (W, B, H below: small dyadic numbers, exact in float32, and 5 features) are float32
# sums whose products are exact: a handful of roundings of the energy itself (+ B, exp, a 3-term sum, log,
# + max: ≤ 8 · 2⁻²⁴ ≈ 5e-7 relative), hence rtol=1e-6 there.
def _score(det, feats: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    h = torch.tensor(feats, dtype=torch.float32)
    logits = h @ torch.tensor(weight, dtype=torch.float32).T + torch.tensor(bias, dtype=torch.float32)
    return det.score(logits, h).double().numpy()


def _energy(z: np.ndarray) -> np.ndarray:
    m = z.max(1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]


# ------------------------------------------------------------------------------------ formulas by hand

W = np.array([[1.0, -1.0, 0.5, 0.0, 2.0], [0.0, 1.0, 1.0, -0.5, 0.0], [-1.0, 0.0, 0.0, 1.0, 1.0]])
B = np.array([0.1, -0.2, 0.3])
H = np.array([[1.0, 2.0, 0.0, 4.0, 3.0], [0.5, 0.0, 0.0, 0.0, 0.1], [2.0, 2.0, 2.0, 2.0, 2.0]])


def test_gen_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    p = np.exp([2.0, 0.0, -1.0]) / np.exp([2.0, 0.0, -1.0]).sum()
    g = 0.1
    expected0 = -sum(q**g * (1 - q) ** g for q in p)
    expected1 = -3 * ((1 / 3) ** g * (2 / 3) ** g)
    det = build_detector("GEN")
    assert det.score(logits, None).tolist() == pytest.approx([expected0, expected1], rel=1e-12)
    # M = 2: only the two largest probabilities; a peaked prediction scores higher (more ID)
    top2 = build_detector("GEN", {"M": 2}).score(logits, None)[0].item()
    assert top2 == pytest.approx(-sum(q**g * (1 - q) ** g for q in sorted(p)[-2:]), rel=1e-12)
    assert det.score(torch.tensor([[9.0, 0.0, 0.0]]), None) > det.score(torch.tensor([[0.5, 0.0, 0.0]]), None)


def test_react_by_hand() -> None:
    det = _fit("ReAct", H, W, B, percentile=50)
    c = np.percentile(H, 50)  # over every unit of every training sample
    assert det.stats["threshold"].item() == pytest.approx(c)
    np.testing.assert_allclose(_score(det, H, W, B), _energy(np.minimum(H, c) @ W.T + B), rtol=1e-6)


def test_ash_s_ash_b_scale_by_hand() -> None:
    h = np.array([[0.0, 1.0, 4.0, 2.0, 3.0]])  # n = 5, p = 60 → k = 5 − round(3) = 2 survivors: 4, 3
    s1, s2 = 10.0, 7.0
    ash_s = np.array([[0.0, 0.0, 4.0, 0.0, 3.0]]) * math.exp(s1 / s2)
    ash_b = np.array([[0.0, 0.0, 5.0, 0.0, 5.0]])  # survivors set to s1 / k
    scale = h * math.exp(s1 / s2)  # nothing pruned
    for name, shaped in (("ASH-S", ash_s), ("ASH-B", ash_b), ("Scale", scale)):
        det = _fit(name, H, W, B, percentile=60)
        np.testing.assert_allclose(_score(det, h, W, B), _energy(shaped @ W.T + B), rtol=1e-6, err_msg=name)
    # the papers' defaults
    assert build_detector("ASH-S").params.percentile == 90 and build_detector("Scale").params.percentile == 85


def test_dice_by_hand() -> None:
    det = _fit("DICE", H, W, B, percentile=80)
    contrib = W * H.mean(0)[None, :]
    keep = contrib > np.percentile(contrib, 80)  # the top 20% of the 15 contributions
    assert keep.sum() == 3
    np.testing.assert_array_equal(det.stats["weight"].numpy() != 0, keep)
    np.testing.assert_allclose(_score(det, H, W, B), _energy(H @ (W * keep).T + B), rtol=1e-6)


def test_dice_never_restores_a_umap_masked_weight() -> None:
    mask = RNG.random(W.shape) > 0.4
    det = _fit("DICE", H, W * mask, B, percentile=10)
    assert not (det.stats["weight"].numpy()[~mask]).any()


def test_fdbd_by_hand() -> None:
    det = _fit("fDBD", H, W, B)
    q = RNG.normal(size=(6, 5))
    z = q @ W.T + B
    dz = linear_tol(q, W, B) + f32_tol(np.abs(q) @ np.abs(W).T, 1)  # float32 logits, of float32-rounded q
    expected, tol = [], []
    for zi, hi, dzi in zip(z, q, dz):
        y = zi.argmax()
        others = [c for c in range(3) if c != y]
        norms = [np.linalg.norm(W[y] - W[c]) for c in others]
        dist = [abs(zi[y] - zi[c]) / n for c, n in zip(others, norms)]
        gap = np.linalg.norm(hi - H.mean(0))
        expected.append(np.mean(dist) / gap)
        # a margin z_ŷ − z_c near 0 has a large relative error but a small absolute one; ‖h − μ‖ (D terms of
        # magnitude (|h| + |μ|)²), the class-pair norms and the divisions are relative
        cond = ((np.linalg.norm(hi) + np.linalg.norm(H.mean(0))) / gap) ** 2
        tol.append(np.mean([(dzi[y] + dzi[c]) / n for c, n in zip(others, norms)]) / gap
                   + expected[-1] * f32_tol(cond, len(hi) + 6))
    assert_within(_score(det, q, W, B), expected, tol)


def test_knn_equals_brute_force_numpy(monkeypatch) -> None:
    monkeypatch.setattr(distance, "QUERY_CHUNK", 7)  # several query and bank chunks
    monkeypatch.setattr(distance, "BANK_CHUNK", 11)
    bank, queries = RNG.normal(size=(60, 8)), RNG.normal(size=(25, 8))
    bank[3] = 0.0  # a zero feature stays a zero vector
    det = _fit("KNN", bank, np.ones((2, 8)), k=5)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    d = np.linalg.norm(unit(queries)[:, None, :] - unit(bank)[None], axis=2)
    expected = -np.sort(d, axis=1)[:, 4]
    got = det.score(None, torch.tensor(queries, dtype=torch.float32)).numpy()
    assert_within(got, expected, knn_tol(-expected, 8))


def test_knn_bulk_path_with_faiss_when_installed(monkeypatch) -> None:
    """faiss is optional: where it is installed, evaluate's bulk path (large banks) gives the torch result."""
    pytest.importorskip("faiss")
    monkeypatch.setattr(distance, "FAISS_MIN_BANK", 10)
    bank, queries = RNG.normal(size=(80, 8)), torch.tensor(RNG.normal(size=(20, 8)), dtype=torch.float32)
    det = _fit("KNN", bank, np.ones((2, 8)), k=5)
    ref = det.score(None, queries).numpy()
    assert_within(det.score_bulk(None, queries).numpy(), ref, knn_tol(-ref, 8))


def _vim_numpy(train: np.ndarray, weight: np.ndarray, bias: np.ndarray, queries: np.ndarray, dim: int) -> np.ndarray:
    """ViM written independently: pinv origin, eig of the covariance sorted by value, α from the train set."""
    u = -np.linalg.pinv(weight) @ bias
    x = train - u
    vals, vecs = np.linalg.eig(x.T @ x / len(x))
    order = np.argsort(-vals.real)
    null_space = vecs.real[:, order[dim:]]
    alpha = (train @ weight.T + bias).max(1).mean() / np.linalg.norm(x @ null_space, axis=1).mean()
    vlogit = np.linalg.norm((queries - u) @ null_space, axis=1) * alpha
    return _energy(queries @ weight.T + bias) - vlogit


def test_vim_equals_numpy_reference() -> None:
    w, b = RNG.normal(size=(4, 10)), RNG.normal(size=4)
    train = np.abs(RNG.normal(size=(200, 10)) @ RNG.normal(size=(10, 10)))
    queries = np.abs(RNG.normal(size=(30, 10)))
    for dim in (3, None):
        det = _fit("ViM", train, w, b, dim=dim)
        expected = _vim_numpy(train, w, b, queries, dim or vim_default_dim(10))
        np.testing.assert_allclose(_score(det, queries, w, b), expected, rtol=1e-4, atol=1e-4)


def test_vim_default_dimension() -> None:
    assert [vim_default_dim(n) for n in (64, 512, 768, 2048, 2)] == [32, 256, 512, 1000, 1]


# ------------------------------------------------------------------------------------ protocol

def _real_fit(trained_cnn, fmnist_small):
    x, y, xt, _ = fmnist_small
    train = collect_outputs(trained_cnn, TensorBatches(x, y, batch_size=256))
    weight, bias = trained_cnn.fc.weight.detach(), trained_cnn.fc.bias.detach()
    return FitData(train.logits, train.features, train.labels, weight, bias), collect_outputs(
        trained_cnn, TensorBatches(xt[:64], batch_size=64))


def test_every_detector_state_dict_round_trips(trained_cnn, fmnist_small) -> None:
    data, test = _real_fit(trained_cnn, fmnist_small)
    for name in TABLE_ORDER:
        if DETECTORS[name].needs_inputs:
            continue
        det = build_detector(name).fit(data)
        expected = det.score(test.logits, test.features)
        assert expected.shape == (64,) and torch.isfinite(expected).all(), name
        state = det.state_dict()
        assert all(isinstance(v, torch.Tensor) for v in state.values()), name
        clone = build_detector(name, det.config()).load_state_dict(state)
        torch.testing.assert_close(clone.score(test.logits, test.features), expected, msg=name)


def test_score_is_traceable_torch(trained_cnn, fmnist_small) -> None:
    """Every ``score`` is plain torch on its inputs: tracing gives no warning and the same values."""
    data, test = _real_fit(trained_cnn, fmnist_small)

    class Wrap(nn.Module):
        def __init__(self, det) -> None:
            super().__init__()
            self.det = det

        def forward(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
            return self.det.score(logits, features)

    for name in TABLE_ORDER:
        if DETECTORS[name].needs_inputs:
            continue
        det = build_detector(name).fit(data)
        with warnings.catch_warnings():
            warnings.simplefilter("error", torch.jit.TracerWarning)
            traced = torch.jit.trace(Wrap(det), (test.logits, test.features), check_trace=False)
        torch.testing.assert_close(traced(test.logits, test.features), det.score(test.logits, test.features), msg=name)


def test_unfitted_detectors_refuse_to_score() -> None:
    for name in ("KNN", "ViM", "ReAct", "ASH-B", "DICE", "fDBD"):
        with pytest.raises(UserError, match="fitted"):
            build_detector(name).score(torch.zeros(2, 3), torch.zeros(2, 4))


def test_hyperparameters_that_do_not_fit_name_their_key() -> None:
    w = np.ones((2, 4))
    with pytest.raises(UserError, match=r"scores\.KNN\.k=50.*\(10 samples\)"):
        _fit("KNN", RNG.normal(size=(10, 4)), w)
    with pytest.raises(UserError, match=r"scores\.ViM\.dim=4: must be below the feature size 4"):
        _fit("ViM", RNG.normal(size=(10, 4)), w, np.zeros(2), dim=4)
    for bad in (0, 100, -5, 120):
        with pytest.raises(UserError, match=r"scores\.ReAct\.percentile"):
            build_detector("ReAct", {"percentile": bad})


# ------------------------------------------------------------------------------------ per model, as used

FEATURE_DETECTORS = ["KNN", "ViM", "ReAct", "DICE", "fDBD", "Mahalanobis", "ASH-S"]


def _eval(model, fmnist_small, scores, keep_features: bool = False):
    x, y, xt, yt = fmnist_small
    return evaluate(model, TensorBatches(xt[:96], yt[:96]), {"flip": TensorBatches(xt[96:160].flip(-1))},
                    scores=scores, train=TensorBatches(x[:300], y[:300], batch_size=100), keep_features=keep_features)


def _fresh_fit(model, fmnist_small, name: str):
    x, y, _, _ = fmnist_small
    train = collect_outputs(model, TensorBatches(x[:300], y[:300], batch_size=100))
    layer = model.fc
    return build_detector(name).fit(FitData(train.logits, train.features, train.labels,
                                            layer.weight.detach().float(), layer.bias.detach().float()))


def test_statistics_are_fitted_per_model_never_reused(trained_cnn, fmnist_small) -> None:
    """Two models (the base and a changed copy, as after UM) through one detector list: each model's
    statistics equal those fitted on it alone, and differ from the base's."""
    detectors = [build_detector(n) for n in FEATURE_DETECTORS]
    tuned = copy.deepcopy(trained_cnn)
    with torch.no_grad():
        for p in tuned.parameters():
            p.mul_(1.05).add_(0.01 * torch.randn_like(p))
    ev_base = _eval(trained_cnn, fmnist_small, detectors)
    ev_tuned = _eval(tuned, fmnist_small, detectors)
    assert all(not d.fitted for d in detectors)  # the given instances are templates, never fitted
    for base_det, tuned_det in zip(ev_base.detectors, ev_tuned.detectors):
        alone = _fresh_fit(tuned, fmnist_small, tuned_det.name)
        for key, value in alone.stats.items():
            torch.testing.assert_close(tuned_det.stats[key], value, msg=f"{tuned_det.name}.{key}")
        assert any(not torch.equal(base_det.stats[k], tuned_det.stats[k]) for k in alone.stats), tuned_det.name
    # a detector fitted on the base, applied to the tuned model, would score differently
    test = collect_outputs(tuned, TensorBatches(fmnist_small[2][:96]))
    for base_det in ev_base.detectors:
        assert not torch.allclose(base_det.score(test.logits, test.features).double(),
                                  torch.as_tensor(ev_tuned.scores["id"][base_det.name]).double()), base_det.name


def test_umap_mask_statistics_use_the_masked_classifier(trained_cnn, fmnist_small) -> None:
    masks = random_layer_masks(trained_cnn, 0.7, seed=1)
    apply_masks(trained_cnn, masks)
    try:
        ev = _eval(trained_cnn, fmnist_small, ["ViM", "DICE", "fDBD"])
        masked_w = trained_cnn.fc.weight.detach().clone()
        alone = {n: _fresh_fit(trained_cnn, fmnist_small, n) for n in ("ViM", "DICE", "fDBD")}
    finally:
        remove_masks(trained_cnn)
    assert (masked_w == 0).float().mean() > 0.25 and not torch.equal(masked_w, trained_cnn.fc.weight)
    dice = next(d for d in ev.detectors if d.name == "DICE")
    assert not dice.stats["weight"][masked_w == 0].any()
    for det in ev.detectors:
        for key, value in alone[det.name].stats.items():
            torch.testing.assert_close(det.stats[key], value, msg=f"{det.name}.{key}")
    unmasked = _fresh_fit(trained_cnn, fmnist_small, "fDBD")
    assert not torch.allclose(unmasked.stats["boundary_norms"], alone["fDBD"].stats["boundary_norms"])


def test_features_npz_recomputes_knn(trained_cnn, fmnist_small, tmp_path) -> None:
    """An independent numpy KNN on features.npz gives the evaluated KNN scores to 1e-4."""
    ev = _eval(trained_cnn, fmnist_small, ["KNN", "Energy"], keep_features=True)
    path = save_features(tmp_path / "features.npz", flatten_features("base", ev.features))
    npz = np.load(path)
    assert set(npz.files) == {"base/id", "base/flip", "base/train", "base/weight", "base/bias"}
    assert npz["base/train"].shape == (300, 32) and npz["base/weight"].shape == (10, 32)
    h, w, b = npz["base/id"].astype(np.float64), npz["base/weight"], npz["base/bias"]
    energy = _energy(h @ w.T + b)  # in float64, from the very features the float32 classifier saw
    assert_within(energy, ev.scores["id"]["Energy"], energy_tol(linear_tol(h, w, b), energy))
    bank = npz["base/train"].astype(np.float64)
    bank /= np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
    for ds in ("id", "flip"):
        q = npz[f"base/{ds}"].astype(np.float64)
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        d = np.linalg.norm(q[:, None, :] - bank[None], axis=2)
        kth = np.sort(d, axis=1)[:, 49]
        assert_within(ev.scores[ds]["KNN"], -kth, knn_tol(kth, q.shape[1]))


def test_features_kept_without_any_fitted_detector(trained_cnn, fmnist_small) -> None:
    ev = _eval(trained_cnn, fmnist_small, ["Energy"], keep_features=True)
    assert ev.features["train"].shape == (300, 32)
    assert _eval(trained_cnn, fmnist_small, ["Energy"]).features is None


# ------------------------------------------------------------------------------------ config

def test_scores_config_defaults_list_form_and_params() -> None:
    cfg = DemoConfig()
    assert cfg.scores.use == list(TABLE_ORDER) and set(TABLE_ORDER) == set(DETECTORS)
    dumped = cfg.model_dump()["scores"]
    assert dumped["KNN"] == {"k": 50} and dumped["GEN"] == {"gamma": 0.1, "M": 100} and dumped["ViM"] == {"dim": None}
    assert [d.name for d in configured_detectors(cfg.scores)] == list(TABLE_ORDER)
    old = validate(DemoConfig, {"scores": ["MSP", "KNN"]})
    assert old.scores.use == ["MSP", "KNN"] and old.model_dump()["scores"] == {
        "use": ["MSP", "KNN"], "tune": True, "grid": {}, "MSP": {}, "KNN": {"k": 50}}
    tuned = validate(DemoConfig, {"scores": {"KNN": {"k": 10}, "ASH-B": {"percentile": 65}}})
    knn = next(d for d in configured_detectors(tuned.scores) if d.name == "KNN")
    assert knn.params.k == 10 and tuned.scores.params("ASH-B") == {"percentile": 65.0}
    again = validate(DemoConfig, tuned.model_dump())  # config.json round-trips
    assert again.model_dump() == tuned.model_dump()
    sub = tuned.scores.subset(["KNN", "MSP"])
    assert sub.use == ["KNN", "MSP"] and sub.params("KNN") == {"k": 10}
    assert configured_detectors(ScoresConfig.model_validate(["Energy"]))[0].name == "Energy"


@pytest.mark.parametrize("data,key", [
    ({"scores": {"KNN": {"k": 0}}}, "scores.KNN.k"),
    ({"scores": {"ReAct": {"percentile": 100}}}, "scores.ReAct.percentile"),
    ({"scores": {"Scale": {"percentile": 0}}}, "scores.Scale.percentile"),
    ({"scores": {"KNN": {"kk": 3}}}, "scores.KNN.kk"),
    ({"scores": {"Nope": {}}}, "scores.Nope"),
    ({"scores": {"use": ["MSP", "Foo"]}}, "scores.use"),
    ({"scores": ["MSP", "MSP"]}, "scores.use"),
    ({"track_scores": ["Foo"]}, "track_scores"),
    ({"track_scores": ["Energy", "KNN"]}, "track_scores"),
    ({"outliers": {"scores": ["Foo"]}}, "outliers.scores"),
])
def test_scores_config_errors_name_the_key(data, key) -> None:
    with pytest.raises(UserError) as e:
        validate(DemoConfig, data)
    assert key in str(e.value) and "\n" not in str(e.value)


def test_cli_bad_hyperparameter_exits_2(capsys) -> None:
    from unleash_ood.cli import main

    assert main(["config", "scores.ASH-S.percentile=150"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unleash-ood: error:") and "scores.ASH-S.percentile" in err and len(err.splitlines()) == 1
    assert main(["config", "scores.KNN.k=7"]) == 0
    assert '"k": 7' in capsys.readouterr().out


def test_registry_and_params_table_agree() -> None:
    """The torch-free table config validates with (names, Params, flags) is the registry's."""
    from unleash_ood.detectors.params import PARAMS_TABLE, DetectorInfo

    assert list(PARAMS_TABLE) == list(TABLE_ORDER) and set(PARAMS_TABLE) <= set(DETECTORS)
    for name, info in PARAMS_TABLE.items():
        assert DetectorInfo.of(DETECTORS[name]) == info, name
        assert DETECTORS[name].name == name
