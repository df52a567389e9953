"""What every run starts from: the prepared data (ID splits, OOD sets and their groups), the model built
or loaded from a checkpoint, the run's config read back, and the stage messages."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from . import runtime
from .checkpoint import load_into
from .config import DataConfig, DemoConfig, ModelConfig, validate
from .data import IDData, default_patch, load_id_data, patch_shuffle
from .data.suite import load_ood_sets
from .data.transforms import random_shift_flip
from .errors import UserError
from .evaluate import TensorBatches
from .ood_groups import config_groups
from .models import build_model

EVAL_BATCH = 512


def say(msg: str) -> None:
    """A stage message that does not break progress bars."""
    tqdm.write(msg)


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


def build(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Build the configured model in channels_last (faster convolutions on CPU)."""
    return build_model(cfg.arch, num_classes, **cfg.kwargs).to(memory_format=torch.channels_last)


def model_meta(model_cfg: ModelConfig, data: IDData, kind: str) -> dict:
    return {"arch": model_cfg.arch, "model_kwargs": model_cfg.kwargs, "num_classes": data.num_classes,
            "dataset": data.name, "kind": kind}


def start_run(cfg: DemoConfig, out_dir: str | Path, init_checkpoint: str | Path | None = None,
              ) -> tuple[DemoConfig, Prepared, nn.Module, Path]:
    """What every run starts with: seed, data, the model (built, or loaded from ``init_checkpoint`` —
    its architecture then replaces ``cfg.model``), the one device decision, the output directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    prep = prepare_data(cfg.data)
    if init_checkpoint is not None:
        model, model_cfg = load_checkpoint(init_checkpoint, prep.id.num_classes, fallback=cfg.model)
        cfg = cfg.model_copy(update={"model": model_cfg})
    else:
        model = build(cfg.model, prep.id.num_classes)
    rt = runtime.setup(cfg.runtime.device, cfg.runtime.amp, cfg.runtime.compile)
    model = runtime.place(model, rt)  # moved once; batches follow it (to_model_input)
    return cfg, prep, model, runtime.output_dir(out)  # under torchrun only rank 0 writes there


def load_run_config(run_dir: Path) -> DemoConfig:
    path = run_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a finished run: {path} is missing")
    try:
        return validate(DemoConfig, json.loads(path.read_text()))  # type: ignore[return-value]
    except json.JSONDecodeError as e:
        raise UserError(f"corrupt run config {path}: {e}") from None


def load_checkpoint(path: str | Path, num_classes: int | None = None,
                    fallback: ModelConfig | None = None) -> tuple[nn.Module, ModelConfig]:
    """Build the model a checkpoint's metadata names (``fallback`` for a bare state_dict) and load it strictly.

    ``path`` may also be ``pytorch-ood:NAME``: resolved (cached, SHA-256 checked, converted) first."""
    from .checkpoint import load_tensors
    from .pretrained import resolve_checkpoint

    path = resolve_checkpoint(path)
    _, meta = load_tensors(path)
    if "arch" in meta:
        model_cfg = ModelConfig(arch=meta["arch"], kwargs=meta.get("model_kwargs", {}))
    elif fallback is not None:
        model_cfg = fallback
    else:
        raise UserError(f"checkpoint {path} has no architecture metadata; say which model it is (model.arch=...)")
    if num_classes and meta.get("num_classes") not in (None, num_classes):
        raise UserError(f"checkpoint {path} has {meta['num_classes']} classes, the dataset has {num_classes}")
    model = build(model_cfg, num_classes or meta.get("num_classes"))
    load_into(path, model)
    return model, model_cfg
