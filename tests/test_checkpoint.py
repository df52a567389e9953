"""Checkpoints and masks as safetensors: round trips, mismatches, corrupt files, atomic writes."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest
import torch
from conftest import assert_state_equal, small_cnn, state_copy

from unleash_ood.errors import UserError
from unleash_ood.masking import random_layer_masks
from unleash_ood.models import build_model
from unleash_ood.models.checkpoint import load_into, load_masks, load_tensors, save_masks, save_model, save_tensors
from unleash_ood.utils.files import atomic_write

META = {"arch": "small_cnn", "num_classes": 10, "width": 8, "note": "ünïcode ✓", "zeta": 0.1}


def test_model_round_trip_channels_last(trained_cnn, fmnist_small, tmp_path: Path) -> None:
    model = trained_cnn.to(memory_format=torch.channels_last)
    assert model.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    path = save_model(tmp_path / "sub" / "model.safetensors", model, META)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temp files left

    fresh = small_cnn(seed=123).to(memory_format=torch.channels_last)
    meta = load_into(path, fresh, expect={"arch": "small_cnn", "num_classes": 10})
    assert meta == META
    assert_state_equal(fresh, state_copy(model))
    x = fmnist_small[2][:32]
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    # also loads into a standard-layout model
    plain = small_cnn(seed=5)
    load_into(path, plain)
    assert_state_equal(plain, state_copy(model))


def test_checkpoint_metadata_mismatch(trained_cnn, tmp_path: Path) -> None:
    path = save_model(tmp_path / "m.safetensors", trained_cnn, META)
    with pytest.raises(UserError, match="arch") as info:
        load_into(path, small_cnn(), expect={"arch": "densenet100"})
    assert str(path) in str(info.value)


def test_checkpoint_of_other_class_count(trained_cnn, tmp_path: Path) -> None:
    path = save_model(tmp_path / "m10.safetensors", trained_cnn, {"arch": "small_cnn"})  # no num_classes in meta
    other = build_model("small_cnn", 5, width=8)
    reference = state_copy(other)
    with pytest.raises(UserError, match=r"has 10 classes \(its classifier fc.weight has 10 outputs\), but the "
                       "model has 5") as info:
        load_into(path, other)
    assert str(path) in str(info.value)
    assert_state_equal(other, reference)  # nothing half-loaded


def test_checkpoint_of_other_architecture(trained_cnn, tmp_path: Path) -> None:
    path = save_model(tmp_path / "cnn.safetensors", trained_cnn, {})
    resnet = build_model("torchvision:resnet18", 10, small_input=True, in_channels=1)
    with pytest.raises(UserError, match="does not fit") as info:
        load_into(path, resnet)
    assert str(path) in str(info.value)
    assert "missing" in str(info.value) and "unexpected" in str(info.value)
    # and a wider CNN: same keys, other shapes
    with pytest.raises(UserError, match="shape mismatch"):
        load_into(path, build_model("small_cnn", 10, width=16))


@pytest.mark.parametrize("content", [
    random.Random(0).randbytes(4096),
    b"",
    b"\x08\x00\x00\x00\x00\x00\x00\x00{notjson",
    b"\xff" * 16,
])
def test_corrupt_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        load_into(path, small_cnn())
    assert str(path) in str(info.value)


def test_truncated_checkpoint(trained_cnn, tmp_path: Path) -> None:
    path = save_model(tmp_path / "t.safetensors", trained_cnn, META)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="t.safetensors"):
        load_into(path, small_cnn())


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_into(tmp_path / "nope.safetensors", small_cnn())


def test_atomic_write_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"old contents"))

    def bad_writer(tmp: str) -> None:
        Path(tmp).write_bytes(b"half-writ")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, bad_writer)
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]

    # KeyboardInterrupt (BaseException) is cleaned up as well
    def interrupted(tmp: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]

    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"new"))
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_save_model_failure_keeps_previous_checkpoint(trained_cnn, tmp_path: Path) -> None:
    path = save_model(tmp_path / "m.safetensors", trained_cnn, META)
    before = path.read_bytes()
    with pytest.raises(TypeError):  # metadata not JSON-serialisable: fails before anything is replaced
        save_model(path, small_cnn(seed=9), {"bad": object()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_masks_round_trip(tmp_path: Path) -> None:
    model = small_cnn()
    masks = random_layer_masks(model, 0.7, seed=4)
    path = save_masks(tmp_path / "masks.safetensors", masks, {"keep_ratio": 0.7, "method": "umap"})
    loaded, meta = load_masks(path)
    assert meta == {"keep_ratio": 0.7, "method": "umap"}
    assert set(loaded) == set(masks)
    for k, m in masks.items():
        assert loaded[k].dtype == torch.bool
        assert torch.equal(loaded[k], m)


def test_tensors_round_trip_without_meta(tmp_path: Path) -> None:
    t = {"a": torch.arange(6.0).view(2, 3).t(), "b": torch.tensor([1, 2], dtype=torch.int64)}  # non-contiguous
    path = save_tensors(tmp_path / "x.safetensors", t)
    loaded, meta = load_tensors(path)
    assert meta == {}
    assert torch.equal(loaded["a"], t["a"]) and torch.equal(loaded["b"], t["b"])


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_honours_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "f.txt", lambda tmp: Path(tmp).write_text("x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
