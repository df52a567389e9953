"""The embedded default's small CNN (about 0.1-0.4M parameters, 28×28 grayscale)."""

from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel input normalization inside the model, so loaders yield [0, 1] tensors."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def init_weights(model: nn.Module) -> None:
    """He-normal convs, unit BatchNorm, zero Linear biases (the usual CIFAR ResNet/DenseNet init)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Three conv stages (two 3×3 convs each, max-pool between), global average pool, linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32,
                 mean: tuple[float, ...] = (0.2860,), std: tuple[float, ...] = (0.3530,)) -> None:
        super().__init__()
        w = width
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            _block(in_channels, w), _block(w, w), nn.MaxPool2d(2),
            _block(w, 2 * w), _block(2 * w, 2 * w), nn.MaxPool2d(2),
            _block(2 * w, 4 * w), _block(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(self.normalize(x)))
