"""The benchmark's data: the synthetic group (apart from far and mean), the `scenes` far set and its
source pictures, the pinned glyph fonts and the symbol-font check, and the per-set hashes a run records."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import ImageFont

from unleash_ood.config import DataConfig
from unleash_ood.data import glyphs, scenes
from unleash_ood.data.auxpool import AUX_PICTURES
from unleash_ood.data.builtin import BUILTIN, OFFLINE_SETS, PHOTO_PICTURES, TEXTURE_PICTURES, _picture_tensor
from unleash_ood.data.fingerprint import (
    REFERENCE_PATH,
    builtin_records,
    images_sha256,
    read_reference,
    reference_settings,
    to_uint8,
    warn_if_unlike_reference,
    write_reference,
)
from unleash_ood.data.images import resize
from unleash_ood.data.specs import load_ood
from unleash_ood.errors import UserError
from unleash_ood.eval.evaluate import Evaluation
from unleash_ood.report.tables import group_table, markdown_report

MPL_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
SHAPES = [(1, 28, 28), (3, 32, 32)]


# --------------------------------------------------------------------------- synthetic group


@pytest.fixture(scope="module")
def per_set_records(fmnist_full) -> list[dict]:
    """Real metric records: ID = 400 Fashion-MNIST test images, score = mean brightness, six real sets."""
    _, _, xt, _ = fmnist_full
    names = ("glyphs", "digits", "textures", "photos", "gaussian", "uniform")
    sets = {name: load_ood(name, n=150, seed=0) for name in names}
    scores = {"id": {"brightness": xt[:400].mean(dim=(1, 2, 3)).numpy()},
              **{name: {"brightness": x.mean(dim=(1, 2, 3)).numpy()} for name, x in sets.items()}}
    groups = {name: BUILTIN[name].group for name in names}
    return Evaluation(scores, 80.0).records("base", groups)


def test_synthetic_sets_are_apart_from_far_and_mean(per_set_records: list[dict]) -> None:
    by = {r["ood"]: r for r in per_set_records}
    assert {by[n]["group"] for n in ("gaussian", "uniform")} == {"synthetic"}
    assert {r["ood"] for r in per_set_records if r["group"] == "aggregate"} == {"near", "far", "synthetic", "mean"}
    def mean(key: str, *sets: str) -> float:
        return float(np.mean([by[s][key] for s in sets]))
    for key in ("fpr95", "auroc", "aupr_in", "fpr95_ood_positive"):
        assert by["far"][key] == pytest.approx(mean(key, "textures", "photos"))
        assert by["synthetic"][key] == pytest.approx(mean(key, "gaussian", "uniform"))
        assert by["near"][key] == pytest.approx(mean(key, "glyphs", "digits"))
        assert by["mean"][key] == pytest.approx(mean(key, "glyphs", "digits", "textures", "photos"))
    # the noise sets would move the mean: brightness separates them from Fashion-MNIST easily
    everything = np.mean([by[s]["auroc"] for s in ("glyphs", "digits", "textures", "photos", "gaussian", "uniform")])
    assert abs(by["mean"]["auroc"] - everything) > 1.0


def test_tables_show_the_synthetic_group_apart(per_set_records: list[dict]) -> None:
    table = group_table(per_set_records)
    assert table.splitlines()[0] == ("| Method | near AUROC ↑ | near FPR95 ↓ | far AUROC ↑ | far FPR95 ↓ | "
                                     "synthetic AUROC ↑ | synthetic FPR95 ↓ | ID-ACC ↑ |")
    md = markdown_report(per_set_records)
    assert "Groups (near: glyphs, digits; far: textures, photos; synthetic: gaussian, uniform)." in md
    assert "## Mean over 4 OOD sets (near and far)" in md
    assert ("| Method | glyphs (near) | digits (near) | textures (far) | photos (far) | gaussian (synthetic) | "
            "uniform (synthetic) | near | far | synthetic | mean |") in md


# --------------------------------------------------------------------------- scenes


def _thumbs(pictures: list[torch.Tensor]) -> torch.Tensor:
    """Each picture (1×1×h×w) as a 16×16 zero-mean unit-norm vector, for near-duplicate checks."""
    flat = torch.cat([resize(p, (16, 16)) for p in pictures]).flatten(1).double()
    flat = flat - flat.mean(dim=1, keepdim=True)
    return flat / flat.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_scenes_is_cut_from_at_least_30_distinct_pictures(shape: tuple[int, int, int]) -> None:
    x = load_ood("scenes", image_shape=shape, n=300, seed=0)
    assert x.shape == (300, *shape) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.flatten(1).std(dim=1).mean()) > 0.03
    assert len(torch.unique(x.flatten(1), dim=0)) == 300
    origin = BUILTIN["scenes"].origin(x)
    assert origin.distinct == len(origin.sources) == len(scenes.SCENE_PICTURES) == 31
    pictures = scenes.scene_pictures(1)
    assert all(min(p.shape[-2:]) == scenes.SCENE_SIDE for p in pictures)
    similarity = _thumbs(pictures) @ _thumbs(pictures).T
    similarity.fill_diagonal_(-1.0)
    assert float(similarity.max()) < 0.95  # 31 different pictures, not one picture in several sizes


def test_scenes_is_disjoint_from_the_auxiliary_pool_and_the_other_picture_sets() -> None:
    skimage_names = {*AUX_PICTURES, *PHOTO_PICTURES, *TEXTURE_PICTURES}
    assert not {name.rsplit(".", 1)[0] for _, name in scenes.SCENE_PICTURES} & skimage_names
    others = _thumbs([_picture_tensor(name, 1) for name in sorted(skimage_names)])
    assert float((_thumbs(scenes.scene_pictures(1)) @ others.T).max()) < 0.9  # no picture twice, by content


def test_scenes_without_its_pictures_names_the_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(scenes, "_BACKGROUNDS", tmp_path)
    with pytest.raises(UserError) as err:
        load_ood("scenes", n=8)
    message = str(err.value)
    assert "\n" not in message
    assert "apt-get install lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds" in message


def test_makefile_installs_the_pinned_packages() -> None:
    makefile = (Path(__file__).parents[1] / "Makefile").read_text()
    pinned = dict(re.findall(r"^(FONT_PACKAGES|SCENE_PACKAGES) = (.+)$", makefile, flags=re.MULTILINE))
    assert pinned == {"FONT_PACKAGES": glyphs.FONT_PACKAGES, "SCENE_PACKAGES": scenes.SCENE_PACKAGES}
    assert set(glyphs.PINNED_FONTS) - {glyphs.MATPLOTLIB} == set(glyphs.FONT_PACKAGES.split())
    assert {p for p, _ in scenes.SCENE_PICTURES} - {scenes.SCIKIT_LEARN, scenes.MATPLOTLIB} == set(
        scenes.SCENE_PACKAGES.split())


# --------------------------------------------------------------------------- glyph fonts


def test_symbol_fonts_fail_the_letter_check_text_fonts_pass(tmp_path: Path) -> None:
    references = glyphs.reference_shapes()

    def font(name: str) -> ImageFont.FreeTypeFont:
        return ImageFont.truetype(str(MPL_FONTS / name), glyphs.FONT_SIZE)
    assert not glyphs.draws_letters(font("cmex10.ttf"), references)  # A–J are delimiters and integrals
    assert not glyphs.draws_letters(font("LastResortHE-Regular.ttf"), references)  # fallback boxes
    assert glyphs.draws_letters(font("DejaVuSans.ttf"), references)
    assert glyphs.draws_letters(font("cmr10.ttf"), references)
    # the check is applied to every candidate font: only the text font of these two survives
    for name in ("cmex10.ttf", "DejaVuSerif.ttf"):
        shutil.copy(MPL_FONTS / name, tmp_path / name)
    assert [f.family for f in glyphs.available_fonts([tmp_path])] == ["DejaVu Serif"]
    # math fonts are not pinned (cmsy10's A–J are calligraphic capitals: letters, but a math font)
    assert not {"cmex10.ttf", "cmsy10.ttf", "cmmi10.ttf"} & set(glyphs.PINNED_FONTS[glyphs.MATPLOTLIB])


def test_glyphs_use_exactly_the_pinned_fonts() -> None:
    fonts = glyphs.available_fonts()
    pinned = {f"{package}:{name}" for package, names in glyphs.PINNED_FONTS.items() for name in names}
    assert {f.source for f in fonts} == pinned  # every pinned font passes the check; nothing else is used
    test = BUILTIN["glyphs"].origin(load_ood("glyphs", n=4))
    val = glyphs.glyph_fonts("val")
    assert test.distinct == len(test.sources) and set(test.sources) | {f.source for f in val} == pinned
    assert not set(test.sources) & {f.source for f in val}


def test_a_missing_pinned_font_names_its_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(glyphs.PACKAGE_FONT_DIRS, "fonts-freefont-ttf", tmp_path)
    with pytest.raises(UserError) as err:
        load_ood("glyphs", n=4)
    assert "\n" not in str(err.value) and "apt-get install fonts-freefont-ttf" in str(err.value)
    assert "FreeSans.ttf" in str(err.value) and "fonts-liberation" not in str(err.value)


# --------------------------------------------------------------------------- hashes


def test_hash_is_of_the_rounded_uint8_images_and_their_shape() -> None:
    x = load_ood("textures", n=20, seed=0)
    by_hand = np.round(x.numpy() * np.float32(255)).clip(0, 255).astype(np.uint8)
    assert torch.equal(to_uint8(x), torch.from_numpy(by_hand))
    assert images_sha256(x) == hashlib.sha256(b"20,1,28,28;" + by_hand.tobytes()).hexdigest()
    levels = to_uint8(x).float() / 255  # the same images, exactly on the 0–255 levels
    assert images_sha256(levels) == images_sha256(x) == images_sha256(levels + 0.3 / 255)  # below the step
    assert images_sha256(levels + 0.7 / 255) != images_sha256(x)
    assert images_sha256(x[:10]) != images_sha256(x)


def test_set_hashes_are_fixed_per_seed() -> None:
    names = ["scenes", "glyphs", "textures", "uniform"]
    first = builtin_records(names, (1, 28, 28), seed=0, n=50)
    assert first == builtin_records(names, (1, 28, 28), seed=0, n=50)
    other = builtin_records(names, (1, 28, 28), seed=1, n=50)
    assert all(first[n]["sha256"] != other[n]["sha256"] for n in names)
    assert first["scenes"]["shape"] == [50, 1, 28, 28] and first["scenes"]["distinct_sources"] == 31
    assert first["uniform"]["sources"] == [] and first["uniform"]["distinct_sources"] == 0


def test_a_run_unlike_the_reference_says_which_sets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = DataConfig(ood_size=30)
    records = builtin_records(["textures", "uniform"], (1, 28, 28), cfg.seed, cfg.ood_size)
    path = write_reference(tmp_path / "set_hashes.json", cfg, records)
    assert warn_if_unlike_reference(records, cfg, path) == [] and capsys.readouterr().out == ""
    changed = {**records, "uniform": {**records["uniform"], "sha256": "0" * 64}}
    assert warn_if_unlike_reference(changed, cfg, path) == ["uniform"]
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "uniform" in out and "textures" not in out
    # other data settings: nothing to compare with
    assert warn_if_unlike_reference(changed, DataConfig(ood_size=30, seed=1), path) == []


def test_data_list_prints_the_hashes_a_run_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from unleash_ood.cli import main

    out = tmp_path / "hashes.json"
    assert main(["data", "list", "--id", "fashion_mnist", "--seed", "1", "--ood-size", "40",
                 "--save-hashes", str(out)]) == 0
    text = capsys.readouterr().out
    expected = builtin_records(["textures", "scenes"], (1, 28, 28), seed=1, n=40)
    assert expected["textures"]["sha256"] in text and expected["scenes"]["sha256"] in text
    assert re.search(r"^scenes +far +present +31 ", text, flags=re.MULTILINE)
    assert re.search(r"^photos +far +present +12 ", text, flags=re.MULTILINE)
    saved = json.loads(out.read_text())
    assert saved["data"] == reference_settings(DataConfig(seed=1, ood_size=40))
    assert set(saved["sets"]) == {*OFFLINE_SETS, "val_near", "val_ood"}
    assert saved["sets"]["textures"] == expected["textures"]


def test_docs_set_hashes_are_the_code_s_sets() -> None:
    """docs/set_hashes.json (seed 0, default sizes) matches what this code and these files load."""
    reference = read_reference(REFERENCE_PATH)
    assert reference is not None and reference["data"] == reference_settings(DataConfig())
    assert set(reference["sets"]) == {*OFFLINE_SETS, "val_near", "val_ood"}
    cfg = DataConfig()
    again = builtin_records(OFFLINE_SETS, (1, 28, 28), cfg.seed, cfg.ood_size)
    assert {n: r["sha256"] for n, r in again.items()} == {n: reference["sets"][n]["sha256"] for n in OFFLINE_SETS}
