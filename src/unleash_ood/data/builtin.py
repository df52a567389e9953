"""The registry of named OOD sets: name → loader, group (``near`` / ``far`` / ``synthetic``),
description, and the origin of its images (:class:`Origin`: which source images, how many distinct).

Every loader returns float32 N×C×H×W in [0, 1] in the ID ``image_shape``. Groups: *near* sets share the
ID data's kind of content (handwriting, letters, held-out Fashion-MNIST classes: mostly a semantic
shift); *far* sets are real images that differ in low-level statistics too (textures, photographs);
*synthetic* sets are generated noise, sanity checks reported apart (OpenOOD v1.5).

Sets that need nothing but the installed packages (``OFFLINE_SETS``) load anywhere; ``mnist``,
``kmnist`` and ``emnist-letters`` need files under the data root (or a download), and
``heldout-classes`` needs the open-set protocol (``data.id_classes``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import skimage.data
import torch
from sklearn.datasets import load_digits

from ..config import GROUPS, check_group, data_root  # noqa: F401  (re-exported)
from ..errors import UserError
from .glyphs import FONT_PACKAGES, glyph_fonts, load_glyphs, pinned_font_files
from .images import local_rng, resize, to_image_format
from .mnistlike import expected_path, load_mnist_like, read_test_images
from .scenes import SCENE_PACKAGES, SCENE_PICTURES, scene_paths, scene_pictures, scene_sources

TEXTURE_PICTURES: tuple[str, ...] = ("brick", "grass", "gravel")
PHOTO_PICTURES: tuple[str, ...] = (
    "camera", "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "coins", "text", "clock",
)
CROP_SIZE_RANGE: tuple[int, int] = (32, 96)


@dataclass(frozen=True)
class Sources:
    """What some sets need beyond shape, seed and size: the data root (``mnist``, …, with ``download``
    allowed or not) and the held-out classes' test images (``heldout-classes``)."""

    data_root: str | None = None
    download: bool = False
    heldout: torch.Tensor | None = None


@dataclass(frozen=True)
class Request:
    """One set to load: ID ``image_shape`` (C, H, W), ``seed``, size ``n`` and the ``sources``."""

    image_shape: tuple[int, int, int]
    seed: int
    n: int
    sources: Sources


@dataclass(frozen=True)
class Origin:
    """Where a set's images come from: its ``sources`` (pictures, fonts, files, by name; none for
    generated noise) and how many ``distinct`` source images they were cut or drawn from."""

    sources: tuple[str, ...]
    distinct: int


def generated(images: torch.Tensor) -> Origin:
    """The origin of a generated set: no source images."""
    return Origin((), 0)


@dataclass(frozen=True)
class BuiltinSet:
    """A named set. ``stream`` keeps the random sets independent under one seed (fixed per set, so that
    adding a set changes no other); ``needs``: ``""`` (offline), ``"files"`` or ``"id_classes"``;
    ``origin``: the set's :class:`Origin`, given its loaded images."""

    name: str
    group: str
    description: str
    loader: Callable[[Request], torch.Tensor]
    stream: int
    needs: str = ""
    origin: Callable[[torch.Tensor], Origin] = generated

    def __post_init__(self) -> None:
        check_group(self.group, f"OOD set {self.name!r}")


def _rng(req: Request, name: str) -> np.random.Generator:
    return local_rng(req.seed, BUILTIN[name].stream)


# --------------------------------------------------------------------------- loaders


def _digits(req: Request) -> torch.Tensor:
    """All 1,797 scikit-learn digits (8×8, values 0–16) upscaled to the ID size (bilinear)."""
    return to_image_format(load_digits().images / 16.0, req.image_shape, source="sklearn digits")


def _glyphs(req: Request) -> torch.Tensor:
    return load_glyphs(req.n, req.seed, req.image_shape, split="test")


def _heldout(req: Request) -> torch.Tensor:
    images = req.sources.heldout
    if images is None:
        raise UserError("OOD set 'heldout-classes' needs the open-set protocol: set data.id_classes to the "
                        "classes to train on (e.g. data.id_classes='[0, 1, 2, 3, 4, 5]'); the other classes' "
                        "test images are then this near-OOD set")
    return to_image_format(images, req.image_shape, source="heldout-classes")


def _mnist_like(name: str) -> Callable[[Request], torch.Tensor]:
    def load(req: Request) -> torch.Tensor:
        return load_mnist_like(name, req, BUILTIN[name].stream)
    return load


