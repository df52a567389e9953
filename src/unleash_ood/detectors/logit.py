"""Detectors on the logits alone: MSP, MaxLogit, Energy, GEN, and ODIN (its own gradient pass)."""

from __future__ import annotations

import torch
from torch import nn

from ..scores import energy_score, max_logit_score, msp_score, odin_score
from .base import Detector, register
from .params import EnergyParams, GENParams, ODINParams


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
