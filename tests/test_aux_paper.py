"""Auxiliary-outlier pools from a spec (builtin, npz, folder, imagenet64, tinyimages300k), their seeded and
recorded sampling, the overlap refusal, the Table-1-lower-half recipes, and `run` with outliers end to end."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unleash_ood.config import build_config, parse_aux_spec
from unleash_ood.data.auxiliary import aux_record_json, check_aux_overlap, load_aux_pool, read_imagenet64_batch
from unleash_ood.data.auxpool import load_auxiliary_pool
from unleash_ood.data.cifar import write_fake_cifar
from unleash_ood.errors import UserError

OUTLIER_RECIPES = ("cifar10_densenet100_outliers", "cifar100_densenet100_outliers")


def _imagenet64(folder: Path, sizes=(20,), seed: int = 0) -> np.ndarray:
    """Fake downsampled-ImageNet batches; returns all images as N×64×64×3 (HWC) in file order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    chunks = []
    for b, n in enumerate(sizes, 1):
        hwc = rng.integers(0, 256, size=(n, 64, 64, 3), dtype=np.uint8)
        data = hwc.transpose(0, 3, 1, 2).reshape(n, -1)  # channel-planar, as in the real files
        with (folder / f"train_data_batch_{b}").open("wb") as f:
            pickle.dump({"data": data, "labels": list(rng.integers(1, 1001, size=n)), "mean": data.mean(0)}, f)
        chunks.append(hwc)
    return np.concatenate(chunks)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    r = tmp_path_factory.mktemp("aux")
    all64 = _imagenet64(r / "imagenet64", sizes=(20, 7))
    np.save(r / "all64.npy", all64)
    tiny = np.random.default_rng(1).integers(0, 256, size=(50, 32, 32, 3), dtype=np.uint8)
    np.save(r / "300K_random_images.npy", tiny)
    np.savez(r / "pool.npz", images=np.random.default_rng(2).integers(0, 256, size=(30, 20, 24, 3), dtype=np.uint8))
    (r / "pics").mkdir()
    for i in range(12):
        Image.fromarray(np.full((16 + i, 40, 3), 20 * i, dtype=np.uint8)).save(r / "pics" / f"{i:02d}.png")
    return {"root": r, "imagenet64": r / "imagenet64", "all64": r / "all64.npy",
            "tiny": r / "300K_random_images.npy", "npz": r / "pool.npz", "folder": r / "pics"}


def test_builtin_is_the_existing_pool() -> None:
    pool, rec = load_aux_pool("builtin", (1, 28, 28), n=40, seed=3)
    assert torch.equal(pool, load_auxiliary_pool((1, 28, 28), n=40, seed=3))
    assert rec["kind"] == "builtin" and rec["pool_size"] == 40 and torch.equal(rec["indices"], torch.arange(40))


def test_imagenet64_random_crops_seeded_and_recorded(files) -> None:
    pool, rec = load_aux_pool(f"imagenet64:{files['imagenet64']}", (3, 32, 32), n=15, seed=4)
    assert pool.shape == (15, 3, 32, 32) and pool.dtype == torch.float32
    assert rec["pool_size"] == 27 and rec["n"] == 15 and rec["seed"] == 4  # 20 + 7 over two batches
    idx, crops = rec["indices"], rec["crops"]
    assert idx.dtype == torch.int64 and len(torch.unique(idx)) == 15 and int(idx.max()) < 27
    assert crops.shape == (15, 2) and int(crops.min()) >= 0 and int(crops.max()) <= 32
    all64 = np.load(files["all64"])
    for row, (i, (t, left)) in enumerate(zip(idx.tolist(), crops.tolist())):  # each row: that image, that crop
        want = torch.from_numpy(all64[i, t:t + 32, left:left + 32]).permute(2, 0, 1).float() / 255
        assert torch.equal(pool[row], want)
    again, rec2 = load_aux_pool(f"imagenet64:{files['imagenet64']}", (3, 32, 32), n=15, seed=4)
    assert torch.equal(again, pool) and torch.equal(rec2["indices"], idx) and torch.equal(rec2["crops"], crops)
    other, rec3 = load_aux_pool(f"imagenet64:{files['imagenet64']}", (3, 32, 32), n=15, seed=5)
    assert not torch.equal(rec3["indices"], idx) or not torch.equal(rec3["crops"], crops)
    gray, _ = load_aux_pool(f"imagenet64:{files['imagenet64']}", (1, 28, 28), n=5, seed=4)
    assert gray.shape == (5, 1, 28, 28)
    json.dumps(aux_record_json(rec))  # the JSON part has no tensors
    with pytest.raises(UserError, match="fewer than the 28"):
        load_aux_pool(f"imagenet64:{files['imagenet64']}", (3, 32, 32), n=28)


