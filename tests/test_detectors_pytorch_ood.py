"""Our detectors against pytorch-ood 0.4.0 (pinned in the ``test`` extras) on one small trained CNN.

pytorch-ood scores "higher = more OOD", ours "higher = more in-distribution": most scores are exact
negatives. Documented variant differences, checked as such:
- MSP: ours is log max-softmax (float64); pytorch-ood's is −max-softmax → ``exp(ours) = −theirs``.
- GEN: pytorch-ood averages over the top M (ours sums, as the paper) and clamps p to [1e-7, 1 − 1e-7]
  → ``ours = −M · theirs`` wherever no probability is clamped.
- ViM: pytorch-ood computes in float32, ours in float64 (agree to ~1e-3).
- Mahalanobis: pytorch-ood's covariance is the *sum* of the centred outer products (+1e-6 ridge) and it
  keeps the Gaussian's −½ → ``theirs ≈ −(½ / N) · ours``.
Its ASH, ReAct and Scale take feature maps; penultimate features are passed as B × D × 1 × 1.
"""

from __future__ import annotations

import pytest
import pytorch_ood.detector as pood
import torch
from conftest import (
    EPS64,
    assert_within,
    energy_tol,
    f32_tol,
    knn_tol,
    linear_tol,
    net_rel_tol,
    randomize_bn,
)

from unleash_ood.data.batches import TensorBatches
from unleash_ood.detectors.base import FitData, build_detector
from unleash_ood.detectors.logit import odin_score
from unleash_ood.eval.forward import collect_outputs
from unleash_ood.models import pretrained
from unleash_ood.models.loading import load_checkpoint


@pytest.fixture(scope="module")
def setup(_trained_cnn_master, fmnist_small):
    model = _trained_cnn_master
    x, y, xt, _ = fmnist_small
    train = collect_outputs(model, TensorBatches(x, y, batch_size=256))
    queries = torch.cat([xt[:96], xt[96:192].flip(-1), torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))])
    test = collect_outputs(model, TensorBatches(queries, batch_size=256))
    data = FitData(train.logits, train.features, train.labels, model.fc.weight.detach(), model.fc.bias.detach())
    return model, data, test, queries


def _ours(name: str, data: FitData, test, **params) -> torch.Tensor:
    return build_detector(name, params).fit(data).score(test.logits, test.features).double()


def _close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    torch.testing.assert_close(ours, theirs.double().to(ours.device), rtol=rtol, atol=atol)


def _head(model):
    return lambda maps: model.fc(maps.flatten(1))


def test_logit_scores(setup) -> None:
    _, data, test, _ = setup
    z = test.logits
    _close(_ours("MSP", data, test).exp(), -pood.MaxSoftmax.score(z))
    _close(_ours("MaxLogit", data, test), -pood.MaxLogit.score(z))
    _close(_ours("Energy", data, test), -pood.EnergyBased.score(z))
    _close(_ours("Energy", data, test, temperature=2.0), -pood.EnergyBased.score(z, t=2.0))


def test_gen(setup) -> None:
    _, data, test, _ = setup
    p = test.logits.double().softmax(1)
    unclamped = ((p > 1e-7) & (p < 1 - 1e-7)).all(1)
    assert unclamped.sum() > 50
    for m in (10, 3):
        theirs = pood.GEN.score(test.logits, gamma=0.1, M=m)
        _close(_ours("GEN", data, test, M=m)[unclamped], -m * theirs[unclamped], rtol=1e-4)


def test_odin(setup) -> None:
    model, _, _, queries = setup
    theirs = pood.ODIN(model, eps=0.0014, temperature=1000.0).predict(queries[:64])
    _close(odin_score(model, queries[:64]).exp(), -theirs, rtol=1e-4, atol=1e-6)


def test_mahalanobis(setup) -> None:
    """pytorch-ood's algorithm run in float64 (its float32 inverse of the covariance would round by up to
    ~cond · 2⁻²⁴); what remains is its ridge: (NΣ + εI)⁻¹ = (Σ + ε/N·I)⁻¹ / N, whose eigenvalues
    1/(λ + ε/N) differ from 1/λ by at most (ε/N)/λ_min(Σ) relative — so does every quadratic form."""
    _, data, test, _ = setup
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # its covariance accumulator is a torch.zeros
    try:
        theirs = pood.Mahalanobis(None).fit_features(data.features.double(), data.labels).predict_features(
            test.features.double())
    finally:
        torch.set_default_dtype(previous)
    ours = build_detector("Mahalanobis").fit(data)
    eig = torch.linalg.eigvalsh(ours.stats["precision"])
    ridge = 1e-6 / len(data.features) * eig.max().item()  # (ε/N) / λ_min(Σ), λ_min(Σ) = 1 / λ_max(Σ⁻¹)
    rtol = ridge / (1 - ridge) + f32_tol((eig.max() / eig.min()).item(), data.features.shape[1], eps=EPS64)
    _close(ours.score(test.logits, test.features).double(), -theirs * 2 * len(data.features), rtol=rtol, atol=0)


