"""The validation probes are reproducible generated sets of the ID shape, distinct images, never empty."""

from __future__ import annotations

import pytest
import torch

from unleash_ood.data.probes import distorted, make_probe, strokes


def test_strokes_are_reproducible_distinct_and_drawn() -> None:
    a, b = strokes(40, 3, (1, 28, 28)), strokes(40, 3, (1, 28, 28))
    assert a.dtype == torch.uint8 and a.shape == (40, 1, 28, 28) and torch.equal(a, b)
    assert not torch.equal(a, strokes(40, 4, (1, 28, 28)))
    ink = (a > 127).flatten(1).float().mean(1)
    assert ink.min() > 0.01 and ink.max() < 0.6  # every image has a stroke, none is a filled square
    assert len({bytes(x.numpy()) for x in a}) == 40
    rgb = strokes(2, 3, (3, 20, 24))
    assert rgb.shape == (2, 3, 20, 24) and torch.equal(rgb[:, 0], rgb[:, 2])


def test_distorted_keeps_shape_and_dtype_and_changes_every_image(fmnist_small) -> None:
    x = fmnist_small[0][:30]
    d = distorted(x, 0)
    assert d.shape == x.shape and d.dtype == x.dtype and torch.equal(d, distorted(x, 0))
    assert all(not torch.equal(a, b) for a, b in zip(d, x))
    assert distorted(x[:, :, :, :20], 0).shape == x[:, :, :, :20].shape  # non-square: half turns only
    f = make_probe("strokes", 5, 0, (1, 28, 28), x.float() / 255)
    assert f.is_floating_point() and 0 <= f.min() and f.max() <= 1
    with pytest.raises(ValueError, match="unknown validation probe"):
        make_probe("blobs", 5, 0, (1, 28, 28), x)
