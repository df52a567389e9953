"""Checkpoints and masks as safetensors files (loading never executes code), written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from ..errors import UserError
from ..utils.files import atomic_write


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> Path:
    """Save tensors with JSON-able metadata (stored under the ``meta`` key)."""
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {"meta": json.dumps(meta or {})}
    blob = save(data, metadata=metadata)  # in memory: safetensors' save_file can lose a full disk's error
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load tensors and metadata; a missing or corrupt file is a :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        raise UserError(f"not a valid safetensors checkpoint: {path} ({e})") from None


def save_model(path: str | Path, model: nn.Module, meta: dict) -> Path:
    """Save ``model.state_dict()`` with metadata such as ``{"arch": ..., "num_classes": ...}``."""
    return save_tensors(path, model.state_dict(), meta)


def load_into(path: str | Path, model: nn.Module, expect: dict | None = None) -> dict:
    """Load a checkpoint into ``model`` strictly; ``expect`` entries must match the file's metadata."""
    state, meta = load_tensors(path)
    for key, value in (expect or {}).items():
        if key in meta and meta[key] != value:
            raise UserError(f"checkpoint {path} has {key}={meta[key]!r}, expected {value!r}")
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(s for s in (
            f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else "",
            f"shape mismatch in {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:3]]}" if wrong else "",
        ) if s)
        raise UserError(f"checkpoint {path} does not fit this model ({detail})")
    model.load_state_dict(state)
    return meta


def save_masks(path: str | Path, masks: dict[str, torch.Tensor], meta: dict | None = None) -> Path:
    """Save binary masks (stored as uint8) by layer name."""
    return save_tensors(path, {k: v.to(torch.uint8) for k, v in masks.items()}, meta)


def load_masks(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load binary masks saved by :func:`save_masks`."""
    tensors, meta = load_tensors(path)
    return {k: v.bool() for k, v in tensors.items()}, meta
