"""ID data of one's own, wherever a config names a dataset (``data.dataset``), and the validation
outliers one knows (``data.val_near`` / ``data.val_far``).

- ``folder:ROOT``: the ImageFolder layout, ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` (image
  files, searched recursively inside each class folder); the classes are the folder names, sorted.
- ``npz:FILE``: arrays ``train_images``, ``train_labels``, ``test_images``, ``test_labels`` (images uint8
  N×H×W or N×H×W×C, or float in [0, 1]; labels integers 0..K-1), optionally ``classes`` (K names).

The validation split is carved from the training images (``data.val_size``: a count or a fraction),
seeded like every ID dataset's (:func:`unleash_ood.data.split_indices`). The model input is
``data.image_size`` × ``data.channels``; unset, it is inferred when every training image has one size
(and one channel count; mixed gray and colour give 3 channels). Images of another size are resized by
the one conversion (:func:`unleash_ood.data.images.to_image_format`: shorter side, then a center crop),
and :attr:`IDData.preprocessing` records what was done. Files are decoded by the one decoder
(:func:`unleash_ood.data.images.read_image`), in a ``DataLoader`` with ``data.workers`` processes
(:class:`FolderImages`), once. The decoded splits take N×C×H×W×4 bytes (:class:`Storage`): up to
``data.max_memory_gb`` they are held in memory; above it (or with ``data.storage=disk``) they go to a
memory-mapped file in ``data.cache_dir``, which training and evaluation read batch by batch, so memory
holds what the OS caches, not the dataset. ``data.normalize`` gives the model's input normalization
(:func:`normalization`), which lives inside the model.
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import DataConfig, data_root, is_own_dataset
from ..errors import UserError
from . import IDData, _check_id_classes, load_id_data, split_indices
from .images import (
    IMAGE_EXTENSIONS,
    image_files,
    image_header,
    load_image,
    open_npz,
    to_image_format,
)
from .specs import parse_spec
from .suite import load_ood_sets

NPZ_KEYS: tuple[str, ...] = ("train_images", "train_labels", "test_images", "test_labels")
OWN_FORMS = ("folder:ROOT (ROOT/train/<class>/*, ROOT/test/<class>/*) or npz:FILE (train_images, "
             "train_labels, test_images, test_labels[, classes])")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IMAGENET_GRAY: tuple[float, float] = (0.449, 0.226)  # the three channels' averages, for 1-channel input
# automatic data.workers: half the cores (at most 8) from this many files on 4 or more cores, else none
# (on 2 busy cores, 4,000 small PNGs decoded in 1.8 s in-process and 2.5 s with 2 workers)
AUTO_WORKERS_FROM = 2048
_DECODE_BATCH = 64
_CONVERT_BATCH = 1024
_STD_EPS = 1e-6


def load_data(cfg: DataConfig) -> IDData:
    """The ID data a data config names: a built-in dataset (:func:`unleash_ood.data.load_id_data`) or
    one's own (``folder:``/``npz:``, :func:`load_own_data`), with ``data.normalize`` resolved."""
    if is_own_dataset(cfg.dataset):
        return load_own_data(cfg)
    data = load_id_data(cfg.dataset, cfg.data_root, cfg.val_size, cfg.train_size, cfg.test_size, cfg.seed,
                        cfg.download, cfg.id_classes)
    if cfg.image_size is not None or cfg.channels is not None:
        c, h, w = data.image_shape
        shape = (cfg.channels or c, *(cfg.image_size or (h, w)))
        data.train, data.val, data.test = ((to_image_format(x, shape, source=data.name), y)
                                           for x, y in (data.train, data.val, data.test))
        if data.heldout is not None:
            data.heldout = to_image_format(data.heldout, shape, source=data.name)
        data.preprocessing = {"input": {"channels": shape[0], "image_size": list(shape[1:])},
                              "converted_from": [c, h, w]}
    if cfg.normalize is not None:
        data.normalization = normalization(cfg.normalize, data.train[0])
    return data


# --------------------------------------------------------------------------- one's own ID data


@dataclass
class Listing:
    """An own dataset before its images are decoded: labels, and per image either a file or an array row."""

    name: str
    classes: tuple[str, ...]
    train_labels: np.ndarray
    test_labels: np.ndarray
    train_files: list[Path] | None = None  # folder:
    test_files: list[Path] | None = None
    train_array: np.ndarray | None = None  # npz:
    test_array: np.ndarray | None = None


