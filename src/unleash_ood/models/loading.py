"""A model from its config or its checkpoint: the architecture a checkpoint's metadata names (or the
config's), built by name and loaded strictly; ``pytorch-ood:NAME`` resolved (cached, SHA-256 checked) first."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..data import IDData
from ..errors import UserError
from . import build_model
from .checkpoint import load_into, load_tensors
from .pretrained import resolve_checkpoint


def build(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Build the configured model in channels_last (faster convolutions on CPU)."""
    return build_model(cfg.arch, num_classes, **cfg.kwargs).to(memory_format=torch.channels_last)


def model_meta(model_cfg: ModelConfig, data: IDData, kind: str) -> dict:
    return {"arch": model_cfg.arch, "model_kwargs": model_cfg.kwargs, "num_classes": data.num_classes,
            "dataset": data.name, "kind": kind}


def load_checkpoint(path: str | Path, num_classes: int | None = None,
                    fallback: ModelConfig | None = None) -> tuple[nn.Module, ModelConfig]:
    """Build the model a checkpoint's metadata names (``fallback`` for a bare state_dict) and load it strictly.

    ``path`` may also be ``pytorch-ood:NAME``: resolved (cached, SHA-256 checked, converted) first."""
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