def test_imagenet64_unpickling_is_restricted(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    (tmp_path / "train_data_batch_1").write_bytes(pickle.dumps({"data": Evil()}))
    with pytest.raises(UserError, match="refusing to unpickle builtins.print"):
        read_imagenet64_batch(tmp_path / "train_data_batch_1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no train_data_batch"):
        load_aux_pool(f"imagenet64:{tmp_path / 'empty'}", (3, 32, 32), n=2)
    with pytest.raises(UserError, match="does not exist"):
        load_aux_pool(f"imagenet64:{tmp_path / 'missing'}", (3, 32, 32), n=2)


def test_tinyimages_npz_folder_sampling(files) -> None:
    tiny = np.load(files["tiny"])
    pool, rec = load_aux_pool(f"tinyimages300k:{files['tiny']}", (3, 32, 32), n=20, seed=0)
    assert pool.shape == (20, 3, 32, 32) and rec["pool_size"] == 50 and rec["kind"] == "tinyimages300k"
    idx = rec["indices"].numpy()
    assert len(np.unique(idx)) == 20
    assert torch.equal(pool, torch.from_numpy(tiny[idx]).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(load_aux_pool(f"tinyimages300k:{files['tiny']}", (3, 32, 32), n=20, seed=0)[1]["indices"],
                       rec["indices"])
    assert not torch.equal(load_aux_pool(f"tinyimages300k:{files['tiny']}", (3, 32, 32), n=20, seed=1)[1]["indices"],
                           rec["indices"])
    pool, rec = load_aux_pool(f"npz:{files['npz']}", (3, 32, 32), n=10, seed=2)
    assert pool.shape == (10, 3, 32, 32) and rec["pool_size"] == 30 and len(torch.unique(rec["indices"])) == 10
    pool, rec = load_aux_pool(f"folder:{files['folder']}", (3, 32, 32), n=5, seed=2)
    assert pool.shape == (5, 3, 32, 32) and rec["pool_size"] == 12
    # sorted file names 00..11 have grey level 20·i: each row is the file its index names
    assert [round(float(p.mean()) * 255) for p in pool] == [20 * i for i in rec["indices"].tolist()]
    with pytest.raises(UserError, match="fewer than the 13"):
        load_aux_pool(f"folder:{files['folder']}", (3, 32, 32), n=13)


def test_specs_and_data_root(tmp_path: Path) -> None:
    assert parse_aux_spec("builtin") == ("builtin", None)
    assert parse_aux_spec("imagenet64:{data_root}/imagenet64", tmp_path) == ("imagenet64", tmp_path / "imagenet64")
    for bad in ("imagenet", "zip:/x", "npz:"):
        with pytest.raises(UserError, match="auxiliary-outlier spec"):
            parse_aux_spec(bad)
    from unleash_ood.config import OutlierConfig

    with pytest.raises(UserError, match="outliers.aux"):
        build_config("cifar10_densenet100_outliers", overrides=["outliers.aux=imagenet"])
    assert OutlierConfig().aux == "builtin" and not OutlierConfig().enabled


def test_overlap_with_ood_test_sets_is_refused(tmp_path: Path) -> None:
    # by name
    with pytest.raises(UserError, match="folder:/data/ood/textures.*textures"):
        check_aux_overlap("folder:/data/ood/textures", ["svhn", "textures"])
    with pytest.raises(UserError, match="overlaps the OOD test set 'npz:/elsewhere/places365.npz'"):
        check_aux_overlap("folder:/data/places365", ["npz:/elsewhere/places365.npz"])
    # by path: the pool contains, equals or lies inside a test set's folder/file
    (tmp_path / "ood" / "textures").mkdir(parents=True)
    with pytest.raises(UserError, match="overlaps"):
        check_aux_overlap(f"folder:{tmp_path / 'ood'}", [f"folder:{tmp_path / 'ood' / 'textures'}"])
    with pytest.raises(UserError, match="overlaps"):
        check_aux_overlap(f"npz:{tmp_path / 'a' / 'x.npz'}", [f"npz:{tmp_path / 'a' / 'x.npz'}"])
    with pytest.raises(UserError, match="overlaps"):  # a suite set found under the data root
        check_aux_overlap(f"folder:{tmp_path}", ["textures"], data_root=tmp_path, dataset="cifar10")
    # fine: builtin, and a disjoint folder
    check_aux_overlap("builtin", ["textures"])
    check_aux_overlap(f"imagenet64:{tmp_path / 'imagenet64'}", ["cifar100", "textures", "svhn"], tmp_path, "cifar10")


def test_outlier_recipes_have_the_paper_settings() -> None:
    for name in OUTLIER_RECIPES:
        cfg = build_config(name)
        plain = build_config(name.removesuffix("_outliers"))
        assert cfg.model_dump(exclude={"outliers"}) == plain.model_dump(exclude={"outliers"})
        o = cfg.outliers
        assert o.enabled and o.aux == "imagenet64:{data_root}/imagenet64" and o.aux_size == 50000
        # the auxiliary batch is the ID batch (BatchNorm half ID, half auxiliary), as in the authors' code
        assert (o.epochs, o.lr, o.aux_batch_size) == (10, 0.01, None) and cfg.um.optim.schedule == "cosine"
        assert o.methods == ["oe", "energy", "poem"] and o.withs == ["none", "um", "umap"]
        assert (o.lam, o.energy_weight, o.m_in, o.m_out) == (0.5, 0.1, -25.0, -7.0)
        assert not plain.outliers.enabled


def test_run_recipe_with_outliers_end_to_end(tmp_path: Path, capsys) -> None:
    from unleash_ood.cli import main
    from unleash_ood.models.checkpoint import load_tensors
    from unleash_ood.run.recipes import run_recipe

    root = tmp_path / "data"
    write_fake_cifar(root, "cifar10", n_train=120, n_test=40, seed=0)
    write_fake_cifar(root, "cifar100", n_train=40, n_test=30, seed=1)
    _imagenet64(root / "imagenet64", sizes=(20,))
    tiny = ["data.download=false", "data.val_size=20", "data.ood_size=20", "data.val_ood_size=20",
            "data.augment=false", "data.ood=[cifar100]", "base.epochs=1", "base.batch_size=32", "eval_every=1",
            "um.optim.epochs=1", "um.optim.batch_size=32", "umap.optim.epochs=1", "umap.optim.batch_size=32",
            "um.zeta=null", "um.zeta_draws=1", "scores=[Energy, MSP]", "track_scores=[Energy]",
            "model.arch=small_cnn",
            "model.kwargs={in_channels: 3, width: 4, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}",
            "outliers.aux_size=12", "outliers.aux_batch_size=8", "outliers.epochs=1", "outliers.methods=[oe, energy]",
            "outliers.withs=[none, um]", f"data.data_root={root}"]
    out = tmp_path / "run"
    res = run_recipe("cifar10_densenet100_outliers", [0], out, tiny)
    assert {r["model"] for r in res} == {"base", "um", "ce_finetune", "umap", "oe", "oe_um", "energy",
                                       "energy_um"}
    sub = out / "seed0" / "outliers"
    summary = json.loads((sub / "summary.json").read_text())
    pool = summary["aux_pool"]
    assert pool["spec"] == "imagenet64:{data_root}/imagenet64" and pool["path"] == str(root / "imagenet64")
    assert pool["pool_size"] == 20 and pool["n"] == 12 and pool["seed"] == 0
    assert pool["indices_file"] == "checkpoints/aux_subset.safetensors" and "indices" not in pool
    saved, meta = load_tensors(sub / "checkpoints" / "aux_subset.safetensors")
    assert saved["indices"].shape == (12,) and saved["crops"].shape == (12, 2) and meta["pool_size"] == 20
    assert summary["settings"]["aux_batch_size"] == 8 and "12 of 20 images" in (sub / "results.md").read_text()
    report = json.loads((out / "report.json").read_text())
    by_model = {}
    for r in report:
        by_model.setdefault(r["model"], set()).add(r["n_seeds"])
    assert {"oe", "oe_um", "energy", "energy_um", "base", "um"} <= set(by_model)
    assert by_model["base"] == {1}  # the outlier run's copy of the base is not counted twice
    assert "OE+UM (MSP)" in (out / "report.md").read_text()
    # the pool must not overlap the OOD test sets: refused before anything trains
    with pytest.raises(UserError, match="overlaps the OOD test set 'cifar100'"):
        run_recipe("cifar10_densenet100_outliers", [0], tmp_path / "bad",
                   [*tiny, f"outliers.aux=folder:{root / 'cifar-100-python'}"])
    assert not (tmp_path / "bad" / "seed0").exists()
    # `oe --recipe`: the recipe's outliers section on a given base
    rc = main(["oe", *tiny, "--recipe", "cifar10_densenet100_outliers", "--checkpoint",
               str(out / "seed0" / "checkpoints" / "base.safetensors"), "--out", str(tmp_path / "oe"),
               "--method", "oe", "--with", "none"])
    assert rc == 0
    assert json.loads((tmp_path / "oe" / "summary.json").read_text())["aux_pool"]["kind"] == "imagenet64"
    assert {r["model"] for r in json.loads((tmp_path / "oe" / "results.json").read_text())} == {"base", "oe"}
