"""What every run evaluates on: the ID splits, the OOD test sets with their groups and the synthetic
validation OOD set, loaded from a data config (:func:`prepare_data`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import DataConfig, config_groups
from ..utils.log import say
from . import IDData, default_patch, load_id_data, patch_shuffle
from .batches import TensorBatches
from .suite import load_ood_sets
from .transforms import random_shift_flip

EVAL_BATCH = 512


@dataclass(frozen=True)
class EvalSets:
    """What one evaluation compares: labelled ID images and named OOD sets with their groups."""

    id: tuple[torch.Tensor, torch.Tensor]
    ood: dict[str, torch.Tensor]
    groups: dict[str, str]


@dataclass
class Prepared:
    """Everything a run evaluates on: ID splits, OOD test sets, the synthetic validation OOD set, and
    each OOD test set's group (``groups[name]``: ``near`` or ``far``)."""

    id: IDData
    ood: dict[str, torch.Tensor]
    val_ood: torch.Tensor
    groups: dict[str, str] = field(default_factory=dict)

    def batches(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> TensorBatches:
        return TensorBatches(images, labels, EVAL_BATCH)

    def train_batches(self, batch_size: int, seed: int, augment: bool) -> TensorBatches:
        return TensorBatches(*self.id.train, batch_size=batch_size, shuffle=True, seed=seed,
                             augment=random_shift_flip if augment else None)

    def ood_batches(self) -> dict[str, TensorBatches]:
        return {name: self.batches(x) for name, x in self.ood.items()}

    def test_sets(self) -> EvalSets:
        """The ID test split against the OOD test sets (what results report)."""
        return EvalSets(self.id.test, self.ood, self.groups)

    def val_sets(self) -> EvalSets:
        """The ID validation split against the synthetic validation OOD set ``val_ood`` (what
        hyperparameters may be selected on; the OOD test sets never are)."""
        return EvalSets(self.id.val, {"val_ood": self.val_ood}, {"val_ood": "far"})


def prepare_data(cfg: DataConfig, ood_specs: list[str] | None = None,
                 near_specs: list[str] | None = None) -> Prepared:
    """Load the ID splits and the OOD suite with its groups. ``ood_specs`` (far) and ``near_specs``, when
    either is given, replace the config's suite; a built-in keeps its own group either way."""
    say(f"loading {cfg.dataset} and OOD sets")
    data = load_id_data(cfg.dataset, cfg.data_root, cfg.val_size, cfg.train_size, cfg.test_size, cfg.seed,
                        cfg.download, cfg.id_classes)
    pairs = (config_groups(near_specs or [], ood_specs or [], (), cfg.dataset) if ood_specs or near_specs
             else cfg.ood_groups())
    ood = load_ood_sets([spec for spec, _ in pairs], cfg.dataset, cfg.data_root, data.image_shape,
                        n=cfg.ood_size, seed=cfg.seed, download=cfg.download, heldout=data.heldout)
    groups = dict(zip(ood, (group for _, group in pairs)))  # load_ood_sets keeps the order of the specs
    val_x = data.val[0][: cfg.val_ood_size] if len(data.val[0]) else data.train[0][: cfg.val_ood_size]
    return Prepared(data, ood, patch_shuffle(val_x, patch=default_patch(val_x.shape[-1]), seed=cfg.seed), groups)
