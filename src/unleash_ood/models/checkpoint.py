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
    """Load a checkpoint into ``model`` strictly (:func:`fit_state_dict`); ``expect`` entries must match the
    file's metadata. Nothing is loaded unless every key and shape fits."""
    state, meta = load_tensors(path)
    for key, value in (expect or {}).items():
        if key in meta and meta[key] != value:
            raise UserError(f"checkpoint {path} has {key}={meta[key]!r}, expected {value!r}")
    model.load_state_dict(fit_state_dict(state, model, f"checkpoint {path}", classes_from="the model has"))
    return meta


# DataParallel / DDP, Lightning-style ``self.model`` wrappers, torch.compile
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.")


def align_keys(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with its wrapper prefixes (:data:`WRAPPER_PREFIXES`, stacked ones too) stripped and/or the
    model's own outer prefix added (``net.`` of the torchvision/timm adapters, whose users save the bare
    network), whichever makes its keys fit ``own``'s best; unchanged when nothing fits better."""
    own_keys = set(own)
    firsts = {k.split(".", 1)[0] for k in own_keys}
    outer = f"{next(iter(firsts))}." if len(firsts) == 1 and all("." in k for k in own_keys) else ""
    candidates, s = [], dict(state)
    while True:
        candidates += [s, {outer + k: v for k, v in s.items()}] if outer else [s]
        prefix = next((p for p in WRAPPER_PREFIXES if s and all(k.startswith(p) for k in s)), None)
        if prefix is None:
            break
        s = {k[len(prefix):]: v for k, v in s.items()}
    return max(candidates, key=lambda c: len(own_keys & c.keys()) - len(c.keys() - own_keys))  # first best wins


def classifier_key(model: nn.Module) -> str | None:
    """The state_dict key of the classifier's weight: the last ``nn.Linear`` in module order."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return f"{names[-1]}.weight" if names else None


def fit_state_dict(state: dict[str, torch.Tensor], model: nn.Module, what: str, classes_from: str = "the dataset has",
                   hint: str = "; check model.arch and model.kwargs") -> dict[str, torch.Tensor]:
    """``state`` made to fit ``model`` exactly, or one :class:`UserError` line saying why not.

    Wrapper prefixes are aligned (:func:`align_keys`); BatchNorm ``num_batches_tracked`` counters missing
    from old (PyTorch < 0.4.1) files are filled with 0; floating tensors take the model's dtype. A
    classifier with another class count than the model's is named first (``classes_from``: whose count
    that is), then the missing, unexpected and wrongly shaped keys (a count and the first three each)."""
    own = model.state_dict()
    state = align_keys(state, own)
    for k in own:
        if k.endswith(".num_batches_tracked") and k not in state:
            state[k] = torch.zeros_like(own[k])
    head = classifier_key(model)
    if head in own and head in state and state[head].dim() == 2 and state[head].shape[0] != own[head].shape[0]:
        raise UserError(f"{what} has {state[head].shape[0]} classes (its classifier {head} has "
                        f"{state[head].shape[0]} outputs), but {classes_from} {own[head].shape[0]}")
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own if k in state
             and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing, e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}")
        if wrong:
            parts.append(f"{len(wrong)} with a shape mismatch (file, model), e.g. {wrong[:3]}")
        raise UserError(f"{what} does not fit this model: " + "; ".join(parts) + hint)
    return {k: state[k].to(own[k].dtype) if own[k].is_floating_point() else state[k] for k in own}


def save_masks(path: str | Path, masks: dict[str, torch.Tensor], meta: dict | None = None) -> Path:
    """Save binary masks (stored as uint8) by layer name."""
    return save_tensors(path, {k: v.to(torch.uint8) for k, v in masks.items()}, meta)


def load_masks(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load binary masks saved by :func:`save_masks`."""
    tensors, meta = load_tensors(path)
    return {k: v.bool() for k, v in tensors.items()}, meta