def load_own_data(cfg: DataConfig) -> IDData:
    """``folder:ROOT`` or ``npz:FILE`` as :class:`IDData` (see the module docstring); every mistake in
    the data is one :class:`UserError` naming the file or folder, raised before any image is decoded
    where the listing already shows it."""
    kind, _, value = cfg.dataset.partition(":")
    if not value.strip():
        raise UserError(f"data.dataset={cfg.dataset!r}: missing path after '{kind}:'; use {OWN_FORMS}")
    path = Path(value.strip()).expanduser()
    listing = list_folder(path) if kind.strip().lower() == "folder" else list_npz(path)
    train_labels, test_labels, classes = listing.train_labels, listing.test_labels, listing.classes
    train_keep, test_keep, heldout_idx = np.arange(len(train_labels)), np.arange(len(test_labels)), None
    if cfg.id_classes is not None:  # the open-set protocol, as for the built-in datasets
        keep = _check_id_classes(cfg.id_classes, len(classes)).numpy()
        lookup = np.full(len(classes), -1, dtype=np.int64)
        lookup[keep] = np.arange(len(keep))
        heldout_idx = np.flatnonzero(~np.isin(test_labels, keep))
        train_keep, test_keep = np.flatnonzero(np.isin(train_labels, keep)), np.flatnonzero(np.isin(test_labels, keep))
        train_labels, test_labels = lookup[train_labels[train_keep]], lookup[test_labels[test_keep]]
        classes = tuple(classes[c] for c in cfg.id_classes)
    try:
        split = split_indices(len(train_labels), len(test_labels), cfg.val_size, cfg.train_size, cfg.test_size,
                              cfg.seed)
    except UserError as e:  # e.g. --quick's subset sizes on a small dataset
        raise UserError(f"{listing.name} ({len(train_labels)} training, {len(test_labels)} test images): data.{e}; "
                        "e.g. data.val_size=0.1 data.train_size=null data.test_size=null (every image)") from None
    pool, val_idx, test_idx = (i.numpy() if i is not None else None for i in split)
    test_idx = np.arange(len(test_labels)) if test_idx is None else test_idx
    parts = {"train": (train_keep[pool], "train"), "val": (train_keep[val_idx], "train"),
             "test": (test_keep[test_idx], "test")}
    if heldout_idx is not None:
        parts["heldout"] = (heldout_idx, "test")
    reader = _FolderReader(listing, cfg) if listing.train_files is not None else _ArrayReader(listing, cfg)
    storage = Storage.choose(listing.name, {k: len(idx) for k, (idx, _) in parts.items()}, reader.shape, cfg)
    images = {k: reader.decode(idx, split, k, storage.empty(len(idx))) for k, (idx, split) in parts.items()}
    labels = {"train": train_labels[pool], "val": train_labels[val_idx], "test": test_labels[test_idx]}
    data = IDData(listing.name, *((images[k], torch.from_numpy(labels[k]).long()) for k in ("train", "val", "test")),
                  classes=classes, heldout=images.get("heldout"))
    data.normalization = normalization(cfg.normalize or "dataset", data.train[0])
    data.preprocessing = {**reader.note(parts), "storage": storage.note(),
                          "normalize": {"from": _normalize_name(cfg.normalize), **data.normalization}}
    return data


