"""Model registry: build a classifier by name with explicit arguments."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from ..errors import UserError
from .cnn import SmallCNN
from .densenet import densenet100
from .timm_models import timm_model
from .tv import torchvision_model
from .wrn import wrn40_2, wrn40_4

MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "densenet100": densenet100,
    "wrn40_4": wrn40_4,
    "wrn40_2": wrn40_2,
}


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered model, any torchvision classifier as ``torchvision:NAME`` or any timm classifier
    as ``timm:NAME`` (the optional ``timm`` extra).

    ``kwargs`` the constructor does not take (from a config or a checkpoint's metadata) are a
    :class:`UserError` naming them and the accepted ones."""
    if name.startswith("torchvision:"):
        check_model_kwargs(name, torchvision_model, kwargs, fixed={"name", "num_classes"})
        return torchvision_model(name.split(":", 1)[1], num_classes=num_classes, **kwargs)
    if name.startswith("timm:"):
        check_model_kwargs(name, timm_model, kwargs, fixed={"name", "num_classes"})
        return timm_model(name.split(":", 1)[1], num_classes=num_classes, **kwargs)
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))} "
                        "or torchvision:NAME or timm:NAME")
    check_model_kwargs(name, MODELS[name], kwargs, fixed={"num_classes"})
    return MODELS[name](num_classes=num_classes, **kwargs)


def check_model_kwargs(name: str, factory: Callable[..., nn.Module], kwargs: dict, fixed: set[str]) -> None:
    """Raise :class:`UserError` if ``kwargs`` has keys ``factory``'s signature does not accept."""
    params = inspect.signature(factory).parameters
    accepted = sorted(k for k, p in params.items() if k not in fixed
                      and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UserError(f"model {name!r} does not take {', '.join(unknown)} (model.kwargs); "
                        f"it accepts: {', '.join(accepted) or 'none'}")