def _gaussian(image_shape: tuple[int, int, int], rng: np.random.Generator, n: int) -> torch.Tensor:
    """Per-pixel N(0.5, 0.25²) clipped to [0, 1]."""
    noise = rng.standard_normal((n, *image_shape), dtype=np.float32) * 0.25 + 0.5
    return torch.from_numpy(noise.clip(0.0, 1.0))


def _uniform(image_shape: tuple[int, int, int], rng: np.random.Generator, n: int) -> torch.Tensor:
    """Per-pixel U[0, 1]."""
    return torch.from_numpy(rng.random((n, *image_shape), dtype=np.float32))


def _load_picture(name: str) -> np.ndarray:
    """One bundled scikit-image picture (never one that needs a download)."""
    picture = getattr(skimage.data, name)()
    if isinstance(picture, tuple):  # stereo_motorcycle: (left, right, disparity)
        picture = picture[0]
    return np.asarray(picture)


def _picture_tensor(name: str, channels: int) -> torch.Tensor:
    """A bundled picture as float 1×C×H×W at its own size."""
    picture = _load_picture(name)
    height, width = picture.shape[:2]
    return to_image_format(picture[None], (channels, height, width), source=f"skimage.data.{name}()")


def picture_crops(names: Sequence[str], image_shape: tuple[int, int, int], rng: np.random.Generator,
                  n: int) -> torch.Tensor:
    """``n`` square crops of random size and position from the named scikit-image pictures, resized to H×W."""
    if n == 0:
        return torch.empty((0, *image_shape), dtype=torch.float32)
    return crop_pictures([_picture_tensor(name, image_shape[0]) for name in names], image_shape, rng, n)


def crop_pictures(pictures: Sequence[torch.Tensor], image_shape: tuple[int, int, int], rng: np.random.Generator,
                  n: int) -> torch.Tensor:
    """``n`` square crops of random size and position from ``pictures`` (each 1×C×h×w), resized to H×W."""
    channels, height, width = image_shape
    out = torch.empty((n, channels, height, width), dtype=torch.float32)
    if n == 0:
        return out
    heights = np.array([p.shape[-2] for p in pictures])
    widths = np.array([p.shape[-1] for p in pictures])
    which = rng.integers(len(pictures), size=n)
    sizes = rng.integers(CROP_SIZE_RANGE[0], CROP_SIZE_RANGE[1] + 1, size=n)
    sizes = np.minimum(sizes, np.minimum(heights[which], widths[which]))
    tops = (rng.random(n) * (heights[which] - sizes + 1)).astype(np.int64)
    lefts = (rng.random(n) * (widths[which] - sizes + 1)).astype(np.int64)
    # one resize call per crop size instead of one per crop
    for size in np.unique(sizes):
        idx = np.flatnonzero(sizes == size)
        crops = torch.cat([pictures[which[i]][..., tops[i]:tops[i] + size, lefts[i]:lefts[i] + size]
                           for i in idx])
        out[torch.from_numpy(idx)] = resize(crops, (height, width))
    return out


def _scenes(req: Request) -> torch.Tensor:
    """Random crops of the 31 scene photographs (:mod:`.scenes`)."""
    return crop_pictures(scene_pictures(req.image_shape[0]), req.image_shape, _rng(req, "scenes"), req.n)


def _skimage_origin(names: Sequence[str]) -> Callable[[torch.Tensor], Origin]:
    """Crops of the named scikit-image pictures: each picture one source."""
    return lambda images: Origin(tuple(f"skimage.data.{name}" for name in names), len(names))


def _glyphs_origin(images: torch.Tensor) -> Origin:
    """Letters of the test fonts: each font file one source."""
    fonts = glyph_fonts("test")
    return Origin(tuple(f.source for f in fonts), len(fonts))


def _files_origin(what: str) -> Callable[[torch.Tensor], Origin]:
    """Each image is one distinct source image of ``what``."""
    return lambda images: Origin((what,), len(images))


