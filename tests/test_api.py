"""The public Python API on a user's own model and DataLoaders: torchvision ResNet-18 and our CNN."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import unleash_ood as uo
from unleash_ood.data.fashion import load_fashion_mnist
from unleash_ood.models import build_model


@pytest.fixture(scope="module")
def loaders():
    x, y = load_fashion_mnist(train=True)
    train = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=64, shuffle=True)
    test = DataLoader(TensorDataset(x[256:384], y[256:384]), batch_size=64)
    noise = DataLoader(TensorDataset(torch.rand(96, 1, 28, 28)), batch_size=64)
    return train, test, noise


@pytest.mark.parametrize("arch,kwargs", [("small_cnn", {"width": 8}),
                                         ("torchvision:resnet18", {"small_input": True, "in_channels": 1})])
def test_one_call_per_step(loaders, arch, kwargs) -> None:
    train, test, noise = loaders
    torch.manual_seed(0)
    model = build_model(arch, 10, **kwargs)
    uo.train(model, train, uo.OptimConfig(epochs=1, lr=0.05, batch_size=64))
    zeta = uo.estimate_zeta(model, train, keep_ratio=0.9, draws=2)
    assert len(zeta.values) == 2 and all(v > 0 for v in zeta.values)

    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks, hist = uo.learn_umap_mask(model, train, zeta.mean, 0.8, uo.OptimConfig(epochs=1, lr=0.1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(hist) == 1 and set(masks) == set(uo.random_layer_masks(model, 0.5))

    with uo.masked(model, masks):
        masked_eval = uo.evaluate(model, test, {"noise": noise}, scores=["Energy", "MSP"])
    plain = uo.evaluate(model, test, {"noise": noise}, scores=["Energy", "MSP"])
    assert masked_eval.scores["noise"]["Energy"].shape == (96,)
    assert not (masked_eval.scores["id"]["Energy"] == plain.scores["id"]["Energy"]).all()

    uo.unleash(model, train, zeta.mean, uo.OptimConfig(epochs=1, lr=0.01))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    result = uo.evaluate(model, test, {"noise": noise}, train=train, num_classes=10)
    rows = result.records("um")
    assert {r["score"] for r in rows} == set(uo.DETECTORS)  # every detector by default
    assert 0 <= result.id_acc <= 100


def test_package_exports_stay_the_functions_after_their_submodules_load() -> None:
    import importlib

    importlib.import_module("unleash_ood.methods.train")
    importlib.import_module("unleash_ood.eval.evaluate")
    assert uo.train is importlib.import_module("unleash_ood.methods.train").train
    assert uo.evaluate is importlib.import_module("unleash_ood.eval.evaluate").evaluate
    assert set(uo.__all__) <= set(dir(uo))
    with pytest.raises(AttributeError):
        uo.no_such_name  # noqa: B018
