"""Fashion-MNIST loading (Debian files, explicit roots, errors), ID splits and patch-shuffled validation OOD."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import unleash_ood.data.fashion as fashion
from unleash_ood.data import load_id_data, patch_shuffle
from unleash_ood.data.fashion import load_fashion_mnist
from unleash_ood.errors import UserError


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """An IDX file (magic 0x0000 08 ndim, big-endian uint32 dims, uint8 data), gzipped if ``compress``."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


def write_fashion(root: Path, images: np.ndarray, labels: np.ndarray, train: bool = True,
                  compress: bool = True) -> None:
    prefix = "train" if train else "t10k"
    ext = ".gz" if compress else ""
    write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images, compress)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels, compress)


def id_coded_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random 28×28 images whose pixel (0, 0) holds the image's index + 1; label = index % 10."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(1, n + 1)
    return images, (np.arange(n) % 10).astype(np.uint8)


def ids(x: torch.Tensor) -> list[int]:
    return [int(v) - 1 for v in torch.round(x[:, 0, 0, 0] * 255)]


@pytest.fixture
def synthetic_root(tmp_path: Path) -> Path:
    root = tmp_path / "fm"
    write_fashion(root, *id_coded_images(100, 0), train=True)
    write_fashion(root, *id_coded_images(40, 1), train=False)
    return root


# ------------------------------------------------------------------------------ loading

def test_debian_files_full_dataset(fmnist_full) -> None:
    x, y, xt, yt = fmnist_full
    assert x.shape == (60000, 1, 28, 28) and xt.shape == (10000, 1, 28, 28)
    for images, labels in ((x, y), (xt, yt)):
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert float(images.min()) == 0.0 and float(images.max()) == 1.0
        assert torch.isfinite(images).all()
        assert sorted(labels.unique().tolist()) == list(range(10))
    assert torch.bincount(y).tolist() == [6000] * 10
    assert torch.bincount(yt).tolist() == [1000] * 10
    # values are k / 255
    k = x[:100] * 255
    assert torch.allclose(k, k.round(), atol=1e-4)
    # the Debian directory is the source
    assert (fashion.DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file()


def test_explicit_root_takes_precedence(fmnist_full, tmp_path: Path) -> None:
    x, y, _, _ = fmnist_full
    images = (x[:100, 0] * 255).round().to(torch.uint8).numpy()
    labels = y[:100].numpy().astype(np.uint8)
    write_fashion(tmp_path, images, labels)
    got_x, got_y = load_fashion_mnist(tmp_path, download=False)
    assert got_x.shape == (100, 1, 28, 28)
    assert torch.equal(got_x, x[:100]) and torch.equal(got_y, y[:100])
    # the test split is not in that root: it falls back to the Debian files
    xt, _ = load_fashion_mnist(tmp_path, train=False, download=False)
    assert len(xt) == 10000


def test_torchvision_layout_and_uncompressed_files(tmp_path: Path) -> None:
    images, labels = id_coded_images(12, 3)
    write_fashion(tmp_path / "FashionMNIST" / "raw", images, labels, compress=False)
    x, y = load_fashion_mnist(tmp_path, download=False)
    assert ids(x) == list(range(12))
    assert y.tolist() == labels.tolist()
    assert torch.equal((x[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(images))


def test_missing_data_explains_three_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fashion, "DEBIAN_DIR", tmp_path / "no-debian")
    with pytest.raises(UserError) as info:
        load_fashion_mnist(tmp_path / "empty", download=False)
    msg = str(info.value)
    assert "three ways" in msg
    assert "(1)" in msg and "(2)" in msg and "(3)" in msg
    assert "--data-root" in msg and "apt-get install dataset-fashion-mnist" in msg and "torchvision" in msg
    with pytest.raises(UserError, match="three ways"):
        load_fashion_mnist(None, train=False, download=False)


def test_corrupt_gz_names_the_file(tmp_path: Path) -> None:
    images, labels = id_coded_images(10, 0)
    write_fashion(tmp_path, images, labels)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(b"this is not gzip data at all" * 10)
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz") as info:
        load_fashion_mnist(tmp_path, download=False)
    assert "corrupt" in str(info.value)


def test_truncated_gz_and_inconsistent_files(tmp_path: Path) -> None:
    images, labels = id_coded_images(10, 0)
    write_fashion(tmp_path, images, labels)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz"):
        load_fashion_mnist(tmp_path, download=False)
    # valid gzip, but fewer bytes than the header promises
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, 10, 28, 28) + b"\x00" * 100)
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz"):
        load_fashion_mnist(tmp_path, download=False)
    # images and labels of different lengths
    write_idx(path, images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels[:7])
    with pytest.raises(UserError, match="corrupt"):
        load_fashion_mnist(tmp_path, download=False)


# ------------------------------------------------------------------------------ ID splits

