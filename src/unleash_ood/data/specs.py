"""OOD specs: a built-in name (see :data:`unleash_ood.data.builtin.BUILTIN`), ``npz:PATH`` (an .npz
holding an array named ``images``) or ``folder:PATH`` (image files, searched recursively); their
display names, loading, and the near/far group of each.

Groups: a built-in keeps its own group wherever it is listed (``digits`` is near even under ``far``);
``npz:``/``folder:`` specs (and, for CIFAR ID data, the paper's suite names) take the group they are
listed under. See :func:`group_specs` and :func:`config_groups`.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import DEFAULT_FAR, DEFAULT_NEAR, config_groups, group_specs  # noqa: F401  (re-exported)
from ..errors import UserError
from .builtin import BUILTIN, Request, Sources, load_builtin
from .images import (
    IMAGE_EXTENSIONS,
    check_count,
    check_image_shape,
    check_seed,
    image_files,
    load_image,
    open_npz,
    to_image_format,
)

SPEC_FORMS = "npz:PATH (an .npz file with an 'images' array) or folder:PATH (image files, searched recursively)"

_PROGRESS_MIN_FILES = 100


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a spec into ``(kind, value)``: ``("builtin", name)``, ``("npz", path)`` or ``("folder", path)``."""
    text = spec.strip()
    for kind in ("npz", "folder"):
        if text.startswith(kind + ":"):
            path = text[len(kind) + 1:].strip()
            if not path:
                raise UserError(f"OOD spec {spec!r}: missing path after '{kind}:'")
            return kind, path
    name = text.lower()
    if name in BUILTIN:
        return "builtin", name
    raise UserError(f"unknown OOD set {spec!r}: use one of {', '.join(BUILTIN)}, or {SPEC_FORMS}")


def ood_name(spec: str) -> str:
    """Display name of a spec: the built-in name, or the stem of the npz file / the folder's name."""
    kind, value = parse_spec(spec)
    if kind == "builtin":
        return value
    path = Path(value).expanduser().resolve()
    return (path.stem if kind == "npz" else path.name) or str(path)


def load_ood(spec: str, image_shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0,
             n: int = 2000, sources: Sources | None = None) -> torch.Tensor:
    """Load one OOD set as float32 N×C×H×W in [0, 1].

    Built-in random sets have ``n`` images and are fixed for a given ``seed``. ``digits`` always has all
    1,797 scikit-learn digits and ``heldout-classes`` all held-out test images (``n`` and ``seed`` are
    ignored); ``npz:``/``folder:`` sets keep all their images (``n`` and ``seed`` are ignored).
    ``sources``: the data root / download flag / held-out images some built-ins need.
    """
    image_shape = check_image_shape(image_shape)
    kind, value = parse_spec(spec)
    if kind == "npz":
        return load_npz(Path(value).expanduser(), image_shape)
    if kind == "folder":
        return _load_folder(Path(value).expanduser(), image_shape)
    check_count(n, "n")
    return load_builtin(value, Request(image_shape, check_seed(seed), int(n), sources or Sources()))


def load_ood_suite(specs: Sequence[str], image_shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0,
                   n: int = 2000, sources: Sources | None = None) -> dict[str, torch.Tensor]:
    """Load several OOD sets, keyed by display name (see ``ood_name``), in the order given."""
    names = [ood_name(spec) for spec in specs]
    for i, name in enumerate(names):
        if name in names[:i]:
            first = specs[names.index(name)]
            raise UserError(f"OOD specs {first!r} and {specs[i]!r} share the display name {name!r}; "
                            "rename one file or folder")
    return {name: load_ood(spec, image_shape, seed, n, sources) for name, spec in zip(names, specs)}


# --------------------------------------------------------------------------- user specs


def load_npz(path: Path, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """Images from the ``images`` array of an .npz file."""
    if not path.exists():
        raise UserError(f"OOD file {path} does not exist")
    if not path.is_file():
        raise UserError(f"OOD file {path} is not a file")
    with open_npz(path, "an array named 'images'") as loaded:
        if "images" not in loaded.files:
            found = ", ".join(loaded.files) or "none"
            raise UserError(f"{path} has no array named 'images' (arrays found: {found})")
        try:
            images = loaded["images"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f"cannot read array 'images' from {path}: {e}") from None
    return to_image_format(images, image_shape, source=str(path))


def _load_folder(folder: Path, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """All image files under ``folder`` (recursively), converted one by one."""
    if not folder.exists():
        raise UserError(f"OOD folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"OOD folder {folder} is not a folder")
    files = image_files(folder)
    if not files:
        raise UserError(f"OOD folder {folder} has no image files ({', '.join(IMAGE_EXTENSIONS)}), "
                        "searched recursively")
    out = torch.empty((len(files), *image_shape), dtype=torch.float32)
    progress = tqdm(files, desc=f"reading {folder.name or folder}", unit="img",
                    disable=len(files) < _PROGRESS_MIN_FILES, leave=False)
    for i, path in enumerate(progress):
        out[i] = load_image(path, image_shape)
    return out
