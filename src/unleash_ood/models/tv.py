"""Any torchvision classification model, built by name without weights, with input normalization inside."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from ..errors import UserError
from .cnn import Normalize
from .constants import CIFAR10_MEAN, CIFAR10_STD

_LIST_HINT = "see `torchvision.models.list_models(module=torchvision.models)` for valid names"


class TorchvisionClassifier(nn.Module):
    """``Normalize`` followed by a torchvision network; ``classifier`` is the network's last ``nn.Linear``."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net

    @property
    def classifier(self) -> nn.Linear:
        """The last ``nn.Linear`` in module order (the toolkit hooks its input for penultimate features)."""
        return _last_linear(self.net)

    @property
    def num_features(self) -> int:
        """Size of the penultimate features (the classifier's input)."""
        return self.classifier.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(self.normalize(x))
        # GoogLeNet / Inception-v3 return (logits, aux logits...) in training mode; keep the main head only.
        return out if isinstance(out, torch.Tensor) else out.logits


def _last_linear(net: nn.Module) -> nn.Linear:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(net).__name__} has no nn.Linear classifier, which the toolkit needs")
    return linears[-1]


def _replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, attr, new)


def _adapt_small_input(net: nn.Module, name: str, in_channels: int) -> None:
    """ResNet-family stem for 32×32/28×28: 3×3 stride-1 conv, no max-pool."""
    conv1 = getattr(net, "conv1", None)
    if not isinstance(conv1, nn.Conv2d) or not isinstance(getattr(net, "maxpool", None), nn.MaxPool2d):
        raise UserError(f"small_input=True supports only ResNet-family models (conv1 + maxpool stem), not {name!r}")
    net.conv1 = nn.Conv2d(in_channels, conv1.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()


def _adapt_in_channels(net: nn.Module, in_channels: int) -> None:
    """Rebuild the first ``nn.Conv2d`` (module order) with ``in_channels`` inputs, same geometry."""
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            if m.in_channels == in_channels:
                return
            if m.groups != 1:
                raise UserError(f"cannot change input channels of grouped first conv {name!r}")
            new = nn.Conv2d(in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                            dilation=m.dilation, bias=m.bias is not None, padding_mode=m.padding_mode)
            _replace_module(net, name, new)
            return
    raise UserError(f"{type(net).__name__} has no nn.Conv2d whose input channels could be changed")


def input_stats(in_channels: int, mean: tuple[float, ...] | None,
                std: tuple[float, ...] | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The in-model normalization: ``mean``/``std`` as given (one value or one per channel), by default the
    CIFAR-10 statistics for 3 channels and 0.5 per channel otherwise."""
    if in_channels < 1:
        raise UserError(f"in_channels must be positive, got {in_channels}")
    if mean is None:
        mean = CIFAR10_MEAN if in_channels == 3 else (0.5,) * in_channels
    if std is None:
        std = CIFAR10_STD if in_channels == 3 else (0.5,) * in_channels
    for label, stats in (("mean", mean), ("std", std)):
        if len(stats) not in (1, in_channels):
            raise UserError(f"{label} has {len(stats)} values but the model takes {in_channels} input channels")
    return tuple(mean), tuple(std)


def torchvision_model(name: str, num_classes: int, small_input: bool = False, in_channels: int = 3,
                      mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> nn.Module:
    """Build torchvision classification model ``name`` from scratch (never downloads weights).

    ``mean``/``std`` default to the CIFAR-10 statistics for 3 channels and to 0.5 per channel otherwise.
    The returned model's last ``nn.Linear`` must be its classifier; models without one are refused.
    """
    valid = torchvision.models.list_models(module=torchvision.models)
    if name not in valid:
        raise UserError(f"unknown torchvision classification model {name!r}; {_LIST_HINT}")
    mean, std = input_stats(in_channels, mean, std)
    net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if small_input:
        _adapt_small_input(net, name, in_channels)
    elif in_channels != 3:
        _adapt_in_channels(net, in_channels)

    head = _last_linear(net)
    if head.out_features != num_classes:
        raise UserError(f"{name!r}: the last nn.Linear is not the {num_classes}-way classifier; "
                        "this model is not supported")
    return TorchvisionClassifier(net, mean, std)
