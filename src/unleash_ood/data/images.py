"""Image conversion to the ID format (float32 N×C×H×W in [0, 1]), image files, and argument checks
shared by every OOD source."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

_LUMA = (0.299, 0.587, 0.114)
_RANGE_EPS = 1e-3
_CHUNK = 2048


# --------------------------------------------------------------------------- validation


def check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    """Return ``image_shape`` as a (C, H, W) tuple of ints, C in {1, 3}."""
    shape = tuple(image_shape)
    if (len(shape) != 3 or not all(isinstance(v, (int, np.integer)) for v in shape)
            or shape[0] not in (1, 3) or min(shape[1:]) < 1):
        raise UserError(f"image_shape must be (C, H, W) with C 1 or 3 and H, W >= 1; got {image_shape}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def check_count(n: int, what: str) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise UserError(f"{what} must be a positive integer; got {n!r}")


def check_seed(seed: int) -> int:
    """``seed`` as an int, or a :class:`UserError` unless it is a non-negative integer."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"seed must be a non-negative integer; got {seed!r}")
    return int(seed)


def local_rng(seed: int, stream: int) -> np.random.Generator:
    """A local generator; ``stream`` keeps the sets independent of each other under the same seed."""
    return np.random.default_rng([stream, check_seed(seed)])


# --------------------------------------------------------------------------- format conversion


def to_image_format(images: np.ndarray | torch.Tensor, image_shape: tuple[int, int, int],
                    source: str) -> torch.Tensor:
    """Convert a batch of images to float32 N×C×H×W in [0, 1] for ``image_shape`` = (C, H, W).

    Input layout: numpy N×H×W or N×H×W×C (channel-last, as in files); torch N×H×W or N×C×H×W.
    C in {1, 3, 4}; alpha is dropped. dtype uint8 (0–255), bool, or float in [0, 1].
    RGB→gray uses luminance 0.299R + 0.587G + 0.114B; gray→RGB replicates; resizing (:func:`fit_size`)
    scales the shorter side to fit, bilinear and antialiased, then center-crops (same aspect: a plain
    resize). ``source`` names the origin (file, folder, spec) in error messages.
    """
    channels, height, width = check_image_shape(image_shape)
    array = _as_channel_last(images, source)
    _check_values(array, source)
    out = torch.empty((len(array), channels, height, width), dtype=torch.float32)
    for start in range(0, len(array), _CHUNK):
        chunk = _to_float_nchw(array[start:start + _CHUNK])
        out[start:start + len(chunk)] = fit_size(_match_channels(chunk, channels), (height, width))
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


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.clamp_(0.0, 1.0)


def fit_size(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N×C×h×w → N×C×H×W: the shorter side (relative to ``size``) scaled to fit, bilinear and antialiased,
    then a center crop (torchvision's ``Resize`` + ``CenterCrop``); the same aspect is a plain resize."""
    h, w = x.shape[-2:]
    height, width = size
    if (h, w) == (height, width):
        return x
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    out = resize(x, (nh, nw))
    top, left = (nh - height) // 2, (nw - width) // 2
    return out[..., top:top + height, left:left + width].contiguous()


# --------------------------------------------------------------------------- image files


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; hidden files and folders are skipped."""
    return sorted(
        path for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


GRAY_MODES: tuple[str, ...] = ("1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")


def pil_to_array(image: Image.Image) -> np.ndarray:
    """A PIL image as H×W (gray) or H×W×3/4 uint8, or float for 16/32-bit gray: ``I;16`` / 65535;
    ``I`` / 255, or / 65535 above 255; ``F`` (float TIFF) as stored when within [0, 1], else / 255, or
    / 65535 above 255 (values outside [0, 65535] are refused by :func:`to_image_format`)."""
    if image.mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode == "I":
        array = np.asarray(image, dtype=np.float32)
        return np.clip(array / (65535.0 if array.max() > 255 else 255.0), 0.0, 1.0)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        high = float(array.max()) if array.size else 0.0
        return array if not high > 1 + _RANGE_EPS else array / (255.0 if high <= 255 else 65535.0)
    if image.mode in ("1", "L"):
        return np.asarray(image.convert("L"))
    if image.mode in ("P", "PA", "LA", "RGBA") or "transparency" in image.info:
        # via RGBA so that palette transparency converts cleanly; alpha is dropped later
        return np.asarray(image.convert("RGBA"))
    return np.asarray(image.convert("RGB"))


_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def read_image(path: Path) -> np.ndarray:
    """The one image decoder: a file as :func:`pil_to_array` gives it (ID ``folder:`` data, OOD and
    auxiliary ``folder:`` specs and ``detect`` all read files through here)."""
    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_array(image)
    except _READ_ERRORS as e:
        raise UserError(f"cannot read image file {path}: {e}") from None


def load_image(path: Path, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """One image file in the ID format: :func:`read_image`, then :func:`to_image_format` (C×H×W)."""
    return to_image_format(read_image(path)[None], image_shape, source=str(path))[0]


def image_header(path: Path) -> tuple[int, int, int]:
    """``(height, width, channels)`` of an image file from its header (nothing decoded): channels 1 for
    the gray modes (:data:`GRAY_MODES`), else 3. An empty or unidentifiable file is a :class:`UserError`."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            return height, width, 1 if image.mode in GRAY_MODES else 3
    except _READ_ERRORS as e:
        raise UserError(f"cannot read image file {path}: {e}") from None



def open_npz(path: Path, holds: str) -> np.lib.npyio.NpzFile:
    """An ``.npz`` archive opened without pickles (a context manager); one UserError when the file is not one.
    ``holds`` says what it should contain, for the message."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read {path} as an .npz file: {e}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise UserError(f"{path} holds a single array, not an .npz archive with {holds}")
    return loaded
