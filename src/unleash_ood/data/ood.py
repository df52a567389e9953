"""Out-of-distribution test sets that need no download, user OOD specs, and an auxiliary-outlier pool.

Every set comes out as float32 N×C×H×W in [0, 1] for the in-distribution ``image_shape`` = (C, H, W),
C in {1, 3}. A spec is a built-in name (see ``BUILTIN_OOD``), ``npz:PATH`` (an .npz holding an array
named ``images``) or ``folder:PATH`` (image files, searched recursively).

Built-in sources ship with the installed packages: scikit-learn's 8×8 digits and scikit-image's bundled
pictures (only those that need no pooch download). The auxiliary pool (for outlier exposure) uses a
disjoint list of scikit-image pictures and its own synthetic families, so training on it never touches
a test set.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from ..errors import UserError
from ..names import BUILTIN_OOD  # noqa: F401 - re-exported: the light home of the names

TEXTURE_PICTURES: tuple[str, ...] = ("brick", "grass", "gravel")
PHOTO_PICTURES: tuple[str, ...] = (
    "camera", "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
    "immunohistochemistry", "moon", "page", "coins", "text", "clock",
)
# Disjoint from the two lists above. Not ``cat``: it is the same file as ``chelsea``.
AUX_PICTURES: tuple[str, ...] = (
    "cell", "retina", "logo", "colorwheel", "microaneurysms", "stereo_motorcycle",
    "shepp_logan_phantom", "horse", "checkerboard",
)
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPEC_FORMS = "npz:PATH (an .npz file with an 'images' array) or folder:PATH (image files, searched recursively)"
CROP_SIZE_RANGE: tuple[int, int] = (32, 96)
# Auxiliary pool mix: picture crops, smooth blobs, random shapes, Rademacher-like noise.
AUX_MIX: tuple[float, float, float, float] = (0.4, 0.25, 0.2, 0.15)

_LUMA = (0.299, 0.587, 0.114)
_RANGE_EPS = 1e-3
_CHUNK = 2048
_PROGRESS_MIN_FILES = 100
_AUX_STREAM = 1000


# --------------------------------------------------------------------------- specs


def _parse_spec(spec: str) -> tuple[str, str]:
    """Split a spec into ``(kind, value)``: ``("builtin", name)``, ``("npz", path)`` or ``("folder", path)``."""
    text = spec.strip()
    for kind in ("npz", "folder"):
        if text.startswith(kind + ":"):
            path = text[len(kind) + 1:].strip()
            if not path:
                raise UserError(f"OOD spec {spec!r}: missing path after '{kind}:'")
            return kind, path
    name = text.lower()
    if name in BUILTIN_OOD:
        return "builtin", name
    raise UserError(f"unknown OOD set {spec!r}: use one of {', '.join(BUILTIN_OOD)}, or {SPEC_FORMS}")


def ood_name(spec: str) -> str:
    """Display name of a spec: the built-in name, or the stem of the npz file / the folder's name."""
    kind, value = _parse_spec(spec)
    if kind == "builtin":
        return value
    path = Path(value).expanduser().resolve()
    return (path.stem if kind == "npz" else path.name) or str(path)


def load_ood(spec: str, image_shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0,
             n: int = 2000) -> torch.Tensor:
    """Load one OOD set as float32 N×C×H×W in [0, 1].

    Built-in random sets have ``n`` images and are fixed for a given ``seed``. ``digits`` always has all
    1,797 scikit-learn digits (``n`` and ``seed`` are ignored); ``npz:``/``folder:`` sets keep all
    their images (``n`` and ``seed`` are ignored).
    """
    image_shape = _check_image_shape(image_shape)
    kind, value = _parse_spec(spec)
    if kind == "npz":
        return _load_npz(Path(value).expanduser(), image_shape)
    if kind == "folder":
        return _load_folder(Path(value).expanduser(), image_shape)
    _check_count(n, "n")
    rng = _rng(seed, BUILTIN_OOD.index(value))
    if value == "digits":
        return _digits(image_shape)
    if value == "textures":
        return _picture_crops(TEXTURE_PICTURES, image_shape, rng, n)
    if value == "photos":
        return _picture_crops(PHOTO_PICTURES, image_shape, rng, n)
    if value == "gaussian":
        return _gaussian(image_shape, rng, n)
    return _uniform(image_shape, rng, n)


def load_ood_suite(specs: Sequence[str], image_shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0,
                   n: int = 2000) -> dict[str, torch.Tensor]:
    """Load several OOD sets, keyed by display name (see ``ood_name``), in the order given."""
    names = [ood_name(spec) for spec in specs]
    for i, name in enumerate(names):
        if name in names[:i]:
            first = specs[names.index(name)]
            raise UserError(f"OOD specs {first!r} and {specs[i]!r} share the display name {name!r}; "
                            "rename one file or folder")
    return {name: load_ood(spec, image_shape, seed, n) for name, spec in zip(names, specs)}


