"""Pretrained starts: ``pytorch-ood:NAME`` (cache, SHA-256, key mapping, normalization) and user state_dicts.

No network: a WRN-40-2 state_dict is written in pytorch-ood's key format and its hash patched into the table.
"""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.request

import pytest
import torch
from conftest import layout_like, randomize_bn

from unleash_ood.errors import UserError
from unleash_ood.models import build_model, pretrained
from unleash_ood.models.checkpoint import load_tensors
from unleash_ood.models.loading import load_checkpoint

NAME = "wrn-40-2/cifar10/crossentropy"


def to_pytorch_ood_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our wrn40_2 keys → pytorch-ood's (the inverse of the documented mapping)."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"^(block\d+)\.(\d+)\.", r"\1.layer.\2.", k)
        out[k.replace(".shortcut.", ".convShortcut.")] = v
    return out


@pytest.fixture()
def source(tmp_path, monkeypatch):
    """A WRN-40-2 (with the entry's normalization) saved in pytorch-ood's format into a temp cache."""
    torch.manual_seed(0)
    entry = pretrained.REGISTRY[NAME]
    model = build_model("wrn40_2", 10, mean=entry.mean, std=entry.std).eval()
    randomize_bn(model, 1)
    cache = tmp_path / "cache"
    cache.mkdir()
    state = to_pytorch_ood_keys(model.state_dict())
    assert any(".layer.0." in k for k in state) and any("convShortcut" in k for k in state)
    raw = cache / "src.pt"
    torch.save(state, raw)
    patched = dataclasses.replace(entry, sha256=pretrained.sha256_of(raw))
    raw = raw.rename(cache / patched.file_name)
    monkeypatch.setitem(pretrained.REGISTRY, NAME, patched)
    monkeypatch.setattr(pretrained, "DEFAULT_CACHE", cache)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(*a, **k):
        raise AssertionError("the tests must not download")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return model, cache, raw, patched


def test_resolve_maps_keys_and_keeps_logits(source) -> None:
    model, cache, raw, entry = source
    path = pretrained.resolve_init("pytorch-ood:cifar10-pt", cache, download=False)  # alias of NAME
    assert path.parent == cache and path.suffix == ".safetensors"
    _, meta = load_tensors(path)
    assert meta["arch"] == "wrn40_2" and meta["num_classes"] == 10 and meta["source"] == f"pytorch-ood:{NAME}"
    assert meta["sha256"] == entry.sha256
    assert meta["model_kwargs"] == {"mean": list(entry.mean), "std": list(entry.std)}
    # through the pipeline's loader, as run_pipeline / um / umap / oe / select-keep use it (default cache)
    loaded, model_cfg = load_checkpoint(f"pytorch-ood:{NAME}", 10)
    assert model_cfg.arch == "wrn40_2"
    for k, v in model.state_dict().items():  # bit-identical weights and BN statistics
        assert torch.equal(loaded.state_dict()[k], v), k
    torch.testing.assert_close(loaded.normalize.std, model.normalize.std, rtol=0, atol=0)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():  # the loader's channels_last against the source in that layout: the same kernels
        torch.testing.assert_close(loaded.eval()(x), layout_like(model, loaded)(x), rtol=0, atol=0)
    # the converted file is reused (no re-read of the original)
    raw.unlink()
    assert pretrained.resolve_init(f"pytorch-ood:{NAME}", cache, download=False) == path


def test_old_files_without_num_batches_tracked_and_module_prefix(source) -> None:
    model, cache, raw, entry = source
    state = {f"module.{k}": v for k, v in torch.load(raw, weights_only=True).items()
             if not k.endswith("num_batches_tracked")}
    torch.save(state, raw)
    patched = dataclasses.replace(entry, sha256=pretrained.sha256_of(raw))
    raw.rename(cache / patched.file_name)  # the cache file name carries the hash prefix
    pretrained.REGISTRY[NAME] = patched  # the fixture's monkeypatch restores the original
    loaded, _ = load_checkpoint(pretrained.resolve_init(f"pytorch-ood:{NAME}", cache, download=False), 10)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), layout_like(model, loaded)(x), rtol=0, atol=0)


def test_wrong_sha_is_refused(source) -> None:
    _, cache, raw, entry = source
    pretrained.REGISTRY[NAME] = dataclasses.replace(entry, sha256="0" * 64)
    with pytest.raises(UserError, match="SHA-256"):
        pretrained.resolve_init(f"pytorch-ood:{NAME}", cache, download=False)


def test_missing_file_offline_names_the_path(source, monkeypatch) -> None:
    _, cache, raw, entry = source
    raw.unlink()
    with pytest.raises(UserError, match=re.escape(str(cache / entry.file_name))) as e:
        pretrained.resolve_init(f"pytorch-ood:{NAME}", cache, download=False)
    assert entry.url in str(e.value)
    monkeypatch.setenv(pretrained.OFFLINE_ENV, "1")  # the pipeline's loader honours the offline switch
    with pytest.raises(UserError, match="downloading is off"):
        load_checkpoint(f"pytorch-ood:{NAME}", 10)


