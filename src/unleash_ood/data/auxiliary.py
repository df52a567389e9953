"""The auxiliary-outlier pool (D_aux) from a spec, sampled with a seed and recorded.

Specs (``outliers.aux``):

* ``builtin`` — :func:`unleash_ood.data.auxpool.load_auxiliary_pool` (generated; disjoint from every
  built-in OOD test set). The default.
* ``npz:PATH`` — the ``images`` array of an .npz file; ``folder:PATH`` — image files under a folder
  (recursively). ``n`` of them sampled without replacement.
* ``imagenet64:DIR`` — downsampled ImageNet 64×64 (the paper's source): pickle batches
  ``DIR/train_data_batch_1`` … ``_10``, each a dict with ``data`` (uint8 N×12288, channel-planar
  R, G, B planes of 64×64) and ``labels``. ``n`` images sampled uniformly without replacement over all
  batches, each randomly cropped to 32×32 (the paper: 50,000 images, random 32×32 crops).
* ``tinyimages300k:PATH`` — pytorch-ood's TinyImages-300k, one .npy file 300000×32×32×3 uint8
  (read memory-mapped, no pickle).

A path may start with ``{data_root}``: it is replaced by the run's data root (``data.data_root``, default
``~/.cache/unleash-ood``), e.g. ``imagenet64:{data_root}/imagenet64``.

Every loader returns ``(pool, record)``: the pool as float32 N×C×H×W in [0, 1] for ``image_shape``, and a
record ``{spec, kind, path, pool_size, n, seed, indices[, crops]}`` — ``pool_size`` is the size of the
source before sampling, ``indices`` (int64, one per pool row) the sampled positions in it (for
``imagenet64``: global positions over the batches in file order; ``crops``: the (top, left) of each
32×32 crop). ``aux_record_json`` drops the tensors for JSON.

Security: the ImageNet-64 batches are pickles, and unpickling an untrusted file can run arbitrary
code. They are read with a restricted unpickler that only reconstructs numpy arrays/dtypes and plain
Python containers; anything else is refused.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import AUX_KINDS, parse_aux_spec
from ..errors import UserError
from . import suite
from .auxpool import load_auxiliary_pool
from .images import check_count, check_image_shape, image_files, local_rng, read_image, to_image_format
from .specs import load_npz

IMAGENET64_SIZE = 64
CROP = 32
_IMAGENET64_STREAM = 2000
_SAMPLE_STREAM = 2001
_BATCH_RE = re.compile(r"^train_data_batch_(\d+)$")
# what the restricted unpickler may build: numpy arrays, dtypes, scalars (old `numpy.core` and new
# `numpy._core` module names)
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store an array's bytes (str → bytes)
}


# --------------------------------------------------------------------------- specs


def _name(path: Path) -> str:
    path = path.resolve()
    return (path.stem if path.suffix else path.name).lower()


def _overlaps(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def check_aux_overlap(spec: str, ood_specs: Sequence[str], data_root: str | Path | None = None,
                      dataset: str | None = None) -> None:
    """Refuse an auxiliary pool that could overlap an OOD test set of the run: its path equal to, inside or
    containing an OOD set's path (``npz:``/``folder:`` specs, and suite sets found under the data root),
    or its name (file stem / folder name) equal to an OOD set's name. ``builtin`` never overlaps."""
    kind, path = parse_aux_spec(spec, data_root)
    if path is None:
        return

    aux_name = _name(path)
    for ood in ood_specs:
        ood_kind, sep, value = ood.partition(":")
        ood_paths: list[Path] = []
        if sep and ood_kind in ("npz", "folder") and value.strip():
            ood_path = Path(value.strip()).expanduser()
            ood_paths.append(ood_path)
            names = {_name(ood_path)}
        else:
            names = {ood.strip().lower()}
            if suite.is_suite_name(ood) and (dataset is None or suite.uses_suite(dataset=dataset)):
                found = suite.present(ood.strip().lower(), data_root)
                if found is not None:
                    ood_paths.append(found)
                ood_paths.append(suite.location(ood.strip().lower(), data_root))
        hit = next((p for p in ood_paths if _overlaps(path, p)), None)
        if hit is not None or aux_name in names:
            why = f"path {path} overlaps {hit}" if hit is not None else f"both are named {aux_name!r}"
            raise UserError(f"auxiliary-outlier pool {spec!r} overlaps the OOD test set {ood!r} ({why}): "
                            "the pool must not overlap the OOD test sets")