def test_load_id_data_splits_disjoint_and_seeded(synthetic_root: Path) -> None:
    data = load_id_data(data_root=str(synthetic_root), val_size=20, seed=0)
    assert data.name == "fashion_mnist" and data.num_classes == 10 and data.image_shape == (1, 28, 28)
    train_ids, val_ids, test_ids = ids(data.train[0]), ids(data.val[0]), ids(data.test[0])
    assert len(train_ids) == 80 and len(val_ids) == 20 and len(test_ids) == 40
    assert not set(train_ids) & set(val_ids)
    assert set(train_ids) | set(val_ids) == set(range(100))
    assert test_ids == list(range(40))  # full test split, in order
    # images and labels stay paired through the shuffle
    for (x, y) in (data.train, data.val, data.test):
        assert y.tolist() == [i % 10 for i in ids(x)]
    # the split is shuffled, not the first/last 20
    assert sorted(val_ids) != list(range(20)) and sorted(val_ids) != list(range(80, 100))

    again = load_id_data(data_root=str(synthetic_root), val_size=20, seed=0)
    assert ids(again.val[0]) == val_ids and ids(again.train[0]) == train_ids
    other = load_id_data(data_root=str(synthetic_root), val_size=20, seed=1)
    assert set(ids(other.val[0])) != set(val_ids)


def test_load_id_data_sizes(synthetic_root: Path) -> None:
    full = load_id_data(data_root=str(synthetic_root), val_size=20, seed=0)
    data = load_id_data(data_root=str(synthetic_root), val_size=20, train_size=30, test_size=10, seed=0)
    assert len(data.train[0]) == len(data.train[1]) == 30
    assert len(data.val[0]) == 20 and len(data.test[0]) == 10
    # the validation split is the same whatever train_size/test_size select
    assert ids(data.val[0]) == ids(full.val[0])
    assert not set(ids(data.train[0])) & set(ids(data.val[0]))
    assert set(ids(data.train[0])) <= set(ids(full.train[0]))
    test_ids = ids(data.test[0])
    assert len(set(test_ids)) == 10 and set(test_ids) <= set(range(40))
    assert data.test[1].tolist() == [i % 10 for i in test_ids]
    no_val = load_id_data(data_root=str(synthetic_root), val_size=0, seed=0)
    assert len(no_val.val[0]) == 0 and len(no_val.train[0]) == 100
    assert len(load_id_data(data_root=str(synthetic_root), val_size=20, train_size=80).train[0]) == 80


@pytest.mark.parametrize("kwargs", [
    {"val_size": -1}, {"val_size": 100}, {"val_size": 500},
    {"val_size": 20, "train_size": 0}, {"val_size": 20, "train_size": 81},
    {"val_size": 20, "test_size": 0}, {"val_size": 20, "test_size": 41},
])
def test_load_id_data_validates_sizes(synthetic_root: Path, kwargs) -> None:
    with pytest.raises(UserError, match="size"):
        load_id_data(data_root=str(synthetic_root), **kwargs)


def test_load_id_data_unknown_name() -> None:
    with pytest.raises(UserError, match="unknown ID dataset"):
        load_id_data("imagenet")


# ------------------------------------------------------------------------------ patch shuffle

def _tiles(img: torch.Tensor, patch: int) -> list[bytes]:
    c, h, w = img.shape
    t = img.reshape(c, h // patch, patch, w // patch, patch).permute(1, 3, 0, 2, 4).reshape(-1, c, patch, patch)
    return sorted(tile.numpy().tobytes() for tile in t)


@pytest.mark.parametrize("patch", [7, 14, 4])
def test_patch_shuffle_keeps_pixels_and_tiles(fmnist_small, patch: int) -> None:
    x = fmnist_small[2][:64]
    out = patch_shuffle(x, patch=patch, seed=0)
    assert out.shape == x.shape and out.dtype == x.dtype
    for a, b in zip(x, out):
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values)
        assert _tiles(a, patch) == _tiles(b, patch)  # the same patches, only moved
    changed = [not torch.equal(a, b) for a, b in zip(x, out)]
    assert sum(changed) >= 0.9 * len(x)
    assert torch.equal(patch_shuffle(x, patch=patch, seed=0), out)
    assert not torch.equal(patch_shuffle(x, patch=patch, seed=1), out)
    assert torch.equal(x, fmnist_small[2][:64])  # input untouched


def test_patch_shuffle_permutes_each_image_differently() -> None:
    # image i is constant i within each tile index: read back each image's permutation
    n, patch = 6, 7
    base = torch.arange(16, dtype=torch.float32).view(4, 4).repeat_interleave(patch, 0).repeat_interleave(patch, 1)
    x = base.expand(n, 1, 28, 28).clone()
    out = patch_shuffle(x, patch=patch, seed=0)
    perms = [tuple(out[i, 0, ::patch, ::patch].flatten().int().tolist()) for i in range(n)]
    assert all(sorted(p) == list(range(16)) for p in perms)
    assert len(set(perms)) > 1


def test_patch_shuffle_rejects_non_dividing_patch(fmnist_small) -> None:
    with pytest.raises(UserError, match="patch size 5"):
        patch_shuffle(fmnist_small[2][:2], patch=5)
