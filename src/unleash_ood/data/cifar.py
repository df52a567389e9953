"""CIFAR-10 / CIFAR-100 as float [0, 1] N×3×32×32 tensors + int64 labels.

Files are expected in torchvision's layout under the data root: ``<root>/cifar-10-batches-py/``
(``data_batch_1`` … ``data_batch_5``, ``test_batch``, ``batches.meta``) and ``<root>/cifar-100-python/``
(``train``, ``test``, ``meta``). They are read directly (pickled dicts), so torchvision's MD5 check
(which rejects any non-original file) is not involved; torchvision is only used to *download* the
originals (``download=True``, needs internet).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torchvision

from ..config import data_root
from ..errors import UserError

LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                b"labels", b"label_names"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels", b"fine_label_names"),
}


def how_to_get(name: str, root: Path) -> str:
    folder = LAYOUT[name][0]
    return (f"{name} not found under {root} (expected {root / folder}/). Get it one of two ways: "
            f"(1) with internet, set data.download=true (the default) and torchvision downloads it into {root}; "
            f"(2) copy torchvision's extracted archive folder '{folder}' (from "
            f"{'cifar-10-python.tar.gz' if name == 'cifar10' else 'cifar-100-python.tar.gz'}) into {root} "
            "(or point --data-root / data.data_root at the folder holding it).")


def cifar_present(name: str, root: str | Path | None) -> bool:
    folder, train, test, meta, _, _ = LAYOUT[name]
    base = data_root(root) / folder
    return all((base / f).is_file() for f in (*train, *test, meta))


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise UserError(f"corrupt CIFAR file {path}: {e}") from None


def _get(d: dict, key: bytes):
    """Keys are bytes in the original (Python 2) pickles; accept str keys too."""
    if key in d:
        return d[key]
    if key.decode() in d:
        return d[key.decode()]
    raise UserError(f"CIFAR file lacks the key {key.decode()!r}")


def download_cifar(name: str, root: str | Path | None) -> None:
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    r = data_root(root)
    try:
        r.mkdir(parents=True, exist_ok=True)
        cls(str(r), train=True, download=True)
    except Exception as e:  # no internet, disk...: one message
        raise UserError(f"{how_to_get(name, r)} (download failed: {e})") from None


def load_cifar(name: str, root: str | Path | None = None, train: bool = True,
               download: bool = True) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Return ``(images, labels, classes)``: float32 N×3×32×32 in [0, 1], int64 labels, class names."""
    if name not in LAYOUT:
        raise UserError(f"unknown CIFAR dataset {name!r}; use cifar10 or cifar100")
    r = data_root(root)
    if not cifar_present(name, r):
        if not download:
            raise UserError(how_to_get(name, r))
        download_cifar(name, r)
        if not cifar_present(name, r):
            raise UserError(how_to_get(name, r))
    folder, train_files, test_files, meta_file, label_key, names_key = LAYOUT[name]
    base = r / folder
    xs, ys = [], []
    for f in (train_files if train else test_files):
        d = _unpickle(base / f)
        data = np.asarray(_get(d, b"data"), dtype=np.uint8)
        labels = np.asarray(_get(d, label_key), dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise UserError(f"corrupt CIFAR file {base / f}: data {data.shape}, labels {labels.shape}")
        xs.append(data)
        ys.append(labels)
    classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in _get(_unpickle(base / meta_file), names_key))
    x = torch.from_numpy(np.concatenate(xs).reshape(-1, 3, 32, 32)).float().div_(255.0)
    y = torch.from_numpy(np.concatenate(ys))
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise UserError(f"CIFAR labels in {base} outside [0, {len(classes)})")
    return x, y, classes


def write_fake_cifar(root: str | Path, name: str = "cifar10", n_train: int = 100, n_test: int = 50,
                     seed: int = 0) -> Path:
    """Write a small random CIFAR folder in torchvision's exact layout (for tests and dry runs).

    Images are class-dependent colour blobs plus noise, so a small model can learn them.
    """
    folder, train_files, test_files, meta_file, label_key, names_key = LAYOUT[name]
    k = 10 if name == "cifar10" else 100
    base = Path(root) / folder
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(k, 3))

    def batch(n: int) -> dict:
        labels = rng.integers(0, k, size=n)
        img = rng.normal(0, 30, size=(n, 3, 32, 32)) + palette[labels][:, :, None, None]
        return {b"data": np.clip(img, 0, 255).astype(np.uint8).reshape(n, 3072), label_key: labels.tolist()}

    per = -(-n_train // len(train_files))
    for f in train_files:
        with (base / f).open("wb") as fh:
            pickle.dump(batch(per), fh)
    for f in test_files:
        with (base / f).open("wb") as fh:
            pickle.dump(batch(n_test), fh)
    with (base / meta_file).open("wb") as fh:
        pickle.dump({names_key: [f"class{i}".encode() for i in range(k)]}, fh)
    return base
