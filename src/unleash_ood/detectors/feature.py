"""Detectors on penultimate features fitted on the ID training set: Mahalanobis."""

from __future__ import annotations

import torch

from ..errors import UserError
from .base import Detector, FitData, register


def mahalanobis_fit(features: torch.Tensor, labels: torch.Tensor, num_classes: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (C × D) and the precision (D × D) of the tied covariance, in float64."""
    features = features.double()
    if len(labels.unique()) != num_classes:
        raise UserError(f"Mahalanobis fit needs samples of all {num_classes} classes, got {len(labels.unique())}")
    means = torch.stack([features[labels == c].mean(0) for c in range(num_classes)])
    centered = features - means[labels]
    cov = centered.T @ centered / len(features)
    return means, torch.linalg.pinv(cov, hermitian=True)


def mahalanobis_score(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """−min_c (h − μ_c)ᵀ Σ⁻¹ (h − μ_c) (Lee et al., 2018; penultimate layer, as OpenOOD)."""
    diff = features.to(means.dtype).unsqueeze(1) - means.unsqueeze(0)  # N × C × D
    return -torch.einsum("ncd,de,nce->nc", diff, precision, diff).amin(1)


@register
class Mahalanobis(Detector):
    """Class-conditional Gaussians with a tied covariance on penultimate features.

    The penultimate-layer variant (OpenOOD's), without input preprocessing or the original paper's
    multi-layer logistic-regression combiner.
    """

    name = "Mahalanobis"
    needs_fit = True

    def fit(self, data: FitData) -> Detector:
        if data.labels is None:
            raise UserError("Mahalanobis needs labelled training batches (x, y)")
        means, precision = mahalanobis_fit(data.features, data.labels, data.num_classes)
        self.stats = {"means": means, "precision": precision}  # float64: no rounding in the quadratic form
        return super().fit(data)

    def score(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        self.check_fitted()
        return mahalanobis_score(features, self.stats["means"].to(features.device),
                                 self.stats["precision"].to(features.device))
