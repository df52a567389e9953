"""ID data of one's own (``folder:ROOT``, ``npz:FILE``) on real files written here: Fashion-MNIST PNGs in
class folders and RGB crops of scikit-image's photographs; the one image decoder (a float TIFF decodes the
same in ``eval`` and ``detect``); bad input as one line and exit 2 with no run directory; and
``demo`` → ``export`` → ``detect`` on both layouts."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from unleash_ood.cli import main
from unleash_ood.config import DataConfig, ModelConfig, build_config
from unleash_ood.data import fashion
from unleash_ood.data.images import load_image, read_image
from unleash_ood.data.own import FolderImages, decode_files, load_data, normalization
from unleash_ood.data.prepared import prepare_data
from unleash_ood.data.specs import load_ood
from unleash_ood.deploy.inputs import load_inputs
from unleash_ood.errors import UserError
from unleash_ood.eval.models import track, val_fpr95
from unleash_ood.models.loading import build
from unleash_ood.models.inputs import with_input_kwargs
from unleash_ood.run.select_keep import validation_ood
from unleash_ood.run.stages import best_epochs

FM_CLASSES = {0: "tshirt", 1: "trouser", 7: "sneaker"}  # folder names; sorted: sneaker, trouser, tshirt
N_TRAIN, N_TEST = 80, 40  # per class
PHOTOS = ("astronaut", "chelsea", "coffee")
# small and fast, like tests/test_cli.py's SMALL; the OOD sets avoid the ID photographs
FAST = ["data.ood_size=150", "data.val_ood_size=150", "data.near=[digits]", "data.far=[textures]",
        "base.epochs=3", "base.batch_size=32", "um.optim.epochs=1", "umap.optim.epochs=1", "um.zeta=0.2",
        "model.kwargs={width: 8}", "scores=[MSP, Energy]", "save_features=false", "data.train_size=null",
        "data.test_size=null", "data.val_size=0.25"]


# --------------------------------------------------------------------------- real datasets on disk


def _fashion(split: str) -> tuple[np.ndarray, np.ndarray]:
    stem = "train" if split == "train" else "t10k"
    return (fashion.read_idx(fashion.DEBIAN_DIR / f"{stem}-images-idx3-ubyte.gz"),
            fashion.read_idx(fashion.DEBIAN_DIR / f"{stem}-labels-idx1-ubyte.gz"))


@pytest.fixture(scope="module")
def fm_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """3 Fashion-MNIST classes, N_TRAIN / N_TEST images each, uint8, in the folder layout's order
    (classes sorted by folder name, files by name), labels 0..2 in that order."""
    out = {}
    order = sorted(FM_CLASSES, key=FM_CLASSES.get)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x, y = _fashion(split)
        idx = np.concatenate([np.flatnonzero(y == c)[:n] for c in order])
        out[split] = (x[idx], np.repeat(np.arange(3), n))
    return out


def write_folder(root: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str],
                 suffix: str = ".png") -> Path:
    for split, (x, y) in arrays.items():
        for i, (image, label) in enumerate(zip(x, y)):
            path = root / split / names[label] / f"{i:05d}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    return root


@pytest.fixture(scope="module")
def fm_folder(tmp_path_factory, fm_arrays) -> Path:
    names = sorted(FM_CLASSES.values())
    return write_folder(tmp_path_factory.mktemp("fm") / "root", fm_arrays, names)


@pytest.fixture(scope="module")
def fm_npz(tmp_path_factory, fm_arrays) -> Path:
    path = tmp_path_factory.mktemp("fm_npz") / "fm.npz"
    np.savez(path, train_images=fm_arrays["train"][0], train_labels=fm_arrays["train"][1],
             test_images=fm_arrays["test"][0], test_labels=fm_arrays["test"][1],
             classes=np.array(sorted(FM_CLASSES.values())))
    return path


def photo_crops(n: int, sizes: tuple[int, ...], seed: int) -> dict[str, list[np.ndarray]]:
    """``n`` random square crops (side 48–160) of each photograph, resized to ``sizes`` in turn; uint8 RGB."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in PHOTOS:
        picture = getattr(skdata, name)()
        crops = []
        for i in range(n):
            side = int(rng.integers(48, 161))
            top, left = (int(rng.integers(0, d - side + 1)) for d in picture.shape[:2])
            crop = Image.fromarray(picture[top:top + side, left:left + side])
            size = sizes[i % len(sizes)]
            crops.append(np.asarray(crop.resize((size, size), Image.BILINEAR)))
        out[name] = crops
    return out


