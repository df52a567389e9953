"""Offline OOD test sets, user npz/folder specs, and the auxiliary-outlier pool."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unleash_ood.data.auxpool import AUX_PICTURES, load_auxiliary_pool
from unleash_ood.data.builtin import OFFLINE_SETS as BUILTIN_OOD
from unleash_ood.data.builtin import PHOTO_PICTURES, TEXTURE_PICTURES
from unleash_ood.data.images import to_image_format
from unleash_ood.data.specs import load_ood, load_ood_suite, ood_name
from unleash_ood.errors import UserError

SHAPES = [(1, 28, 28), (3, 32, 32)]
RANDOM_SETS = ("textures", "photos", "gaussian", "uniform")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any network connection attempt fail."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _assert_images(x: torch.Tensor, shape: tuple[int, int, int], n: int) -> None:
    assert x.dtype == torch.float32
    assert tuple(x.shape) == (n, *shape)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.isfinite(x).all()


# --------------------------------------------------------------------------- built-ins


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", BUILTIN_OOD)
def test_builtin_shape_dtype_range(name: str, shape: tuple[int, int, int], no_network: None) -> None:
    x = load_ood(name, image_shape=shape, n=40)
    _assert_images(x, shape, 1797 if name == "digits" else 40)
    assert float(x.std()) > 0.05  # not constant


def test_default_size_is_at_least_1000() -> None:
    for name in ("photos", "gaussian", "uniform"):
        assert len(load_ood(name)) == 2000


@pytest.mark.parametrize("name", RANDOM_SETS)
def test_random_sets_fixed_per_seed(name: str) -> None:
    a = load_ood(name, n=30, seed=3)
    assert torch.equal(a, load_ood(name, n=30, seed=3))
    assert not torch.equal(a, load_ood(name, n=30, seed=4))


def test_sets_leave_global_rng_untouched() -> None:
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    for name in RANDOM_SETS:
        load_ood(name, n=10)
    load_auxiliary_pool(n=20)
    assert torch.equal(torch_state, torch.get_rng_state())
    assert np.array_equal(numpy_state[1], np.random.get_state()[1])


def test_digits_are_all_sklearn_digits_scaled() -> None:
    from sklearn.datasets import load_digits

    raw = load_digits().images
    native = load_ood("digits", image_shape=(1, 8, 8), n=5, seed=7)
    assert native.shape == (1797, 1, 8, 8)
    np.testing.assert_allclose(native[:, 0].numpy(), raw / 16.0, atol=1e-6)
    rgb = load_ood("digits", image_shape=(3, 32, 32))
    assert torch.equal(rgb[:, 0], rgb[:, 2])
    assert torch.equal(load_ood("digits", seed=1), load_ood("digits", seed=2))


def test_gaussian_and_uniform_statistics() -> None:
    gaussian = load_ood("gaussian", n=200)
    uniform = load_ood("uniform", n=200)
    assert abs(float(gaussian.mean()) - 0.5) < 0.01
    assert abs(float(uniform.mean()) - 0.5) < 0.01
    assert float(uniform.std()) == pytest.approx((1 / 12) ** 0.5, abs=0.01)


def test_photos_in_colour_for_three_channels() -> None:
    x = load_ood("photos", image_shape=(3, 32, 32), n=200)
    channel_gap = (x[:, 0] - x[:, 1]).abs().flatten(1).amax(dim=1)
    assert (channel_gap > 0.05).any()  # some crops come from colour photographs
    assert (channel_gap == 0).any()  # and some from grayscale ones, replicated


def test_textures_are_gray_replicated() -> None:
    x = load_ood("textures", image_shape=(3, 32, 32), n=20)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])


def test_unknown_builtin_lists_valid_forms() -> None:
    with pytest.raises(UserError) as info:
        load_ood("svhn")
    message = str(info.value)
    assert "svhn" in message and "npz:" in message and "folder:" in message
    assert all(name in message for name in BUILTIN_OOD)


def test_invalid_image_shape_and_n() -> None:
    with pytest.raises(UserError):
        load_ood("uniform", image_shape=(2, 28, 28))
    with pytest.raises(UserError):
        load_ood("uniform", n=0)


# --------------------------------------------------------------------------- names and suites


@pytest.mark.parametrize(("spec", "name"), [
    ("npz:/x/svhn.npz", "svhn"),
    ("folder:/data/lsun/", "lsun"),
    ("folder:/data/lsun", "lsun"),
    ("textures", "textures"),
    (" Photos ", "photos"),
])
def test_ood_name(spec: str, name: str) -> None:
    assert ood_name(spec) == name


def test_suite_keys_and_duplicate_names(tmp_path: Path) -> None:
    np.savez(tmp_path / "mine.npz", images=np.zeros((4, 28, 28), np.uint8))
    suite = load_ood_suite(["gaussian", f"npz:{tmp_path / 'mine.npz'}", "digits"], n=10)
    assert list(suite) == ["gaussian", "mine", "digits"]
    assert suite["mine"].shape == (4, 1, 28, 28) and len(suite["gaussian"]) == 10
    with pytest.raises(UserError, match="gaussian"):
        load_ood_suite(["gaussian", "gaussian"])


# --------------------------------------------------------------------------- npz specs


def test_npz_uint8_gray_round_trip(tmp_path: Path) -> None:
    images = np.zeros((3, 20, 20), np.uint8)
    images[0] = 255
    images[1] = 51
    path = tmp_path / "gray.npz"
    np.savez(path, images=images)
    x = load_ood(f"npz:{path}")
    _assert_images(x, (1, 28, 28), 3)
    assert torch.allclose(x[0], torch.ones(1, 28, 28))
    assert torch.allclose(x[1], torch.full((1, 28, 28), 0.2), atol=1e-6)
    assert torch.equal(x[2], torch.zeros(1, 28, 28))
    rgb = load_ood(f"npz:{path}", image_shape=(3, 32, 32))
    assert torch.allclose(rgb[0], torch.ones(3, 32, 32))


def test_npz_float_rgb_round_trip(tmp_path: Path) -> None:
    images = np.zeros((2, 32, 32, 3), np.float32)
    images[0, ..., 0] = 1.0  # pure red
    images[1] = [0.2, 0.4, 0.6]
    path = tmp_path / "rgb.npz"
    np.savez_compressed(path, images=images, labels=np.arange(2))
    gray = load_ood(f"npz:{path}")
    _assert_images(gray, (1, 28, 28), 2)
    assert torch.allclose(gray[0], torch.full((1, 28, 28), 0.299), atol=1e-5)
    assert torch.allclose(gray[1], torch.full((1, 28, 28), 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6), atol=1e-5)
    colour = load_ood(f"npz:{path}", image_shape=(3, 32, 32))
    assert torch.allclose(colour[1], torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1).expand(3, 32, 32))


def test_npz_rgba_drops_alpha_and_tolerates_tiny_eps(tmp_path: Path) -> None:
    images = np.zeros((1, 8, 8, 4), np.float64)
    images[..., 1] = 1.0 + 1e-6
    images[..., 3] = 0.5
    path = tmp_path / "rgba.npz"
    np.savez(path, images=images)
    x = load_ood(f"npz:{path}", image_shape=(3, 8, 8))
    assert torch.allclose(x[0], torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 8, 8))


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays", [
    {"pictures": np.zeros((2, 28, 28), np.uint8)},  # no `images`
    {"images": np.zeros((28, 28), np.uint8)},  # wrong ndim
    {"images": np.zeros((2, 28, 28, 2), np.uint8)},  # wrong channel count
    {"images": np.zeros((0, 28, 28), np.uint8)},  # empty
    {"images": np.full((2, 28, 28), 255.0, np.float32)},  # float out of [0, 1]
    {"images": np.full((2, 28, 28), np.nan, np.float32)},  # NaN
    {"images": np.zeros((2, 28, 28), np.int32)},  # unsupported dtype
], ids=["no-images", "ndim", "channels", "empty", "range", "nan", "dtype"])
def test_npz_errors_name_the_file(tmp_path: Path, arrays: dict[str, np.ndarray]) -> None:
    path = _npz(tmp_path, **arrays)
    with pytest.raises(UserError) as info:
        load_ood(f"npz:{path}")
    assert str(path) in str(info.value)


def test_npz_missing_not_a_file_or_not_npz(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros((2, 28, 28), np.uint8))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    for path in (missing, tmp_path, npy, garbage):
        with pytest.raises(UserError) as info:
            load_ood(f"npz:{path}")
        assert str(path) in str(info.value)


# --------------------------------------------------------------------------- folder specs


def _write_folder(root: Path) -> Path:
    folder = root / "my_ood"
    (folder / "sub" / "deeper").mkdir(parents=True)
    Image.new("L", (20, 20), 255).save(folder / "white.png")
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "sub" / "red.PNG")
    Image.new("RGBA", (16, 16), (0, 0, 255, 0)).save(folder / "sub" / "deeper" / "blue.png")
    Image.new("P", (10, 10), 0).save(folder / "sub" / "palette.gif")
    Image.new("RGB", (28, 28), (0, 0, 0)).save(folder / "black.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folder_loads_recursively(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path)
    x = load_ood(f"folder:{folder}")
    _assert_images(x, (1, 28, 28), 5)
    # sorted paths: black.jpg, sub/deeper/blue.png, sub/palette.gif, sub/red.PNG, white.png
    assert float(x[0].max()) < 0.05
    assert torch.allclose(x[1], torch.full((1, 28, 28), 0.114), atol=1e-5)
    assert torch.allclose(x[3], torch.full((1, 28, 28), 0.299), atol=1e-5)
    assert torch.allclose(x[4], torch.ones(1, 28, 28))
    colour = load_ood(f"folder:{folder}/", image_shape=(3, 32, 32))
    _assert_images(colour, (3, 32, 32), 5)
    assert torch.allclose(colour[3], torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1).expand(3, 32, 32))
    assert ood_name(f"folder:{folder}/") == "my_ood"


def test_folder_corrupt_image_names_the_file(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path)
    corrupt = folder / "sub" / "broken.png"
    corrupt.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(UserError) as info:
        load_ood(f"folder:{folder}")
    assert str(corrupt) in str(info.value)


def test_folder_errors_name_the_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    a_file = tmp_path / "file.png"
    Image.new("L", (4, 4)).save(a_file)
    for path in (tmp_path / "missing", empty, a_file):
        with pytest.raises(UserError) as info:
            load_ood(f"folder:{path}")
        assert str(path) in str(info.value)


# --------------------------------------------------------------------------- to_image_format


def test_to_image_format_accepts_torch_nchw() -> None:
    x = torch.zeros(2, 3, 10, 12, dtype=torch.uint8)
    x[:, 0] = 255
    out = to_image_format(x, (1, 5, 6), source="tensor")
    assert out.shape == (2, 1, 5, 6)
    assert torch.allclose(out, torch.full_like(out, 0.299), atol=1e-5)
    with pytest.raises(UserError, match="my-source"):
        to_image_format(np.zeros((2, 5), np.uint8), (1, 5, 5), source="my-source")


# --------------------------------------------------------------------------- auxiliary pool


def _picture_hash(name: str) -> str:
    import skimage.data

    picture = getattr(skimage.data, name)()
    if isinstance(picture, tuple):
        picture = picture[0]
    return hashlib.sha256(np.ascontiguousarray(picture).tobytes()).hexdigest()


def test_auxiliary_sources_disjoint_from_test_sets(no_network: None) -> None:
    test_pictures = set(TEXTURE_PICTURES) | set(PHOTO_PICTURES)
    assert not set(AUX_PICTURES) & test_pictures
    # by content too: e.g. skimage's `cat` is the very same picture as `chelsea`
    test_hashes = {_picture_hash(name) for name in test_pictures}
    aux_hashes = {_picture_hash(name) for name in AUX_PICTURES}
    assert len(aux_hashes) == len(AUX_PICTURES)
    assert not aux_hashes & test_hashes


@pytest.mark.parametrize("shape", SHAPES)
def test_auxiliary_pool_shape_range_and_seed(shape: tuple[int, int, int], no_network: None) -> None:
    pool = load_auxiliary_pool(image_shape=shape, n=200, seed=1)
    _assert_images(pool, shape, 200)
    assert torch.equal(pool, load_auxiliary_pool(image_shape=shape, n=200, seed=1))
    assert not torch.equal(pool, load_auxiliary_pool(image_shape=shape, n=200, seed=2))
    assert float(pool.flatten(1).std(dim=1).mean()) > 0.05


def test_auxiliary_pool_default_size() -> None:
    assert load_auxiliary_pool().shape == (5000, 1, 28, 28)


# --------------------------------------------------------------------------- registry (near/far groups)


def test_refactor_keeps_each_sets_random_stream() -> None:
    """The registry keeps the streams the sets had before it, so old results stay reproducible."""
    expected = np.random.default_rng([4, 5]).random((6, 1, 28, 28), dtype=np.float32)
    assert np.array_equal(load_ood("uniform", n=6, seed=5).numpy(), expected)
    noise = np.random.default_rng([3, 0]).standard_normal((6, 1, 28, 28), dtype=np.float32) * 0.25 + 0.5
    assert np.array_equal(load_ood("gaussian", n=6).numpy(), noise.clip(0.0, 1.0))


def test_builtin_ood_is_the_offline_part_of_the_registry() -> None:
    from unleash_ood.data.builtin import BUILTIN, builtin_group

    assert set(BUILTIN_OOD) == {"digits", "textures", "photos", "scenes", "gaussian", "uniform", "glyphs"}
    assert set(BUILTIN_OOD) < set(BUILTIN)
    assert builtin_group(" Glyphs ") == "near" and builtin_group("photos") == "far"
    assert builtin_group("scenes") == "far" and builtin_group("uniform") == builtin_group("gaussian") == "synthetic"
    assert builtin_group("npz:/x.npz") is None


def test_seed_must_be_a_non_negative_integer() -> None:
    for seed in (-1, 1.5, True):
        with pytest.raises(UserError, match="seed"):
            load_ood("uniform", n=4, seed=seed)  # type: ignore[arg-type]
