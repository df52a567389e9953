"""The built-in auxiliary-outlier pool (outlier exposure): generated, disjoint from every OOD test set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .builtin import picture_crops
from .images import check_count, check_image_shape, local_rng

# Disjoint from the test sets' picture lists (builtin.TEXTURE_PICTURES, builtin.PHOTO_PICTURES and the
# scenes set's photographs, scenes.SCENE_PICTURES; tests/test_data_benchmark.py checks by content).
# Not ``cat``: it is the same file as ``chelsea``.
AUX_PICTURES: tuple[str, ...] = (
    "cell", "retina", "logo", "colorwheel", "microaneurysms", "stereo_motorcycle",
    "shepp_logan_phantom", "horse", "checkerboard",
)
# Auxiliary pool mix: picture crops, smooth blobs, random shapes, Rademacher-like noise.
AUX_MIX: tuple[float, float, float, float] = (0.4, 0.25, 0.2, 0.15)

_AUX_STREAM = 1000


def load_auxiliary_pool(image_shape: tuple[int, int, int] = (1, 28, 28), n: int = 5000,
                        seed: int = 0) -> torch.Tensor:
    """An outlier-exposure pool of ``n`` images, float32 N×C×H×W in [0, 1], shuffled, fixed per seed.

    Disjoint from every built-in test set. Sources (fractions in ``AUX_MIX``):
    40 % random crops of the scikit-image pictures in ``AUX_PICTURES`` (cell, retina, logo, colorwheel,
    microaneurysms, stereo_motorcycle left view, shepp_logan_phantom, horse, checkerboard);
    25 % smooth blobs (upsampled coarse noise, half thresholded to binary);
    20 % random shapes (1–4 ellipses/rectangles of random colour on a random background);
    15 % Rademacher-like noise (0.5 ± a per-pixel or per-block random sign).
    """
    image_shape = check_image_shape(image_shape)
    check_count(n, "n")
    rng = local_rng(seed, _AUX_STREAM)
    n_pictures, n_blobs, n_shapes, n_noise = _split_counts(n, AUX_MIX)
    pool = torch.cat([
        picture_crops(AUX_PICTURES, image_shape, rng, n_pictures),
        _smooth_blobs(image_shape, rng, n_blobs),
        _random_shapes(image_shape, rng, n_shapes),
        _rademacher_noise(image_shape, rng, n_noise),
    ])
    return pool[torch.from_numpy(rng.permutation(n))]


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` by ``fractions``; the rounding remainder goes to the first part."""
    counts = [int(n * f) for f in fractions]
    counts[0] += n - sum(counts)
    return counts


def _smooth_blobs(image_shape: tuple[int, int, int], rng: np.random.Generator, n: int) -> torch.Tensor:
    """Coarse random noise upsampled bicubically, contrast-stretched; half thresholded into binary blobs."""
    channels, height, width = image_shape
    out = torch.empty((n, channels, height, width), dtype=torch.float32)
    if n == 0:
        return out
    grids = rng.integers(3, 9, size=n)  # fewer coarse cells give larger blobs
    for grid in np.unique(grids):
        idx = np.flatnonzero(grids == grid)
        coarse = torch.from_numpy(rng.random((len(idx), channels, grid, grid), dtype=np.float32))
        out[torch.from_numpy(idx)] = F.interpolate(coarse, size=(height, width), mode="bicubic",
                                                   align_corners=False)
    low = out.amin(dim=(1, 2, 3), keepdim=True)
    high = out.amax(dim=(1, 2, 3), keepdim=True)
    out = (out - low) / (high - low).clamp_min(1e-6)
    binary = torch.from_numpy(rng.random(n) < 0.5)
    levels = torch.from_numpy(rng.uniform(0.3, 0.7, size=n).astype(np.float32)).view(-1, 1, 1, 1)
    out[binary] = (out > levels)[binary].float()
    return out.clamp_(0.0, 1.0)


def _random_shapes(image_shape: tuple[int, int, int], rng: np.random.Generator, n: int) -> torch.Tensor:
    """1–4 filled ellipses or rectangles of random colour on a random uniform background."""
    channels, height, width = image_shape
    ys = ((np.arange(height) + 0.5) / height)[None, :, None]
    xs = ((np.arange(width) + 0.5) / width)[None, None, :]
    canvas = np.broadcast_to(rng.random((n, channels, 1, 1)), (n, channels, height, width))
    n_shapes = rng.integers(1, 5, size=n)
    for k in range(4):
        centre_y, centre_x = (rng.random(n)[:, None, None] for _ in range(2))
        radius_y, radius_x = (rng.uniform(0.08, 0.4, size=n)[:, None, None] for _ in range(2))
        ellipse = ((ys - centre_y) / radius_y) ** 2 + ((xs - centre_x) / radius_x) ** 2 <= 1.0
        rectangle = (np.abs(ys - centre_y) <= radius_y) & (np.abs(xs - centre_x) <= radius_x)
        is_ellipse = rng.random(n)[:, None, None] < 0.5
        mask = np.where(is_ellipse, ellipse, rectangle) & (k < n_shapes)[:, None, None]
        colour = rng.random((n, channels, 1, 1))
        canvas = np.where(mask[:, None], colour, canvas)
    return torch.from_numpy(np.ascontiguousarray(canvas, dtype=np.float32))


def _rademacher_noise(image_shape: tuple[int, int, int], rng: np.random.Generator, n: int) -> torch.Tensor:
    """0.5 ± amplitude × random sign, per pixel or per 2×2 / 4×4 block."""
    channels, height, width = image_shape
    out = torch.empty((n, channels, height, width), dtype=torch.float32)
    blocks = rng.choice(np.array([1, 2, 4]), size=n)
    amplitudes = rng.uniform(0.2, 0.5, size=n)
    for block in np.unique(blocks):
        idx = np.flatnonzero(blocks == block)
        coarse_shape = (len(idx), channels, -(-height // block), -(-width // block))
        signs = rng.integers(0, 2, size=coarse_shape) * 2 - 1
        signs = signs.repeat(block, axis=2).repeat(block, axis=3)[..., :height, :width]
        values = 0.5 + amplitudes[idx, None, None, None] * signs
        out[torch.from_numpy(idx)] = torch.from_numpy(values.astype(np.float32))
    return out