# --------------------------------------------------------------------------- validation


def _check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    """Return ``image_shape`` as a (C, H, W) tuple of ints, C in {1, 3}."""
    shape = tuple(image_shape)
    if (len(shape) != 3 or not all(isinstance(v, (int, np.integer)) for v in shape)
            or shape[0] not in (1, 3) or min(shape[1:]) < 1):
        raise UserError(f"image_shape must be (C, H, W) with C 1 or 3 and H, W >= 1; got {image_shape}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _check_count(n: int, what: str) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise UserError(f"{what} must be a positive integer; got {n!r}")


def _rng(seed: int, stream: int) -> np.random.Generator:
    """A local generator; ``stream`` keeps the sets independent of each other under the same seed."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"seed must be a non-negative integer; got {seed!r}")
    return np.random.default_rng([stream, int(seed)])


# --------------------------------------------------------------------------- format conversion


def to_image_format(images: np.ndarray | torch.Tensor, image_shape: tuple[int, int, int],
                    source: str) -> torch.Tensor:
    """Convert a batch of images to float32 N×C×H×W in [0, 1] for ``image_shape`` = (C, H, W).

    Input layout: numpy N×H×W or N×H×W×C (channel-last, as in files); torch N×H×W or N×C×H×W.
    C in {1, 3, 4}; alpha is dropped. dtype uint8 (0–255), bool, or float in [0, 1].
    RGB→gray uses luminance 0.299R + 0.587G + 0.114B; gray→RGB replicates; resizing is bilinear,
    antialiased. ``source`` names the origin (file, folder, spec) in error messages.
    """
    channels, height, width = _check_image_shape(image_shape)
    array = _as_channel_last(images, source)
    _check_values(array, source)
    out = torch.empty((len(array), channels, height, width), dtype=torch.float32)
    for start in range(0, len(array), _CHUNK):
        chunk = _to_float_nchw(array[start:start + _CHUNK])
        out[start:start + len(chunk)] = _resize(_match_channels(chunk, channels), (height, width))
    return out


def _as_channel_last(images: np.ndarray | torch.Tensor, source: str) -> np.ndarray:
    """Return an N×H×W×C numpy view of ``images`` after checking its shape."""
    if isinstance(images, torch.Tensor):
        tensor = images.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()  # e.g. bfloat16, which numpy lacks
        if tensor.ndim == 4:
            tensor = tensor.permute(0, 2, 3, 1)
        array = tensor.numpy()
    else:
        array = np.asarray(images)
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        layout = "N×C×H×W" if isinstance(images, torch.Tensor) else "N×H×W×C"
        raise UserError(f"{source}: images must be N×H×W or {layout} with C 1, 3 or 4; "
                        f"got shape {tuple(np.shape(images))}")
    if min(array.shape[:3]) == 0:
        raise UserError(f"{source}: no images (shape {tuple(np.shape(images))})")
    return array


def _check_values(array: np.ndarray, source: str) -> None:
    """Accept uint8, bool, or finite float within [0, 1] (up to a small tolerance)."""
    if array.dtype == np.uint8 or array.dtype == np.bool_:
        return
    if array.dtype.kind != "f":
        raise UserError(f"{source}: unsupported image dtype {array.dtype}; use uint8 (0–255) or float (0–1)")
    low, high = float(array.min()), float(array.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise UserError(f"{source}: images contain NaN or infinite values")
    if low < -_RANGE_EPS or high > 1 + _RANGE_EPS:
        raise UserError(f"{source}: float images must lie in [0, 1]; found values in [{low:g}, {high:g}] "
                        "(store 0–255 data as uint8)")


def _to_float_nchw(chunk: np.ndarray) -> torch.Tensor:
    """uint8/bool/float N×H×W×C → float32 N×C×H×W in [0, 1], alpha dropped."""
    tensor = torch.from_numpy(np.require(chunk, requirements=["C", "W"]))  # PIL arrays are read-only
    if tensor.dtype == torch.uint8:
        tensor = tensor.float().div_(255.0)
    else:
        tensor = tensor.float().clamp_(0.0, 1.0)
    return tensor[..., :3].permute(0, 3, 1, 2).contiguous()


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Gray→RGB by replication, RGB→gray by luminance."""
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1)
    weights = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- user specs


