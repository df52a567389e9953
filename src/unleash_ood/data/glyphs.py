"""``glyphs``: NotMNIST-style letters A–J rendered offline from every usable font (a near-OOD set).

Fonts: the TrueType/OpenType files matplotlib ships (``matplotlib.get_data_path()/fonts/ttf``) and those
under ``/usr/share/fonts`` (Debian: fonts-dejavu-core, fonts-liberation, fonts-freefont-ttf). A font
that fails to load, or lacks one of the letters (renders it as its missing-glyph box, or two letters
alike), is skipped; files of the same family and style count once.

Split: each font *family* goes, by a hash of its name, to the TEST fonts (``glyphs``, the near-OOD test
set) or to the VALIDATION fonts (held out of ``glyphs``: ``load_glyphs(split="val")`` is a near-OOD
proxy for choosing hyperparameters, e.g. by ``select-keep``). Whole families go to one side, so no
style of a validation family ever appears in the test set. The split depends only on the family names,
so it stays fixed when fonts are added or removed (with at least one family on each side).

Each image: a letter (uniform over A–J) in a random font of the split, stroke width 0–3 px at the
64-px rendering size, a random affine jitter (rotation, scale, shear, shift), white on black like
Fashion-MNIST, rendered at twice the ID size and downscaled with antialiasing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..errors import UserError
from .images import check_count, check_image_shape, local_rng, to_image_format

LETTERS = "ABCDEFGHIJ"
SPLITS = ("test", "val")
SYSTEM_FONT_DIRS: tuple[Path, ...] = (Path("/usr/share/fonts"),)
FONT_PACKAGES = "fonts-dejavu-core fonts-liberation fonts-freefont-ttf"
FONT_SUFFIXES = (".ttf", ".otf")
VAL_FRACTION = 0.3  # of the font families (by hash), held out for validation
FONT_SIZE = 64
MAX_STROKE = 3
ROTATION_DEG = 15.0
SCALE_RANGE = (0.7, 1.0)  # longer glyph side / 80 % of the frame
SHEAR = 0.25
SHIFT = 0.08  # of the frame
_MISSING = "\U000F0000"  # a private-use code point: fonts draw their missing-glyph box for it
_STREAMS = {"test": 500, "val": 501}


@dataclass(frozen=True)
class GlyphFont:
    """A usable font file and its identity (family, style)."""

    path: Path
    family: str
    style: str


def default_font_dirs() -> list[Path]:
    """matplotlib's bundled TrueType fonts, then the system's font folders."""
    return [Path(matplotlib.get_data_path()) / "fonts" / "ttf", *SYSTEM_FONT_DIRS]


def font_files(dirs: Sequence[Path]) -> list[Path]:
    """Font files under ``dirs`` (recursively), sorted by file name, then path."""
    found = {p for d in dirs if Path(d).is_dir() for p in Path(d).rglob("*")
             if p.suffix.lower() in FONT_SUFFIXES and p.is_file()}
    return sorted(found, key=lambda p: (p.name.lower(), str(p)))


def _mask_key(font: ImageFont.FreeTypeFont, text: str) -> tuple[tuple[int, int], bytes] | None:
    mask = font.getmask(text)
    return (mask.size, bytes(mask)) if mask.getbbox() else None


def _usable(path: Path) -> GlyphFont | None:
    """The font at ``path`` if it loads and draws A–J as ten distinct glyphs, none its missing-glyph box."""
    try:
        font = ImageFont.truetype(str(path), FONT_SIZE // 2)
        keys = [_mask_key(font, letter) for letter in LETTERS]
        missing = _mask_key(font, _MISSING)
        family, style = font.getname()
    except (OSError, ValueError):
        return None
    if None in keys or len(set(keys)) < len(LETTERS) or missing in keys:
        return None
    return GlyphFont(path, family or path.stem, style or "Regular")


def available_fonts(dirs: Sequence[Path] | None = None) -> list[GlyphFont]:
    """Every usable font under ``dirs`` (default: :func:`default_font_dirs`), one per (family, style)."""
    fonts: dict[tuple[str, str], GlyphFont] = {}
    for path in font_files(default_font_dirs() if dirs is None else dirs):
        font = _usable(path)
        if font is not None:
            fonts.setdefault((font.family.lower(), font.style.lower()), font)
    if not fonts:
        where = ", ".join(str(d) for d in (default_font_dirs() if dirs is None else dirs))
        raise UserError(f"no usable font for the 'glyphs' OOD set (looked in {where}); install fonts, e.g. "
                        f"apt-get install {FONT_PACKAGES}")
    return list(fonts.values())


def _family_hash(family: str) -> float:
    """A family name's fixed position in [0, 1): below ``VAL_FRACTION`` = a validation family."""
    digest = hashlib.sha256(family.lower().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_fonts(fonts: Sequence[GlyphFont]) -> dict[str, list[GlyphFont]]:
    """``{"test": [...], "val": [...]}`` by family-name hash; with two families or more neither side is
    empty (the family closest to the threshold moves over); a single family is all test."""
    families = sorted({f.family.lower() for f in fonts})
    val = {f for f in families if _family_hash(f) < VAL_FRACTION} if len(families) > 1 else set()
    if len(families) > 1 and (not val or val == set(families)):
        val ^= {min(families, key=lambda f: abs(_family_hash(f) - VAL_FRACTION))}
    return {"test": [f for f in fonts if f.family.lower() not in val],
            "val": [f for f in fonts if f.family.lower() in val]}


def _jitter(rng: np.random.Generator, n: int, canvas: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: the inverse of rotation·shear (2×2), the relative scale, and the shift in pixels."""
    scale = rng.uniform(*SCALE_RANGE, size=n)
    angle = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG, size=n))
    shear = rng.uniform(-SHEAR, SHEAR, size=n)
    shift = rng.uniform(-SHIFT, SHIFT, size=(n, 2)) * min(canvas)
    cos, sin = np.cos(angle), np.sin(angle)
    # (R·Sh)⁻¹ = Sh⁻¹·Rᵀ with R the rotation and Sh = [[1, shear], [0, 1]]
    inverse = np.stack([np.stack([cos + shear * sin, sin - shear * cos], -1),
                        np.stack([-sin, cos], -1)], 1)
    return inverse, scale, shift


def _render(font: ImageFont.FreeTypeFont, letter: str, stroke: int, jitter: tuple[np.ndarray, float, np.ndarray],
            canvas: tuple[int, int]) -> np.ndarray:
    """One white-on-black letter, jittered, as a uint8 canvas (H×W)."""
    left, top, right, bottom = font.getbbox(letter, stroke_width=stroke)
    glyph = Image.new("L", (max(right - left, 1), max(bottom - top, 1)), 0)
    ImageDraw.Draw(glyph).text((-left, -top), letter, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    rotation_shear_inv, scale, shift = jitter
    gw, gh = glyph.size
    # PIL's AFFINE data maps canvas pixels back into the glyph: glyph = M⁻¹ (canvas − centre − shift) + its centre
    inverse = rotation_shear_inv * max(gw, gh) / (scale * 0.8 * min(canvas))
    offset = np.array([gw / 2.0, gh / 2.0]) - inverse @ (np.array(canvas) / 2.0 + shift)
    data = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
    warped = glyph.transform(canvas, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR, fillcolor=0)
    return np.asarray(warped)


def load_glyphs(n: int = 2000, seed: int = 0, image_shape: tuple[int, int, int] = (1, 28, 28),
                split: str = "test", font_dirs: Sequence[Path] | None = None) -> torch.Tensor:
    """``n`` letter images from the ``split`` fonts (``"test"``: the ``glyphs`` OOD set; ``"val"``: the
    held-out fonts, a near-OOD proxy for validation), float32 N×C×H×W in [0, 1], fixed per seed and font set."""
    if split not in SPLITS:
        raise UserError(f"glyph font split must be one of {', '.join(SPLITS)}; got {split!r}")
    image_shape = check_image_shape(image_shape)
    check_count(n, "n")
    rng = local_rng(seed, _STREAMS[split])
    fonts = split_fonts(available_fonts(font_dirs))[split]
    if not fonts:
        raise UserError(f"no {split} fonts for the 'glyphs' set: only one font family is usable; install more, "
                        f"e.g. apt-get install {FONT_PACKAGES}")
    loaded = [ImageFont.truetype(str(f.path), FONT_SIZE) for f in fonts]
    canvas = (2 * image_shape[2], 2 * image_shape[1])  # PIL sizes are (width, height)
    which = rng.integers(len(loaded), size=n)
    letters = rng.integers(len(LETTERS), size=n)
    strokes = rng.integers(MAX_STROKE + 1, size=n)
    inverse, scale, shift = _jitter(rng, n, canvas)
    images = np.stack([_render(loaded[which[i]], LETTERS[letters[i]], int(strokes[i]),
                               (inverse[i], float(scale[i]), shift[i]), canvas) for i in range(n)])
    return to_image_format(images, image_shape, source=f"glyphs ({split} fonts)")
