"""Near/far OOD groups: glyphs, the open-set protocol (id_classes, heldout-classes), the downloadable
MNIST-like sets (from generated files in torchvision's layout, never downloaded), group assignment."""

from __future__ import annotations

import gzip
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from unleash_ood.config import (
    DEFAULT_FAR,
    DEFAULT_NEAR,
    DEFAULT_SYNTHETIC,
    GROUPS,
    DataConfig,
    DemoConfig,
    config_groups,
    group_specs,
    validate,
)
from unleash_ood.data import load_id_data
from unleash_ood.data.builtin import BUILTIN, OFFLINE_SETS, Sources
from unleash_ood.data.fashion import CLASSES
from unleash_ood.data.glyphs import available_fonts, default_font_dirs, load_glyphs, split_fonts
from unleash_ood.data.specs import load_ood
from unleash_ood.errors import UserError

# --------------------------------------------------------------------------- glyphs


def test_glyphs_default_set_size_shape_range() -> None:
    x = load_ood("glyphs")
    assert x.shape == (2000, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == pytest.approx(1.0, abs=0.02)
    # white glyphs on black, like Fashion-MNIST: mostly dark, corners darkest
    assert 0.05 < float(x.mean()) < 0.4
    assert float(x[..., :2, :2].mean()) < float(x.mean())
    assert len(torch.unique(x.flatten(1), dim=0)) == 2000  # no two images alike


def test_glyphs_fixed_per_seed_and_shape() -> None:
    a = load_glyphs(64, seed=3)
    assert torch.equal(a, load_glyphs(64, seed=3))
    assert not torch.equal(a, load_glyphs(64, seed=4))
    rgb = load_glyphs(16, seed=0, image_shape=(3, 32, 32))
    assert rgb.shape == (16, 3, 32, 32) and torch.equal(rgb[:, 0], rgb[:, 2])


def test_glyph_fonts_split_disjoint_by_family() -> None:
    fonts = available_fonts()
    split = split_fonts(fonts)
    test, val = split["test"], split["val"]
    assert test and val and len(test) + len(val) == len(fonts)
    assert not {f.family.lower() for f in test} & {f.family.lower() for f in val}
    assert len({(f.family, f.style) for f in fonts}) == len(fonts)  # duplicates counted once
    assert split == split_fonts(list(reversed(fonts))) or {k: set(v) for k, v in split.items()} == {
        k: set(v) for k, v in split_fonts(list(reversed(fonts))).items()}
    v = load_glyphs(64, seed=3, split="val")
    assert v.shape == (64, 1, 28, 28) and not torch.equal(v, load_glyphs(64, seed=3, split="test"))
    with pytest.raises(UserError, match="split"):
        load_glyphs(8, split="train")


def test_glyph_fonts_skip_broken_and_duplicate_files(tmp_path: Path) -> None:
    sans = next(p for d in default_font_dirs() for p in sorted(d.rglob("DejaVuSans.ttf")))
    shutil.copy(sans, tmp_path / "a.ttf")
    shutil.copy(sans, tmp_path / "b.ttf")  # same family and style: counts once
    (tmp_path / "broken.ttf").write_bytes(b"not a font")
    fonts = available_fonts([tmp_path])
    assert [f.path.name for f in fonts] == ["a.ttf"]
    # one family only: the test split has it, the validation split cannot be formed
    assert load_glyphs(8, font_dirs=[tmp_path]).shape == (8, 1, 28, 28)
    with pytest.raises(UserError, match="no val fonts"):
        load_glyphs(8, split="val", font_dirs=[tmp_path])


def test_glyphs_without_fonts_names_the_package(tmp_path: Path) -> None:
    (tmp_path / "broken.ttf").write_bytes(b"not a font")
    with pytest.raises(UserError, match="apt-get install fonts-liberation fonts-freefont-ttf"):
        load_glyphs(8, font_dirs=[tmp_path])


# --------------------------------------------------------------------------- open-set protocol


def test_id_classes_filter_and_relabel_real_fashion(fmnist_full) -> None:
    _, _, xt, yt = fmnist_full
    keep = [7, 0, 3]
    data = load_id_data(val_size=1000, train_size=None, id_classes=keep)
    assert data.classes == (CLASSES[7], CLASSES[0], CLASSES[3]) and data.num_classes == 3
    assert len(data.train[0]) + len(data.val[0]) == 3 * 6000
    for _, labels in (data.train, data.val, data.test):
        assert sorted(labels.unique().tolist()) == [0, 1, 2]
    # the test split keeps its order: label i is original class keep[i]
    mask = torch.isin(yt, torch.tensor(keep))
    assert torch.equal(data.test[0], xt[mask])
    assert torch.equal(torch.tensor(keep)[data.test[1]], yt[mask])
    # held out: exactly the other classes' test images, in order
    assert torch.equal(data.heldout, xt[~mask]) and len(data.heldout) == 7000


def test_heldout_classes_set_and_groups(fmnist_full) -> None:
    from unleash_ood.data.prepared import prepare_data

    cfg = DataConfig(id_classes=[0, 1, 2, 3, 4, 5], near=["heldout-classes"], far=["uniform"], val_size=100,
                     train_size=200, test_size=300, ood_size=50, val_ood_size=50)
    prep = prepare_data(cfg)
    _, _, xt, yt = fmnist_full
    assert torch.equal(prep.ood["heldout-classes"], xt[yt >= 6])
    assert prep.groups == {"heldout-classes": "near", "uniform": "synthetic"}  # uniform keeps its own group
    assert list(prep.ood) == list(prep.groups)
    assert prep.sets["heldout-classes"]["distinct_sources"] == len(xt[yt >= 6]) == 4000
    assert prep.id.num_classes == 6 and int(prep.id.test[1].max()) <= 5
    x = load_ood("heldout-classes", image_shape=(3, 32, 32), sources=Sources(heldout=xt[:5]))
    assert x.shape == (5, 3, 32, 32)


def test_heldout_classes_needs_id_classes() -> None:
    with pytest.raises(UserError, match="data.id_classes"):
        load_ood("heldout-classes")


@pytest.mark.parametrize("bad", [[], [10], [-1], [2, 2], list(range(10)), [1.5]])
def test_bad_id_classes(bad: list, tmp_path: Path) -> None:
    root = tmp_path / "fm"
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 60), ("t10k", 20)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    assert load_id_data(data_root=str(root), val_size=5, id_classes=[1, 2]).num_classes == 2
    assert load_id_data(data_root=str(root), val_size=5).heldout is None
    with pytest.raises(UserError, match=r"data\.id_classes"):
        load_id_data(data_root=str(root), val_size=5, id_classes=bad)


