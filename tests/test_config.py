"""Config loading: the --quick preset is a YAML file applied under the user's file and overrides."""

from __future__ import annotations

import json

import pytest

from unleash_ood.cli import main
from unleash_ood.config import PRESET_DIR, build_config, load_preset, merge
from unleash_ood.errors import UserError


def _effective(capsys, argv: list[str]) -> dict:
    assert main(["config", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_explicit_values_beat_the_quick_preset(capsys, tmp_path):
    quick = _effective(capsys, ["--quick"])
    assert quick["base"]["epochs"] == 3 and quick["data"]["train_size"] == 2000 and quick["eval_every"] == 1
    chosen = _effective(capsys, ["--quick", "base.epochs=40", "um.optim.epochs=4"])
    assert chosen["base"]["epochs"] == 40 and chosen["um"]["optim"]["epochs"] == 4
    assert chosen["data"]["train_size"] == 2000 and chosen["um"]["zeta_draws"] == 3  # the rest of the preset
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data:\n  train_size: 500\numap:\n  optim:\n    epochs: 7\n")
    from_file = _effective(capsys, ["--quick", "--config", str(cfg_file)])
    assert from_file["data"]["train_size"] == 500 and from_file["umap"]["optim"]["epochs"] == 7
    assert from_file["data"]["test_size"] == 1000 and from_file["base"]["epochs"] == 3
    assert _effective(capsys, [])["base"]["epochs"] == 30  # no preset without --quick


def test_quick_preset_on_a_recipe_keeps_the_overrides():
    cfg = build_config("cifar10_densenet100", ["quick"], ["base.epochs=40"])
    assert cfg.base.epochs == 40 and cfg.data.train_size == 2000
    assert cfg.model.arch == "densenet100"  # the recipe itself stays underneath


def test_presets_are_package_files():
    assert (PRESET_DIR / "quick.yaml").is_file()
    assert load_preset("quick")["base"] == {"epochs": 3}
    with pytest.raises(UserError, match="unknown preset 'fast'; choose from .*quick"):
        load_preset("fast")


def test_merge_is_by_section_and_copies():
    base = {"a": {"x": 1, "y": 2}, "b": 1}
    assert merge(base, {"a": {"y": 3}, "c": 4}) == {"a": {"x": 1, "y": 3}, "b": 1, "c": 4}
    assert base == {"a": {"x": 1, "y": 2}, "b": 1}