BUILTIN: dict[str, BuiltinSet] = {s.name: s for s in (
    BuiltinSet("digits", "near", "scikit-learn's 1,797 handwritten digits (load_digits: 8×8 pixels, 17 grey "
               "levels) upscaled to the ID size (all of them; n ignored)", _digits, stream=0,
               origin=lambda images: Origin(("sklearn.datasets.load_digits",), 1797)),
    BuiltinSet("textures", "far", "random crops of scikit-image's brick, grass and gravel pictures",
               lambda req: picture_crops(TEXTURE_PICTURES, req.image_shape, _rng(req, "textures"), req.n), 1,
               origin=_skimage_origin(TEXTURE_PICTURES)),
    BuiltinSet("photos", "far", "random crops of 12 bundled scikit-image photographs",
               lambda req: picture_crops(PHOTO_PICTURES, req.image_shape, _rng(req, "photos"), req.n), 2,
               origin=_skimage_origin(PHOTO_PICTURES)),
    BuiltinSet("scenes", "far", f"random crops of {len(SCENE_PICTURES)} natural photographs from Debian's "
               "wallpaper packages, scikit-learn and matplotlib", _scenes, 10,
               origin=lambda images: Origin(scene_sources(), len(SCENE_PICTURES))),
    BuiltinSet("gaussian", "synthetic", "per-pixel N(0.5, 0.25²) noise clipped to [0, 1]",
               lambda req: _gaussian(req.image_shape, _rng(req, "gaussian"), req.n), 3),
    BuiltinSet("uniform", "synthetic", "per-pixel U[0, 1] noise",
               lambda req: _uniform(req.image_shape, _rng(req, "uniform"), req.n), 4),
    BuiltinSet("glyphs", "near", "NotMNIST-style letters A–J rendered from the pinned fonts (test fonts)",
               _glyphs, 5, origin=_glyphs_origin),
    BuiltinSet("heldout-classes", "near", "the ID test images of the classes left out by data.id_classes "
               "(all of them; n ignored)", _heldout, 6, needs="id_classes",
               origin=_files_origin("ID test split, classes left out by data.id_classes")),
    BuiltinSet("mnist", "near", "MNIST test split (torchvision layout ROOT/MNIST/raw), seeded subset of n",
               _mnist_like("mnist"), 7, needs="files", origin=_files_origin("MNIST test split")),
    BuiltinSet("kmnist", "near", "Kuzushiji-MNIST test split (ROOT/KMNIST/raw), seeded subset of n",
               _mnist_like("kmnist"), 8, needs="files", origin=_files_origin("KMNIST test split")),
    BuiltinSet("emnist-letters", "near", "EMNIST letters test split (ROOT/EMNIST/raw), seeded subset of n",
               _mnist_like("emnist-letters"), 9, needs="files", origin=_files_origin("EMNIST letters test split")),
)}
# the sets that load anywhere from the installed packages alone
OFFLINE_SETS: tuple[str, ...] = tuple(name for name, s in BUILTIN.items() if not s.needs)


def builtin_group(name: str) -> str | None:
    """The group of a built-in set (case-insensitive), or None when ``name`` is not one."""
    entry = BUILTIN.get(name.strip().lower())
    return entry.group if entry else None


def load_builtin(name: str, req: Request) -> torch.Tensor:
    """Load the built-in set ``name`` (a key of ``BUILTIN``)."""
    return BUILTIN[name].loader(req)


def _files_present(check: Callable[[], object]) -> dict:
    """``present`` and ``how`` of a set whose pinned files ``check`` looks for (it raises when one is missing)."""
    try:
        check()
    except UserError as e:
        return {"present": False, "how": str(e)}
    return {"present": True}


def fashion_status(data_root_: str | None) -> list[dict]:
    """``unleash-ood data list --id fashion_mnist``: one row per named set (the schema of
    :func:`unleash_ood.data.suite.data_status`, with the near/far group as the role)."""
    root = data_root(data_root_)
    rows = []
    for name, s in BUILTIN.items():
        row = {"name": name, "title": s.description, "role": s.group, "expected": "built in", "present": True,
               "found": None, "how": ""}
        if s.needs == "files":
            images = read_test_images(name, root) is not None
            row.update(expected=f"{expected_path(name, root)}[.gz]", present=images,
                       how="data.download=true on a machine with internet (torchvision), or copy the files there")
        elif s.needs == "id_classes":
            row.update(expected="with data.id_classes set (open-set protocol)")
        elif name == "glyphs":
            row.update(expected=f"pinned fonts of matplotlib and of {FONT_PACKAGES}",
                       **_files_present(pinned_font_files))
        elif name == "scenes":
            row.update(expected=f"pictures of scikit-learn, matplotlib and of {SCENE_PACKAGES}",
                       **_files_present(scene_paths))
        rows.append(row)
    return rows