# --------------------------------------------------------------------------- MNIST-like sets


def _write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """An IDX file as torchvision and NIST write it (0x0000 08 ndim, big-endian dims, uint8 data)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def _images(n: int, seed: int) -> np.ndarray:
    images = np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 1] = 255  # marks the orientation: row 0, column 1
    images[:, 1, 0] = 0
    return images


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("kmnist", "KMNIST")])
def test_mnist_like_from_torchvision_layout(name: str, folder: str, tmp_path: Path) -> None:
    import torchvision

    images = _images(30, 1)
    raw = tmp_path / folder / "raw"
    _write_idx(raw / "t10k-images-idx3-ubyte", images, compress=False)
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(30) % 10, compress=False)
    _write_idx(raw / "train-images-idx3-ubyte", images[:3], compress=False)  # torchvision wants all four
    _write_idx(raw / "train-labels-idx1-ubyte", np.arange(3), compress=False)
    tv = getattr(torchvision.datasets, folder)(str(tmp_path), train=False, download=False)
    assert np.array_equal(tv.data.numpy(), images)  # the layout torchvision itself reads
    sources = Sources(data_root=str(tmp_path), download=False)
    x = load_ood(name, n=20, seed=0, sources=sources)
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.float32
    as_u8 = (x[:, 0] * 255).round().to(torch.uint8).numpy()
    rows = [int(np.flatnonzero((images == img).all(axis=(1, 2)))[0]) for img in as_u8]
    assert rows == sorted(set(rows))  # a seeded subset, in file order, no repeats
    assert torch.equal(x, load_ood(name, n=20, seed=0, sources=sources))
    assert not torch.equal(x, load_ood(name, n=20, seed=1, sources=sources))
    assert len(load_ood(name, n=500, sources=sources)) == 30  # all when fewer than n
    (raw / "t10k-images-idx3-ubyte").unlink()
    _write_idx(raw / "t10k-images-idx3-ubyte.gz", images)  # gzipped, as downloaded
    assert torch.equal(x, load_ood(name, n=20, seed=0, sources=sources))


def test_emnist_letters_from_archive_and_raw_files(tmp_path: Path) -> None:
    images = _images(25, 2)
    raw = tmp_path / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    with zipfile.ZipFile(raw / "gzip.zip", "w") as z:  # NIST's archive, as torchvision downloads it
        stem = "emnist-letters-test-images-idx3-ubyte"
        z.writestr(f"gzip/{stem}.gz", _write_idx(tmp_path / "tmp.gz", images).read_bytes())
    sources = Sources(data_root=str(tmp_path), download=False)
    x = load_ood("emnist-letters", n=25, sources=sources)
    assert x.shape == (25, 1, 28, 28)
    upright = images.transpose(0, 2, 1)  # EMNIST stores images transposed
    assert np.array_equal((x[:, 0] * 255).round().to(torch.uint8).numpy(), upright)
    _write_idx(raw / f"{stem}", images, compress=False)  # torchvision's extracted layout
    _write_idx(raw / "emnist-letters-test-labels-idx1-ubyte", np.arange(25) % 26 + 1, compress=False)
    (raw / "gzip.zip").unlink()
    import torchvision

    tv = torchvision.datasets.EMNIST(str(tmp_path), split="letters", train=False, download=False)
    assert np.array_equal(tv.data.numpy(), images)
    assert torch.equal(load_ood("emnist-letters", n=25, sources=sources), x)


@pytest.mark.parametrize("name", ["mnist", "kmnist", "emnist-letters"])
def test_mnist_like_missing_without_download(name: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=rf"'{name}' not found.*{tmp_path}.*data.download"):
        load_ood(name, sources=Sources(data_root=str(tmp_path), download=False))


# --------------------------------------------------------------------------- groups


def test_registry_groups() -> None:
    assert {name: s.group for name, s in BUILTIN.items()} == {
        "digits": "near", "textures": "far", "photos": "far", "scenes": "far", "gaussian": "synthetic",
        "uniform": "synthetic", "glyphs": "near", "heldout-classes": "near", "mnist": "near", "kmnist": "near",
        "emnist-letters": "near"}
    assert set(OFFLINE_SETS) == set(DEFAULT_NEAR) | set(DEFAULT_FAR) | set(DEFAULT_SYNTHETIC)
    assert all(s.description for s in BUILTIN.values())
    assert len({s.stream for s in BUILTIN.values()}) == len(BUILTIN)


def test_default_groups_and_user_specs() -> None:
    assert DataConfig().ood_groups() == [*((s, "near") for s in DEFAULT_NEAR), *((s, "far") for s in DEFAULT_FAR),
                                         *((s, "synthetic") for s in DEFAULT_SYNTHETIC)]
    assert DEFAULT_FAR == ("textures", "photos", "scenes") and DEFAULT_SYNTHETIC == ("gaussian", "uniform")
    pairs = config_groups(["npz:/x/a.npz", "UNIFORM"], ["folder:/x/b", "digits"])
    # user specs take the group they are listed under; built-ins keep theirs; near, far, then synthetic
    assert pairs == [("npz:/x/a.npz", "near"), ("digits", "near"), ("folder:/x/b", "far"), ("UNIFORM", "synthetic")]
    assert group_specs({"near": ["digits"], "far": ["Digits", "uniform"]}) == [("digits", "near"),
                                                                                ("uniform", "synthetic")]
    # a user's file under data.synthetic is synthetic; gaussian listed under far stays synthetic
    cfg = DataConfig(near=[], far=["gaussian", "npz:/x/a.npz"], synthetic=["npz:/x/noise.npz"])
    assert cfg.ood_groups() == [("npz:/x/a.npz", "far"), ("gaussian", "synthetic"), ("npz:/x/noise.npz", "synthetic")]
    # unset synthetic: the default sanity sets where far is unset too (they were in the default far suite)
    assert DataConfig(near=["digits"]).ood_groups()[-2:] == [("gaussian", "synthetic"), ("uniform", "synthetic")]
    assert DataConfig(near=["digits"], far=["textures"]).ood_groups() == [("digits", "near"), ("textures", "far")]


def test_ood_key_back_compat() -> None:
    # alone: exactly the listed sets, as before groups existed (specs far, built-ins in their own group)
    cfg = DataConfig(ood=["uniform", "digits", "npz:/x/svhn.npz"])
    assert cfg.ood_groups() == [("digits", "near"), ("npz:/x/svhn.npz", "far"), ("uniform", "synthetic")]
    # next to near/far: extra far specs
    cfg = DataConfig(near=["glyphs"], far=["textures"], ood=["npz:/x/svhn.npz", "textures"])
    assert cfg.ood_groups() == [("glyphs", "near"), ("textures", "far"), ("npz:/x/svhn.npz", "far")]
    # a run's saved config.json reads back to the same suite
    for cfg in (DataConfig(ood=["digits", "uniform"]), DataConfig(), DataConfig(near=["mnist"], ood=["uniform"])):
        again = validate(DemoConfig, {"data": cfg.model_dump()}).data  # type: ignore[attr-defined]
        assert again.ood_groups() == cfg.ood_groups()
    # CIFAR: the paper suite's names take the group they are listed under
    cifar = DataConfig(dataset="cifar10", near=["cifar100"], far=["textures", "svhn"])
    assert cifar.ood_groups() == [("cifar100", "near"), ("textures", "far"), ("svhn", "far")]


def test_unknown_group_and_empty_suite() -> None:
    assert GROUPS == ("near", "far", "synthetic")
    with pytest.raises(UserError, match="unknown OOD group 'mid'"):
        group_specs({"near": ["digits"], "mid": ["uniform"]})
    with pytest.raises(UserError, match="no OOD sets"):
        validate(DemoConfig, {"data": {"near": [], "far": []}})
    with pytest.raises(UserError, match="data.middle"):
        validate(DemoConfig, {"data": {"middle": ["uniform"]}})


def test_eval_cli_takes_near_and_far() -> None:
    from unleash_ood.cli import parser

    args = parser().parse_args(["eval", "--run", "r", "--near", "glyphs", "npz:/x/a.npz", "--far", "uniform",
                                "--ood", "textures"])
    assert (args.near, args.far, args.ood) == (["glyphs", "npz:/x/a.npz"], ["uniform"], ["textures"])
    assert parser().parse_args(["eval", "--run", "r", "--ood", "digits"]).near is None


def test_prepare_data_overrides_keep_groups(fmnist_full) -> None:
    from unleash_ood.data.prepared import prepare_data

    cfg = DataConfig(val_size=50, train_size=100, test_size=100, ood_size=20, val_ood_size=20)
    prep = prepare_data(cfg, ood_specs=["digits", "uniform"], near_specs=["gaussian"])
    assert prep.groups == {"digits": "near", "gaussian": "synthetic", "uniform": "synthetic"}
    assert {k: len(v) for k, v in prep.ood.items()} == {"digits": 1797, "gaussian": 20, "uniform": 20}
    # what exactly was loaded: every set and the validation proxy, with its hash and sources
    assert set(prep.sets) == {"digits", "gaussian", "uniform", "val_ood"}
    assert prep.sets["digits"]["distinct_sources"] == 1797 and prep.sets["val_ood"]["shape"] == [20, 1, 28, 28]



def test_data_list_shows_fashion_sets_with_groups(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import json

    from unleash_ood.cli import main

    _write_idx(tmp_path / "KMNIST" / "raw" / "t10k-images-idx3-ubyte.gz", _images(3, 0))
    assert main(["data", "list", "--id", "fashion_mnist", "--data-root", str(tmp_path), "--json",
                 "--ood-size", "20"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {*BUILTIN, "val_near", "val_ood"}
    assert {name: r["role"] for name, r in rows.items() if not name.startswith("val_")} == {
        name: s.group for name, s in BUILTIN.items()}
    assert rows["kmnist"]["present"] and not rows["mnist"]["present"]
    assert str(tmp_path / "MNIST" / "raw") in rows["mnist"]["expected"]


def test_torch_free_group_tables_agree_with_the_loaders() -> None:
    """``ood_groups`` (used by config validation without torch) names the loaders' sets and groups."""
    from unleash_ood import config as ood_groups
    from unleash_ood.data.suite import PAPER_SUITE, SUITE

    assert ood_groups.BUILTIN_GROUPS == {name: s.group for name, s in BUILTIN.items()}
    assert set(ood_groups.SUITE_NAMES) == set(SUITE)
    assert set(ood_groups.SUITE_DATASETS) == set(PAPER_SUITE)