def list_folder(root: Path) -> Listing:
    """``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``: the files and labels (classes sorted)."""
    if not root.is_dir():
        raise UserError(f"ID folder {root} does not exist or is not a folder; use {OWN_FORMS}")
    splits = {}
    for split in ("train", "test"):
        top = root / split
        if not top.is_dir():
            raise UserError(f"ID folder {root} has no {split}/ folder: use ROOT/train/<class>/* and "
                            "ROOT/test/<class>/*")
        loose = [p for p in top.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if loose:
            raise UserError(f"{top} holds image files outside class folders (e.g. {loose[0].name}): "
                            f"put each image in {top}/<class>/")
        splits[split] = {d.name: d for d in top.iterdir() if d.is_dir() and not d.name.startswith(".")}
    classes = sorted(splits["train"])
    only_test, only_train = sorted(set(splits["test"]) - set(classes)), sorted(set(classes) - set(splits["test"]))
    if only_test:
        raise UserError(f"{root / 'test'}: class folder(s) {', '.join(only_test)} only in test, not in "
                        f"{root / 'train'}: the test classes must be the training classes")
    if only_train:
        raise UserError(f"{root / 'test'} lacks class folder(s) {', '.join(only_train)} of {root / 'train'}: "
                        "the test classes must be the training classes")
    if len(classes) < 2:
        raise UserError(f"{root / 'train'} has {len(classes)} class folder(s): a classifier needs at least 2")
    files: dict[str, list[Path]] = {"train": [], "test": []}
    labels: dict[str, list[int]] = {"train": [], "test": []}
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            found = image_files(splits[split][name])
            if not found:
                raise UserError(f"class folder {splits[split][name]} has no image files "
                                f"({', '.join(IMAGE_EXTENSIONS)})")
            files[split] += found
            labels[split] += [c] * len(found)
    return Listing(f"folder:{root}", tuple(classes), np.asarray(labels["train"], np.int64),
                   np.asarray(labels["test"], np.int64), train_files=files["train"], test_files=files["test"])


def list_npz(path: Path) -> Listing:
    """The arrays of an ``npz:`` dataset, checked: the four keys, integer labels in range, one label per image."""
    if not path.is_file():
        raise UserError(f"ID file {path} does not exist or is not a file; use {OWN_FORMS}")
    with open_npz(path, ", ".join(NPZ_KEYS)) as loaded:
        missing = [k for k in NPZ_KEYS if k not in loaded.files]
        if missing:
            raise UserError(f"{path} lacks array(s) {', '.join(missing)} (found: {', '.join(loaded.files) or 'none'}); "
                            f"an ID .npz needs {', '.join(NPZ_KEYS)}, optionally classes")
        try:
            arrays = {k: loaded[k] for k in (*NPZ_KEYS, *(["classes"] if "classes" in loaded.files else []))}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f"cannot read the arrays of {path}: {e}") from None
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3, 4)) or len(x) == 0:
            raise UserError(f"{path}: {split}_images must be N×H×W or N×H×W×C (C 1, 3 or 4) with N ≥ 1; "
                            f"got shape {x.shape}")
        if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(x):
            raise UserError(f"{path}: {split}_labels must be {len(x)} integers (one per image); "
                            f"got shape {y.shape}, dtype {y.dtype}")
    train_y, test_y = arrays["train_labels"].astype(np.int64), arrays["test_labels"].astype(np.int64)
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1 or names.dtype.kind not in "USiu":
            raise UserError(f"{path}: classes must be a 1-D array of names; got shape {names.shape}, "
                            f"dtype {names.dtype}")
        classes = tuple(str(c) for c in names)
        if len(set(classes)) != len(classes):
            raise UserError(f"{path}: classes names a class twice")
    else:
        classes = tuple(str(c) for c in range(int(train_y.max()) + 1 if train_y.min() >= 0 else 0))
    for split, y in (("train", train_y), ("test", test_y)):
        bad = y[(y < 0) | (y >= len(classes))]
        if len(bad) or not classes:
            raise UserError(f"{path}: {split}_labels hold {int(bad[0]) if len(bad) else int(y.min())}, outside "
                            f"0..{len(classes) - 1} ({len(classes)} classes"
                            f"{', from classes' if 'classes' in arrays else ', from train_labels'})")
    empty = [c for c in range(len(classes)) if not (train_y == c).any()]
    if empty:
        raise UserError(f"{path}: class(es) {', '.join(classes[c] for c in empty[:5])} have no training images")
    if len(classes) < 2:
        raise UserError(f"{path}: {len(classes)} class: a classifier needs at least 2")
    return Listing(f"npz:{path}", classes, train_y, test_y, train_array=arrays["train_images"],
                   test_array=arrays["test_images"])


def _infer_shape(name: str, cfg: DataConfig, sizes: collections.Counter, channels: collections.Counter
                 ) -> tuple[tuple[int, int, int], list[str]]:
    """The model input (C, H, W) from the config, else from the training images' sizes / channel counts."""
    inferred = []
    if cfg.image_size is not None:
        height, width = cfg.image_size
    elif len(sizes) == 1:
        (height, width), = sizes
        inferred.append("image_size")
    else:
        found = ", ".join(f"{h}×{w} ({n})" for (h, w), n in sizes.most_common(3))
        more = ", …" if len(sizes) > 3 else ""
        raise UserError(f"{name}: the training images have {len(sizes)} sizes ({found}{more}); set "
                        "data.image_size=[H, W] (images are then resized: shorter side, center crop)")
    if cfg.channels is not None:
        c = cfg.channels
    else:
        c = 3 if 3 in channels else 1
        inferred.append("channels")
    return (c, height, width), inferred


