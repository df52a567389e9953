"""DenseNet-BC for 32×32 inputs (Huang et al., 2017); depth 100 / growth 12 is the OOD papers' "DenseNet-101"."""

from __future__ import annotations

import torch
from torch import nn

from .cnn import Normalize, init_weights
from .constants import CIFAR10_MEAN, CIFAR10_STD


class DenseLayer(nn.Module):
    """BN-ReLU-(1×1 conv to 4·k)-BN-ReLU-3×3 conv to k, optional dropout; output is concatenated to the input."""

    def __init__(self, in_channels: int, growth_rate: int, bottleneck: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if bottleneck:
            inter = 4 * growth_rate
            self.bn1 = nn.BatchNorm2d(in_channels)
            self.conv1 = nn.Conv2d(in_channels, inter, 1, bias=False)
        else:
            inter = in_channels
            self.bn1 = None
            self.conv1 = None
        self.bn2 = nn.BatchNorm2d(inter)
        self.conv2 = nn.Conv2d(inter, growth_rate, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.conv1 is not None:
            out = self.conv1(self.relu(self.bn1(out)))
        out = self.dropout(self.conv2(self.relu(self.bn2(out))))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    """BN-ReLU-1×1 conv (compression) followed by 2×2 average pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


class DenseNetBC(nn.Module):
    """Three dense blocks joined by compressing transitions; ``fc`` is the last ``nn.Linear`` (penultimate hook)."""

    def __init__(self, num_classes: int = 10, depth: int = 100, growth_rate: int = 12, reduction: float = 0.5,
                 bottleneck: bool = True, dropout: float = 0.0,
                 mean: tuple[float, ...] = CIFAR10_MEAN, std: tuple[float, ...] = CIFAR10_STD) -> None:
        super().__init__()
        # A bottleneck layer holds two convs, a plain one holds one; 4 = stem conv + 2 transitions + fc.
        per_layer = 6 if bottleneck else 3
        if (depth - 4) % per_layer != 0:
            raise ValueError(f"depth must be {per_layer}n+4 (bottleneck={bottleneck}), got {depth}")
        if not 0.0 < reduction <= 1.0:
            raise ValueError(f"reduction must be in (0, 1], got {reduction}")
        n = (depth - 4) // per_layer

        self.normalize = Normalize(mean, std)
        channels = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=False)

        stages: list[nn.Module] = []
        for i in range(3):
            block = []
            for _ in range(n):
                block.append(DenseLayer(channels, growth_rate, bottleneck, dropout))
                channels += growth_rate
            stages.append(nn.Sequential(*block))
            if i < 2:
                out = int(channels * reduction)
                stages.append(Transition(channels, out))
                channels = out
        self.block1, self.trans1, self.block2, self.trans2, self.block3 = stages

        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (the input of ``fc``), shape N × ``num_features``."""
        out = self.conv1(self.normalize(x))
        out = self.trans1(self.block1(out))
        out = self.trans2(self.block2(out))
        out = self.relu(self.bn(self.block3(out)))
        return torch.flatten(self.pool(out), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def densenet100(num_classes: int = 10, dropout: float = 0.0, mean: tuple[float, ...] = CIFAR10_MEAN,
                std: tuple[float, ...] = CIFAR10_STD) -> DenseNetBC:
    """DenseNet-BC, depth 100, growth 12 (about 0.77M parameters for 10 classes)."""
    return DenseNetBC(num_classes=num_classes, depth=100, growth_rate=12, reduction=0.5, bottleneck=True,
                      dropout=dropout, mean=mean, std=std)
