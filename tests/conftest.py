"""Shared fixtures: a few hundred real Fashion-MNIST images and a small CNN trained on them."""

from __future__ import annotations

import copy
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from unleash_ood.config import OptimConfig
from unleash_ood.data.batches import TensorBatches
from unleash_ood.methods.train import train
from unleash_ood.models import build_model

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


# ------------------------------------------------------------------------------------ float32 tolerances
# Two code paths that compute one quantity in float32 in different orders (other kernels, batch sizes,
# fused ops) differ by rounding. Tests bound that difference from the unit roundoff and the magnitudes
# involved, never by a number that happens to pass on one CPU; paths that compute the same thing in the
# same order are compared exactly.

EPS32 = 2.0**-24  # float32 unit roundoff: the relative error of one rounding
EPS64 = 2.0**-53


def f32_tol(magnitude, n_terms: int, random_walk: bool = False, eps: float = EPS32):
    """How far two float32 evaluations of one sum of ``n_terms`` terms, in different orders, may differ.

    Each lies within γ_n·Σ|terms| ≈ n·eps·Σ|terms| of the exact sum (Higham, Accuracy and Stability of
    Numerical Algorithms, §3.1), so the two within 2·n·eps·Σ|terms|; ``random_walk``: √n instead of n
    (independent roundings, for long chains — whole networks, training runs — whose worst case is never
    reached). ``magnitude`` is Σ|terms| or a bound of it (a number or an array).
    """
    n = math.sqrt(n_terms) if random_walk else n_terms
    tol = 2 * n * eps * np.asarray(magnitude, dtype=np.float64)
    return float(tol) if tol.ndim == 0 else tol


def net_rel_tol(model: nn.Module) -> float:
    """Norm-wise relative difference of two float32 forward passes of ``model`` (other kernels or batch
    sizes): the random-walk :func:`f32_tol` of each conv / linear layer's fan-in plus one rounding for
    the element-wise ops after it, added over the layers (each layer roughly norm-preserving)."""
    from unleash_ood.masking import maskable_layers

    return sum(float(f32_tol(1.0, m.weight[0].numel() + 1, random_walk=True)) for m in maskable_layers(model).values())


def linear_tol(h, weight, bias=None, rel_h: float = 0.0) -> np.ndarray:
    """Per sample and class, how far two float32 evaluations of the logits ``h Wᵀ + b`` may differ when
    the features themselves differ by ``rel_h``·‖h‖: ‖W_k‖·rel_h·‖h‖ plus the layer's own rounding."""
    h, w = np.asarray(h, np.float64), np.asarray(weight, np.float64)
    b = np.zeros(len(w)) if bias is None else np.abs(np.asarray(bias, np.float64))
    own = f32_tol(np.abs(h) @ np.abs(w).T + b, w.shape[1] + 1)
    return own + rel_h * np.linalg.norm(h, axis=1, keepdims=True) * np.linalg.norm(w, axis=1)[None, :]


def energy_tol(logits_tol, energy) -> np.ndarray:
    """The logsumexp of logits known to ``logits_tol`` (N × C): it moves at most max_k |δz_k|, plus its own
    C + 2 roundings (a sum of C terms ≤ 1, the log, the add of the max)."""
    logits_tol = np.asarray(logits_tol, np.float64)
    return logits_tol.max(1) + f32_tol(1.0 + np.abs(np.asarray(energy, np.float64)), logits_tol.shape[1] + 2)


def knn_tol(distance, dim: int) -> np.ndarray:
    """How far two float32 evaluations of a distance between normalized vectors (d² = |q|² + |b|² − 2 q·b)
    may differ: d² to f32_tol(4, 2·dim + 12) (Σ|terms| ≤ 4; the dot product and the squared norms, then the
    normalizations of q and b and the rounding of the inputs, which move d² by ≤ 2·d·‖δq̂ − δb̂‖), hence d to
    that / d, or its square root near d = 0."""
    d2 = float(f32_tol(4.0, 2 * dim + 12))
    d = np.asarray(distance, np.float64)
    return np.minimum(d2 / np.maximum(d, 1e-30), math.sqrt(d2))


def assert_within(actual, desired, tol, rtol: float = 0.0, err_msg: str = "") -> None:
    """``|actual − desired| ≤ tol + rtol·|desired|`` element-wise, ``tol`` an array (one bound per element)
    or a number; np.testing.assert_allclose takes only a scalar atol."""
    a, d = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    assert a.shape == d.shape, f"{err_msg} shapes {a.shape} != {d.shape}"
    limit = np.broadcast_to(np.asarray(tol, np.float64), d.shape) + rtol * np.abs(d)
    diff = np.abs(a - d)
    bad = ~(diff <= limit)  # NaN fails too
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, diff / np.maximum(limit, 1e-300), -1.0)), d.shape)
        raise AssertionError(f"{err_msg} {int(bad.sum())} of {bad.size} elements beyond tolerance; worst at {i}: "
                             f"actual {a[i]!r}, desired {d[i]!r}, |diff| {diff[i]:.3g} > {limit[i]:.3g}")


def layout_like(model: nn.Module, like: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers have the strides of ``like``'s (the same
    architecture): the same kernels then run, so equal weights give equal outputs, bit for bit (a
    channels_last and a contiguous copy of one network round differently)."""
    out = copy.deepcopy(model)
    mine, theirs = [*out.parameters(), *out.buffers()], [*like.parameters(), *like.buffers()]
    assert [t.shape for t in mine] == [t.shape for t in theirs]
    with torch.no_grad():
        for t, ref in zip(mine, theirs):
            t.data = torch.empty_strided(ref.shape, ref.stride(), dtype=t.dtype).copy_(t.data)
    return out


def sgd_tol(steps: int, lr: float, momentum: float, n_terms: int, grad_bound: float = 1.0) -> float:
    """How far two float32 SGD runs may drift apart whose gradients are the same sums in other orders (DDP's
    all-reduced half-batch gradients against one batch's): each step's gradient differs by the random-walk
    :func:`f32_tol` of its ``n_terms``-term sums (terms bounded by ``grad_bound``), momentum μ carries a
    difference into updates worth ≤ 1/(1 − μ) of it, and over a few small steps the drift adds up."""
    return steps * lr / (1 - momentum) * f32_tol(grad_bound, n_terms, random_walk=True)
