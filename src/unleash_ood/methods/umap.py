"""UMAP: the flooding objective optimized over a learned edge-popup mask with the weights
frozen (Eq. 4, Algorithm 2). The model itself never changes: deploy it as is for
classification and with the mask for OOD scoring.

:func:`learn_mask` is the one mask-learning loop (freeze the weights → attach popup masks →
train the scores → binarize → remove); UMAP, the outlier methods' +UMAP variant and the analyses'
plain-CE popup pass all call it with their own step loss."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..config import OptimConfig
from ..masking import add_popup_masks, check_keep_ratio, maskable_layers, popup_binary_masks, remove_masks
from .train import StepLoss, TrainScope, train
from .um import check_zeta, flooding_step


def frozen_eval_mode(model: nn.Module) -> None:
    """Eval mode during mask learning: BatchNorm statistics and dropout stay as in the given model."""
    model.eval()


@dataclasses.dataclass
class MaskHooks:
    """Optional callbacks of :func:`learn_mask`: ``on_start()`` runs once the masks are attached (before
    the first epoch), ``on_epoch_end(epoch, record)`` after every epoch; ``desc`` labels the progress."""

    on_start: Callable[[], None] | None = None
    on_epoch_end: Callable[[int, dict], None] | None = None
    desc: str = "mask"


@dataclasses.dataclass
class LearnedMask:
    """The result of :func:`learn_mask`: bool ``masks`` and the learned popup ``scores`` by layer name,
    and the training ``history`` (one record per epoch)."""

    masks: dict[str, torch.Tensor]
    scores: dict[str, torch.Tensor]
    history: list[dict]


def learn_mask(model: nn.Module, batches: Iterable, step_loss: StepLoss, keep_ratio: float, cfg: OptimConfig,
               init: str = "kaiming", seed: int = 0, hooks: MaskHooks | None = None,
               flood_level: float | None = None) -> LearnedMask:
    """Learn per-layer edge-popup masks keeping ``keep_ratio`` of each layer's weights under ``step_loss``.

    The weights are frozen and the model stays in eval mode (BatchNorm statistics included); only the
    popup scores (initialized by ``init`` from ``seed``) are trained. Afterwards the masks are removed and
    every parameter's ``requires_grad`` is restored, also after an error: the model is left untouched.
    ``flood_level``: ``step_loss`` floods at this ζ (records get ``ce_below_zeta``, see ``train``).
    """
    check_keep_ratio(keep_ratio)
    hooks = hooks or MaskHooks()
    trainable = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in trainable:
            p.requires_grad_(False)
        params = add_popup_masks(model, keep_ratio, init=init, seed=seed)
        if hooks.on_start is not None:
            hooks.on_start()
        history = train(model, batches, cfg, step_loss, on_epoch_end=hooks.on_epoch_end, desc=hooks.desc,
                        scope=TrainScope(params, frozen_eval_mode), flood_level=flood_level)
        masks = popup_binary_masks(model)
        scores = {name: s.detach().clone() for name, s in zip(maskable_layers(model), params)}
    finally:
        remove_masks(model)
        for p, flag in trainable.items():
            p.requires_grad_(flag)
    return LearnedMask(masks, scores, history)


def learn_umap_mask(model: nn.Module, batches: Iterable, zeta: float, keep_ratio: float, cfg: OptimConfig,
                    init: str = "kaiming", seed: int = 0,
                    on_epoch_end: Callable[[int, dict], None] | None = None) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Learn per-layer binary masks keeping ``keep_ratio`` of each layer's weights.

    Returns ``(masks, history)``; ``masks`` maps layer names to bool tensors (apply with
    :func:`unleash_ood.masking.apply_masks`). The model's weights and buffers are untouched. Each epoch's
    record holds ``ce_below_zeta``: the fraction of steps whose masked CE was below ζ (flooding ascends).
    """
    check_keep_ratio(keep_ratio)
    zeta = check_zeta(zeta)
    learned = learn_mask(model, batches, flooding_step(zeta), keep_ratio, cfg, init, seed,
                         MaskHooks(on_epoch_end=on_epoch_end, desc="UMAP"), flood_level=zeta)
    return learned.masks, learned.history
