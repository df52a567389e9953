"""``glyphs``: NotMNIST-style letters A–J rendered offline from a pinned list of fonts (a near-OOD set).

Fonts: exactly the files of :data:`PINNED_FONTS`, so that the set is a function of its seed and these
files only: text fonts matplotlib ships (``matplotlib.get_data_path()/fonts/ttf``: DejaVu, Computer
Modern, STIX) and those of the Debian packages ``make data`` installs (:data:`FONT_PACKAGES`:
fonts-liberation, fonts-freefont-ttf). Other fonts on the system are ignored; a pinned file that is
missing fails with one line naming its package. Math, symbol and dingbat fonts are not pinned, and a
font that does not draw ten distinct letter shapes A–J is excluded anyway (:func:`draws_letters`:
ten distinct glyph bitmaps with ink, none the missing-glyph box, each closest to its own letter among
matplotlib's DejaVu renderings of A–J; cmex10, whose A–J are delimiters, fails it). Files of the same
family and style count once.

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
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ..errors import UserError
from .images import check_count, check_image_shape, local_rng, to_image_format

LETTERS = "ABCDEFGHIJ"
SPLITS = ("test", "val")
SYSTEM_FONT_DIRS: tuple[Path, ...] = (Path("/usr/share/fonts"),)
FONT_PACKAGES = "fonts-liberation fonts-freefont-ttf"  # the Makefile's FONT_PACKAGES
MATPLOTLIB = "matplotlib"
# Debian's folder of each font package
PACKAGE_FONT_DIRS: dict[str, Path] = {"fonts-liberation": Path("/usr/share/fonts/truetype/liberation"),
                                      "fonts-freefont-ttf": Path("/usr/share/fonts/truetype/freefont")}
# the font files `glyphs` renders from, per package (matplotlib: its bundled fonts; cmmi10, cmsy10,
# cmex10 are math fonts, LastResortHE, STIXNonUni*, STIXSiz* and *Display symbol or fallback fonts)
PINNED_FONTS: dict[str, tuple[str, ...]] = {
    MATPLOTLIB: ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
                 "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
                 "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
                 "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "cmb10.ttf", "cmr10.ttf", "cmss10.ttf",
                 "cmti10.ttf", "cmtt10.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
                 "STIXGeneralBolIta.ttf"),
    "fonts-liberation": tuple(f"Liberation{face}-{style}.ttf" for face in ("Mono", "Sans", "SansNarrow", "Serif")
                              for style in ("Regular", "Bold", "Italic", "BoldItalic")),
    "fonts-freefont-ttf": tuple(f"Free{face}{style}.ttf" for face, italic in (("Mono", "Oblique"),
                                                                                ("Sans", "Oblique"),
                                                                                ("Serif", "Italic"))
                                for style in ("", "Bold", italic, f"Bold{italic}")),
}
# matplotlib's renderings of A–J that a font's letters are compared with (draws_letters)
REFERENCE_FONTS: tuple[str, ...] = ("DejaVuSans.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
                                    "DejaVuSerif-Italic.ttf")
SHAPE_SIDE = 8  # a letter's shape: its bounding box blurred and scaled to 8×8
SHAPE_BLUR = 2.0  # px, on the 32×32 intermediate
MIN_LETTERS = 8  # of the ten, closest to their own reference letter
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
    """A usable font file, its identity (family, style) and where it comes from (``package:file``)."""

    path: Path
    family: str
    style: str
    source: str = ""


def default_font_dirs() -> list[Path]:
    """matplotlib's bundled TrueType fonts, then the system's font folders."""
    return [Path(matplotlib.get_data_path()) / "fonts" / "ttf", *SYSTEM_FONT_DIRS]


def package_font_dir(package: str) -> Path:
    """The folder a pinned font package installs into (matplotlib: its bundled ``fonts/ttf``)."""
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" if package == MATPLOTLIB else PACKAGE_FONT_DIRS[package]


def pinned_font_files() -> list[tuple[str, Path]]:
    """``(package:file, path)`` of every pinned font; a missing one fails with one line naming its package."""
    found, missing = [], {}
    for package, names in PINNED_FONTS.items():
        for name in names:
            path = package_font_dir(package) / name
            if path.is_file():
                found.append((f"{package}:{name}", path))
            else:
                missing.setdefault(package, []).append(name)
    if missing:
        fix = " and ".join(("reinstall matplotlib (pip install --force-reinstall matplotlib)" if pkg == MATPLOTLIB
                            else f"apt-get install {pkg}") for pkg in missing)
        files = ", ".join(name for names in missing.values() for name in names)
        raise UserError(f"the 'glyphs' OOD set needs its pinned fonts; missing: {files}: {fix} (or `make data`)")
    return found


def font_files(dirs: Sequence[Path]) -> list[Path]:
    """Font files under ``dirs`` (recursively), sorted by file name, then path."""
    found = {p for d in dirs if Path(d).is_dir() for p in Path(d).rglob("*")
             if p.suffix.lower() in FONT_SUFFIXES and p.is_file()}
    return sorted(found, key=lambda p: (p.name.lower(), str(p)))


def _mask_key(font: ImageFont.FreeTypeFont, text: str) -> tuple[tuple[int, int], bytes] | None:
    mask = font.getmask(text)
    return (mask.size, bytes(mask)) if mask.getbbox() else None


def letter_shapes(font: ImageFont.FreeTypeFont) -> np.ndarray | None:
    """A–J as 10 × 64 shape vectors (bounding box → 32×32, blurred, 8×8; zero mean, unit norm), or None
    when a letter has no ink."""
    rows = []
    for letter in LETTERS:
        mask = font.getmask(letter)
        image = Image.frombytes("L", mask.size, bytes(mask))
        box = image.getbbox()
        if box is None:
            return None
        image = image.crop(box).resize((4 * SHAPE_SIDE, 4 * SHAPE_SIDE), Image.Resampling.BILINEAR)
        image = image.filter(ImageFilter.GaussianBlur(SHAPE_BLUR)).resize((SHAPE_SIDE, SHAPE_SIDE),
                                                                            Image.Resampling.BOX)
        v = np.asarray(image, np.float64).ravel()
        v = v - v.mean()
        rows.append(v / max(float(np.linalg.norm(v)), 1e-12))
    return np.stack(rows)


def reference_shapes() -> list[np.ndarray]:
    """The shapes of A–J in matplotlib's DejaVu fonts (:data:`REFERENCE_FONTS`)."""
    folder = package_font_dir(MATPLOTLIB)
    shapes = [letter_shapes(ImageFont.truetype(str(folder / name), FONT_SIZE)) for name in REFERENCE_FONTS]
    return [s for s in shapes if s is not None]


