"""Shared fixtures: a few hundred real Fashion-MNIST images and a small CNN trained on them."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

from unleash_ood.evaluate import TensorBatches
from unleash_ood.models import build_model
from unleash_ood.train import OptimConfig, train

# Tiny models on a shared 2-core machine: intra-op threads cost far more than they give
# (measured ~17x slower fwd/bwd of the width-8 CNN with 2 threads under load).
torch.set_num_threads(int(os.environ.get("UNLEASH_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def fmnist_full() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The full real Fashion-MNIST (x_train, y_train, x_test, y_test), loaded once per session.

    Default arguments: the Debian package's files are found without any download.
    """
    from unleash_ood.data.fashion import load_fashion_mnist

    x, y = load_fashion_mnist()
    xt, yt = load_fashion_mnist(train=False)
    return x, y, xt, yt


@pytest.fixture(scope="session")
def fmnist_small(fmnist_full) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train[:512], y_train[:512], x_test[:256], y_test[:256]) of the real Fashion-MNIST."""
    x, y, xt, yt = fmnist_full
    return x[:512].clone(), y[:512].clone(), xt[:256].clone(), yt[:256].clone()


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("small_cnn", 10, width=8)


@pytest.fixture(scope="session")
def _trained_cnn_master(fmnist_small) -> nn.Module:
    x, y, _, _ = fmnist_small
    model = small_cnn(0)
    # 2 epochs reach only ~50% test accuracy at this size; 4 epochs (~2 s) reach ~70%
    cfg = OptimConfig(epochs=4, lr=0.1, batch_size=32, weight_decay=5e-4)
    train(model, TensorBatches(x, y, batch_size=32, shuffle=True, seed=0), cfg)
    model.eval()
    return model


@pytest.fixture
def trained_cnn(_trained_cnn_master) -> nn.Module:
    """A fresh copy (tests may modify it) of a width-8 SmallCNN trained 4 epochs on 512 images, eval mode."""
    return copy.deepcopy(_trained_cnn_master)


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    """Every tensor of ``model.state_dict()`` bit-identical to ``reference`` (same keys too)."""
    state = model.state_dict()
    assert set(state) == set(reference)
    for k, v in reference.items():
        assert state[k].dtype == v.dtype, k
        assert torch.equal(state[k], v), f"{k} changed"


def randomize_bn(model: nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics and affine parameters (a freshly built model has identities)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
