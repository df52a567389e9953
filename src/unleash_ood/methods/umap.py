"""UMAP: the flooding objective optimized over a learned edge-popup mask with the weights
frozen (Eq. 4, Algorithm 2). The model itself never changes: deploy it as is for
classification and with the mask for OOD scoring."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..masking import add_popup_masks, check_keep_ratio, popup_binary_masks, remove_masks
from ..train import OptimConfig, train
from .um import check_zeta, flooding_step


def frozen_eval_mode(model: nn.Module) -> None:
    """Eval mode during mask learning: BatchNorm statistics and dropout stay as in the given model."""
    model.eval()


def learn_umap_mask(model: nn.Module, batches: Iterable, zeta: float, keep_ratio: float, cfg: OptimConfig,
                    init: str = "kaiming", seed: int = 0,
                    on_epoch_end: Callable[[int, dict], None] | None = None) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Learn per-layer binary masks keeping ``keep_ratio`` of each layer's weights.

    Returns ``(masks, history)``; ``masks`` maps layer names to bool tensors (apply with
    :func:`unleash_ood.masking.apply_masks`). The model's weights and buffers are untouched.
    """
    check_keep_ratio(keep_ratio)
    zeta = check_zeta(zeta)
    trainable = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in trainable:
            p.requires_grad_(False)
        scores = add_popup_masks(model, keep_ratio, init=init, seed=seed)
        history = train(model, batches, cfg, flooding_step(zeta), params=scores, train_mode=frozen_eval_mode,
                        on_epoch_end=on_epoch_end, desc="UMAP")
        masks = popup_binary_masks(model)
    finally:
        remove_masks(model)
        for p, flag in trainable.items():
            p.requires_grad_(flag)
    return masks, history
