"""Fashion-MNIST, the in-distribution set of the embedded default.

Resolution order: an explicit ``data_root``; the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``); torchvision's download (needs internet).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torchvision

from ..errors import UserError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
HOW_TO_GET = (
    "Fashion-MNIST not found. Get it one of three ways: "
    "(1) pass --data-root DIR holding train-images-idx3-ubyte.gz etc.; "
    "(2) on Debian/Ubuntu: apt-get install dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist); "
    "(3) on a machine with internet, torchvision downloads it into --data-root (default ~/.cache/unleash-ood)."
)


def parse_idx(raw: bytes, source: str) -> np.ndarray:
    """Parse the bytes of an IDX file (uint8 data) into an array; ``source`` names it in errors."""
    try:
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(dims)
    except (ValueError, IndexError) as e:
        raise UserError(f"corrupt dataset file {source}: {e}") from None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"corrupt dataset file {path}: {e}") from None
    return parse_idx(raw, str(path))


def _find_files(directory: Path, train: bool) -> tuple[Path, Path] | None:
    for sub in (directory, directory / "FashionMNIST" / "raw"):
        found = []
        for stem in _FILES[train]:
            hits = [sub / (stem + ext) for ext in (".gz", "") if (sub / (stem + ext)).is_file()]
            if not hits:
                break
            found.append(hits[0])
        if len(found) == 2:
            return found[0], found[1]
    return None


def _download(root: Path) -> None:
    try:
        for train in (True, False):
            torchvision.datasets.FashionMNIST(str(root), train=train, download=True)
    except Exception as e:  # no internet, proxy, disk...: one message below
        raise UserError(f"{HOW_TO_GET} (download failed: {e})") from None


def load_fashion_mnist(data_root: str | Path | None = None, train: bool = True,
                       download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(images, labels)``: float images N×1×28×28 in [0, 1] and int64 labels."""
    candidates = [Path(data_root).expanduser()] if data_root else []
    candidates.append(DEBIAN_DIR)
    files = next((f for d in candidates if (f := _find_files(d, train))), None)
    if files is None and download:
        root = Path(data_root or Path.home() / ".cache" / "unleash-ood").expanduser()
        _download(root)
        files = _find_files(root, train)
    if files is None:
        raise UserError(HOW_TO_GET)
    images, labels = read_idx(files[0]), read_idx(files[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"corrupt dataset files {files[0]} / {files[1]}: shapes {images.shape}, {labels.shape}")
    x = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)
    return x, torch.from_numpy(labels.astype(np.int64))
