"""What every run evaluates on: the ID splits, the OOD test sets with their groups and the synthetic
validation OOD set, loaded from a data config (:func:`prepare_data`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import DataConfig, config_groups
from ..utils.log import say
from . import IDData, default_patch, patch_shuffle
from .batches import TensorBatches
from .builtin import Origin
from .fingerprint import set_record, suite_records, warn_if_unlike_reference
from .own import load_data, load_val_outliers
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
    each OOD test set's group (``groups[name]``: ``near``, ``far`` or ``synthetic``), and what exactly
    each OOD set and validation proxy is (``sets[name]``: sha256, n, shape, sources, distinct_sources)."""

    id: IDData
    ood: dict[str, torch.Tensor]
    val_ood: torch.Tensor
    groups: dict[str, str] = field(default_factory=dict)
    val_user: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)  # data.val_near/far: {group: (name, x)}
    sets: dict[str, dict] = field(default_factory=dict)  # per OOD set and validation proxy: sha256, n, shape, sources
    eval_batch: int = EVAL_BATCH  # data.eval_batch_size

    def batches(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> TensorBatches:
        return TensorBatches(images, labels, self.eval_batch)

    def train_batches(self, batch_size: int, seed: int, augment: bool) -> TensorBatches:
        return TensorBatches(*self.id.train, batch_size=batch_size, shuffle=True, seed=seed,
                             augment=random_shift_flip if augment else None)

    def ood_batches(self) -> dict[str, TensorBatches]:
        return {name: self.batches(x) for name, x in self.ood.items()}

    def test_sets(self) -> EvalSets:
        """The ID test split against the OOD test sets (what results report)."""
        return EvalSets(self.id.test, self.ood, self.groups)

    def val_sets(self) -> EvalSets:
        """The ID validation split against the synthetic validation OOD set ``val_ood`` and the user's
        known outliers (``data.val_near``/``val_far``), what hyperparameters may be selected on (the OOD
        test sets never are)."""
        user = {(name if name != "val_ood" else f"{name} ({group})"): (group, x)
                for group, (name, x) in self.val_user.items()}
        return EvalSets(self.id.val, {"val_ood": self.val_ood, **{n: x for n, (_, x) in user.items()}},
                        {"val_ood": "far", **{n: g for n, (g, _) in user.items()}})


def prepare_data(cfg: DataConfig, ood_specs: list[str] | None = None,
                 near_specs: list[str] | None = None) -> Prepared:
    """Load the ID splits and the OOD suite with its groups. ``ood_specs`` (far) and ``near_specs``, when
    either is given, replace the config's suite; a built-in keeps its own group either way."""
    say(f"loading {cfg.dataset} and OOD sets")
    data = load_data(cfg)
    pairs = (config_groups(near_specs or [], ood_specs or [], (), cfg.dataset, synthetic=()) if ood_specs or near_specs
             else cfg.ood_groups())
    ood = load_ood_sets([spec for spec, _ in pairs], cfg.dataset, cfg.data_root, data.image_shape,
                        n=cfg.ood_size, seed=cfg.seed, download=cfg.download, heldout=data.heldout)
    groups = dict(zip(ood, (group for _, group in pairs)))  # load_ood_sets keeps the order of the specs
    val_user = load_val_outliers(cfg, data.image_shape, [*cfg.ood_specs(), *(s for s, _ in pairs)], data.heldout)
    val_ood = validation_ood(data, cfg)
    sets = fingerprints(cfg, ood, [spec for spec, _ in pairs], val_ood, val_user)
    return Prepared(data, ood, val_ood, groups, val_user, sets, cfg.eval_batch_size)


def validation_ood(data: IDData, cfg: DataConfig) -> torch.Tensor:
    """The synthetic validation OOD set: ``data.val_ood_size`` ID validation images (training images
    when there is no validation split), patch-shuffled with the data seed."""
    val_x = data.val[0][: cfg.val_ood_size] if len(data.val[0]) else data.train[0][: cfg.val_ood_size]
    return patch_shuffle(val_x, patch=default_patch(val_x.shape[-1], val_x.shape[-2]), seed=cfg.seed)


def validation_record(val_ood: torch.Tensor) -> dict:
    """The record of ``val_ood``: each image is one distinct ID validation image, patch-shuffled."""
    return set_record(val_ood, Origin(("patch-shuffled ID validation images",), len(val_ood)))


def fingerprints(cfg: DataConfig, ood: dict[str, torch.Tensor], specs: list[str], val_ood: torch.Tensor,
                 val_user: dict[str, tuple[str, torch.Tensor]]) -> dict[str, dict]:
    """Every OOD test set's and validation proxy's record (``data.fingerprint.set_record``), checked
    against the docs' reference hashes (one warning line when some differ)."""
    sets = suite_records(ood, specs, cfg.dataset)
    sets["val_ood"] = validation_record(val_ood)
    for group, (name, x) in val_user.items():
        sets[f"data.val_{group}"] = set_record(x, Origin(tuple(name.split(" + ")), len(x)))  # the user's outliers
    warn_if_unlike_reference(sets, cfg)
    return sets
