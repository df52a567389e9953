"""Layer-wise weight masks on any ``nn.Module`` via ``torch.nn.utils.parametrize``.

Masks cover the weight of every Conv and Linear layer (biases and BatchNorm untouched).
``keep_ratio`` is the fraction of each layer's weights KEPT: the paper's "mask rate 97.5%"
and the authors' ``prune_rate: 0.8`` both mean keep_ratio 0.975 / 0.8.
Removing a mask restores the original weight tensor exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import UserError

MASKABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def check_keep_ratio(keep_ratio: float) -> float:
    """Validate a keep ratio in (0, 1]."""
    if not 0.0 < float(keep_ratio) <= 1.0:
        raise UserError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    return float(keep_ratio)


def maskable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv/Linear layer with a weight, by qualified name."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, MASKABLE) and getattr(m, "weight", None) is not None}


def topk_mask(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Binary mask (same shape as ``scores``) keeping the round(keep_ratio·n) largest scores."""
    n = scores.numel()
    k = max(1, round(keep_ratio * n))
    mask = torch.zeros(n, dtype=scores.dtype, device=scores.device)
    mask[scores.detach().flatten().topk(k, sorted=False).indices] = 1.0
    return mask.view_as(scores)


class FixedMask(nn.Module):
    """Parametrization ``W -> W ⊙ m`` with a fixed binary mask ``m``."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)


class _StraightThroughTopK(torch.autograd.Function):
    """Forward: top-k binary mask of the scores; backward: identity (edge-popup)."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:  # type: ignore[override]
        return topk_mask(scores, keep_ratio)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


class PopupMask(nn.Module):
    """Learnable edge-popup mask (Ramanujan et al., 2020): ``W -> W ⊙ topk(|s|)`` with scores ``s``."""

    def __init__(self, weight: torch.Tensor, keep_ratio: float, init: str = "kaiming",
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.keep_ratio = check_keep_ratio(keep_ratio)
        self.scores = nn.Parameter(init_scores(weight, init, generator))

    def binary_mask(self) -> torch.Tensor:
        return topk_mask(self.scores.abs(), self.keep_ratio)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * _StraightThroughTopK.apply(self.scores.abs(), self.keep_ratio)


def init_scores(weight: torch.Tensor, init: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Initial popup scores: Kaiming-uniform random (the authors') or ``|W|`` (starts at magnitude pruning)."""
    if init == "kaiming":
        bound = weight[0].numel() ** -0.5  # kaiming_uniform_(a=sqrt(5)), as nn.Linear's default init
        u = torch.rand(weight.shape, generator=generator, device="cpu")
        return ((2 * u - 1) * bound).to(weight.device, weight.dtype)
    if init == "magnitude":
        return weight.detach().abs().clone()
    raise UserError(f"unknown score init {init!r}; choose 'kaiming' or 'magnitude'")


def stream_generator(seed: int, stream: str, index: int = 0) -> torch.Generator:
    """A CPU generator for one named random stream of a run: seeded with a hash of ``(seed, stream,
    index)``, so e.g. the ζ masks (``"zeta"``, draw) and UMAP's initial scores (``"umap-init"``) of
    one run seed never share a generator seed."""
    digest = hashlib.blake2b(f"{int(seed)}/{stream}/{int(index)}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)  # < 2**63


def random_layer_masks(model: nn.Module, keep_ratio: float, seed: int = 0, draw: int = 0) -> dict[str, torch.Tensor]:
    """The random layer-wise mask m_δ: per layer, Gaussian scores, keep the top ``keep_ratio``.

    Draw ``draw`` of run seed ``seed`` comes from the ``"zeta"`` stream (:func:`stream_generator`)."""
    check_keep_ratio(keep_ratio)
    g = stream_generator(seed, "zeta", draw)
    return {name: topk_mask(torch.randn(original_weight(m).shape, generator=g), keep_ratio).bool()
            for name, m in maskable_layers(model).items()}


def original_weight(module: nn.Module) -> torch.Tensor:
    """The unmasked weight of a (possibly parametrized) layer."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Attach fixed binary masks (by layer name) to ``model`` in place."""
    layers = maskable_layers(model)
    unknown = sorted(set(masks) - set(layers))
    if unknown:
        raise UserError(f"mask names layers the model does not have: {', '.join(unknown[:5])}")
    for name, mask in masks.items():
        weight = original_weight(layers[name])
        if tuple(mask.shape) != tuple(weight.shape):
            raise UserError(f"mask for layer {name!r} has shape {tuple(mask.shape)}, weight has {tuple(weight.shape)}")
        parametrize.register_parametrization(layers[name], "weight", FixedMask(mask.to(weight.device)))
    return model


def add_popup_masks(model: nn.Module, keep_ratio: float, init: str = "kaiming", seed: int = 0) -> list[nn.Parameter]:
    """Attach learnable popup masks to every maskable layer; return the score parameters.

    Random initial scores come from run seed ``seed``'s ``"umap-init"`` stream (:func:`stream_generator`)."""
    g = stream_generator(seed, "umap-init")
    scores = []
    for module in maskable_layers(model).values():
        popup = PopupMask(original_weight(module), keep_ratio, init, g)
        parametrize.register_parametrization(module, "weight", popup)
        scores.append(popup.scores)
    return scores


def popup_binary_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The current binary masks of all popup-masked layers (bool tensors by layer name)."""
    out = {}
    for name, module in maskable_layers(model).items():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, PopupMask):
                    out[name] = p.binary_mask().bool().cpu()
    return out


def remove_masks(model: nn.Module) -> nn.Module:
    """Remove every mask: the original weights come back untouched."""
    for module in maskable_layers(model).values():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    return model


def kept_fraction(model: nn.Module) -> dict[str, float]:
    """Fraction of non-zero effective weights per layer (for checks and reports)."""
    with torch.no_grad():
        return {name: float((m.weight != 0).float().mean()) for name, m in maskable_layers(model).items()}


@contextmanager
def masked(model: nn.Module, masks: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Temporarily apply fixed masks; they are removed on exit even after an error."""
    apply_masks(model, masks)
    try:
        yield model
    finally:
        remove_masks(model)
