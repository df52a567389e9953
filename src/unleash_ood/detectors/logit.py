"""OOD scores, all "higher = more in-distribution".

The formulas of the logit scores; :mod:`unleash_ood.detectors` wraps them (and the feature scores)
behind one protocol. ODIN needs its own gradient pass over the inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Detector, register
from .params import EnergyParams, GENParams, ODINParams


def msp_score(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel, 2017), as its logarithm in float64.

    ``log p_max = −log1p(Σ_{c≠ŷ} exp(z_c − z_ŷ))``: a monotone transform of MSP (same ranking, same
    metrics) that does not saturate. A float32 softmax rounds to exactly 1.0 once the margin exceeds
    ≈17, so a confident model's ID and OOD samples would tie.
    """
    z = logits.double()
    top = z.argmax(1, keepdim=True)
    others = torch.exp(z - z.gather(1, top)).scatter(1, top, 0.0)
    return -torch.log1p(others.sum(1))


def max_logit_score(logits: torch.Tensor) -> torch.Tensor:
    """Maximum logit (Hendrycks et al., 2022)."""
    return logits.amax(1)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy ``T · logsumexp(z / T)`` (Liu et al., 2020)."""
    return temperature * torch.logsumexp(logits / temperature, dim=1)


def odin_score(model: nn.Module, x: torch.Tensor, temperature: float = 1000.0,
               epsilon: float = 0.0014) -> torch.Tensor:
    """ODIN (Liang et al., 2018): temperature-scaled MSP after a small input step that raises it.

    The step is ``-ε · sign(∇ₓ CE(f(x)/T, ŷ))`` in [0, 1] pixel space (normalization is inside the model).
    """
    x = x.detach().clone().requires_grad_(True)
    logits = model(x) / temperature
    loss = F.cross_entropy(logits, logits.argmax(1))
    (grad,) = torch.autograd.grad(loss, x)
    with torch.no_grad():
        return msp_score(model(x - epsilon * grad.sign()) / temperature)


@register
class MSP(Detector):
    """Maximum softmax probability (Hendrycks & Gimpel, 2017); float64 log-space, so it never ties."""

    name = "MSP"

    def score(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return msp_score(logits)


@register
class MaxLogit(Detector):
    """Maximum logit (Hendrycks et al., 2022)."""

    name = "MaxLogit"

    def score(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return max_logit_score(logits)


@register
class Energy(Detector):
    """Negative free energy ``T · logsumexp(z / T)`` (Liu et al., 2020)."""

    name = "Energy"
    Params = EnergyParams

    def score(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return energy_score(logits, self.params.temperature)


@register
class ODIN(Detector):
    """ODIN (Liang et al., 2018): temperature scaling + a small input step; its own gradient pass."""

    name = "ODIN"
    Params = ODINParams
    needs_inputs = True

    def score_inputs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return odin_score(model, x, self.params.temperature, self.params.epsilon)


def gen_score(logits: torch.Tensor, gamma: float = 0.1, top_m: int = 100) -> torch.Tensor:
    """GEN (Liu et al., CVPR 2023): ``−Σ_{top-M p} p^γ (1 − p)^γ`` over the M largest softmax
    probabilities (M capped at C), in float64 so confident predictions do not saturate."""
    p = logits.double().softmax(1)
    top = p.sort(dim=1, descending=True).values[:, :top_m]  # a slice, not min(M, C): traces without a branch
    return -(top.pow(gamma) * (1.0 - top).pow(gamma)).sum(1)


@register
class GEN(Detector):
    """Generalized entropy (Liu et al., CVPR 2023) over the top-M softmax probabilities."""

    name = "GEN"
    Params = GENParams

    def score(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return gen_score(logits, self.params.gamma, self.params.M)
