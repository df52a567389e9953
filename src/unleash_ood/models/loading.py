"""A model from its config or its checkpoint: the architecture a checkpoint's metadata names (or the
config's), built by name and loaded strictly; ``pytorch-ood:NAME`` resolved (cached, SHA-256 checked) first.
A checkpoint is our safetensors file, a safetensors file without our metadata, or a ``.pt``/``.pth``
state_dict (read with ``torch.load(weights_only=True)``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..data import IDData
from ..errors import UserError
from . import build_model
from .checkpoint import fit_state_dict, load_tensors
from .pretrained import read_state_dict, resolve_checkpoint

TORCH_SUFFIXES = (".pt", ".pth")


def build(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Build the configured model in channels_last (faster convolutions on CPU)."""
    return build_model(cfg.arch, num_classes, **cfg.kwargs).to(memory_format=torch.channels_last)


def model_meta(model_cfg: ModelConfig, data: IDData, kind: str) -> dict:
    return {"arch": model_cfg.arch, "model_kwargs": model_cfg.kwargs, "num_classes": data.num_classes,
            "dataset": data.name, "kind": kind}


def with_data_channels(cfg: ModelConfig, channels: int) -> ModelConfig:
    """``timm:NAME`` without ``in_channels`` in its kwargs: the data's channel count (timm's ``in_chans``)."""
    if cfg.arch.startswith("timm:") and "in_channels" not in cfg.kwargs:
        return ModelConfig(arch=cfg.arch, kwargs={**cfg.kwargs, "in_channels": channels})
    return cfg


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """A checkpoint's tensors and metadata: a ``.pt``/``.pth`` state_dict (no metadata), else safetensors."""
    if path.suffix.lower() in TORCH_SUFFIXES:
        if not path.is_file():
            raise UserError(f"file not found: {path}")
        return read_state_dict(path), {}
    return load_tensors(path)


def load_checkpoint(path: str | Path, num_classes: int | None = None,
                    fallback: ModelConfig | None = None) -> tuple[nn.Module, ModelConfig]:
    """Build the model a checkpoint's metadata names (``fallback``, i.e. ``model.arch``, for a file without
    it) and load it strictly (:func:`~unleash_ood.models.checkpoint.fit_state_dict`: wrapper prefixes such
    as ``module.`` aligned, a class count other than ``num_classes`` and any missing, unexpected or
    misshapen key one error line).

    ``path`` may also be ``pytorch-ood:NAME``: resolved (cached, SHA-256 checked, converted) first."""
    path = resolve_checkpoint(path)
    state, meta = read_weights(path)
    if "arch" in meta:
        model_cfg = ModelConfig(arch=meta["arch"], kwargs=meta.get("model_kwargs", {}))
    elif fallback is not None:
        model_cfg = fallback
    else:
        raise UserError(f"checkpoint {path} has no architecture metadata; say which model it is (model.arch=...)")
    if num_classes and meta.get("num_classes") not in (None, num_classes):
        raise UserError(f"checkpoint {path} has {meta['num_classes']} classes, the dataset has {num_classes}")
    classes = num_classes or meta.get("num_classes")
    if not classes:
        raise UserError(f"checkpoint {path} does not say its number of classes; load it for a dataset")
    model = build(model_cfg, classes)
    model.load_state_dict(fit_state_dict(state, model, f"checkpoint {path}"))
    return model, model_cfg
