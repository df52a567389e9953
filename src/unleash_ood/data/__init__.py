"""Datasets by name: the in-distribution splits and the OOD suites, all as [0, 1] image tensors."""

from __future__ import annotations

import math
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
    normalization: dict[str, list[float]] | None = None  # {"mean", "std"} for the model (data.normalize)
    preprocessing: dict | None = None  # own data (data.own): what the input is and what was done to reach it

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train[0].shape[1:])  # type: ignore[return-value]


def load_id_data(name: str = "fashion_mnist", data_root: str | None = None, val_size: int | float = 5000,
                 train_size: int | None = None, test_size: int | None = None, seed: int = 0,
                 download: bool = True, id_classes: list[int] | None = None) -> IDData:
    """Load an ID dataset; hold out ``val_size`` training images (seeded) for every selection.

    ``train_size``/``test_size`` take seeded subsets (the rest of the training pool is unused).
    ``id_classes`` (open-set protocol): keep only these classes in train/val/test, relabelled 0..k-1 in
    the order given; the other classes' test images (all of them) become ``IDData.heldout``.
    """
    if name not in ID_DATASETS:
        raise UserError(f"unknown ID dataset {name!r}; available: {', '.join(ID_DATASETS)}, "
                        "folder:ROOT (ROOT/train/<class>/*, ROOT/test/<class>/*) or npz:FILE")
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
    pool, val_idx, test_idx = split_indices(len(x), len(xt), val_size, train_size, test_size, seed)
    if test_idx is not None:
        xt, yt = xt[test_idx], yt[test_idx]
    return IDData(name, (x[pool], y[pool]), (x[val_idx], y[val_idx]), (xt, yt), classes, heldout)


def split_indices(n_train: int, n_test: int, val_size: int | float, train_size: int | None = None,
                  test_size: int | None = None, seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The seeded split of every ID dataset: ``(train, val, test)`` indices; ``test`` None keeps all.

    ``val_size`` images (a count, or a fraction in (0, 1) of ``n_train``, rounded) are held out of the
    training images; ``train_size``/``test_size`` take seeded subsets."""
    if isinstance(val_size, float):
        val_size = round(val_size * n_train)
    if val_size < 0 or val_size >= n_train:
        raise UserError(f"val_size must be in [0, {n_train}), got {val_size}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_train, generator=g)
    val_idx, pool = order[:val_size], order[val_size:]
    if train_size is not None:
        if not 0 < train_size <= len(pool):
            raise UserError(f"train_size must be in (0, {len(pool)}], got {train_size}")
        pool = pool[:train_size]
    test_idx = None
    if test_size is not None:
        if not 0 < test_size <= n_test:
            raise UserError(f"test_size must be in (0, {n_test}], got {test_size}")
        test_idx = torch.randperm(n_test, generator=g)[:test_size]
    return pool, val_idx, test_idx


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


def default_patch(size: int, height: int | None = None) -> int:
    """Patch size for :func:`patch_shuffle` on ``size``×``size`` images (``height``×``size`` when given):
    7 for 28 (Fashion-MNIST), 8 for 32 (CIFAR); otherwise the largest common divisor of both sides not
    above a quarter of the shorter one (1 at worst: pixels shuffled)."""
    height = size if height is None else height
    if size == height == 28:
        return 7
    common = math.gcd(size, height)
    return next(p for p in range(max(min(size, height) // 4, 1), 0, -1) if common % p == 0)
