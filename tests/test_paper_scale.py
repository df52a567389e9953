"""Paper-scale parts on generated data in the real on-disk layouts: CIFAR loader, the OOD suite,
recipes, `run` end to end, `report` aggregation, keep-ratio selection and the CLI subcommands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unleash_ood.cli.paper import add_paper_parsers
from unleash_ood.config import build_config, recipe_names
from unleash_ood.data import default_patch, load_id_data, patch_shuffle
from unleash_ood.data.cifar import load_cifar, write_fake_cifar
from unleash_ood.data.suite import (
    PAPER_SUITE,
    SUITE,
    check_available,
    data_status,
    format_status,
    load_suite_set,
    resize_center_crop,
)
from unleash_ood.errors import UserError

TINY_MODEL = ["model.arch=small_cnn",
              "model.kwargs={in_channels: 3, width: 4, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}"]
TINY = ["data.download=false", "data.val_size=40", "data.ood_size=30", "data.val_ood_size=40",
        "data.augment=false", "data.ood=[cifar100, svhn, textures]", "base.epochs=1", "base.batch_size=32",
        "eval_every=1", "um.optim.epochs=1", "um.optim.batch_size=32", "umap.optim.epochs=1",
        "umap.optim.batch_size=32", "um.zeta=null", "um.zeta_draws=1", "scores=[Energy, MSP]",
        "track_scores=[Energy]", *TINY_MODEL]


def _save_png(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A data root: fake CIFAR-10/100, SVHN test .mat, DTD-like textures (odd sizes), LSUN 32×32, TinyImageNet."""
    from scipy.io import savemat

    r = tmp_path_factory.mktemp("data")
    write_fake_cifar(r, "cifar10", n_train=200, n_test=60, seed=0)
    write_fake_cifar(r, "cifar100", n_train=100, n_test=50, seed=1)
    (r / "svhn").mkdir()
    x = np.random.default_rng(2).integers(0, 256, size=(32, 32, 3, 45), dtype=np.uint8)
    savemat(r / "svhn" / "test_32x32.mat", {"X": x, "y": np.ones((45, 1), dtype=np.uint8)})
    for i in range(12):
        _save_png(r / "dtd" / "images" / f"c{i % 3}" / f"{i}.png", 40 + i, 64, i)  # an alias folder
        _save_png(r / "ood" / "lsun" / f"{i}.png", 32, 32, 100 + i)
        _save_png(r / "ood" / "tinyimagenet" / f"{i}.png", 64, 64, 200 + i)
    return r


# --------------------------------------------------------------------------- CIFAR


def test_fake_cifar_reads_like_torchvision_layout(root: Path) -> None:
    x, y, classes = load_cifar("cifar10", root, train=True, download=False)
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y.dtype == torch.int64 and len(classes) == 10 and int(y.max()) < 10
    xt, _, classes100 = load_cifar("cifar100", root, train=False, download=False)
    assert xt.shape == (50, 3, 32, 32) and len(classes100) == 100
    # torchvision itself refuses non-original files (MD5 check): that is why they are read directly
    import torchvision

    with pytest.raises(RuntimeError):
        torchvision.datasets.CIFAR10(str(root), train=True, download=False)


def test_cifar_missing_names_root_and_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"cifar10 not found under {tmp_path}.*download"):
        load_cifar("cifar10", tmp_path, download=False)


def test_load_id_data_cifar(root: Path) -> None:
    d = load_id_data("cifar10", str(root), val_size=40, train_size=100, seed=0, download=False)
    assert d.image_shape == (3, 32, 32) and d.num_classes == 10
    assert len(d.train[0]) == 100 and len(d.val[0]) == 40 and len(d.test[0]) == 60
    assert default_patch(32) == 8 and default_patch(28) == 7
    assert patch_shuffle(d.val[0], default_patch(32)).shape == d.val[0].shape


# --------------------------------------------------------------------------- suite


