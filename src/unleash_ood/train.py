"""The one training loop: base training, UM, UMAP and the outlier methods differ only in the
step loss and in which parameters are trainable."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm

from .errors import UserError
from .evaluate import split_batch, to_model_input

StepLoss = Callable[[nn.Module, object], tuple[torch.Tensor, torch.Tensor]]
"""``(model, batch) -> (objective, plain ID cross-entropy)``; the second is only logged."""


class OptimConfig(BaseModel):
    """SGD with Nesterov momentum and a per-step learning-rate schedule."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(30, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(128, ge=1)
    schedule: Literal["cosine", "linear", "multi_decay", "multi_step", "constant"] = "cosine"


def lr_factor(schedule: str, progress: float) -> float:
    """Learning-rate multiplier at ``progress`` ∈ [0, 1) of training (the four schedules of Appendix E).

    cosine: Loshchilov & Hutter; linear: constant for the first third, linearly to 0.1 over the second,
    to 0.01 over the last; multi_decay: minus 10% of the initial rate every 10% of training;
    multi_step: ×0.1 every 30% of training.
    """
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        if progress < 1 / 3:
            return 1.0
        if progress < 2 / 3:
            return 1.0 - 0.9 * (3 * progress - 1)
        return 0.1 - 0.09 * (3 * progress - 2)
    if schedule == "multi_decay":
        return max(1.0 - 0.1 * math.floor(10 * progress), 0.01)
    if schedule == "multi_step":
        return 0.1 ** math.floor(progress / 0.3)
    return 1.0


class NonFiniteLossError(UserError):
    """The training objective became NaN or infinite."""


def ce_step(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain cross-entropy on a labelled batch."""
    x, y = split_batch(batch)
    logits = model(to_model_input(x, model))
    ce = F.cross_entropy(logits, y.to(logits.device))
    return ce, ce.detach()


def make_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig, steps_per_epoch: int):
    """SGD + the configured schedule, stepped once per optimizer step."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise UserError("nothing to train: no parameter requires grad")
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                          weight_decay=cfg.weight_decay)
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(cfg.schedule, min(step / total, 1.0)))
    return opt, sched


def train(model: nn.Module, batches: Iterable, cfg: OptimConfig, step_loss: StepLoss = ce_step,
          params: Iterable[nn.Parameter] | None = None,
          on_epoch_end: Callable[[int, dict], None] | None = None,
          train_mode: Callable[[nn.Module], None] | None = None, desc: str = "train") -> list[dict]:
    """Run ``cfg.epochs`` epochs of ``step_loss`` over ``batches``; return one record per epoch.

    ``params`` defaults to all model parameters; ``train_mode`` defaults to ``model.train()``
    (UMAP passes a mode that keeps BatchNorm statistics frozen). ``on_epoch_end(epoch, record)``
    runs after every epoch (evaluation, checkpoints). A NaN/inf objective stops training with
    :class:`NonFiniteLossError` before the optimizer applies it.
    """
    steps = len(batches) if hasattr(batches, "__len__") else 1
    opt, sched = make_optimizer(model.parameters() if params is None else params, cfg, steps)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        (train_mode or nn.Module.train)(model)
        total, total_ce, n = 0.0, 0.0, 0
        bar = tqdm(batches, desc=f"{desc} {epoch}/{cfg.epochs}", leave=False, total=steps)
        for step, batch in enumerate(bar):
            loss, ce = step_loss(model, batch)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"{desc}: loss became {loss.item()} at epoch {epoch}, step {step}; "
                                         "stopped (lower the learning rate?)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            size = len(split_batch(batch)[0])
            total, total_ce, n = total + loss.item() * size, total_ce + ce.item() * size, n + size
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        record = {"epoch": epoch, "loss": total / max(n, 1), "train_ce": total_ce / max(n, 1),
                  "lr": opt.param_groups[0]["lr"]}
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    return history
