"""Any timm classifier (the optional ``timm`` extra: ``pip install 'unleash-ood[timm]'``), built by name
without weights (``pretrained=False``: the hub is never asked), with input normalization inside."""

from __future__ import annotations

from torch import nn

from ..errors import UserError
from .tv import TorchvisionClassifier, _last_linear, input_stats

INSTALL_HINT = "pip install 'unleash-ood[timm]'"

# set by the toolkit itself: the class count and channels from the data, never any pretrained weights
_RESERVED = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "num_classes", "in_chans")


class TimmClassifier(TorchvisionClassifier):
    """``Normalize`` followed by a timm network; ``classifier`` is timm's ``get_classifier()`` (``fc``,
    ``head``, ``classifier``, …), checked to be the network's last ``nn.Linear``: the toolkit hooks its
    input for the penultimate features (``eval.forward.capture_features``)."""

    @property
    def classifier(self) -> nn.Linear:
        return self.net.get_classifier()


def timm_model(name: str, num_classes: int, in_channels: int = 3, mean: tuple[float, ...] | None = None,
               std: tuple[float, ...] | None = None, options: dict | None = None) -> nn.Module:
    """Build timm model ``name`` from scratch for ``num_classes`` classes and ``in_channels`` input channels
    (timm's ``in_chans``; the run fills it from the data when the config does not say).

    ``options``: further ``timm.create_model`` keyword arguments, e.g. ``{drop_rate: 0.1}`` or
    ``{img_size: 32}`` for a ViT on 32×32 inputs. ``mean``/``std`` as for ``torchvision:NAME``."""
    try:
        import timm  # the optional extra: imported only when a timm model is asked for
    except ImportError:
        raise UserError(f"model.arch=timm:{name} needs timm, which is not installed: {INSTALL_HINT}") from None
    options = dict(options or {})
    reserved = sorted(set(options) & set(_RESERVED))
    if reserved:
        raise UserError(f"timm:{name}: model.kwargs.options may not set {', '.join(reserved)} "
                        "(the toolkit sets the class count and channels and never loads pretrained weights)")
    if not timm.is_model(name):
        raise UserError(f"unknown timm model {name!r}; see `timm.list_models('resnet*')` for valid names")
    mean, std = input_stats(in_channels, mean, std)
    try:
        net = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **options)
    except TypeError as e:  # an option the model's constructor does not take
        raise UserError(f"timm:{name} does not take these options ({e})") from None
    head = net.get_classifier()
    if not isinstance(head, nn.Linear) or head is not _last_linear(net) or head.out_features != num_classes:
        raise UserError(f"timm:{name}: its classifier is not its last nn.Linear with {num_classes} outputs, "
                        "which the toolkit needs; this model is not supported")
    return TimmClassifier(net, mean, std)
