"""Model registry: build a classifier by name with explicit arguments."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import UserError
from .cnn import SmallCNN
from .densenet import densenet100
from .tv import torchvision_model
from .wrn import wrn40_2, wrn40_4

MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "densenet100": densenet100,
    "wrn40_4": wrn40_4,
    "wrn40_2": wrn40_2,
}


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered model, or any torchvision classifier as ``torchvision:NAME``."""
    if name.startswith("torchvision:"):
        return torchvision_model(name.split(":", 1)[1], num_classes=num_classes, **kwargs)
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(sorted(MODELS))} "
                        "or torchvision:NAME")
    return MODELS[name](num_classes=num_classes, **kwargs)