def draws_letters(font: ImageFont.FreeTypeFont, references: Sequence[np.ndarray]) -> bool:
    """Whether at least :data:`MIN_LETTERS` of the font's A–J are closest (correlation of their shapes,
    best over the ``references``) to the same letter: text fonts pass, symbol fonts (cmex10) do not."""
    shapes = letter_shapes(font)
    if shapes is None:
        return False
    similarity = np.max([shapes @ ref.T for ref in references], axis=0)
    return int((similarity.argmax(axis=1) == np.arange(len(LETTERS))).sum()) >= MIN_LETTERS


def _usable(path: Path, references: Sequence[np.ndarray], source: str = "") -> GlyphFont | None:
    """The font at ``path`` if it loads and draws A–J as ten distinct glyphs with ink, none its
    missing-glyph box, shaped like the letters (:func:`draws_letters`)."""
    try:
        font = ImageFont.truetype(str(path), FONT_SIZE // 2)
        keys = [_mask_key(font, letter) for letter in LETTERS]
        missing = _mask_key(font, _MISSING)
        family, style = font.getname()
        shaped = None not in keys and draws_letters(ImageFont.truetype(str(path), FONT_SIZE), references)
    except (OSError, ValueError):
        return None
    if None in keys or len(set(keys)) < len(LETTERS) or missing in keys or not shaped:
        return None
    return GlyphFont(path, family or path.stem, style or "Regular", source or str(path))


def available_fonts(dirs: Sequence[Path] | None = None) -> list[GlyphFont]:
    """Every usable font, one per (family, style): the pinned ones (:data:`PINNED_FONTS`), or with
    ``dirs`` every font file under those folders (e.g. for a test)."""
    files = pinned_font_files() if dirs is None else [("", path) for path in font_files(dirs)]
    references = reference_shapes()
    fonts: dict[tuple[str, str], GlyphFont] = {}
    for source, path in files:
        font = _usable(path, references, source)
        if font is not None:
            fonts.setdefault((font.family.lower(), font.style.lower()), font)
    if not fonts:
        where = ", ".join(str(d) for d in dirs or ())
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


def glyph_fonts(split: str = "test", font_dirs: Sequence[Path] | None = None) -> list[GlyphFont]:
    """The fonts of one split (``"test"``: the ``glyphs`` set's; ``"val"``: the held-out ones)."""
    if split not in SPLITS:
        raise UserError(f"glyph font split must be one of {', '.join(SPLITS)}; got {split!r}")
    fonts = split_fonts(available_fonts(font_dirs))[split]
    if not fonts:
        raise UserError(f"no {split} fonts for the 'glyphs' set: only one font family is usable; install more, "
                        f"e.g. apt-get install {FONT_PACKAGES}")
    return fonts


def load_glyphs(n: int = 2000, seed: int = 0, image_shape: tuple[int, int, int] = (1, 28, 28),
                split: str = "test", font_dirs: Sequence[Path] | None = None) -> torch.Tensor:
    """``n`` letter images from the ``split`` fonts (``"test"``: the ``glyphs`` OOD set; ``"val"``: the
    held-out fonts, a near-OOD proxy for validation), float32 N×C×H×W in [0, 1], fixed per seed and font set."""
    image_shape = check_image_shape(image_shape)
    check_count(n, "n")
    fonts = glyph_fonts(split, font_dirs)
    rng = local_rng(seed, _STREAMS[split])
    loaded = [ImageFont.truetype(str(f.path), FONT_SIZE) for f in fonts]
    canvas = (2 * image_shape[2], 2 * image_shape[1])  # PIL sizes are (width, height)
    which = rng.integers(len(loaded), size=n)
    letters = rng.integers(len(LETTERS), size=n)
    strokes = rng.integers(MAX_STROKE + 1, size=n)
    inverse, scale, shift = _jitter(rng, n, canvas)
    images = np.stack([_render(loaded[which[i]], LETTERS[letters[i]], int(strokes[i]),
                               (inverse[i], float(scale[i]), shift[i]), canvas) for i in range(n)])
    return to_image_format(images, image_shape, source=f"glyphs ({split} fonts)")
