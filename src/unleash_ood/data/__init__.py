"""Datasets by name: the in-distribution splits and the OOD suites, all as [0, 1] image tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from .fashion import CLASSES as FASHION_CLASSES
from .fashion import load_fashion_mnist
from .cifar import load_cifar

ID_DATASETS = ("fashion_mnist", "cifar10", "cifar100")


@dataclass
class IDData:
    """Train / validation / test splits of an in-distribution dataset."""

    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    classes: tuple[str, ...]
    heldout: torch.Tensor | None = None  # open-set protocol: the held-out classes' test images

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train[0].shape[1:])  # type: ignore[return-value]


def load_id_data(name: str = "fashion_mnist", data_root: str | None = None, val_size: int = 5000,
                 train_size: int | None = None, test_size: int | None = None, seed: int = 0,
                 download: bool = True, id_classes: list[int] | None = None) -> IDData:
    """Load an ID dataset; hold out ``val_size`` training images (seeded) for every selection.

    ``train_size``/``test_size`` take seeded subsets (the rest of the training pool is unused).
    ``id_classes`` (open-set protocol): keep only these classes in train/val/test, relabelled 0..k-1 in
    the order given; the other classes' test images (all of them) become ``IDData.heldout``.
    """
    if name not in ID_DATASETS:
        raise UserError(f"unknown ID dataset {name!r}; available: {', '.join(ID_DATASETS)}")
    if name == "fashion_mnist":
        x, y = load_fashion_mnist(data_root, train=True, download=download)
        xt, yt = load_fashion_mnist(data_root, train=False, download=download)
        classes = FASHION_CLASSES
    else:
        x, y, classes = load_cifar(name, data_root, train=True, download=download)
        xt, yt, _ = load_cifar(name, data_root, train=False, download=download)
    heldout = None
    if id_classes is not None:
        keep = _check_id_classes(id_classes, len(classes))
        heldout = xt[~torch.isin(yt, keep)]
        (x, y), (xt, yt) = _relabel(x, y, keep), _relabel(xt, yt, keep)
        classes = tuple(classes[c] for c in id_classes)
    if val_size < 0 or val_size >= len(x):
        raise UserError(f"val_size must be in [0, {len(x)}), got {val_size}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    val_idx, pool = order[:val_size], order[val_size:]
    if train_size is not None:
        if not 0 < train_size <= len(pool):
            raise UserError(f"train_size must be in (0, {len(pool)}], got {train_size}")
        pool = pool[:train_size]
    if test_size is not None:
        if not 0 < test_size <= len(xt):
            raise UserError(f"test_size must be in (0, {len(xt)}], got {test_size}")
        test_idx = torch.randperm(len(xt), generator=g)[:test_size]
        xt, yt = xt[test_idx], yt[test_idx]
    return IDData(name, (x[pool], y[pool]), (x[val_idx], y[val_idx]), (xt, yt), classes, heldout)


def _check_id_classes(id_classes: list[int], num_classes: int) -> torch.Tensor:
    """``id_classes`` as a tensor, or one :class:`UserError` naming ``data.id_classes``."""
    values = list(id_classes)
    if not values:
        raise UserError("data.id_classes is empty: list the classes to train on (or leave it unset for all)")
    if any(not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < num_classes for c in values):
        raise UserError(f"data.id_classes {values}: every entry must be a class index in 0..{num_classes - 1}")
    if len(set(values)) != len(values):
        raise UserError(f"data.id_classes {values} lists a class twice")
    if len(values) == num_classes:
        raise UserError(f"data.id_classes {values} lists all {num_classes} classes: hold at least one out "
                        "(or leave data.id_classes unset)")
    return torch.tensor(values, dtype=torch.int64)


def _relabel(x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of the classes in ``keep``, labels mapped to their position in ``keep``."""
    mask = torch.isin(y, keep)
    lookup = torch.full((int(max(int(y.max()), int(keep.max()))) + 1,), -1, dtype=torch.int64)
    lookup[keep] = torch.arange(len(keep))
    return x[mask], lookup[y[mask]]


def patch_shuffle(images: torch.Tensor, patch: int = 7, seed: int = 0) -> torch.Tensor:
    """Synthetic validation OOD: each image's patches shuffled (pixel statistics kept, semantics destroyed).

    Built from held-out ID validation images, so selecting on it never touches an OOD test set.
    """
    n, c, h, w = images.shape
    if h % patch or w % patch:
        raise UserError(f"patch size {patch} must divide the image size {h}×{w}")
    g = torch.Generator().manual_seed(seed)
    gh, gw = h // patch, w // patch
    tiles = images.reshape(n, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c, patch, patch)
    perm = torch.argsort(torch.rand(n, gh * gw, generator=g), dim=1)
    tiles = tiles[torch.arange(n).unsqueeze(1), perm]
    return tiles.reshape(n, gh, gw, c, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w).contiguous()


def default_patch(size: int) -> int:
    """Patch size for :func:`patch_shuffle` on ``size``×``size`` images: 7 for 28 (Fashion-MNIST), 8 for 32
    (CIFAR); otherwise the largest divisor of ``size`` not above ``size // 4``."""
    if size == 28:
        return 7
    return next(p for p in range(max(size // 4, 1), 0, -1) if size % p == 0)
