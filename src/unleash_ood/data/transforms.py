"""Batched augmentation on image tensors (cheap on CPU, no per-sample Python loop)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift_flip(x: torch.Tensor, pad: int = 2, flip: bool = True,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (zero padding) and horizontal flip, per sample."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    out = torch.empty_like(x)
    for oy in range(2 * pad + 1):
        for ox in range(2 * pad + 1):
            idx = ((dy == oy) & (dx == ox)).nonzero().flatten()
            if len(idx):
                out[idx] = padded[idx, :, oy:oy + h, ox:ox + w]
    if flip:
        mirror = torch.rand(n, generator=generator) < 0.5
        out[mirror] = out[mirror].flip(-1)
    return out
