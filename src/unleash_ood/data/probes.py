"""Validation probes: generated OOD sets that a run scores beside its validation proxies and reports, but
never chooses on (their weight in the rule is 0). They exist to measure whether another proxy would have
predicted the test ranking better (``unleash-ood evidence``, the proxies table).

- ``strokes``: 1–3 smooth pen strokes (random Bézier curves, 2–3.5 px wide, drawn at 4× and downsampled),
  a stand-in for handwriting that is made of no test set;
- ``distorted``: the ID validation images themselves, elastically warped (torchvision's
  ``ElasticTransform``) and turned by 90°, 180° or 270°.

Both are functions of the seed and the image shape (``distorted`` also of the ID validation split).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.transforms import v2

PROBES = ("strokes", "distorted")


def _bezier(p: np.ndarray, steps: int = 24) -> list[tuple[float, float]]:
    """Points of the quadratic Bézier curves through the control points ``p`` (k × 2), joined."""
    out = []
    for a, c, b in zip(p[:-2:2], p[1:-1:2], p[2::2]):
        t = np.linspace(0, 1, steps)[:, None]
        out += [tuple(x) for x in (1 - t) ** 2 * a + 2 * (1 - t) * t * c + t ** 2 * b]
    return out


def strokes(n: int, seed: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """``n`` images (uint8, N×C×H×W) of 1–3 random smooth strokes, white on black."""
    c, h, w = shape
    rng = np.random.default_rng([seed, 7001])
    big = 4
    out = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        img = Image.new("L", (w * big, h * big), 0)
        draw = ImageDraw.Draw(img)
        for _ in range(rng.integers(1, 4)):
            k = 2 * rng.integers(1, 3) + 1  # 3 or 5 control points: one or two curve pieces
            pts = rng.uniform([0.15 * w, 0.15 * h], [0.85 * w, 0.85 * h], size=(k, 2)) * big
            draw.line(_bezier(pts), fill=255, width=int(rng.uniform(2.0, 3.5) * big), joint="curve")
        out[i] = np.asarray(img.resize((w, h), Image.Resampling.LANCZOS))
    return torch.from_numpy(out)[:, None].expand(n, c, h, w).contiguous()


def distorted(images: torch.Tensor, seed: int) -> torch.Tensor:
    """The images (N×C×H×W, uint8 or float), each elastically warped and turned by a random multiple of 90°."""
    side = images.shape[-1]
    warp = v2.ElasticTransform(alpha=40.0 * side / 28, sigma=4.0 * side / 28)
    turns = np.random.default_rng([seed, 7002]).integers(1, 4, size=len(images))
    if images.shape[-1] != images.shape[-2]:  # a quarter turn would change the shape
        turns[:] = 2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = [torch.rot90(warp(x), int(k), dims=(-2, -1)) for x, k in zip(images, turns)]
    return torch.stack(out).contiguous()


def make_probe(name: str, n: int, seed: int, shape: tuple[int, int, int], val_images: torch.Tensor) -> torch.Tensor:
    """The probe ``name`` (:data:`PROBES`) with ``n`` images (``distorted``: of the first ``n`` ID
    validation images), in the dtype of ``val_images`` (float images are in [0, 1])."""
    if name == "strokes":
        x = strokes(n, seed, shape)
        return x.to(val_images.dtype) / 255 if val_images.is_floating_point() else x
    if name == "distorted":
        return distorted(val_images[:n], seed)
    raise ValueError(f"unknown validation probe {name!r}; choose from {', '.join(PROBES)}")