def test_data_status_and_check_available(root: Path) -> None:
    rows = {r["name"]: r for r in data_status(root, "cifar10")}
    assert set(rows) == set(SUITE)
    assert rows["cifar10"]["role"] == "ID" and rows["tinyimagenet"]["role"] == "validation"
    assert rows["isun"]["role"] == "extra test"
    present = {n for n, r in rows.items() if r["present"]}
    assert present == {"cifar10", "cifar100", "svhn", "textures", "lsun", "tinyimagenet"}
    assert rows["textures"]["found"].endswith("dtd/images")
    table = format_status(list(rows.values()))
    assert "MISSING" in table and str(root / "ood" / "places365") in table
    check_available(["cifar100", "svhn", "textures", "lsun"], root, id_dataset="cifar10")
    with pytest.raises(UserError) as e:
        check_available(["places365", "svhn", "sun"], root, id_dataset="cifar10")
    msg = str(e.value)
    assert "2 OOD set(s) missing" in msg and "places365" in msg and "sun (expected" in msg and "svhn (" not in msg
    with pytest.raises(UserError, match="validation OOD set"):
        check_available(["tinyimagenet"], root)
    with pytest.raises(UserError, match="in-distribution"):
        check_available(["cifar10"], root, id_dataset="cifar10")


def test_load_suite_sets_in_id_format(root: Path) -> None:
    for name, n in (("svhn", 45), ("textures", 12), ("lsun", 12), ("cifar100", 50)):
        x = load_suite_set(name, root, (3, 32, 32), id_dataset="cifar10")
        assert x.shape == (n, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1, name
    assert load_suite_set("svhn", root, n=10, seed=3).shape[0] == 10
    # svhn .mat is H×W×C×N: the first image comes back unchanged
    from scipy.io import loadmat

    raw = loadmat(root / "svhn" / "test_32x32.mat")["X"][..., 0]
    assert torch.allclose(load_suite_set("svhn", root)[0], torch.from_numpy(raw).permute(2, 0, 1).float() / 255)
    x = load_suite_set("tinyimagenet", root, allow_validation=True)
    assert x.shape == (12, 3, 32, 32)


def test_resize_center_crop_matches_torchvision() -> None:
    from torchvision.transforms import functional as TF

    arr = np.random.default_rng(0).integers(0, 256, size=(48, 80, 3), dtype=np.uint8)
    ours = torch.from_numpy(resize_center_crop(arr)).permute(2, 0, 1)
    t = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    ref = TF.center_crop(TF.resize(t, 32, antialias=True), 32)
    assert ours.shape == (3, 32, 32) and torch.allclose(ours, ref.clamp(0, 1), atol=2e-2)
    same = np.zeros((32, 32, 3), dtype=np.uint8)
    assert resize_center_crop(same) is same


# --------------------------------------------------------------------------- recipes


def test_recipes_match_the_paper() -> None:
    assert set(recipe_names()) >= {f"{d}_{a}" for d in ("cifar10", "cifar100") for a in ("densenet100", "wrn40_4")}
    for name in recipe_names():
        cfg = build_config(name)
        ds = cfg.data.dataset
        if ds not in PAPER_SUITE:  # e.g. fashion_open_set: not a paper table
            continue
        assert cfg.base.epochs == 100 and cfg.base.lr == 0.1 and cfg.base.nesterov and cfg.base.momentum == 0.9
        assert cfg.base.weight_decay == 1e-4 and cfg.base.batch_size == 64 and cfg.base.schedule == "cosine"
        assert (cfg.um.keep_ratio, cfg.um.zeta) == ((0.975, 0.10) if ds == "cifar10" else (0.97, 1.20))
        assert cfg.umap.keep_ratio == 0.8 and cfg.data.ood == PAPER_SUITE[ds]
        assert "tinyimagenet" not in cfg.data.ood


def test_recipe_overrides_and_bad_keys() -> None:
    cfg = build_config("cifar10_densenet100", overrides=["base.epochs=3", "um.keep_ratio=0.9"])
    assert cfg.base.epochs == 3 and cfg.um.keep_ratio == 0.9
    with pytest.raises(UserError, match="base.epochz"):
        build_config("cifar10_densenet100", overrides=["base.epochz=3"])
    with pytest.raises(UserError, match="um.keep_ratio"):
        build_config("cifar10_densenet100", overrides=["um.keep_ratio=1.5"])
    with pytest.raises(UserError, match="unknown recipe"):
        build_config("cifar10_resnet")


# --------------------------------------------------------------------------- run end to end


def test_run_recipe_end_to_end(root: Path, tmp_path: Path) -> None:
    from unleash_ood.run.recipes import run_recipe

    out = tmp_path / "run"
    res = run_recipe("cifar10_densenet100", [0, 1], out, [*TINY, f"data.data_root={root}"])
    assert res == json.loads((out / "report.json").read_text())
    for s in (0, 1):
        recs = json.loads((out / f"seed{s}" / "results.json").read_text())
        assert {r["ood"] for r in recs} == {"cifar100", "svhn", "textures", "far", "mean"}
        assert {r["model"] for r in recs} == {"base", "um", "ce_finetune", "umap"}
        cfg = json.loads((out / f"seed{s}" / "config.json").read_text())
        assert cfg["seed"] == s and cfg["data"]["dataset"] == "cifar10"
    assert (out / "ood_cache" / "svhn.npz").is_file()
    md = (out / "report.md").read_text()
    assert "cifar10 / small_cnn" in md and "Energy+UM" in md and " ± " in md and "svhn (far)" in md
    agg = json.loads((out / "report.json").read_text())
    assert all(r["n_seeds"] == 2 for r in agg)


def test_run_recipe_fails_before_training(root: Path, tmp_path: Path) -> None:
    from unleash_ood.run.recipes import run_recipe

    out = tmp_path / "run"
    over = [*TINY, f"data.data_root={root}", "data.ood=[cifar100, places365, inaturalist]"]
    with pytest.raises(UserError, match="nothing was trained.*places365.*inaturalist"):
        run_recipe("cifar10_densenet100", [0], out, over)
    assert not (out / "seed0").exists()
    with pytest.raises(UserError, match="cifar10 not found"):
        run_recipe("cifar10_densenet100", [0], out, [*TINY, f"data.data_root={tmp_path / 'empty'}"])


# --------------------------------------------------------------------------- report


def _results(path: Path, fpr: dict[str, float], acc: float, dataset: str = "cifar10") -> None:
    recs = []
    for model in ("base", "um"):
        for ood, v in fpr.items():
            bump = 10.0 if model == "base" else 0.0
            recs.append({"model": model, "score": "Energy", "ood": ood, "fpr95": v + bump, "auroc": 90.0 - v / 10,
                         "aupr_in": 91.0, "aupr_out": 89.0, "id_acc": acc})
        m = float(np.mean(list(fpr.values())))
        recs.append({"model": model, "score": "Energy", "ood": "mean", "fpr95": m + (10.0 if model == "base" else 0),
                     "auroc": 90.0 - m / 10, "aupr_in": 91.0, "aupr_out": 89.0, "id_acc": acc})
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(recs))
    (path / "config.json").write_text(json.dumps({"data": {"dataset": dataset}, "model": {"arch": "densenet100"}}))


