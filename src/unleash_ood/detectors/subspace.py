"""Detectors built on the geometry of the classifier layer and the training features: ViM and fDBD."""

from __future__ import annotations

import torch

from .base import Detector, FitData, classifier_stats, fit_error, register
from .logit import energy_score
from .params import ViMParams


def vim_default_dim(feature_size: int) -> int:
    """ViM's principal dimension D for N-dim features (Wang et al., 2022; OpenOOD): 1000 for N ≥ 1500,
    512 for N ≥ 768, else N/2 — always below N."""
    dim = 1000 if feature_size >= 1500 else 512 if feature_size >= 768 else feature_size // 2
    return max(1, min(dim, feature_size - 1))


def vim_fit(features: torch.Tensor, logits: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
            dim: int) -> dict[str, torch.Tensor]:
    """ViM's statistics in float64: origin ``u = −W⁺b``, the residual basis (eigenvectors of the
    uncentred covariance of ``h − u`` outside the top ``dim``), and ``α = mean max-logit / mean ‖residual‖``."""
    u = -torch.linalg.pinv(weight.double()) @ bias.double()
    x = features.double() - u
    eigvals, eigvecs = torch.linalg.eigh(x.T @ x / len(x))  # ascending
    residual_basis = eigvecs[:, : x.shape[1] - dim]
    alpha = logits.double().amax(1).mean() / (x @ residual_basis).norm(dim=1).mean()
    return {"origin": u.float(), "residual_basis": residual_basis.float().contiguous(), "alpha": alpha.float()}


def vim_score(logits: torch.Tensor, features: torch.Tensor, stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """ViM: ``energy(z) − α · ‖(h − u) projected outside the principal subspace‖``."""
    residual = (features - stats["origin"].to(features)) @ stats["residual_basis"].to(features)
    return energy_score(logits) - stats["alpha"].to(features) * residual.norm(dim=1)


@register
class ViM(Detector):
    """ViM (Wang et al., CVPR 2022): energy minus the α-scaled norm of the feature residual outside the
    principal subspace of the training features centred at ``u = −W⁺b`` (W, b: the effective classifier)."""

    name = "ViM"
    Params = ViMParams
    needs_fit = True

    def effective_dim(self, feature_size: int) -> int:
        return self.params.dim if self.params.dim is not None else vim_default_dim(feature_size)

    def fit(self, data: FitData) -> Detector:
        n = data.features.shape[1]
        dim = self.effective_dim(n)
        if dim >= n:
            raise fit_error(self.name, "dim", dim, f"must be below the feature size {n}")
        bias = classifier_stats(data)["bias"]
        self.stats = vim_fit(data.features, data.logits, data.weight, bias, dim)
        return super().fit(data)

    def score(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        self.check_fitted()
        return vim_score(logits, features, self.stats)


def boundary_norms(weight: torch.Tensor) -> torch.Tensor:
    """``‖w_i − w_j‖`` for every pair of classes (C × C; the diagonal, never used, set to 1)."""
    norms = torch.cdist(weight.double(), weight.double())
    return norms.fill_diagonal_(1.0).clamp_min(1e-12).float()


def fdbd_score(logits: torch.Tensor, features: torch.Tensor, norms: torch.Tensor,
               train_mean: torch.Tensor) -> torch.Tensor:
    """fDBD (Liu & Qin, ICML 2024): the mean over c ≠ ŷ of the feature distance to the decision boundary
    ``|z_ŷ − z_c| / ‖w_ŷ − w_c‖``, divided by ``‖h − μ_train‖``."""
    top, pred = logits.max(1)
    to_boundary = (top[:, None] - logits) / norms.to(logits)[pred]  # zero for c = ŷ
    mean_distance = to_boundary.sum(1) / (logits.shape[1] - 1)
    return mean_distance / (features - train_mean.to(features)).norm(dim=1).clamp_min(1e-12)


@register
class fDBD(Detector):  # noqa: N801  (the paper's spelling)
    """fDBD (Liu & Qin, ICML 2024): fast decision-boundary distance, on the effective (masked) classifier."""

    name = "fDBD"
    needs_fit = True

    def fit(self, data: FitData) -> Detector:
        self.stats = {"boundary_norms": boundary_norms(data.weight), "train_mean": data.features.float().mean(0)}
        return super().fit(data)

    def score(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        self.check_fitted()
        return fdbd_score(logits, features, self.stats["boundary_norms"], self.stats["train_mean"])
