"""OOD scores, all "higher = more in-distribution".

Logit scores (MSP, MaxLogit, Energy) and feature scores (Mahalanobis) are computed from ONE
forward pass per dataset; ODIN needs its own gradient pass over the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .names import ALL_SCORES  # noqa: F401 - re-exported: the light home of the names


def msp_score(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel, 2017)."""
    return logits.softmax(1).amax(1)


def max_logit_score(logits: torch.Tensor) -> torch.Tensor:
    """Maximum logit (Hendrycks et al., 2022)."""
    return logits.amax(1)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy ``T · logsumexp(z / T)`` (Liu et al., 2020)."""
    return temperature * torch.logsumexp(logits / temperature, dim=1)


LOGIT_SCORES = {"MSP": msp_score, "MaxLogit": max_logit_score, "Energy": energy_score}


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


@dataclass
class Mahalanobis:
    """Class-conditional Gaussians with a tied covariance on penultimate features (Lee et al., 2018).

    Score = −min_c (f − μ_c)ᵀ Σ⁻¹ (f − μ_c). This is the penultimate-layer variant (as in OpenOOD),
    without input preprocessing or the multi-layer logistic-regression combiner of the original paper.
    """

    means: torch.Tensor  # C × D
    precision: torch.Tensor  # D × D

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Mahalanobis:
        features = features.double()
        present = labels.unique()
        if len(present) != num_classes:
            raise UserError(f"Mahalanobis fit needs samples of all {num_classes} classes, got {len(present)}")
        means = torch.stack([features[labels == c].mean(0) for c in range(num_classes)])
        centered = features - means[labels]
        cov = centered.T @ centered / len(features)
        return cls(means=means.float(), precision=torch.linalg.pinv(cov, hermitian=True).float())

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        diff = features.float().unsqueeze(1) - self.means.to(features.device).unsqueeze(0)  # N × C × D
        dist = torch.einsum("ncd,de,nce->nc", diff, self.precision.to(features.device), diff)
        return -dist.amin(1)