def test_unknown_and_ambiguous_names() -> None:
    with pytest.raises(UserError, match="unknown pretrained model"):
        pretrained.lookup("wrn-40-2/cifar10/nope")
    with pytest.raises(UserError, match="ambiguous"):
        pretrained.lookup("wrn-40-2/cifar10/logitnorm")
    assert pretrained.lookup("wrn-40-2/cifar100/energy/s1").num_classes == 100
    assert all(e.key.startswith("wrn-40-2/") and len(e.sha256) == 64 for e in pretrained.REGISTRY.values())


def test_class_count_mismatch_is_clear(source) -> None:
    with pytest.raises(UserError, match="10 classes, the dataset has 100"):
        load_checkpoint(f"pytorch-ood:{NAME}", 100)


def test_import_state_dict_strips_module_prefix(tmp_path) -> None:
    torch.manual_seed(1)
    kwargs = {"in_channels": 3, "width": 4, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    model = build_model("small_cnn", 7, **kwargs).eval()
    src = tmp_path / "mine.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, src)
    out = pretrained.import_state_dict(src, "small_cnn", 7, kwargs)
    assert out == tmp_path / "mine.safetensors"
    loaded, cfg = load_checkpoint(out, 7)
    assert cfg.arch == "small_cnn" and cfg.kwargs == kwargs
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), layout_like(model, loaded)(x), rtol=0, atol=0)
    assert load_tensors(out)[1]["sha256"] == pretrained.sha256_of(src)


def test_import_wrong_arch_is_clear(tmp_path) -> None:
    model = build_model("small_cnn", 10, in_channels=3, width=4)
    src = tmp_path / "w.pt"
    torch.save(model.state_dict(), src)
    with pytest.raises(UserError, match="does not fit this model.*missing.*--arch"):
        pretrained.import_state_dict(src, "wrn40_2", 10)
    with pytest.raises(UserError, match="has 10 classes.*--num-classes is 5"):
        pretrained.import_state_dict(src, "small_cnn", 5, {"in_channels": 3, "width": 4})
    with pytest.raises(UserError, match="unknown model"):
        pretrained.import_state_dict(src, "nope", 10)
    with pytest.raises(UserError, match="file not found"):
        pretrained.import_state_dict(tmp_path / "absent.pt", "small_cnn", 10)
    (tmp_path / "code.pt").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="weights-only"):
        pretrained.import_state_dict(tmp_path / "code.pt", "small_cnn", 10)


def test_cli_import_weights(tmp_path, capsys) -> None:
    from unleash_ood.cli import main

    model = build_model("small_cnn", 10, in_channels=3, width=4)
    src = tmp_path / "w.pt"
    torch.save(model.state_dict(), src)
    out = tmp_path / "w_ours.safetensors"
    kw = json.dumps({"in_channels": 3, "width": 4})
    assert main(["import-weights", str(src), "--arch", "small_cnn", "--num-classes", "10",
                 "--model-kwargs", kw, "--out", str(out)]) in (0, None)
    assert "wrote" in capsys.readouterr().out and out.is_file()
    assert main(["import-weights", str(src), "--arch", "wrn40_2", "--num-classes", "10"]) == 2
    assert "does not fit" in capsys.readouterr().err


def test_run_recipe_with_init_skips_training(tmp_path) -> None:
    """``run RECIPE --init SPEC``: no base training; every seed starts from the imported weights."""
    from unleash_ood.data.cifar import write_fake_cifar
    from unleash_ood.run.recipes import run_recipe

    root = tmp_path / "data"
    write_fake_cifar(root, "cifar10", n_train=120, n_test=40, seed=0)
    write_fake_cifar(root, "cifar100", n_train=60, n_test=30, seed=1)
    kwargs = {"in_channels": 3, "width": 4, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    src = tmp_path / "base.pt"
    model = build_model("small_cnn", 10, **kwargs)
    torch.save(model.state_dict(), src)
    init = pretrained.import_state_dict(src, "small_cnn", 10, kwargs)
    over = ["data.download=false", "data.val_size=20", "data.ood_size=20", "data.val_ood_size=20",
            "data.augment=false", "data.ood=[cifar100]", "base.epochs=1", "um.optim.epochs=1",
            "um.optim.batch_size=32", "umap.optim.epochs=1", "umap.optim.batch_size=32", "um.zeta=null",
            "um.zeta_draws=1", "scores=[Energy]", "track_scores=[Energy]", f"data.data_root={root}",
            "model.arch=wrn40_4"]  # the recipe's arch is replaced by the checkpoint's
    out = tmp_path / "run"
    run_recipe("cifar10_densenet100", [0], out, over, init=init)
    summary = json.loads((out / "seed0" / "summary.json").read_text())
    assert "train" not in summary["stages"] and summary["init_checkpoint"] == str(init)
    base, cfg = load_checkpoint(out / "seed0" / "checkpoints" / "base.safetensors", 10)
    assert cfg.arch == "small_cnn"
    for k, v in model.state_dict().items():
        assert torch.equal(base.state_dict()[k], v), k
    with pytest.raises(UserError, match="not found"):
        run_recipe("cifar10_densenet100", [0], tmp_path / "run2", over, init=tmp_path / "absent.safetensors")