def test_knn(setup) -> None:
    _, data, test, _ = setup
    for k in (50, 7):
        theirs = pood.KNN(None, k=k).fit_features(data.features, data.labels).predict_features(test.features)
        assert_within(_ours("KNN", data, test, k=k), -theirs.double(), knn_tol(theirs.double(), test.features.shape[1]))


def test_vim(setup, monkeypatch) -> None:
    """pytorch-ood's ViM casts to float32, whose eigenvectors at an eigengap of ~4e-4 (dim 16) are only
    known to ~2⁻²⁴·N·‖Σ‖/gap ~ 1: its algorithm is run in float64 here (``.float()`` → ``.double()``).
    Ours takes the network's float32 logits for the energy, it the float64 h Wᵀ + b: that is the difference
    (the float64 eigenvectors are good to ~1e-11)."""
    _, data, test, _ = setup
    h, w, b = test.features.double(), data.weight.double(), data.bias.double()
    energy = torch.logsumexp(h @ w.T + b, 1).numpy()
    tol = energy_tol(linear_tol(h.numpy(), w.numpy(), b.numpy()), energy)
    for dim in (16, 8):
        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "float", torch.Tensor.double)
            theirs = pood.ViM(None, d=dim, w=data.weight, b=data.bias).fit_features(
                data.features, data.labels).predict_features(test.features)
        assert theirs.dtype == torch.float64
        assert_within(_ours("ViM", data, test, dim=dim), -theirs, tol, err_msg=f"dim {dim}")


def test_react_ash_scale(setup) -> None:
    model, data, test, _ = setup
    maps = test.features[:, :, None, None]
    react = pood.ReAct(None, _head(model), percentile=0.9).fit_feature_maps(data.features[:, :, None, None],
                                                                           data.labels)
    _close(_ours("ReAct", data, test), -react.predict_feature_maps(maps))
    for name, variant in (("ASH-S", "ash-s"), ("ASH-B", "ash-b")):
        for p in (90, 65):
            ash = pood.ASH(None, _head(model), variant=variant, percentile=p / 100)
            _close(_ours(name, data, test, percentile=p), -ash.predict_feature_maps(maps), rtol=1e-4)
    scale = pood.SCALE(None, _head(model), percentile=0.85)
    _close(_ours("Scale", data, test), -scale.predict_feature_maps(maps), rtol=1e-4)


def test_dice(setup) -> None:
    _, data, test, _ = setup
    for p in (90, 50):
        dice = pood.DICE(None, w=data.weight, b=data.bias, p=p / 100).fit_features(data.features, data.labels)
        _close(_ours("DICE", data, test, percentile=p), -dice.predict_features(test.features), rtol=1e-4)


def test_fdbd(setup) -> None:
    model, data, test, _ = setup
    theirs = pood.fDBD(None, model.fc).fit_features(data.features).predict_features(test.features)
    _close(_ours("fDBD", data, test), -theirs, rtol=1e-4)


def test_matches_pytorch_ood_wide_resnet(tmp_path) -> None:
    """Its WideResNet (normalized input) == our converted wrn40_2 ([0, 1] input)."""
    from pytorch_ood.model import WideResNet

    entry = pretrained.REGISTRY["wrn-40-2/cifar10/crossentropy"]
    ref = WideResNet(num_classes=10, depth=40, widen_factor=2, drop_rate=0.3).eval()
    randomize_bn(ref, 2)
    src = tmp_path / "ref.pt"
    torch.save(ref.state_dict(), src)
    out = pretrained.import_state_dict(src, "wrn40_2", 10, {"mean": list(entry.mean), "std": list(entry.std)})
    ours, _ = load_checkpoint(out, 10)
    x = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor(entry.mean).view(1, 3, 1, 1), torch.tensor(entry.std).view(1, 3, 1, 1)
    with torch.no_grad():
        got, want = ours.eval()(x), ref((x - mean) / std)
    # two 40-layer networks, other kernels (its layout, its pooling): float32 bounds on the logits
    h = collect_outputs(ours, TensorBatches(x, batch_size=len(x))).features.double().numpy()
    fc = ours.fc
    assert_within(got, want, linear_tol(h, fc.weight.detach().double(), fc.bias.detach().double(), net_rel_tol(ours)))
