"""Detectors that reshape the penultimate activations (or the classifier) and score the energy:
ReAct, ASH-S, ASH-B, Scale and DICE.

Each recomputes the logits with the *effective* classifier layer it kept at fit time (the masked one
under a UMAP mask). Activation shaping assumes non-negative (post-ReLU) features, as in the papers.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Detector, FitData, classifier_stats, linear, register
from .logit import energy_score
from .params import PercentileParams, ScaleParams


def kept_count(n: int, percentile: float) -> int:
    """How many of ``n`` activations survive pruning at the p-th percentile (at least one)."""
    return max(1, n - int(round(n * percentile / 100.0)))


def react_clip(features: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """ReAct (Sun et al., 2021): clip activations at ``threshold``: ``min(h, c)``."""
    return torch.minimum(features, threshold.to(features))


def ash_s(features: torch.Tensor, k: int) -> torch.Tensor:
    """ASH-S (Djurisic et al., 2023): keep the top ``k`` = (100−p)% per sample, scale by ``exp(s₁/s₂)``
    (s₁, s₂ the sums before / after pruning)."""
    top, idx = features.topk(k, dim=1)
    s1, s2 = features.sum(1, keepdim=True), top.sum(1, keepdim=True)
    pruned = torch.zeros_like(features).scatter(1, idx, top)
    return pruned * torch.exp(s1 / s2.clamp_min(1e-12))


def ash_b(features: torch.Tensor, k: int) -> torch.Tensor:
    """ASH-B (Djurisic et al., 2023): keep the top ``k`` = (100−p)% per sample, each set to ``s₁ / k``."""
    _, idx = features.topk(k, dim=1)
    fill = (features.sum(1, keepdim=True) / k).expand(-1, k)
    return torch.zeros_like(features).scatter(1, idx, fill)


def scale_shape(features: torch.Tensor, k: int) -> torch.Tensor:
    """Scale (Xu et al., 2024): ``h · exp(s₁/s₂)`` with s₂ the sum of the top ``k`` = (100−p)%; nothing pruned."""
    s1, s2 = features.sum(1, keepdim=True), features.topk(k, dim=1).values.sum(1, keepdim=True)
    return features * torch.exp(s1 / s2.clamp_min(1e-12))


def dice_mask(weight: torch.Tensor, mean_features: torch.Tensor, percentile: float) -> torch.Tensor:
    """DICE (Sun & Li, 2022): keep the weights whose contribution ``w_cj · E[h_j]`` exceeds the p-th
    percentile of all C × D contributions (signed, as the paper)."""
    contrib = (weight.double() * mean_features.double()[None, :]).numpy()
    return torch.from_numpy(contrib > np.percentile(contrib, percentile))


class _Shaping(Detector):
    """Energy of the effective classifier applied to shaped activations (no training statistics)."""

    Params = PercentileParams
    needs_classifier = True

    kept = 0  # survivors per sample: a Python int set from the fitted feature size, so scores trace cleanly

    def fit(self, data: FitData) -> Detector:
        self.stats = classifier_stats(data)
        self.kept = kept_count(data.weight.shape[1], self.params.percentile)
        return super().fit(data)

    def load_state_dict(self, stats: dict[str, torch.Tensor]) -> Detector:
        self.kept = kept_count(stats["weight"].shape[1], self.params.percentile)
        return super().load_state_dict(stats)

    def shape(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        self.check_fitted()
        return energy_score(linear(self.shape(features), self.stats))


@register
class ReAct(Detector):
    """ReAct (Sun et al., NeurIPS 2021): energy of ``W·min(h, c) + b``, c = p-th percentile of the
    training activations (all units of all training samples)."""

    name = "ReAct"
    Params = PercentileParams
    needs_fit = True

    def fit(self, data: FitData) -> Detector:
        threshold = np.percentile(data.features.numpy(), self.params.percentile)
        self.stats = {**classifier_stats(data), "threshold": torch.tensor(float(threshold))}
        return super().fit(data)

    def score(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        self.check_fitted()
        return energy_score(linear(react_clip(features, self.stats["threshold"]), self.stats))


@register
class ASHS(_Shaping):
    """ASH-S (Djurisic et al., ICLR 2023) on the penultimate features, then energy."""

    name = "ASH-S"

    def shape(self, features: torch.Tensor) -> torch.Tensor:
        return ash_s(features, self.kept)


@register
class ASHB(_Shaping):
    """ASH-B (Djurisic et al., ICLR 2023; OpenOOD's "ASH") on the penultimate features, then energy."""

    name = "ASH-B"

    def shape(self, features: torch.Tensor) -> torch.Tensor:
        return ash_b(features, self.kept)


@register
class Scale(_Shaping):
    """Scale (Xu et al., ICLR 2024): rescale all activations by ``exp(s₁/s₂)``, then energy."""

    name = "Scale"
    Params = ScaleParams

    def shape(self, features: torch.Tensor) -> torch.Tensor:
        return scale_shape(features, self.kept)


@register
class DICE(Detector):
    """DICE (Sun & Li, ECCV 2022): energy of a sparsified classifier layer.

    ``W`` is the *effective* classifier weight of the network as it is used. Under a UMAP mask that is
    ``W ⊙ M_umap``: the masked weights contribute zero, and DICE's percentile is taken over all C × D
    entries, those zeros included. The layer DICE scores with is ``W ⊙ M_umap ⊙ M_dice``: it sparsifies
    the UMAP-masked layer further and never brings back a weight UMAP removed. The contributions use the
    mean features of the masked network (the whole network is masked, not only this layer). The bias is
    kept as it is (UMAP never masks biases).
    """

    name = "DICE"
    Params = PercentileParams
    needs_fit = True

    def fit(self, data: FitData) -> Detector:
        stats = classifier_stats(data)
        keep = dice_mask(stats["weight"], data.features.mean(0), self.params.percentile)
        self.stats = {"weight": stats["weight"] * keep, "bias": stats["bias"]}
        return super().fit(data)

    def score(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        self.check_fitted()
        return energy_score(linear(features, self.stats))
