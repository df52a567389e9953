"""Unleashing Mask (UM): estimate the loss level ζ of a randomly masked model, then fine-tune
the original weights with the flooding objective ``|CE − ζ| + ζ`` (Eq. 3, Algorithm 1)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import OptimConfig
from ..data.batches import split_batch
from ..errors import UserError
from ..eval.forward import to_model_input
from ..masking import check_keep_ratio, masked, random_layer_masks
from ..utils import runtime
from .train import StepLoss, train


def flooding_loss(ce: torch.Tensor, zeta: float, global_ce: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 3 on the batch-mean CE: gradient descent above ζ, gradient ascent below it.

    ``global_ce``: the (detached) CE of the whole batch when ``ce`` is one rank's slice of it under
    DDP. The sign then comes from the global batch and the value is ``|global_ce − ζ| + ζ``, so the
    rank-averaged gradient is ``sign(CE − ζ)∇CE``, as in one process.
    """
    if global_ce is None:
        return (ce - zeta).abs() + zeta
    sign = torch.sign(global_ce - zeta)
    return sign * (ce - ce.detach()) + (global_ce - zeta).abs() + zeta


def flooding_step(zeta: float) -> StepLoss:
    """A step loss for :func:`unleash_ood.methods.train.train`: flooding on the batch-mean CE (of the global
    batch under torchrun, see :func:`flooding_loss`). The CE it logs is the one whose sign flooding takes
    (the global batch's under torchrun), so ``train``'s ``ce_below_zeta`` counts exactly the ascending steps."""

    def step(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = split_batch(batch)
        logits = model(to_model_input(x, model))
        ce = F.cross_entropy(logits, y.to(logits.device))
        if runtime.world_size() > 1:
            global_ce = runtime.global_batch_mean(ce.detach(), len(y))
            return flooding_loss(ce, zeta, global_ce), global_ce
        return flooding_loss(ce, zeta), ce.detach()

    return step


@torch.no_grad()
def mean_cross_entropy(model: nn.Module, batches: Iterable, desc: str | None = None) -> float:
    """Sample-weighted mean CE over labelled ``batches`` in eval mode."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    try:
        for batch in tqdm(batches, desc=desc, leave=False, disable=desc is None):
            x, y = split_batch(batch)
            logits = model(to_model_input(x, model))
            total += F.cross_entropy(logits.float(), y.to(logits.device), reduction="sum").item()
            n += len(y)
    finally:
        model.train(was_training)
    if n == 0:
        raise UserError("empty training set: cannot estimate the loss level")
    return total / n


ZETA_ESTIMATORS = ("mean", "median", "trimmed_mean")


def robust_zeta(values: Sequence[float], estimator: str = "median") -> float:
    """ζ from the per-draw loss levels.

    ``mean``: the plain mean. ``median``: the median (the mean of the middle two for an even count).
    ``trimmed_mean``: with ≥ 3 draws, the mean after dropping the single lowest and the single highest
    draw (with 3 draws that is the median); with 1 or 2 draws, the plain mean. ``median`` and
    ``trimmed_mean`` keep one destructive mask draw (a very high loss) from dominating ζ.
    """
    if estimator not in ZETA_ESTIMATORS:
        raise UserError(f"unknown zeta estimator {estimator!r}; choose from {', '.join(ZETA_ESTIMATORS)}")
    if not values:
        raise UserError("no zeta draws to estimate from")
    v = sorted(values)
    if estimator == "median":
        return statistics.median(v)
    if estimator == "trimmed_mean" and len(v) >= 3:
        v = v[1:-1]
    return statistics.fmean(v)


@dataclass
class ZetaEstimate:
    """ζ over several random mask draws: every draw's value, the estimator's choice (:attr:`value`), and
    the mean, standard deviation and median of the draws."""

    keep_ratio: float
    values: list[float] = field(default_factory=list)
    estimator: str = "median"

    @property
    def value(self) -> float:
        """The ζ used for UM / UMAP: ``estimator`` applied to the draws."""
        return robust_zeta(self.values, self.estimator)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def as_dict(self) -> dict:
        return {"keep_ratio": self.keep_ratio, "values": self.values, "estimator": self.estimator,
                "value": self.value, "mean": self.mean, "sd": self.sd, "median": self.median}


def estimate_zeta(model: nn.Module, batches: Iterable, keep_ratio: float, draws: int = 5,
                  seed: int = 0, estimator: str = "median") -> ZetaEstimate:
    """ζ = CE of the randomly masked model m_δ ⊙ f* over the training set (Algorithm 1, lines 1–10),
    over ``draws`` random layer-wise masks (draws ``0, 1, …`` of run seed ``seed``'s ζ stream, see
    :func:`~unleash_ood.masking.stream_generator`), combined by ``estimator`` (:func:`robust_zeta`; the
    paper uses one draw). The model is unchanged afterwards.
    """
    check_keep_ratio(keep_ratio)
    if draws < 1:
        raise UserError(f"draws must be ≥ 1, got {draws}")
    robust_zeta([0.0], estimator)  # fail on a bad estimator before any work
    estimate = ZetaEstimate(keep_ratio=keep_ratio, estimator=estimator)
    for d in range(draws):
        with masked(model, random_layer_masks(model, keep_ratio, seed, draw=d)):
            estimate.values.append(mean_cross_entropy(model, batches, desc=f"zeta draw {d + 1}/{draws}"))
    return estimate


# UM's guard rule: flooding holds the training CE near ζ, so ζ ≥ CHANCE_FRACTION · ln C (ln C: the CE of a
# uniform, chance-level prediction) would hold the model's mean true-class probability at ≤ C^(-1/2).
CHANCE_FRACTION = 0.5


def chance_ce(num_classes: int) -> float:
    """ln C: the cross-entropy of the uniform prediction over ``num_classes`` classes."""
    return math.log(num_classes)


def toward_chance(zeta: float, num_classes: int) -> bool:
    """Whether flooding at ζ would push a model toward chance: ζ ≥ ½·ln C (:data:`CHANCE_FRACTION`).

    The paper's levels are far below it (ζ = 0.10 for CIFAR-10, 0.04·ln 10; ζ = 1.20 for CIFAR-100,
    0.26·ln 100). A model that has not memorized its training set (its own training CE already near
    ln C) gives a ζ above the line at any keep ratio: a random mask only raises its loss further."""
    return zeta >= CHANCE_FRACTION * chance_ce(num_classes)


def check_zeta(zeta: float) -> float:
    if not math.isfinite(zeta) or zeta < 0:
        raise UserError(f"zeta must be a finite number ≥ 0, got {zeta}")
    return float(zeta)


def unleash(model: nn.Module, batches: Iterable, zeta: float, cfg: OptimConfig,
            on_epoch_end: Callable[[int, dict], None] | None = None) -> list[dict]:
    """UM: fine-tune all weights of ``model`` in place with the flooding objective at level ζ.

    With ζ = 0 this is plain CE fine-tuning with the same schedule (the control). Each epoch's record holds
    ``ce_below_zeta``: the fraction of steps whose batch CE was below ζ (gradient ascent; 0 for ζ = 0).
    """
    zeta = check_zeta(zeta)
    return train(model, batches, cfg, flooding_step(zeta), on_epoch_end=on_epoch_end,
                 desc="UM" if zeta > 0 else "CE fine-tune", flood_level=zeta)
