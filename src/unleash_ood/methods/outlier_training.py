"""Fine-tuning with auxiliary outliers: OE, Energy (w. D_aux) and POEM, each alone, +UM and +UMAP.

Unleashing Mask (Zhu et al., ICML 2023), Table 1 lower half and Appendix A: a well-trained model is
fine-tuned (10 epochs, lr 0.01, cosine) on ID batches paired with auxiliary-outlier batches.

- OE (Hendrycks et al., 2019): CE(ID) + λ · uniform-CE(outliers), Eq. (9).
- Energy (w. D_aux) (Liu et al., 2020): CE(ID) + w · squared energy hinges, Eq. (10).
- POEM (Ming et al., 2022): the energy objective on outliers re-selected every epoch by Thompson
  sampling of a Bayesian linear ID/outlier boundary on the penultimate features.

``+UM`` replaces CE(ID) by the flooding loss ``|CE − ζ| + ζ`` and fine-tunes all weights; ``+UMAP``
keeps the weights frozen (BatchNorm statistics included) and learns an edge-popup mask with the same
objective. ID and outlier images go through ONE forward pass, so BatchNorm (in train mode) normalizes
over both, as in the authors' code; by default the auxiliary batch is as large as the ID batch, so each
BatchNorm batch is half ID, half auxiliary (see :class:`FinetuneSettings` for larger ratios).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import OptimConfig
from ..data.batches import TensorBatches, split_batch
from ..errors import UserError
from ..eval.forward import classifier_layer, collect_outputs, to_model_input
from ..masking import check_keep_ratio
from ..utils import runtime
from .outliers import PoemSelector, boundary_targets, energy_loss, oe_loss
from .train import StepLoss, train
from .um import check_zeta, flooding_loss
from .umap import MaskHooks, learn_mask

METHODS: tuple[str, ...] = ("oe", "energy", "poem")
WITHS: tuple[str, ...] = ("none", "um", "umap")
POEM_DEFAULTS: dict = {
    "a0": 6.0, "b0": 6.0, "sigma": 20.0, "sigma_n": 0.5,  # PoemSelector (the authors' values)
    "candidate_factor": 4,  # candidates drawn per epoch = factor × outliers selected
    "num_select": None,  # outliers selected per epoch; None: what one epoch consumes, capped at pool // factor
    "num_id": None,  # ID training images in the posterior update; None: as many as candidates
}
FEATURE_BATCH = 512


def check_method(method: str, with_: str = "none") -> tuple[str, str]:
    if method not in METHODS:
        raise UserError(f"unknown outlier method {method!r}; choose from {', '.join(METHODS)}")
    if with_ not in WITHS:
        raise UserError(f"unknown variant {with_!r}; choose from {', '.join(WITHS)}")
    return method, with_


def run_name(method: str, with_: str = "none") -> str:
    """Model name in results and checkpoints: ``oe``, ``oe_um``, ``oe_umap``, ``energy``, …"""
    check_method(method, with_)
    return method if with_ == "none" else f"{method}_{with_}"


# ---------------------------------------------------------------------------------------------
# Batches: ID batch + auxiliary batch
# ---------------------------------------------------------------------------------------------


class PairedBatches:
    """One epoch of ``((x_in, y_in), x_out)`` pairs: every ID batch with an auxiliary batch.

    ``id_batches`` is any re-iterable of labelled ``(x, y)`` batches (a shuffled
    :class:`~unleash_ood.data.batches.TensorBatches`). Auxiliary batches of ``aux_batch_size`` images
    (default: the ID batch size, as in the authors' code; the paper states 2000, which leaves the
    shared train-mode BatchNorm batches ~97% auxiliary) are drawn without replacement from
    ``aux[indices]`` (all of ``aux`` by default) in a fresh random order at the start of every
    epoch, cycling through a new permutation when the subset runs out within an epoch.
    :meth:`set_indices` swaps the subset between epochs (POEM's per-epoch selection).
    ``len()`` is the number of ID batches.
    """

    def __init__(self, id_batches: Iterable, aux: Tensor, aux_batch_size: int | None = None,
                 indices: Tensor | None = None, seed: int = 0,
                 augment: Callable[..., Tensor] | None = None) -> None:
        if not hasattr(id_batches, "__len__"):
            raise UserError("the ID batches must have a length (e.g. TensorBatches or a DataLoader)")
        if aux.ndim < 2 or len(aux) == 0:
            raise UserError(f"the auxiliary pool must be a non-empty N×… tensor, got shape {tuple(aux.shape)}")
        if aux_batch_size is None:
            aux_batch_size = getattr(id_batches, "batch_size", None)
            if aux_batch_size is None:
                raise UserError("give aux_batch_size: the ID batches do not say their batch size")
        if int(aux_batch_size) < 1:
            raise UserError(f"aux_batch_size must be ≥ 1, got {aux_batch_size}")
        self.id_batches, self.aux = id_batches, aux
        self.aux_batch_size, self.seed, self.augment = int(aux_batch_size), seed, augment
        self.generator = torch.Generator().manual_seed(seed)
        self.set_indices(indices)

    def set_indices(self, indices: Tensor | None) -> None:
        """Draw auxiliary batches from ``aux[indices]`` from the next epoch on (None: the whole pool)."""
        if indices is None:
            indices = torch.arange(len(self.aux))
        indices = torch.as_tensor(indices).long().flatten().cpu()
        if len(indices) == 0:
            raise UserError("the auxiliary subset is empty")
        if int(indices.min()) < 0 or int(indices.max()) >= len(self.aux):
            raise UserError(f"auxiliary indices must lie in [0, {len(self.aux)})")
        self.indices = indices

    def __len__(self) -> int:
        return len(self.id_batches)

    @property
    def aux_per_epoch(self) -> int:
        """Auxiliary images one epoch consumes."""
        return len(self) * self.aux_batch_size

    def _aux_index_stream(self) -> Iterator[Tensor]:
        """Endless batches of subset indices: random permutations, concatenated."""
        order, pos = self.indices[torch.randperm(len(self.indices), generator=self.generator)], 0
        while True:
            parts, need = [], self.aux_batch_size
            while need:
                if pos == len(order):
                    order, pos = self.indices[torch.randperm(len(self.indices), generator=self.generator)], 0
                take = order[pos:pos + need]
                parts.append(take)
                pos, need = pos + len(take), need - len(take)
            yield torch.cat(parts)

    def __iter__(self) -> Iterator[tuple[tuple[Tensor, Tensor], Tensor]]:
        stream = self._aux_index_stream()
        for batch in self.id_batches:
            x_in, y_in = split_batch(batch)
            if y_in is None:
                raise UserError("the ID batches must carry labels (x, y)")
            x_out = self.aux[next(stream)]
            if self.augment is not None:
                x_out = self.augment(x_out, generator=self.generator)
            yield (x_in, y_in), x_out


# ---------------------------------------------------------------------------------------------
# The step loss
# ---------------------------------------------------------------------------------------------


def outlier_step(method: str, zeta: float | None = None, lam: float = 0.5, energy_weight: float = 0.1,
                 m_in: float = -25.0, m_out: float = -7.0) -> StepLoss:
    """Step loss on a ``((x_in, y_in), x_out)`` batch for :func:`unleash_ood.methods.train.train`.

    One forward pass over ``cat([x_in, x_out])``; the logits are split back. The ID term is the
    batch-mean CE, or ``flooding_loss(CE, ζ)`` when ``zeta`` is given (+UM / +UMAP). ``oe`` adds
    ``lam ·`` the uniform-CE regularizer; ``energy`` and ``poem`` add ``energy_weight ·`` the squared
    energy hinges (margins ``m_in``, ``m_out``). Returns ``(objective, CE.detach())``.
    """
    check_method(method)
    if zeta is not None:
        zeta = check_zeta(zeta)

    def step(model: nn.Module, batch) -> tuple[Tensor, Tensor]:
        (x_in, y_in), x_out = batch
        n_in = len(x_in)
        # float32 losses also under bf16 autocast (the energy hinges square values around 25)
        logits = model(to_model_input(torch.cat([x_in, x_out.to(x_in.device, x_in.dtype)]), model)).float()
        logits_in, logits_out = logits[:n_in], logits[n_in:]
        y = y_in.to(logits.device)
        ce = F.cross_entropy(logits_in, y)
        id_term = ce if zeta is None else flooding_loss(ce, zeta)
        if method == "oe":
            objective = oe_loss(logits_in, y, logits_out, lam=lam, id_loss=id_term)
        else:
            objective = energy_loss(logits_in, y, logits_out, weight=energy_weight, m_in=m_in, m_out=m_out,
                                    id_loss=id_term)
        return objective, ce.detach()

    return step


# ---------------------------------------------------------------------------------------------
# POEM's per-epoch outlier selection
# ---------------------------------------------------------------------------------------------


def poem_settings(poem: dict | None) -> dict:
    """POEM_DEFAULTS updated by ``poem``; unknown keys are an error."""
    unknown = sorted(set(poem or {}) - set(POEM_DEFAULTS))
    if unknown:
        raise UserError(f"unknown POEM setting(s) {unknown}; known: {', '.join(POEM_DEFAULTS)}")
    settings = {**POEM_DEFAULTS, **(poem or {})}
    if int(settings["candidate_factor"]) < 1:
        raise UserError(f"POEM candidate_factor must be ≥ 1, got {settings['candidate_factor']}")
    return settings


def _id_images(id_batches: Iterable) -> Tensor:
    """The ID training images (a TensorBatches' tensor, else one pass over the batches)."""
    images = getattr(id_batches, "images", None)
    if isinstance(images, Tensor):
        return images
    return torch.cat([split_batch(b)[0].cpu() for b in id_batches])


def _features(model: nn.Module, images: Tensor) -> Tensor:
    return collect_outputs(model, TensorBatches(images, batch_size=FEATURE_BATCH)).features


class PoemSchedule:
    """Each epoch: draw ``num_candidates`` random pool images, fit the Bayesian boundary on the
    current model's penultimate features of ``num_id`` ID images (+1) and the candidates (−1),
    Thompson-sample it, and keep the ``num_select`` candidates nearest the sampled boundary as the
    epoch's auxiliary subset. Features are taken in eval mode (with any mask being learned attached)."""

    def __init__(self, model: nn.Module, id_images: Tensor, aux: Tensor, paired: PairedBatches,
                 settings: dict, seed: int = 0) -> None:
        self.model, self.id_images, self.aux, self.paired = model, id_images, aux, paired
        factor = int(settings["candidate_factor"])
        wanted = settings["num_select"] or paired.aux_per_epoch
        self.num_select = max(1, min(int(wanted), len(aux) // factor))
        self.num_candidates = min(len(aux), factor * self.num_select)
        self.num_id = min(len(id_images), int(settings["num_id"] or self.num_candidates))
        self.selector = PoemSelector(classifier_layer(model).in_features, a0=settings["a0"], b0=settings["b0"],
                                     sigma=settings["sigma"], sigma_n=settings["sigma_n"], seed=seed)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.selected: list[Tensor] = []

    def select(self) -> Tensor:
        """Choose the next epoch's outliers; they replace ``paired``'s auxiliary subset."""
        candidates = torch.randperm(len(self.aux), generator=self.generator)[: self.num_candidates]
        id_idx = torch.randperm(len(self.id_images), generator=self.generator)[: self.num_id]
        feats_out = _features(self.model, self.aux[candidates])
        feats_in = _features(self.model, self.id_images[id_idx])
        self.selector.update(torch.cat([feats_in, feats_out]), boundary_targets(self.num_id, self.num_candidates))
        chosen = candidates[self.selector.select(feats_out, self.num_select)]
        chosen = runtime.broadcast_object(chosen)  # under torchrun every rank trains on rank 0's choice
        self.paired.set_indices(chosen)
        self.selected.append(chosen.clone())
        return chosen

    def info(self) -> dict:
        return {"num_select": self.num_select, "num_candidates": self.num_candidates, "num_id": self.num_id}


# ---------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OutlierLoss:
    """The regularizers' settings (Appendix A): OE weight ``lam``; the energy hinges' ``energy_weight``
    and margins ``m_in``, ``m_out`` (Energy w. D_aux and POEM)."""

    lam: float = 0.5
    energy_weight: float = 0.1
    m_in: float = -25.0
    m_out: float = -7.0


@dataclasses.dataclass
class FinetuneSettings:
    """How :func:`finetune_with_outliers` fine-tunes (defaults: the paper's 10 epochs, lr 0.01, cosine).

    ``optim``: the optimizer (for +UMAP the learning rate applies to the mask scores). ``keep_ratio``,
    ``init``: the +UMAP mask. ``aux_batch_size``: auxiliary images per ID batch; None (default) uses the
    ID batch size, as the authors' code, so each train-mode BatchNorm batch is half ID, half auxiliary.
    A larger value (the paper states 2,000 per ID batch of 64) is allowed, but ID and auxiliary images go
    through one forward pass, so the BatchNorm batch statistics are then dominated by auxiliary images
    (~97% at 2,000 : 64). ``poem`` overrides ``POEM_DEFAULTS``; ``seed`` drives the auxiliary order, the
    mask init and POEM's sampling; ``aux_augment(x, generator=...)`` augments the auxiliary batches.
    """

    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(epochs=10, lr=0.01))
    keep_ratio: float = 0.8
    init: str = "kaiming"
    aux_batch_size: int | None = None
    loss: OutlierLoss = OutlierLoss()
    poem: dict | None = None
    seed: int = 0
    aux_augment: Callable[..., Tensor] | None = None


def finetune_with_outliers(model: nn.Module, id_batches: Iterable, aux_pool: Tensor, method: str,
                           with_: str = "none", zeta: float | None = None, settings: FinetuneSettings | None = None,
                           on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
    """Fine-tune ``model`` (in place; for ``umap`` only a mask is learned) with auxiliary outliers.

    ``method``: ``oe``, ``energy`` or ``poem``. ``with_``: ``none`` (CE + regularizer, all weights),
    ``um`` (flooded CE at ``zeta`` + regularizer, all weights) or ``umap`` (same objective, weights and
    BatchNorm statistics frozen, an edge-popup mask keeping ``settings.keep_ratio`` of each layer learned
    by :func:`~unleash_ood.methods.umap.learn_mask`; the weights are bit-identical afterwards). ``zeta``
    is required for ``um``/``umap`` and must be None for ``none``. ``settings``: :class:`FinetuneSettings`.

    Returns ``{"method", "with", "zeta", "masks" (umap) or None, "history", "selected"
    (POEM: per-epoch pool indices) or None, "aux": {"pool_size", "indices", "seed", "aux_batch_size",
    "aux_per_epoch", ...}}``; ``aux["indices"]`` are the pool indices trained on (POEM: the union of
    the per-epoch selections).
    """
    method, with_ = check_method(method, with_)
    if with_ == "none" and zeta is not None:
        raise UserError(f"{method}: zeta is only used with +UM/+UMAP (with_='um' or 'umap'), got zeta={zeta}")
    if with_ != "none" and zeta is None:
        raise UserError(f"{method}+{with_.upper()} needs the loss level zeta")
    s = settings or FinetuneSettings()
    if with_ == "umap":
        check_keep_ratio(s.keep_ratio)
    poem = poem_settings(s.poem) if method == "poem" else None
    step = outlier_step(method, zeta, **dataclasses.asdict(s.loss))
    paired = PairedBatches(id_batches, aux_pool, s.aux_batch_size, seed=s.seed, augment=s.aux_augment)
    name = run_name(method, with_)
    schedule = (PoemSchedule(model, _id_images(id_batches), aux_pool, paired, poem, s.seed)
                if poem is not None else None)

    def epoch_end(epoch: int, record: dict) -> None:
        if schedule is not None and epoch < s.optim.epochs:
            schedule.select()  # the next epoch's outliers, from the model as it is now
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)

    masks = None
    if with_ == "umap":  # epoch 1's outliers are chosen with the initial mask attached
        learned = learn_mask(model, paired, step, s.keep_ratio, s.optim, s.init, s.seed,
                             MaskHooks(on_start=schedule.select if schedule else None, on_epoch_end=epoch_end,
                                       desc=name))
        masks, history = learned.masks, learned.history
    else:
        if schedule is not None:
            schedule.select()  # epoch 1's outliers
        history = train(model, paired, s.optim, step, on_epoch_end=epoch_end, desc=name)

    selected = schedule.selected if schedule is not None else None
    used = torch.unique(torch.cat(selected)) if selected else torch.arange(len(aux_pool))
    aux_info = {"pool_size": len(aux_pool), "indices": used, "seed": s.seed, "aux_batch_size": paired.aux_batch_size,
                "aux_per_epoch": paired.aux_per_epoch}
    if schedule is not None:
        aux_info.update(schedule.info())
    return {"method": method, "with": with_, "zeta": zeta, "masks": masks, "history": history,
            "selected": selected, "aux": aux_info}