def check_aux_source(spec: str, data_root: str | Path | None = None) -> None:
    """The source of a spec exists (before any training); cheap, reads no images."""
    kind, path = parse_aux_spec(spec, data_root)
    if path is None:
        return
    if kind == "folder" and not path.is_dir():
        raise UserError(f"auxiliary-outlier folder {path} does not exist or is not a folder")
    if kind in ("npz", "tinyimages300k") and not path.is_file():
        raise UserError(f"auxiliary-outlier file {path} does not exist")
    if kind == "imagenet64":
        _imagenet64_files(path)


# --------------------------------------------------------------------------- loading


def load_aux_pool(spec: str = "builtin", image_shape: tuple[int, int, int] = (1, 28, 28), n: int = 5000,
                  seed: int = 0, data_root: str | Path | None = None) -> tuple[torch.Tensor, dict]:
    """The auxiliary pool of ``n`` images for ``spec`` (see the module docstring) and its sampling record."""
    image_shape = check_image_shape(image_shape)
    check_count(n, "n")
    kind, path = parse_aux_spec(spec, data_root)
    record: dict = {"spec": str(spec), "kind": kind, "path": None if path is None else str(path), "n": int(n),
                    "seed": int(seed)}
    if kind == "builtin":
        pool = load_auxiliary_pool(image_shape, n=n, seed=seed)
        record.update(pool_size=n, indices=torch.arange(n))
        return pool, record
    assert path is not None
    check_aux_source(spec, data_root)
    if kind == "npz":
        images = load_npz(path, image_shape)
        idx = _sample(len(images), n, seed, spec)
        pool = images[torch.from_numpy(idx)]
        size = len(images)
    elif kind == "folder":
        files = image_files(path)
        if not files:
            raise UserError(f"auxiliary-outlier folder {path} has no image files")
        size = len(files)
        idx = _sample(size, n, seed, spec)
        pool = torch.cat([to_image_format(read_image(files[i])[None], image_shape, source=str(files[i]))
                          for i in idx])
    elif kind == "tinyimages300k":
        pool, idx, size = _tinyimages(path, image_shape, n, seed, spec)
    else:
        pool, idx, crops, size = _imagenet64(path, image_shape, n, seed, spec)
        record["crops"] = torch.from_numpy(crops)
    record.update(pool_size=int(size), indices=torch.from_numpy(np.asarray(idx, dtype=np.int64)))
    return pool, record


def aux_record_json(record: dict) -> dict:
    """The record without its tensors (they go to ``aux_subset.safetensors``)."""
    return {k: v for k, v in record.items() if not isinstance(v, torch.Tensor)}


def _sample(size: int, n: int, seed: int, spec: str) -> np.ndarray:
    """``n`` of ``range(size)`` without replacement, seeded, sorted."""
    if n > size:
        raise UserError(f"auxiliary-outlier pool {spec!r} has {size} images, fewer than the {n} asked for "
                        "(lower outliers.aux_size)")
    return np.sort(local_rng(seed, _SAMPLE_STREAM).choice(size, size=n, replace=False))


def _tinyimages(path: Path, image_shape, n: int, seed: int, spec: str) -> tuple[torch.Tensor, np.ndarray, int]:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"cannot read {path} as a .npy array (TinyImages-300k: N×32×32×3 uint8): {e}") from None
    if not isinstance(array, np.ndarray) or array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise UserError(f"{path}: expected an N×H×W×3 uint8 array (TinyImages-300k), got "
                        f"{getattr(array, 'shape', '?')} {getattr(array, 'dtype', '?')}")
    idx = _sample(len(array), n, seed, spec)
    return to_image_format(np.asarray(array[idx]), image_shape, source=str(path)), idx, len(array)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists of numpy arrays; refuses every other global (no code execution)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only numpy arrays are allowed)")


