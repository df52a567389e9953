"""Downloadable near-OOD sets for Fashion-MNIST: ``mnist``, ``kmnist``, ``emnist-letters`` (test splits).

Files are looked up under the data root (``--data-root`` / ``data.data_root``, default
``~/.cache/unleash-ood``) in torchvision's raw layout, gzipped or not:

* ``mnist``: ``ROOT/MNIST/raw/t10k-images-idx3-ubyte[.gz]``
* ``kmnist``: ``ROOT/KMNIST/raw/t10k-images-idx3-ubyte[.gz]``
* ``emnist-letters``: ``ROOT/EMNIST/raw/emnist-letters-test-images-idx3-ubyte[.gz]``, or NIST's archive
  ``ROOT/EMNIST/raw/gzip.zip`` as downloaded (read in place).

If they are missing and ``data.download`` is true, torchvision downloads them there (needs internet).
Each set is a seeded subset of ``n`` images (all of them if fewer), fixed per seed. EMNIST stores its
images transposed; they are turned upright.
"""

from __future__ import annotations

import gzip
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torchvision.datasets as tvd

from ..config import data_root
from ..errors import UserError
from .fashion import parse_idx, read_idx
from .images import local_rng, to_image_format

if TYPE_CHECKING:
    from .builtin import Request


@dataclass(frozen=True)
class MnistLike:
    folder: str  # torchvision's class name = the folder under the data root
    images: str  # the test images' file name, without .gz
    transposed: bool = False


MNIST_LIKE: dict[str, MnistLike] = {
    "mnist": MnistLike("MNIST", "t10k-images-idx3-ubyte"),
    "kmnist": MnistLike("KMNIST", "t10k-images-idx3-ubyte"),
    "emnist-letters": MnistLike("EMNIST", "emnist-letters-test-images-idx3-ubyte", transposed=True),
}
EMNIST_ARCHIVE = "gzip.zip"


def expected_path(name: str, root: Path) -> Path:
    """Where the test images of ``name`` go (torchvision's raw layout)."""
    entry = MNIST_LIKE[name]
    return root / entry.folder / "raw" / entry.images


def read_test_images(name: str, root: Path) -> np.ndarray | None:
    """The test images of ``name`` under ``root``, or None when no file is there."""
    path = expected_path(name, root)
    for candidate in (path.with_name(path.name + ".gz"), path):
        if candidate.is_file():
            return read_idx(candidate)
    archive = path.with_name(EMNIST_ARCHIVE)
    if MNIST_LIKE[name].folder == "EMNIST" and archive.is_file():
        member = f"gzip/{path.name}.gz"
        try:
            with zipfile.ZipFile(archive) as z:
                raw = gzip.decompress(z.read(member))
        except (OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise UserError(f"cannot read {member} from {archive}: {e}") from None
        return parse_idx(raw, f"{archive}:{member}")
    return None


def _download(name: str, root: Path) -> None:
    try:
        if name == "emnist-letters":
            tvd.EMNIST(str(root), split="letters", train=False, download=True)
        else:
            getattr(tvd, MNIST_LIKE[name].folder)(str(root), train=False, download=True)
    except Exception as e:  # no internet, proxy, disk...: one message
        raise UserError(f"OOD set {name!r}: download into {root} failed ({e}); put the test files at "
                        f"{expected_path(name, root)}[.gz] instead") from None


def load_mnist_like(name: str, req: Request, stream: int) -> torch.Tensor:
    """A seeded subset (random stream ``stream``) of ``req.n`` test images of ``name`` in the ID format."""
    root = data_root(req.sources.data_root)
    images = read_test_images(name, root)
    if images is None and req.sources.download:
        _download(name, root)
        images = read_test_images(name, root)
    if images is None:
        raise UserError(f"OOD set {name!r} not found: put its test images at {expected_path(name, root)}[.gz] "
                        "(torchvision's layout under the data root, --data-root), or set data.download=true "
                        "on a machine with internet")
    if images.ndim != 3 or len(images) == 0:
        raise UserError(f"OOD set {name!r}: expected N×H×W images in {expected_path(name, root)}, "
                        f"got shape {images.shape}")
    if MNIST_LIKE[name].transposed:
        images = images.transpose(0, 2, 1)
    rng = local_rng(req.seed, stream)
    idx = np.sort(rng.choice(len(images), size=min(req.n, len(images)), replace=False))
    return to_image_format(images[idx], req.image_shape, source=name)
