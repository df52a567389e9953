"""Models of one's own (issue #19): `--checkpoint FILE` (a `.pt`/`.pth` state_dict, or `.safetensors` with or
without our metadata) for `demo`, `um` and `umap`; `model.arch=timm:NAME`; and UM's guard rail (a ζ that
would push the model toward chance stops the run unless `--force`).

The data are CIFAR-shaped files (`write_fake_cifar`: class-coloured blobs a ResNet-18 memorizes in a few
seconds), so every run here is a real run on RGB 32×32 images.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from unleash_ood.cli import main
from unleash_ood.config import ModelConfig, OptimConfig
from unleash_ood.data import load_id_data
from unleash_ood.data.batches import TensorBatches
from unleash_ood.data.cifar import write_fake_cifar
from unleash_ood.detectors import DETECTORS
from unleash_ood.errors import UserError
from unleash_ood.eval.forward import classifier_layer, collect_outputs
from unleash_ood.methods.train import train
from unleash_ood.methods.um import mean_cross_entropy
from unleash_ood.models import build_model
from unleash_ood.models.checkpoint import align_keys, load_tensors
from unleash_ood.models.loading import load_checkpoint

HAS_TIMM = importlib.util.find_spec("timm") is not None
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (pip install 'unleash-ood[timm]')")

R18 = ["model.arch=torchvision:resnet18", "model.kwargs={}"]
CNN = ["model.arch=small_cnn", "model.kwargs={in_channels: 3, width: 4}"]
FAST = ["um.optim.epochs=1", "umap.optim.epochs=1", "um.zeta_draws=1", "scores=[Energy, MSP]",
        "track_scores=[Energy]", "save_features=false"]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("cifar")
    write_fake_cifar(r, "cifar10", n_train=300, n_test=60, seed=0)
    return r


def data_args(root: Path) -> list[str]:
    """`--quick` on the fake CIFAR-10: 300 train / 60 test images, a near and a far set. No ID validation
    split (so no validation proxies and no recommendation): these tests are about the model."""
    return ["data.dataset=cifar10", f"data.data_root={root}", "data.download=false", "data.val_size=0",
            "data.train_size=null", "data.test_size=null", "data.ood=[digits, uniform]", "data.ood_size=40",
            "data.val_ood_size=40"]


@pytest.fixture(scope="module")
def memorized(root: Path, tmp_path_factory) -> dict:
    """A torchvision ResNet-18 trained to near-zero training CE on the run's own training split, saved
    the ways users save weights: a bare-network state_dict `.pt` under DDP's `module.` prefix, and a
    `.safetensors` of the whole model without any metadata."""
    d = load_id_data("cifar10", str(root), val_size=0, seed=0, download=False)  # the runs' training split
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", 10)
    x, y = d.train
    train(model, TensorBatches(x, y, batch_size=32, shuffle=True, seed=0),
          OptimConfig(epochs=10, lr=0.01, batch_size=32, weight_decay=0.0))
    out = tmp_path_factory.mktemp("weights")
    pt, st = out / "r18.pt", out / "r18.safetensors"
    torch.save({f"module.{k}": v for k, v in model.net.state_dict().items()}, pt)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))  # no metadata at all
    return {"pt": pt, "safetensors": st, "state": model.state_dict(),
            "train_ce": mean_cross_entropy(model, TensorBatches(x, y, batch_size=128))}


def fails(capsys, argv: list[str], *needles: str) -> str:
    """The command exits 2 with one `unleash-ood: error:` line holding every needle."""
    assert main(argv) == 2
    full = capsys.readouterr().err
    lines = [line for line in full.replace("\r", "\n").splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("unleash-ood: error: ") and "Traceback" not in full, full
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def same_state(path: Path, state: dict) -> bool:
    saved, _ = load_tensors(path)
    return set(saved) == set(state) and all(torch.equal(saved[k], state[k]) for k in state)


# ----------------------------------------------------------------------------- loading one's weights

def test_wrapper_prefixes_are_aligned_where_that_makes_keys_fit() -> None:
    model = build_model("torchvision:resnet18", 10)
    own = model.state_dict()
    bare = model.net.state_dict()
    for state in ({f"module.{k}": v for k, v in bare.items()},  # DDP around the bare torchvision net
                  {f"module.model.{k}": v for k, v in own.items()},  # stacked wrappers around ours
                  {f"_orig_mod.{k}": v for k, v in own.items()}):  # torch.compile
        assert set(align_keys(state, own)) == set(own)
    other = {f"module.{k}": v for k, v in build_model("small_cnn", 10).state_dict().items()}
    assert set(align_keys(other, own)) != set(own)  # nothing fits: the closest candidate, for the error line


def test_load_checkpoint_reads_pt_and_bare_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model("torchvision:resnet18", 10)
    pt = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.net.state_dict().items()}}, pt)
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(st))
    arch = ModelConfig(arch="torchvision:resnet18", kwargs={})
    for path in (pt, st):
        loaded, cfg = load_checkpoint(path, 10, fallback=arch)
        assert cfg == arch
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items()), path
    with pytest.raises(UserError, match="no architecture metadata"):
        load_checkpoint(st, 10)


def test_wrong_keys_and_class_count_are_one_line(root: Path, tmp_path: Path, capsys) -> None:
    r18 = build_model("torchvision:resnet18", 10)
    pt = tmp_path / "r18.pt"
    torch.save({f"module.{k}": v for k, v in r18.net.state_dict().items()}, pt)
    data = data_args(root)
    out = tmp_path / "o"
    line = fails(capsys, ["um", "--quick", "--checkpoint", str(pt), "--out", str(out), *data,
                          "model.arch=torchvision:resnet34", "model.kwargs={}"],
                 "does not fit this model: ", " missing, e.g. ['net.layer1.2.", "model.arch")
    assert "unexpected" not in line  # resnet34 has every key of resnet18, and more
    fails(capsys, ["demo", "--quick", "--checkpoint", str(pt), "--out", str(out), *data, *CNN],
          "missing, e.g. ['features.", "unexpected, e.g. ['bn1.", "model.arch and model.kwargs")
    wide = tmp_path / "r18_100.safetensors"
    save_file({k: v.contiguous() for k, v in build_model("torchvision:resnet18", 100).state_dict().items()},
              str(wide))
    fails(capsys, ["umap", "--quick", "--checkpoint", str(wide), "--out", str(out), *data, *R18],
          "has 100 classes (its classifier net.fc.weight has 100 outputs), but the dataset has 10")
    assert not out.exists()  # refused before anything was written


@pytest.mark.slow
def test_demo_on_ones_own_resnet18_skips_base_training(root: Path, memorized: dict, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--checkpoint", str(memorized["safetensors"]), "--out", str(out),
                 *data_args(root), *R18]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["base_training"] == {"skipped": True, "checkpoint": str(memorized["safetensors"])}
    assert summary["stages"] == ["um", "control", "umap"] and not (out / "train_log.jsonl").exists()
    assert same_state(out / "checkpoints" / "base.safetensors", memorized["state"])  # the given model, as is
    # a memorized model passes the guard; its training CE, ζ and ln C are recorded
    check = summary["zeta_check"]
    assert check["passed"] and check["guard"] and check["train_ce"] == pytest.approx(memorized["train_ce"], rel=1e-4)
    assert check["ln_classes"] == pytest.approx(math.log(10)) and check["zeta"]["um"] == summary["zeta"]["value"]
    records = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in records} == {"base", "um", "ce_finetune", "umap"}
    assert {r["score"] for r in records} >= set(DETECTORS)  # every detector
    log = json.loads((out / "finetune_log.json").read_text())
    assert [r["ce_below_zeta"] for r in log["ce_finetune"]] == [0.0]
    assert all(0 <= r["ce_below_zeta"] <= 1 for name in ("um", "umap") for r in log[name])


@pytest.mark.slow
def test_um_on_a_module_prefixed_pt_and_the_keep_ratio_guard(root: Path, memorized: dict, tmp_path: Path,
                                                             capsys) -> None:
    out = tmp_path / "um"
    assert main(["um", "--quick", "--checkpoint", str(memorized["pt"]), "--out", str(out), *data_args(root),
                 *R18, *FAST]) == 0
    assert same_state(out / "checkpoints" / "base.safetensors", memorized["state"])
    assert json.loads((out / "summary.json").read_text())["base_training"]["skipped"]
    # the same memorized model, but a mask that removes 70% of every layer: ζ near chance, stopped
    refused = tmp_path / "refused"
    fails(capsys, ["um", "--quick", "--checkpoint", str(memorized["pt"]), "--out", str(refused),
                   *data_args(root), *R18, *FAST, "um.keep_ratio=0.3"],
          "UM at ζ = ", "would push the model toward chance", "use a larger keep ratio (um.keep_ratio=0.65)",
          "--force")
    fails(capsys, ["umap", "--quick", "--checkpoint", str(memorized["pt"]), "--out", str(refused),
                   *data_args(root), *R18, *FAST, "umap.zeta=1.5"],
          "UMAP at ζ = 1.500 would push the model toward chance", "set a lower umap.zeta (below 1.151)")
    assert not refused.exists()


@pytest.mark.slow
def test_guard_stops_an_undertrained_model_unless_forced(root: Path, tmp_path: Path, capsys) -> None:
    undertrained = [*data_args(root), *CNN, *FAST, "base.epochs=1", "data.train_size=100", "eval_every=1"]
    out = tmp_path / "demo"
    fails(capsys, ["demo", "--quick", "--out", str(out), *undertrained],
          "has not memorized its training set (its own training CE is", "more base.epochs", "--force",
          f"kept in {out / 'checkpoints' / 'base.safetensors'}")
    base = out / "checkpoints" / "base.safetensors"
    assert base.is_file() and not (out / "results.json").exists()  # the trained base stays, nothing else ran
    assert not (out / "checkpoints" / "um.safetensors").exists()
    um = tmp_path / "um"
    fails(capsys, ["um", "--quick", "--checkpoint", str(base), "--out", str(um), *undertrained],
          "toward chance (ζ ≥ ½·ln 10 = 1.151")
    assert not um.exists()  # a refusal before fine-tuning leaves no run
    assert main(["um", "--quick", "--checkpoint", str(base), "--out", str(um), *undertrained, "--force"]) == 0
    check = json.loads((um / "summary.json").read_text())["zeta_check"]
    assert not check["passed"] and not check["guard"] and check["train_ce"] >= check["limit"]
    assert "the guard was off" in (um / "results.md").read_text()


# ----------------------------------------------------------------------------- timm:NAME

@needs_timm
def test_timm_model_exposes_features_and_classifier() -> None:
    model = build_model("timm:mobilenetv3_small_050", 10, in_channels=3)
    assert classifier_layer(model) is model.net.get_classifier() is model.classifier
    x = torch.rand(6, 3, 32, 32)
    out = collect_outputs(model, [(x, torch.zeros(6, dtype=torch.long))])
    assert out.logits.shape == (6, 10) and out.features.shape == (6, model.num_features)
    # the penultimate features are the classifier's input: logits = W·h + b
    w, b = model.classifier.weight.detach(), model.classifier.bias.detach()
    torch.testing.assert_close(out.features @ w.T + b, out.logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(UserError, match="unknown timm model"):
        build_model("timm:no_such_net", 10)
    with pytest.raises(UserError, match="may not set pretrained"):
        build_model("timm:resnet10t", 10, options={"pretrained": True})


@needs_timm
@pytest.mark.slow
def test_timm_quick_demo(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "timm"
    assert main(["demo", "--quick", "--out", str(out), *data_args(root), "model.arch=timm:mobilenetv3_small_050",
                 "model.kwargs={}", "base.epochs=1", *FAST, "scores=[Energy, Mahalanobis, KNN]",
                 "--force"]) == 0  # one epoch does not memorize: the guard would stop it
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == {"arch": "timm:mobilenetv3_small_050", "kwargs": {"in_channels": 3}}  # from the data
    records = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in records} == {"base", "um", "ce_finetune", "umap"}
    assert {"Energy", "Mahalanobis", "KNN"} <= {r["score"] for r in records}
    base, model_cfg = load_checkpoint(out / "checkpoints" / "base.safetensors", 10)
    assert model_cfg.arch == "timm:mobilenetv3_small_050" and type(base).__name__ == "TimmClassifier"


def test_timm_missing_says_how_to_install(root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(UserError, match=r"pip install 'unleash-ood\[timm\]'"):
        build_model("timm:resnet10t", 10)
    out = tmp_path / "o"
    fails(capsys, ["demo", "--quick", "--out", str(out), *data_args(root), "model.arch=timm:resnet10t",
                   "model.kwargs={}"], "needs timm, which is not installed: pip install 'unleash-ood[timm]'")
    assert not out.exists()