def test_aggregate_mean_and_std(tmp_path: Path) -> None:
    from unleash_ood.run.aggregate import aggregate, write_report

    _results(tmp_path / "r" / "seed0", {"svhn": 20.0, "lsun": 40.0}, 94.0)
    _results(tmp_path / "r" / "seed1", {"svhn": 30.0, "lsun": 50.0}, 95.0)
    _results(tmp_path / "r" / "seed2", {"svhn": 40.0, "lsun": 30.0}, 96.0)
    recs = aggregate([tmp_path / "r"])
    get = {(r["model"], r["ood"]): r for r in recs}
    um_svhn = get[("um", "svhn")]
    assert um_svhn["n_seeds"] == 3 and um_svhn["fpr95"] == pytest.approx(30.0)
    assert um_svhn["fpr95_std"] == pytest.approx(10.0)  # sample std of 20, 30, 40
    assert um_svhn["group"] == "far"  # records written before groups existed: far
    assert get[("base", "svhn")]["fpr95"] == pytest.approx(40.0)
    assert get[("um", "mean")]["id_acc"] == pytest.approx(95.0) and get[("um", "mean")]["id_acc_std"] == pytest.approx(1.0)
    assert get[("um", "mean")]["fpr95"] == pytest.approx(35.0)
    write_report([tmp_path / "r"], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    # old records: no fpr95_ood_positive column values
    assert "| Energy | 3 | 86.50 ± 0.50 | 91.00 ± 0.00 | 45.00 ± 5.00 |  | 95.00 ± 1.00 |" in md
    assert "| Energy+UM | 3 | 86.50 ± 0.50 | 91.00 ± 0.00 | 35.00 ± 5.00 |  | 95.00 ± 1.00 |" in md
    assert "| Method | svhn (far) | lsun (far) | mean |" in md and "30.00 ± 10.00" in md
    csv_lines = (tmp_path / "out" / "report.csv").read_text().splitlines()
    assert csv_lines[0].startswith("setting,model,score,ood,group,fpr95,fpr95_ood_positive,auroc")
    assert "n_seeds,fpr95_std" in csv_lines[0]
    assert json.loads((tmp_path / "out" / "report.json").read_text())[0]["n_seeds"] == 3
    # a single run: std 0
    one = aggregate([tmp_path / "r" / "seed0"])
    assert all(r["fpr95_std"] == 0.0 for r in one)
    with pytest.raises(UserError, match="no results.json"):
        aggregate([tmp_path / "nothing"])


# --------------------------------------------------------------------------- keep-ratio selection


class _NoTouch(dict):
    def __getitem__(self, k):
        raise AssertionError("selection looked at an OOD test set")

    def items(self):
        raise AssertionError("selection looked at an OOD test set")

    def values(self):
        raise AssertionError("selection looked at an OOD test set")


def test_select_keep_ratio_on_validation_only(root: Path, tmp_path: Path) -> None:
    from unleash_ood.config import DataConfig, OptimConfig, UMConfig
    from unleash_ood.data.prepared import Prepared
    from unleash_ood.methods.train import train
    from unleash_ood.models import build_model
    from unleash_ood.run.select_keep import SelectionSettings, select_keep_ratio, validation_ood

    d = load_id_data("cifar10", str(root), val_size=40, train_size=120, seed=0, download=False)
    prep = Prepared(d, _NoTouch(), patch_shuffle(d.val[0], 8, seed=0))
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, in_channels=3, width=4, mean=(0.5,) * 3, std=(0.25,) * 3)
    train(model, prep.train_batches(32, 0, False), OptimConfig(epochs=2, lr=0.05, batch_size=32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    um = UMConfig(zeta_draws=1, optim=OptimConfig(epochs=3, lr=0.01, batch_size=32))
    sets = validation_ood(DataConfig(dataset="cifar10", data_root=str(root), val_ood_size=12),
                          prep.val_ood, d.image_shape)
    assert sets["near"][0] == "tinyimagenet" and sets["near"][1].shape == (12, 3, 32, 32)
    assert sets["far"][1] is prep.val_ood
    res = select_keep_ratio(model, prep, um, sets, SelectionSettings(grid=(0.9, 0.99), epochs=1),
                            out_path=tmp_path / "sel.json")
    assert res["keep_ratio"] in (0.9, 0.99) and len(res["candidates"]) == 2
    best = min(res["candidates"], key=lambda c: (c["val_fpr95"], -c["val_auroc"]))
    assert res["keep_ratio"] == best["keep_ratio"] and res["zeta"] == best["zeta"]
    assert all(c["zeta"] > 0 for c in res["candidates"])
    assert json.loads((tmp_path / "sel.json").read_text())["val_ood"] == {"far": "patch-shuffled ID validation",
                                                                         "near": "tinyimagenet"}
    for c in res["candidates"]:  # the criterion is the mean over the groups
        assert c["val_fpr95"] == pytest.approx((c["near_fpr95"] + c["far_fpr95"]) / 2)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # fallback: the pipeline's patch-shuffled validation images
    sets2 = validation_ood(DataConfig(dataset="cifar10", data_root=str(tmp_path)), prep.val_ood, d.image_shape)
    assert list(sets2) == ["far"] and sets2["far"][1] is prep.val_ood


def test_validation_ood_for_fashion_has_a_near_glyph_proxy_disjoint_from_the_test_glyphs() -> None:
    from unleash_ood.config import DataConfig
    from unleash_ood.data.glyphs import load_glyphs
    from unleash_ood.run.select_keep import validation_ood

    fallback = torch.rand(5, 1, 28, 28)
    sets = validation_ood(DataConfig(val_ood_size=50), fallback, (1, 28, 28))
    assert sets["far"][1] is fallback and sets["near"][0].startswith("glyphs")
    near = sets["near"][1]
    assert near.shape == (50, 1, 28, 28)
    test = load_glyphs(50, 0, (1, 28, 28), split="test")
    assert not torch.equal(near, test)


# --------------------------------------------------------------------------- CLI


def _cli(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    add_paper_parsers(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    args.func(args)


def test_cli_data_list_run_list_and_report(root: Path, tmp_path: Path, capsys) -> None:
    _cli(["data", "list", "--data-root", str(root)])
    out = capsys.readouterr().out
    assert "places365" in out and "MISSING" in out and "present" in out
    _cli(["run", "--list"])
    assert "cifar100_wrn40_4" in capsys.readouterr().out
    _results(tmp_path / "a", {"svhn": 20.0}, 90.0)
    _results(tmp_path / "b", {"svhn": 40.0}, 92.0)
    _cli(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "rep")])
    assert "30.00 ± 14.14" in capsys.readouterr().out
    from unleash_ood.cli.paper import _seeds_and_overrides

    ns = argparse.Namespace(seeds=["0", "1,2", "base.epochs=1"], overrides=["x=1"])
    assert _seeds_and_overrides(ns) == ([0, 1, 2], ["x=1", "base.epochs=1"])


def test_load_ood_sets_mixes_suite_and_specs(root: Path) -> None:
    from unleash_ood.data.suite import load_ood_sets

    sets = load_ood_sets(["svhn", "textures", "uniform"], "cifar10", root, (3, 32, 32), n=10)
    assert list(sets) == ["svhn", "textures", "uniform"]
    assert sets["svhn"].shape == (10, 3, 32, 32) and sets["uniform"].shape == (10, 3, 32, 32)
    # Fashion-MNIST: 'textures' stays the built-in picture crops
    fm = load_ood_sets(["textures"], "fashion_mnist", root, (1, 28, 28), n=5)
    assert fm["textures"].shape == (5, 1, 28, 28)
    with pytest.raises(UserError, match="places365"):
        load_ood_sets(["svhn", "places365"], "cifar10", root, (3, 32, 32))


def test_run_recipe_with_keep_selection(root: Path, tmp_path: Path) -> None:
    from unleash_ood.run.recipes import run_recipe

    out = tmp_path / "sel"
    run_recipe("cifar10_densenet100", [0], out, [*TINY, f"data.data_root={root}", "data.ood=[svhn]", "control=false"],
               select_grid=[0.9, 0.99], select_epochs=1)
    sel = json.loads((out / "seed0" / "keep_selection.json").read_text())
    assert sel["val_ood"]["near"] == "tinyimagenet" and sel["keep_ratio"] in (0.9, 0.99)
    cfg = json.loads((out / "seed0" / "config.json").read_text())
    assert cfg["um"]["keep_ratio"] == sel["keep_ratio"] and cfg["um"]["zeta"] == pytest.approx(sel["zeta"])
    summary = json.loads((out / "seed0" / "summary.json").read_text())
    assert summary["keep_selection"]["keep_ratio"] == sel["keep_ratio"] and summary["best_epochs"]
    assert summary["zeta"]["mean"] == pytest.approx(sel["zeta"])
    recs = json.loads((out / "seed0" / "results.json").read_text())
    assert {r["model"] for r in recs} == {"base", "um", "umap"}
