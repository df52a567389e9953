"""Pre-activation Wide ResNet for 32×32 inputs (Zagoruyko & Komodakis, 2016).

Module names follow the WRN used by the OOD literature (Hendrycks et al.; pytorch-ood's pretrained
CIFAR WRN-40-2), so such a checkpoint maps onto ``wrn40_2`` by renaming keys only:
``blockK.layer.I.`` → ``blockK.I.`` and ``convShortcut`` → ``shortcut``; every other key and all shapes
already agree. The mapping is in ``unleash_ood.models.pretrained`` (``pytorch-ood:NAME``, ``import-weights``).
Input normalization lives in ``normalize``, whose
buffers are not persistent, so it adds no state_dict keys; the reference normalizes in its data transform,
so pass that transform's statistics as ``mean``/``std`` when loading such weights.
"""

from __future__ import annotations

import torch
from torch import nn

from .cnn import Normalize, init_weights
from .constants import CIFAR10_MEAN, CIFAR10_STD


class WideBasicBlock(nn.Module):
    """BN-ReLU-3×3 conv, BN-ReLU, dropout, 3×3 conv, plus an identity or 1×1-conv shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Conv2d | None = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        # A projecting shortcut sees the pre-activated input, an identity one the raw input.
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-k: stem conv, three stages of (depth−4)/6 wide blocks, BN-ReLU, average pool, ``fc`` last."""

    def __init__(self, num_classes: int = 10, depth: int = 40, widen_factor: int = 4, dropout: float = 0.3,
                 mean: tuple[float, ...] = CIFAR10_MEAN, std: tuple[float, ...] = CIFAR10_STD) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]

        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.block1 = self._stage(widths[0], widths[1], n, 1, dropout)
        self.block2 = self._stage(widths[1], widths[2], n, 2, dropout)
        self.block3 = self._stage(widths[2], widths[3], n, 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = widths[3]
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    @staticmethod
    def _stage(in_channels: int, out_channels: int, n: int, stride: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(*[
            WideBasicBlock(in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1, dropout)
            for i in range(n)
        ])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (the input of ``fc``), shape N × ``num_features``."""
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = self.relu(self.bn1(out))
        return torch.flatten(self.pool(out), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def wrn40_4(num_classes: int = 10, dropout: float = 0.3, mean: tuple[float, ...] = CIFAR10_MEAN,
            std: tuple[float, ...] = CIFAR10_STD) -> WideResNet:
    """WRN-40-4 (about 8.9M parameters for 10 classes)."""
    return WideResNet(num_classes=num_classes, depth=40, widen_factor=4, dropout=dropout, mean=mean, std=std)


def wrn40_2(num_classes: int = 10, dropout: float = 0.3, mean: tuple[float, ...] = CIFAR10_MEAN,
            std: tuple[float, ...] = CIFAR10_STD) -> WideResNet:
    """WRN-40-2 (about 2.2M parameters), the architecture of pytorch-ood's pretrained CIFAR checkpoints."""
    return WideResNet(num_classes=num_classes, depth=40, widen_factor=2, dropout=dropout, mean=mean, std=std)