class _FolderReader:
    """Decodes selected files of a ``folder:`` listing; headers first (sizes, channels), nothing decoded."""

    def __init__(self, listing: Listing, cfg: DataConfig) -> None:
        self.listing, self.workers = listing, cfg.workers
        self.files = {"train": listing.train_files or [], "test": listing.test_files or []}
        self.headers = {split: [image_header(p) for p in tqdm(files, desc=f"checking {split}", unit="img",
                                                              disable=len(files) < AUTO_WORKERS_FROM, leave=False)]
                        for split, files in self.files.items()}
        train = self.headers["train"]
        self.sizes = collections.Counter((h, w) for h, w, _ in train)
        self.channels = collections.Counter(c for _, _, c in train)
        self.shape, self.inferred = _infer_shape(listing.name, cfg, self.sizes, self.channels)

    def decode(self, idx: np.ndarray, split: str, part: str, out: torch.Tensor) -> torch.Tensor:
        files = [self.files[split][i] for i in idx]
        cores = os.cpu_count() or 1
        workers = self.workers if self.workers is not None else (
            min(8, cores // 2) if len(files) >= AUTO_WORKERS_FROM and cores >= 4 else 0)
        return decode_files(files, self.shape, workers, desc=f"reading {part}", out=out)

    def note(self, parts: dict[str, tuple[np.ndarray, str]]) -> dict:
        c, h, w = self.shape
        resized = {k: sum(self.headers[s][i][:2] != (h, w) for i in idx) for k, (idx, s) in parts.items()}
        converted = {k: sum(self.headers[s][i][2] != c for i in idx) for k, (idx, s) in parts.items()}
        sizes = {f"{sh}x{sw}": n for (sh, sw), n in self.sizes.most_common(5)}
        return _note("folder", self.shape, self.inferred, sizes, dict(self.channels), resized, converted,
                     {k: len(i) for k, (i, _) in parts.items()})


class _ArrayReader:
    """Converts selected rows of an ``npz:`` listing's arrays."""

    def __init__(self, listing: Listing, cfg: DataConfig) -> None:
        self.listing = listing
        self.arrays = {"train": listing.train_array, "test": listing.test_array}
        x = listing.train_array
        channels = 1 if x.ndim == 3 or x.shape[-1] == 1 else 3
        self.found = {split: (a.shape[1:3], 1 if a.ndim == 3 or a.shape[-1] == 1 else 3)
                      for split, a in self.arrays.items()}
        self.shape, self.inferred = _infer_shape(listing.name, cfg, collections.Counter([x.shape[1:3]]),
                                                 collections.Counter([channels]))

    def decode(self, idx: np.ndarray, split: str, part: str, out: torch.Tensor) -> torch.Tensor:
        source = f"{self.listing.name} ({split}_images)"
        for start in range(0, len(idx), _CONVERT_BATCH):  # in chunks: only ``out`` holds every image
            rows = idx[start:start + _CONVERT_BATCH]
            out[start:start + len(rows)] = to_image_format(self.arrays[split][rows], self.shape, source=source)
        return out

    def note(self, parts: dict[str, tuple[np.ndarray, str]]) -> dict:
        c, h, w = self.shape
        (th, tw), tc = self.found["train"]
        resized = {k: len(idx) * (tuple(self.found[s][0]) != (h, w)) for k, (idx, s) in parts.items()}
        converted = {k: len(idx) * (self.found[s][1] != c) for k, (idx, s) in parts.items()}
        return _note("npz", self.shape, self.inferred, {f"{th}x{tw}": len(self.listing.train_labels)},
                     {tc: len(self.listing.train_labels)},
                     resized, converted, {k: len(i) for k, (i, _) in parts.items()})


def _note(layout: str, shape, inferred, sizes, channels, resized, converted, counts) -> dict:
    c, h, w = shape
    note = {"layout": layout, "input": {"channels": c, "image_size": [h, w], "inferred": inferred},
            "images": counts, "train_sizes": sizes, "train_channels": {str(k): v for k, v in channels.items()}}
    if any(resized.values()):
        note["resized"] = {"how": "shorter side to fit, bilinear antialiased, then center crop",
                           **{k: int(v) for k, v in resized.items() if v}}
    if any(converted.values()):
        note["channels_converted"] = {"how": "RGB→gray by luminance" if c == 1 else "gray→RGB by replication",
                                      **{k: int(v) for k, v in converted.items() if v}}
    return note


@dataclass(frozen=True)
class Storage:
    """Where the decoded splits live: ``memory``, or ``disk`` (memory-mapped files in ``directory``)."""

    kind: str
    shape: tuple[int, int, int]
    nbytes: int
    directory: Path | None = None

    @classmethod
    def choose(cls, name: str, counts: dict[str, int], shape: tuple[int, int, int], cfg: DataConfig) -> Storage:
        """``data.storage`` for splits of ``counts`` images (N×C×H×W×4 bytes); ``auto``: memory up to
        ``data.max_memory_gb``, else disk. One :class:`UserError` before decoding where neither fits."""
        n = sum(counts.values())
        need = n * int(np.prod(shape)) * 4
        c, h, w = shape
        size = f"{name}: {n:,} images at {c}×{h}×{w} take {need / 1e9:.2f} GB decoded (N×C×H×W×4 bytes)"
        kind = cfg.storage if cfg.storage != "auto" else ("memory" if need <= cfg.max_memory_gb * 1e9 else "disk")
        if kind == "memory":
            if need > cfg.max_memory_gb * 1e9:
                raise UserError(f"{size}, above data.max_memory_gb={cfg.max_memory_gb:g}; use data.storage=auto "
                                "or disk (a memory-mapped file), a smaller data.image_size or data.train_size, "
                                "or raise data.max_memory_gb")
            return cls("memory", shape, need)
        directory = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else data_root(cfg.data_root) / "decoded"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(directory).free
        except OSError as e:
            raise UserError(f"data.cache_dir {directory}: cannot use it for the decoded images ({e.strerror or e})") from None
        if need > free:
            raise UserError(f"{size}, more than the {free / 1e9:.2f} GB free in {directory}; set data.cache_dir "
                            "to a larger disk, or a smaller data.image_size or data.train_size")
        return cls("disk", shape, need, directory)

    def empty(self, n: int) -> torch.Tensor:
        """An uninitialized float32 n×C×H×W tensor, in memory or memory-mapped."""
        if self.kind == "memory" or n == 0:
            return torch.empty((n, *self.shape), dtype=torch.float32)
        fd, name = tempfile.mkstemp(prefix="decoded-", suffix=".f32", dir=self.directory)
        try:
            os.close(fd)
            array = np.memmap(name, dtype=np.float32, mode="w+", shape=(n, *self.shape))
        except OSError as e:
            raise UserError(f"cannot map {name} for the decoded images ({e.strerror or e})") from None
        finally:
            os.unlink(name)  # the mapping stays valid; the space is freed when the process lets go of it
        return torch.from_numpy(array)

    def note(self) -> dict:
        out = {"kind": self.kind, "decoded_gb": round(self.nbytes / 1e9, 3)}
        if self.directory is not None:
            out["memory_mapped_in"] = str(self.directory)
        return out


# --------------------------------------------------------------------------- decoding files


class FolderImages(Dataset):
    """Image files with their labels as a torch ``Dataset``, decoded on access by the one decoder into
    the ID format (``image_shape`` (C, H, W), :func:`unleash_ood.data.images.load_image`).

    With a ``DataLoader`` (``num_workers``) it streams from disk: the Python API takes any iterable of
    ``(x, y)`` batches. A file that cannot be read raises :class:`UserError` naming it."""

    def __init__(self, files: list[Path], labels: list[int] | np.ndarray | None,
                 image_shape: tuple[int, int, int]) -> None:
        self.files, self.image_shape = list(files), tuple(image_shape)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        x = load_image(self.files[i], self.image_shape)
        return x if self.labels is None else (x, int(self.labels[i]))


class _Decoding(FolderImages):
    """:class:`FolderImages` that hands a worker's :class:`UserError` back as a message (a DataLoader
    would re-raise it with the worker's traceback in the message)."""

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        try:
            return load_image(self.files[i], self.image_shape), ""
        except UserError as e:
            return torch.zeros(self.image_shape), str(e)


def _collate(items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    return torch.stack([x for x, _ in items]), [e for _, e in items if e]


def decode_files(files: list[Path], image_shape: tuple[int, int, int], workers: int = 0,
                 desc: str = "reading", out: torch.Tensor | None = None) -> torch.Tensor:
    """Every file decoded into one float32 N×C×H×W tensor (``out`` where given, e.g. memory-mapped), in
    order, by ``workers`` processes (0: this one); the first unreadable file is one :class:`UserError`
    naming it."""
    out = torch.empty((len(files), *image_shape), dtype=torch.float32) if out is None else out
    if not files:
        return out
    loader = DataLoader(_Decoding(files, None, image_shape), batch_size=_DECODE_BATCH, num_workers=workers,
                        collate_fn=_collate, generator=torch.Generator())  # the global RNG stays untouched
    start = 0
    for batch, errors in tqdm(loader, desc=desc, unit="batch", disable=len(files) < AUTO_WORKERS_FROM, leave=False):
        if errors:
            raise UserError(errors[0])
        out[start:start + len(batch)] = batch
        start += len(batch)
    return out


# --------------------------------------------------------------------------- normalization


def normalization(spec: str | dict, train: torch.Tensor) -> dict[str, list[float]]:
    """``{"mean": [...], "std": [...]}``, one value per channel of ``train`` (N×C×H×W in [0, 1]):
    ``dataset`` measures them on ``train``; ``imagenet`` is torchvision's ImageNet statistics (their
    averages for 1 channel); a mapping gives them (one value is repeated per channel)."""
    channels = train.shape[1]
    if spec == "dataset":
        total = torch.zeros(channels, dtype=torch.float64)
        squares = torch.zeros(channels, dtype=torch.float64)
        for start in range(0, len(train), 256):  # float64 sums in chunks: a small transient
            chunk = train[start:start + 256].double()
            total += chunk.sum(dim=(0, 2, 3))
            squares += chunk.square().sum(dim=(0, 2, 3))
        count = len(train) * train.shape[2] * train.shape[3]
        mean = total / count
        std = (squares / count - mean.square()).clamp_min(0).sqrt()
        if (std < _STD_EPS).any():
            raise UserError("data.normalize=dataset: a channel of the training images is constant (std 0); "
                            "give data.normalize=[[mean...], [std...]]")
        return {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]}
    if spec == "imagenet":
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((IMAGENET_GRAY[0],), (IMAGENET_GRAY[1],))
        return {"mean": list(mean), "std": list(std)}
    out = {}
    for key in ("mean", "std"):
        values = list(spec[key])
        if len(values) not in (1, channels):
            raise UserError(f"data.normalize: {key} has {len(values)} values, the input has {channels} channel(s)")
        out[key] = [float(v) for v in values] * (channels if len(values) == 1 else 1)
    return out


def _normalize_name(spec) -> str:
    return spec if isinstance(spec, str) else ("given" if spec is not None else "dataset")


# --------------------------------------------------------------------------- validation outliers


def load_val_outliers(cfg: DataConfig, image_shape: tuple[int, int, int], test_specs: list[str],
                      heldout: torch.Tensor | None = None) -> dict[str, tuple[str, torch.Tensor]]:
    """``data.val_near`` / ``data.val_far`` as ``{group: (name, images)}`` in the ID format (each group's
    sets concatenated, ``data.val_ood_size`` per built-in set); a spec that is also an OOD test set is
    refused (selection never touches a test set)."""
    tests = {_spec_key(s) for s in test_specs}
    out = {}
    for group, specs in (("near", cfg.val_near), ("far", cfg.val_far)):
        if not specs:
            continue
        for spec in specs:
            if _spec_key(spec) in tests:
                raise UserError(f"data.val_{group} lists {spec!r}, which is also an OOD test set: validation "
                                "OOD must not be a test set")
        sets = load_ood_sets(list(specs), cfg.dataset, cfg.data_root, image_shape, n=cfg.val_ood_size,
                             seed=cfg.seed, download=cfg.download, heldout=heldout)
        out[group] = (" + ".join(sets), torch.cat(list(sets.values())))
    return out


def _spec_key(spec: str) -> tuple[str, str]:
    """A spec as compared for identity: a name lower-cased, a path resolved."""
    try:
        kind, value = parse_spec(spec)
    except UserError:  # e.g. a CIFAR suite name, which only the suite knows
        return "name", spec.strip().lower()
    return (kind, value) if kind == "builtin" else (kind, str(Path(value).expanduser().resolve()))


__all__ = ["FolderImages", "Listing", "Storage", "decode_files", "list_folder", "list_npz", "load_data", "load_own_data",
           "load_val_outliers", "normalization"]
