"""What the ID data says about a model's input, filled into its config where the user left it unset:
``in_channels`` for one's own data, ``mean``/``std`` from ``data.normalize`` (the normalization lives
inside the model, so a checkpoint, ``eval``, ``export`` and ``detect`` need nothing more)."""

from __future__ import annotations

import inspect

from ..config import ModelConfig
from ..data import IDData
from ..errors import UserError
from . import MODELS
from .timm_models import timm_model
from .tv import torchvision_model


def _parameters(arch: str) -> set[str] | None:
    """The keyword arguments a registered architecture takes; None for one this module cannot see."""
    prefix = arch.partition(":")[0] if ":" in arch else None
    factory = {"torchvision": torchvision_model, "timm": timm_model}.get(prefix) if prefix else MODELS.get(arch)
    return None if factory is None else set(inspect.signature(factory).parameters)


def with_input_kwargs(cfg: ModelConfig, data: IDData) -> ModelConfig:
    """``cfg`` with ``in_channels`` (own data, when the architecture takes it) and ``mean``/``std`` (when
    ``data.normalization`` is set and the user gave neither). A channel count the architecture cannot
    take is one :class:`UserError`."""
    params = _parameters(cfg.arch)
    if params is None:
        return cfg
    kwargs = dict(cfg.kwargs)
    channels = data.image_shape[0]
    if data.preprocessing is not None:
        if "in_channels" in params:
            if kwargs.setdefault("in_channels", channels) != channels:
                raise UserError(f"model.kwargs.in_channels={kwargs['in_channels']}, but the ID data {data.name} "
                                f"has {channels} channel(s) (data.channels)")
        elif channels != 3:
            raise UserError(f"model {cfg.arch!r} takes 3-channel input, the ID data {data.name} has {channels}: "
                            "set data.channels=3")
    if data.normalization is not None and {"mean", "std"} <= params and not {"mean", "std"} & set(kwargs):
        kwargs.update(mean=list(data.normalization["mean"]), std=list(data.normalization["std"]))
    return cfg if kwargs == cfg.kwargs else ModelConfig(arch=cfg.arch, kwargs=kwargs)