def _load_npz(path: Path, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """Images from the ``images`` array of an .npz file."""
    if not path.exists():
        raise UserError(f"OOD file {path} does not exist")
    if not path.is_file():
        raise UserError(f"OOD file {path} is not a file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read {path} as an .npz file: {e}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise UserError(f"{path} holds a single array, not an .npz archive with an array named 'images'")
    with loaded:
        if "images" not in loaded.files:
            found = ", ".join(loaded.files) or "none"
            raise UserError(f"{path} has no array named 'images' (arrays found: {found})")
        try:
            images = loaded["images"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f"cannot read array 'images' from {path}: {e}") from None
    return to_image_format(images, image_shape, source=str(path))


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; hidden files and folders are skipped."""
    return sorted(
        path for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """A PIL image as H×W (gray) or H×W×3/4 uint8, or float in [0, 1] for 16/32-bit gray."""
    if image.mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode == "I":
        array = np.asarray(image, dtype=np.float32)
        return np.clip(array / (65535.0 if array.max() > 255 else 255.0), 0.0, 1.0)
    if image.mode in ("1", "L", "F"):
        return np.asarray(image.convert("L"))
    if image.mode in ("P", "PA", "LA", "RGBA") or "transparency" in image.info:
        # via RGBA so that palette transparency converts cleanly; alpha is dropped later
        return np.asarray(image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            return _pil_to_array(image)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image file {path}: {e}") from None


def _load_folder(folder: Path, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """All image files under ``folder`` (recursively), converted one by one."""
    if not folder.exists():
        raise UserError(f"OOD folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"OOD folder {folder} is not a folder")
    files = _image_files(folder)
    if not files:
        raise UserError(f"OOD folder {folder} has no image files ({', '.join(IMAGE_EXTENSIONS)}), "
                        "searched recursively")
    out = torch.empty((len(files), *image_shape), dtype=torch.float32)
    progress = tqdm(files, desc=f"reading {folder.name or folder}", unit="img",
                    disable=len(files) < _PROGRESS_MIN_FILES, leave=False)
    for i, path in enumerate(progress):
        out[i] = to_image_format(_read_image(path)[None], image_shape, source=str(path))[0]
    return out


# --------------------------------------------------------------------------- built-in sets


def _digits(image_shape: tuple[int, int, int]) -> torch.Tensor:
    """All 1,797 scikit-learn digits (8×8, values 0–16) upsampled to the ID size."""
    from sklearn.datasets import load_digits

    return to_image_format(load_digits().images / 16.0, image_shape, source="sklearn digits")


def _gaussian(image_shape: tuple[int, int, int], rng: np.random.Generator, n: int) -> torch.Tensor:
    """Per-pixel N(0.5, 0.25²) clipped to [0, 1]."""
    noise = rng.standard_normal((n, *image_shape), dtype=np.float32) * 0.25 + 0.5
    return torch.from_numpy(noise.clip(0.0, 1.0))


def _uniform(image_shape: tuple[int, int, int], rng: np.random.Generator, n: int) -> torch.Tensor:
    """Per-pixel U[0, 1]."""
    return torch.from_numpy(rng.random((n, *image_shape), dtype=np.float32))


def _load_picture(name: str) -> np.ndarray:
    """One bundled scikit-image picture (never one that needs a download)."""
    import skimage.data

    picture = getattr(skimage.data, name)()
    if isinstance(picture, tuple):  # stereo_motorcycle: (left, right, disparity)
        picture = picture[0]
    return np.asarray(picture)


def _picture_tensor(name: str, channels: int) -> torch.Tensor:
    """A bundled picture as float 1×C×H×W at its own size."""
    picture = _load_picture(name)
    height, width = picture.shape[:2]
    return to_image_format(picture[None], (channels, height, width), source=f"skimage.data.{name}()")


def _picture_crops(names: Sequence[str], image_shape: tuple[int, int, int], rng: np.random.Generator,
                   n: int) -> torch.Tensor:
    """``n`` square crops of random size and position from the named pictures, resized to H×W."""
    channels, height, width = image_shape
    out = torch.empty((n, channels, height, width), dtype=torch.float32)
    if n == 0:
        return out
    pictures = [_picture_tensor(name, channels) for name in names]
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
        out[torch.from_numpy(idx)] = _resize(crops, (height, width))
    return out


# --------------------------------------------------------------------------- auxiliary pool


def load_auxiliary_pool(image_shape: tuple[int, int, int] = (1, 28, 28), n: int = 5000,
                        seed: int = 0) -> torch.Tensor:
    """An outlier-exposure pool of ``n`` images, float32 N×C×H×W in [0, 1], shuffled, fixed per seed.

    Disjoint from every built-in test set. Sources (fractions in ``AUX_MIX``):
    40 % random crops of the scikit-image pictures in ``AUX_PICTURES`` (cell, retina, logo, colorwheel,
    microaneurysms, stereo_motorcycle left view, shepp_logan_phantom, horse, checkerboard);
    25 % smooth blobs (upsampled coarse noise, half thresholded to binary);
    20 % random shapes (1–4 ellipses/rectangles of random colour on a random background);
    15 % Rademacher-like noise (0.5 ± a per-pixel or per-block random sign).
    """
    image_shape = _check_image_shape(image_shape)
    _check_count(n, "n")
    rng = _rng(seed, _AUX_STREAM)
    n_pictures, n_blobs, n_shapes, n_noise = _split_counts(n, AUX_MIX)
    pool = torch.cat([
        _picture_crops(AUX_PICTURES, image_shape, rng, n_pictures),
        _smooth_blobs(image_shape, rng, n_blobs),
        _random_shapes(image_shape, rng, n_shapes),
        _rademacher_noise(image_shape, rng, n_noise),
    ])
    return pool[torch.from_numpy(rng.permutation(n))]


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` by ``fractions``; the rounding remainder goes to the first part."""
    counts = [int(n * f) for f in fractions]
    counts[0] += n - sum(counts)
    return counts


def _smooth_blobs(image_shape: tuple[int, int, int], rng: np.random.Generator, n: int) -> torch.Tensor:
    """Coarse random noise upsampled bicubically, contrast-stretched; half thresholded into binary blobs."""
    channels, height, width = image_shape
    out = torch.empty((n, channels, height, width), dtype=torch.float32)
    if n == 0:
        return out
    grids = rng.integers(3, 9, size=n)  # fewer coarse cells give larger blobs
    for grid in np.unique(grids):
        idx = np.flatnonzero(grids == grid)
        coarse = torch.from_numpy(rng.random((len(idx), channels, grid, grid), dtype=np.float32))
        out[torch.from_numpy(idx)] = F.interpolate(coarse, size=(height, width), mode="bicubic",
                                                   align_corners=False)
    low = out.amin(dim=(1, 2, 3), keepdim=True)
    high = out.amax(dim=(1, 2, 3), keepdim=True)
    out = (out - low) / (high - low).clamp_min(1e-6)
    binary = torch.from_numpy(rng.random(n) < 0.5)
    levels = torch.from_numpy(rng.uniform(0.3, 0.7, size=n).astype(np.float32)).view(-1, 1, 1, 1)
    out[binary] = (out > levels)[binary].float()
    return out.clamp_(0.0, 1.0)


def _random_shapes(image_shape: tuple[int, int, int], rng: np.random.Generator, n: int) -> torch.Tensor:
    """1–4 filled ellipses or rectangles of random colour on a random uniform background."""
    channels, height, width = image_shape
    ys = ((np.arange(height) + 0.5) / height)[None, :, None]
    xs = ((np.arange(width) + 0.5) / width)[None, None, :]
    canvas = np.broadcast_to(rng.random((n, channels, 1, 1)), (n, channels, height, width))
    n_shapes = rng.integers(1, 5, size=n)
    for k in range(4):
        centre_y, centre_x = (rng.random(n)[:, None, None] for _ in range(2))
        radius_y, radius_x = (rng.uniform(0.08, 0.4, size=n)[:, None, None] for _ in range(2))
        ellipse = ((ys - centre_y) / radius_y) ** 2 + ((xs - centre_x) / radius_x) ** 2 <= 1.0
        rectangle = (np.abs(ys - centre_y) <= radius_y) & (np.abs(xs - centre_x) <= radius_x)
        is_ellipse = rng.random(n)[:, None, None] < 0.5
        mask = np.where(is_ellipse, ellipse, rectangle) & (k < n_shapes)[:, None, None]
        colour = rng.random((n, channels, 1, 1))
        canvas = np.where(mask[:, None], colour, canvas)
    return torch.from_numpy(np.ascontiguousarray(canvas, dtype=np.float32))


def _rademacher_noise(image_shape: tuple[int, int, int], rng: np.random.Generator, n: int) -> torch.Tensor:
    """0.5 ± amplitude × random sign, per pixel or per 2×2 / 4×4 block."""
    channels, height, width = image_shape
    out = torch.empty((n, channels, height, width), dtype=torch.float32)
    blocks = rng.choice(np.array([1, 2, 4]), size=n)
    amplitudes = rng.uniform(0.2, 0.5, size=n)
    for block in np.unique(blocks):
        idx = np.flatnonzero(blocks == block)
        coarse_shape = (len(idx), channels, -(-height // block), -(-width // block))
        signs = rng.integers(0, 2, size=coarse_shape) * 2 - 1
        signs = signs.repeat(block, axis=2).repeat(block, axis=3)[..., :height, :width]
        values = 0.5 + amplitudes[idx, None, None, None] * signs
        out[torch.from_numpy(idx)] = torch.from_numpy(values.astype(np.float32))
    return out