def read_imagenet64_batch(path: Path) -> np.ndarray:
    """The ``data`` array (uint8 N×12288) of one ImageNet-64 batch, via the restricted unpickler."""
    try:
        with path.open("rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as e:
        raise UserError(f"cannot read ImageNet-64 batch {path}: {e}") from None
    if not isinstance(d, dict):
        raise UserError(f"ImageNet-64 batch {path} is not a dict")
    data = d.get("data", d.get(b"data"))
    side = IMAGENET64_SIZE * IMAGENET64_SIZE * 3
    data = None if data is None else np.asarray(data)
    if data is None or data.ndim != 2 or data.shape[1] != side or data.dtype != np.uint8:
        raise UserError(f"ImageNet-64 batch {path}: expected 'data' uint8 N×{side}, got "
                        f"{None if data is None else (data.shape, data.dtype)}")
    return data


def _imagenet64_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"ImageNet-64 folder {folder} does not exist (expected train_data_batch_1..10 in it; "
                        "the 'Imagenet64_train' download of image-net.org's downsampled ImageNet)")
    files = sorted((p for p in folder.iterdir() if _BATCH_RE.match(p.name) and p.is_file()),
                   key=lambda p: int(_BATCH_RE.match(p.name).group(1)))  # type: ignore[union-attr]
    if not files:
        raise UserError(f"ImageNet-64 folder {folder} has no train_data_batch_<k> files")
    return files


def _imagenet64(folder: Path, image_shape, n: int, seed: int, spec: str
                ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, int]:
    """Uniform sample of ``n`` images over all batches in one pass (each image gets a seeded random key;
    the ``n`` smallest keys win), each with a seeded random 32×32 crop. Memory: the ``n`` crops."""
    keys = np.empty(0)
    idx = np.empty(0, dtype=np.int64)
    crops = np.empty((0, 2), dtype=np.int64)
    images = np.empty((0, CROP, CROP, 3), dtype=np.uint8)
    offset = 0
    for b, path in enumerate(_imagenet64_files(folder)):
        data = read_imagenet64_batch(path)
        rng = local_rng(seed, _IMAGENET64_STREAM + b)
        k = rng.random(len(data))
        pos = rng.integers(0, IMAGENET64_SIZE - CROP + 1, size=(len(data), 2))
        take = np.argsort(k, kind="stable")[:n]
        planar = data[take].reshape(-1, 3, IMAGENET64_SIZE, IMAGENET64_SIZE)
        cut = np.stack([planar[i, :, t:t + CROP, l:l + CROP] for i, (t, l) in enumerate(pos[take])]) \
            if len(take) else np.empty((0, 3, CROP, CROP), dtype=np.uint8)
        keys = np.concatenate([keys, k[take]])
        idx = np.concatenate([idx, take.astype(np.int64) + offset])
        crops = np.concatenate([crops, pos[take].astype(np.int64)])
        images = np.concatenate([images, cut.transpose(0, 2, 3, 1)])
        best = np.argsort(keys, kind="stable")[:n]
        keys, idx, crops, images = keys[best], idx[best], crops[best], images[best]
        offset += len(data)
        del data
    if n > offset:
        raise UserError(f"auxiliary-outlier pool {spec!r} has {offset} images, fewer than the {n} asked for "
                        "(lower outliers.aux_size)")
    order = np.argsort(idx)
    idx, crops, images = idx[order], crops[order], np.ascontiguousarray(images[order])
    return to_image_format(images, image_shape, source=str(folder)), idx, crops, offset


__all__ = ["AUX_KINDS", "aux_record_json", "check_aux_overlap", "check_aux_source",
           "load_aux_pool", "parse_aux_spec", "read_imagenet64_batch"]