def write_photos(root: Path, n_train: int, n_test: int, sizes: tuple[int, ...]) -> Path:
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        for name, crops in photo_crops(n, sizes, seed).items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i, crop in enumerate(crops):
                Image.fromarray(crop).save(root / split / name / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """RGB crops of three photographs at 32×32 and 64×64 mixed: 12 train / 6 test per class."""
    return write_photos(tmp_path_factory.mktemp("photos") / "root", 12, 6, (32, 64))


@pytest.fixture(scope="module")
def photo_npz(tmp_path_factory) -> Path:
    """RGB 32×32 crops of three photographs as an npz dataset: 60 train / 30 test per class, uint8 N×H×W×3."""
    path = tmp_path_factory.mktemp("photo_npz") / "photos.npz"
    arrays = {}
    for split, n, seed in (("train", 60, 0), ("test", 30, 1)):
        crops = photo_crops(n, (32,), seed)
        arrays[f"{split}_images"] = np.stack([c for name in PHOTOS for c in crops[name]])
        arrays[f"{split}_labels"] = np.repeat(np.arange(len(PHOTOS)), n)
    np.savez(path, **arrays)  # no classes: named 0, 1, 2
    return path


# --------------------------------------------------------------------------- loading


def test_folder_and_npz_layouts_give_the_same_data(fm_folder: Path, fm_npz: Path, fm_arrays) -> None:
    a = load_data(DataConfig(dataset=f"folder:{fm_folder}", val_size=0.25, seed=3))
    b = load_data(DataConfig(dataset=f"npz:{fm_npz}", val_size=0.25, seed=3))
    assert a.classes == b.classes == ("sneaker", "trouser", "tshirt")
    assert a.image_shape == (1, 28, 28)
    assert [len(s[0]) for s in (a.train, a.val, a.test)] == [180, 60, 120]  # 25 % of 240 held out
    for (xa, ya), (xb, yb) in zip((a.train, a.val, a.test), (b.train, b.val, b.test)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # the PNGs decode to exactly the original bytes / 255
    x, y = fm_arrays["test"]
    assert torch.equal(a.test[0], torch.from_numpy(x).float().div(255).unsqueeze(1))
    assert torch.equal(a.test[1], torch.from_numpy(y))
    # the split is the built-in datasets' one: same seed, same indices
    seeded = load_data(DataConfig(dataset=f"folder:{fm_folder}", val_size=60, seed=3))
    assert torch.equal(seeded.val[0], a.val[0])
    # normalization measured on the training split, and recorded
    train = a.train[0].double()
    assert a.normalization["mean"] == pytest.approx([train.mean().item()], abs=1e-6)
    assert a.normalization["std"] == pytest.approx([train.std(unbiased=False).item()], abs=1e-6)
    note = a.preprocessing
    assert note["input"] == {"channels": 1, "image_size": [28, 28], "inferred": ["image_size", "channels"]}
    assert note["images"] == {"train": 180, "val": 60, "test": 120} and "resized" not in note
    assert note["normalize"]["from"] == "dataset"


def test_own_data_defaults_hold_out_a_tenth(fm_folder: Path) -> None:
    cfg = build_config(overrides=[f"data.dataset=folder:{fm_folder}"]).data
    assert cfg.val_size == 0.1 and cfg.train_size is None
    data = load_data(cfg)
    assert (len(data.train[0]), len(data.val[0])) == (216, 24)
    assert build_config().data.val_size == 5000  # the built-in default is untouched


def test_open_set_protocol_on_own_data(fm_folder: Path, fm_arrays) -> None:
    data = load_data(DataConfig(dataset=f"folder:{fm_folder}", val_size=0.25, id_classes=[2, 0]))
    assert data.classes == ("tshirt", "sneaker") and data.num_classes == 2
    assert set(data.train[1].tolist()) == {0, 1} and len(data.train[0]) + len(data.val[0]) == 2 * N_TRAIN
    x, y = fm_arrays["test"]  # the held-out class (trouser, label 1) is the heldout-classes set
    assert torch.equal(data.heldout, torch.from_numpy(x[y == 1]).float().div(255).unsqueeze(1))
    tshirts = torch.from_numpy(x[y == 2]).float().div(255).unsqueeze(1)
    assert torch.equal(data.test[0][data.test[1] == 0], tshirts)


def test_mixed_sizes_are_resized_and_recorded(photo_folder: Path) -> None:
    data = load_data(DataConfig(dataset=f"folder:{photo_folder}", image_size=[32, 32], val_size=0.25))
    assert data.image_shape == (3, 32, 32) and data.classes == PHOTOS
    note = data.preprocessing
    assert note["train_sizes"] == {"32x32": 18, "64x64": 18} and note["train_channels"] == {"3": 36}
    assert note["input"]["inferred"] == ["channels"]
    assert sum(v for k, v in note["resized"].items() if k != "how") == 18 + 9  # every 64×64 image
    # a 64×64 file becomes what the one conversion makes of it (here: a plain antialiased resize)
    path = photo_folder / "test" / "astronaut" / "0001.png"
    x = load_image(path, (3, 32, 32))
    array = torch.from_numpy(read_image(path).copy()).permute(2, 0, 1)[None].float() / 255
    ref = torch.nn.functional.interpolate(array, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(x, ref[0].clamp(0, 1), atol=1e-6)
    assert torch.equal(data.test[0][1], x)  # test files in order: astronaut 0000, 0001, …
    # a non-square input: shorter side, then a center crop
    wide = load_data(DataConfig(dataset=f"folder:{photo_folder}", image_size=[16, 32], channels=1, val_size=0))
    assert wide.image_shape == (1, 16, 32) and wide.preprocessing["channels_converted"]["train"] == 36


def test_photo_npz_is_rgb_and_infers_its_input(photo_npz: Path) -> None:
    data = load_data(DataConfig(dataset=f"npz:{photo_npz}", val_size=0.2))
    assert data.image_shape == (3, 32, 32) and data.classes == ("0", "1", "2")
    assert len(data.train[0]) == 144 and len(data.normalization["mean"]) == 3


def test_normalize_choices_reach_the_model(photo_npz: Path) -> None:
    shapes = {}
    for spec in ("imagenet", {"mean": [0.5], "std": [0.25]}, [[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]):
        cfg = build_config(overrides=[f"data.dataset=npz:{photo_npz}", {"data": {"normalize": spec}}])
        data = load_data(cfg.data)
        model = with_input_kwargs(cfg.model, data)
        shapes[str(spec)] = model.kwargs
    assert shapes["imagenet"]["mean"] == [0.485, 0.456, 0.406] and shapes["imagenet"]["in_channels"] == 3
    assert shapes["{'mean': [0.5], 'std': [0.25]}"]["std"] == [0.25, 0.25, 0.25]
    assert shapes["[[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]"]["mean"] == [0.1, 0.2, 0.3]
    # the user's own model.kwargs win, and a channel count that contradicts the data is refused
    data = load_data(DataConfig(dataset=f"npz:{photo_npz}"))
    given = with_input_kwargs(ModelConfig(kwargs={"width": 8, "mean": [0.5], "std": [0.5]}), data)
    assert given.kwargs["mean"] == [0.5]
    with pytest.raises(UserError, match="in_channels=1"):
        with_input_kwargs(ModelConfig(kwargs={"in_channels": 1}), data)
    with pytest.raises(UserError, match="3 channel"):
        normalization({"mean": [0.1, 0.2], "std": [0.1, 0.2]}, data.train[0])


def test_val_near_and_far_join_the_validation_ood(fm_folder: Path, photo_npz: Path, tmp_path: Path) -> None:
    photos = np.load(photo_npz)["test_images"]
    far, near = tmp_path / "known.npz", tmp_path / "close.npz"
    np.savez(far, images=photos[:40])
    np.savez(near, images=photos[40:50])
    cfg = build_config(overrides=[f"data.dataset=folder:{fm_folder}", *FAST, f"data.val_far=[npz:{far}]",
                                  f"data.val_near=[npz:{near}]"]).data
    prep = prepare_data(cfg)
    sets = prep.val_sets()
    assert sets.groups == {"val_ood": "far", "known": "far", "close": "near"}
    assert sets.ood["known"].shape == (40, 1, 28, 28) and len(sets.ood["close"]) == 10  # in the ID format
    assert [len(x) for x, _ in prep.batches(*prep.id.test)] == [512] * (len(prep.id.test[0]) // 512) + (
        [len(prep.id.test[0]) % 512] if len(prep.id.test[0]) % 512 else [])
    small = prepare_data(cfg.model_copy(update={"eval_batch_size": 7}))  # data.eval_batch_size bounds each pass
    assert {len(x) for x, _ in small.batches(*small.id.test)} - {len(small.id.test[0]) % 7} == {7}
    chosen = validation_ood(cfg, prep.val_ood, prep.id.image_shape, prep.val_user)
    assert chosen["far"][0] == "patch-shuffled ID validation + known"
    assert len(chosen["far"][1]) == len(prep.val_ood) + 40
    assert chosen["near"][0] == "glyphs (validation fonts) + close"
    # tracking along training records the known outliers too, and an epoch is selected on all of them
    model_cfg = build_config(overrides=[f"data.dataset=folder:{fm_folder}", *FAST]).model
    model = build(with_input_kwargs(model_cfg, prep.id), prep.id.num_classes)
    rec = track(model, prep, ["Energy"])
    assert set(rec["val_user"]) == {"known", "close"}
    three = [rec["val_ood"]["Energy"]["fpr95"], *(rec["val_user"][k]["Energy"]["fpr95"] for k in ("known", "close"))]
    assert val_fpr95(rec, "Energy") == pytest.approx(np.mean(three))
    worse = {k: {"Energy": {**v["Energy"], "fpr95": 100.0}} for k, v in rec["val_user"].items()}
    rows = best_epochs([{**rec, "epoch": 1, "val_user": worse}, {**rec, "epoch": 2}], ["Energy"])
    assert rows["Energy"]["best_val_epoch"] == 2 or three[1:] == [100.0, 100.0]
    with pytest.raises(UserError, match="also an OOD test set"):
        prepare_data(build_config(overrides=[f"data.dataset=folder:{fm_folder}", *FAST,
                                             "data.val_far=[textures]"]).data)


@pytest.mark.parametrize("layout", ["folder", "npz"])
def test_memory_mapped_splits_hold_the_same_images(layout: str, fm_folder: Path, photo_npz: Path,
                                                   tmp_path: Path) -> None:
    dataset = f"folder:{fm_folder}" if layout == "folder" else f"npz:{photo_npz}"
    cfg = build_config(overrides=[f"data.dataset={dataset}", *FAST]).data
    held = load_data(cfg)
    mapped = load_data(cfg.model_copy(update={"max_memory_gb": 1e-6, "cache_dir": str(tmp_path)}))  # auto → disk
    assert held.preprocessing["storage"]["kind"] == "memory" and mapped.preprocessing["storage"]["kind"] == "disk"
    for a, b in zip((held.train, held.val, held.test), (mapped.train, mapped.val, mapped.test)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert held.normalization == mapped.normalization and not list(tmp_path.iterdir())


def test_decoding_workers_give_the_same_images(photo_folder: Path) -> None:
    files = sorted((photo_folder / "train").rglob("*.png"))
    one = decode_files(files, (3, 32, 32), workers=0)
    two = decode_files(files, (3, 32, 32), workers=2)
    assert torch.equal(one, two)
    dataset = FolderImages(files, [0] * len(files), (3, 32, 32))
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=5)))
    assert torch.equal(batch[0], one[:5]) and batch[1].tolist() == [0] * 5


# --------------------------------------------------------------------------- one decoder


def test_a_float_tiff_decodes_the_same_in_eval_and_detect(tmp_path: Path, fm_folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "tiffs"
    folder.mkdir()
    unit = rng.random((2, 28, 28), dtype=np.float32)  # floats in [0, 1], as stored
    Image.fromarray(unit[0]).save(folder / "a.tif")
    Image.fromarray(unit[1] * 255).save(folder / "b.tif")  # a 0–255 float TIFF
    assert Image.open(folder / "a.tif").mode == "F"
    eval_path = load_ood(f"folder:{folder}", (1, 28, 28))
    _, detect_path = load_inputs([f"folder:{folder}"], (1, 28, 28))
    id_path = decode_files(sorted(folder.iterdir()), (1, 28, 28))
    assert torch.equal(eval_path, detect_path) and torch.equal(eval_path, id_path)
    assert torch.allclose(eval_path[0, 0], torch.from_numpy(unit[0]), atol=1e-7)  # not rounded to 0/1
    assert torch.allclose(eval_path[1, 0], torch.from_numpy(unit[1]), atol=1e-6)
    # a PNG of the ID folder: the same bytes / 255 on every path
    png = fm_folder / "test" / "trouser" / "00040.png"
    _, detected = load_inputs([str(png)], (1, 28, 28))
    assert torch.equal(detected[0], load_image(png, (1, 28, 28)))


# --------------------------------------------------------------------------- bad input: one line, exit 2


@pytest.fixture()
def tiny(tmp_path: Path, fm_arrays) -> Path:
    """Two classes × 4 train / 2 test PNGs, to break in one way per test."""
    x = fm_arrays["train"][0]
    arrays = {"train": (x[[0, 1, 2, 3, 80, 81, 82, 83]], np.repeat([0, 1], 4)),
              "test": (x[[4, 5, 84, 85]], np.repeat([0, 1], 2))}
    return write_folder(tmp_path / "tiny", arrays, ["a", "b"])


def _fails(tmp_path: Path, capsys, dataset: str, *extra: str) -> str:
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["demo", "--quick", "--out", str(out), f"data.dataset={dataset}", *FAST, *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("unleash-ood: error: ")
    assert not out.exists()  # no half-written run
    return err


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("breakage, message", [
    ("empty class", "has no image files"),
    ("only in test", "only in test"),
    ("missing in test", "lacks class folder(s) b"),
    ("zero-byte image", "0001.png"),
    ("truncated image", "0002.png"),
    ("mixed sizes", "set data.image_size"),
    ("loose file", "outside class folders"),
])
def test_bad_folders_fail_with_one_line(tiny: Path, tmp_path: Path, capsys, breakage: str, message: str) -> None:
    if breakage == "empty class":
        for f in (tiny / "train" / "b").iterdir():
            f.unlink()
    elif breakage == "only in test":
        shutil.copytree(tiny / "test" / "b", tiny / "test" / "c")
    elif breakage == "missing in test":
        shutil.rmtree(tiny / "test" / "b")
    elif breakage == "zero-byte image":
        (tiny / "train" / "a" / "00001.png").write_bytes(b"")
    elif breakage == "truncated image":  # a valid header, then the data cut short
        path = tiny / "train" / "b" / "00002.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif breakage == "mixed sizes":
        Image.new("L", (30, 30)).save(tiny / "train" / "a" / "big.png")
    elif breakage == "loose file":
        Image.new("L", (28, 28)).save(tiny / "train" / "stray.png")
    err = _fails(tmp_path, capsys, f"folder:{tiny}")
    assert message in err, err


def test_bad_npz_and_sizes_fail_with_one_line(tmp_path: Path, capsys, tiny: Path) -> None:
    x = np.zeros((6, 8, 8), np.uint8)
    y = np.array([0, 1, 0, 1, 0, 1])
    missing = _npz(tmp_path / "missing.npz", train_images=x, train_labels=y, test_images=x)
    assert "lacks array(s) test_labels" in _fails(tmp_path, capsys, f"npz:{missing}")
    out_of_range = _npz(tmp_path / "range.npz", train_images=x, train_labels=y, test_images=x,
                        test_labels=np.array([0, 1, 2, 0, 1, 0]))
    assert "test_labels hold 2, outside 0..1" in _fails(tmp_path, capsys, f"npz:{out_of_range}")
    named = _npz(tmp_path / "named.npz", train_images=x, train_labels=y + 1, test_images=x, test_labels=y,
                 classes=np.array(["cat", "dog"]))
    assert "train_labels hold 2" in _fails(tmp_path, capsys, f"npz:{named}")
    assert "does not exist" in _fails(tmp_path, capsys, f"folder:{tmp_path / 'nowhere'}")
    assert "data.max_memory_gb" in _fails(tmp_path, capsys, f"folder:{tiny}", "data.max_memory_gb=1e-7",
                                          "data.storage=memory")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert f"data.cache_dir {blocked / 'sub'}" in _fails(tmp_path, capsys, f"folder:{tiny}", "data.storage=disk",
                                                          f"data.cache_dir={blocked / 'sub'}")
    assert "data.train_size must be in" in _fails(tmp_path, capsys, f"folder:{tiny}", "data.train_size=100")
    assert "data.val_size" in _fails(tmp_path, capsys, f"folder:{tiny}", "data.val_size=1.5")


# --------------------------------------------------------------------------- demo → export → detect


def _flag_band(bundle: Path, n_test: int) -> tuple[float, float]:
    """The validation flag rate ± 4 binomial standard deviations of a 5 % rate over the validation and
    the test sizes (the threshold is a quantile of n_val scores; the test rate a mean of n_test flags)."""
    cal = json.loads((bundle / "detector.json").read_text())["calibration"]
    sd = math.sqrt(0.05 * 0.95 * (1 / cal["size"] + 1 / n_test))
    return max(0.0, cal["flag_rate"] - 4 * sd), cal["flag_rate"] + 4 * sd


def _demo_export_detect(dataset: str, inputs: str, n_test: int, tmp_path: Path, *extra: str
                        ) -> tuple[dict, list[dict]]:
    run, bundle, csv_path = tmp_path / "run", tmp_path / "bundle", tmp_path / "p.csv"
    assert main(["demo", "--quick", "--out", str(run), f"data.dataset={dataset}", *FAST, *extra]) == 0
    records = json.loads((run / "results.json").read_text())
    assert {r["model"] for r in records} == {"base", "um", "ce_finetune", "umap"}
    assert main(["export", "--run", str(run), "--model", "umap", "--score", "Energy", "--out", str(bundle),
                 "--device", "cpu"]) == 0
    assert main(["detect", str(bundle), inputs, "--out", str(csv_path)]) == 0
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == n_test
    low, high = _flag_band(bundle, n_test)
    rate = np.mean([int(r["is_ood"]) for r in rows])
    assert low <= rate <= high, (rate, low, high)
    return json.loads((run / "summary.json").read_text()), rows


def test_folder_dataset_demo_export_detect(fm_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"  # the decoded splits memory-mapped there, read batch by batch
    summary, rows = _demo_export_detect(f"folder:{fm_folder}", f"folder:{fm_folder / 'test'}", 3 * N_TEST, tmp_path,
                                        "data.storage=disk", f"data.cache_dir={cache}")
    assert summary["input"]["input"]["image_size"] == [28, 28]
    assert summary["input"]["storage"]["kind"] == "disk" and not list(cache.iterdir())  # nothing left behind
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["kwargs"]["mean"] == summary["input"]["normalize"]["mean"]
    spec = json.loads((tmp_path / "bundle" / "detector.json").read_text())
    assert spec["classes"] == ["sneaker", "trouser", "tshirt"]
    assert spec["model"]["normalization"]["mean"] == pytest.approx(cfg["model"]["kwargs"]["mean"])
    # the classifier learned something: well above a third on the ID test images
    truth = [sorted(FM_CLASSES.values()).index(Path(r["source"]).parent.name) for r in rows]
    assert np.mean([int(r["pred"]) == t for r, t in zip(rows, truth)]) > 0.6


def test_npz_dataset_demo_export_detect(photo_npz: Path, tmp_path: Path) -> None:
    test_images = tmp_path / "test_images.npz"
    np.savez(test_images, images=np.load(photo_npz)["test_images"])
    summary, _ = _demo_export_detect(f"npz:{photo_npz}", f"npz:{test_images}", 90, tmp_path)
    assert summary["input"]["input"] == {"channels": 3, "image_size": [32, 32], "inferred": ["image_size", "channels"]}
    assert main(["eval", "--run", str(tmp_path / "run"), "--far", "uniform"]) == 0  # eval rebuilds the own data


@pytest.mark.slow
def test_demo_on_ones_own_resnet18_checkpoint_and_rgb_folder(tmp_path: Path) -> None:
    """`demo --quick --checkpoint W.safetensors` with a torchvision ResNet-18 on an RGB folder dataset skips
    base training, and says so in summary.json."""
    from safetensors.torch import save_file

    from unleash_ood.models import build_model

    root = write_photos(tmp_path / "rgb", 20, 8, (32,))
    torch.manual_seed(0)
    weights = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in build_model("torchvision:resnet18", len(PHOTOS)).state_dict().items()},
              str(weights))  # a bare state_dict: the config names the architecture
    out = tmp_path / "run"
    assert main(["demo", "--quick", "--checkpoint", str(weights), "--out", str(out), f"data.dataset=folder:{root}",
                 *FAST, "model.arch=torchvision:resnet18", "model.kwargs={}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["base_training"] == {"skipped": True, "checkpoint": str(weights)}
    assert summary["input"]["input"]["channels"] == 3 and not (out / "train_log.jsonl").exists()
    assert {r["model"] for r in json.loads((out / "results.json").read_text())} == {"base", "um", "ce_finetune",
                                                                                     "umap"}
