"""The paper's OOD suite for CIFAR-10/100 (32×32 RGB) in-distribution data, by fixed names.

Every set lives under the data root (``data.data_root`` / ``--data-root``, default
``~/.cache/unleash-ood``). Image-folder sets are read from ``<root>/ood/<name>/`` (image files, searched
recursively; a few conventional alternative folders are also accepted, see ``SUITE[name].folders``) and
brought to 32×32 with the literature's ``Resize(32)`` (shorter side to 32, bilinear, antialiased) +
``CenterCrop(32)``; sets distributed at 32×32 (LSUN, LSUN-resize, iSUN, TinyImageNet crop) pass through
unchanged. CIFAR and SVHN are read from torchvision's on-disk layout. Everything is returned through
:func:`unleash_ood.data.images.to_image_format`, i.e. float32 N×C×H×W in [0, 1] in the ID format.

Name clash: ``textures`` here is DTD (Cimpoi et al.), whereas the embedded default's built-in
``textures`` is a set of scikit-image picture crops. Suite names are resolved only for 32×32 RGB
ID data (CIFAR-10/100, see :func:`uses_suite`); for Fashion-MNIST the built-ins keep their meaning.

``tinyimagenet`` is the *validation* OOD set (choosing ζ / the keep ratio, as in the paper's
Appendix F) and is never accepted as a test set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from scipy.io import loadmat

from ..config import data_root
from ..errors import UserError
from ..utils.files import atomic_write
from .builtin import Sources
from .cifar import cifar_present, download_cifar, load_cifar
from .fingerprint import to_uint8
from .images import image_files, pil_to_array, to_image_format
from .specs import load_ood_suite, ood_name

SUITE_SIZE = 32
VALIDATION_SETS = ("tinyimagenet",)


@dataclass(frozen=True)
class SuiteSet:
    name: str
    title: str
    kind: str  # "cifar", "svhn" or "folder"
    folders: tuple[str, ...] = ()  # relative to the data root; the first is the canonical one
    how: str = ""
    role: str = "test"  # "test" or "validation"



SUITE: dict[str, SuiteSet] = {s.name: s for s in (
    SuiteSet("cifar10", "CIFAR-10 (test split, 10,000)", "cifar",
             how="torchvision downloads it (data.download=true), or copy 'cifar-10-batches-py' into the root"),
    SuiteSet("cifar100", "CIFAR-100 (test split, 10,000)", "cifar",
             how="torchvision downloads it (data.download=true), or copy 'cifar-100-python' into the root"),
    SuiteSet("svhn", "SVHN (test split, 26,032)", "svhn", folders=("svhn",),
             how="torchvision.datasets.SVHN(ROOT/svhn, split='test', download=True) (automatic when "
                 "data.download=true), or put test_32x32.mat into ROOT/svhn/"),
    SuiteSet("textures", "Textures / DTD (5,640)", "folder", folders=("ood/textures", "dtd/images", "dtd/dtd/images"),
             how="pytorch-ood: pytorch_ood.dataset.img.Textures(ROOT, download=True) (→ ROOT/dtd/images); "
                 "torchvision: torchvision.datasets.DTD(ROOT/dtd, download=True); or extract dtd-r1.0.1.tar.gz "
                 "and put its images/ folder at ROOT/ood/textures/"),
    SuiteSet("places365", "Places365 (the usual 10,000-image subset)", "folder", folders=("ood/places365",),
             how="torchvision.datasets.Places365(ROOT/places365_full, split='val', small=True, download=True) "
                 "then copy (a subset of) its val_256/ images to ROOT/ood/places365/; or use the 10k "
                 "Places365 OOD subset distributed with the Energy/MOS/KNN OOD benchmarks"),
    SuiteSet("lsun", "LSUN-crop (ODIN, 10,000 at 32×32)", "folder", folders=("ood/lsun", "LSUN"),
             how="pytorch-ood: pytorch_ood.dataset.img.LSUNCrop(ROOT, download=True) (→ ROOT/LSUN); or "
                 "extract ODIN's LSUN.tar.gz into ROOT/ood/lsun/"),
    SuiteSet("lsun_resize", "LSUN-resize (ODIN, 10,000 at 32×32)", "folder", folders=("ood/lsun_resize", "LSUN_resize"),
             how="pytorch-ood: pytorch_ood.dataset.img.LSUNResize(ROOT, download=True) (→ ROOT/LSUN_resize); "
                 "or extract ODIN's LSUN_resize.tar.gz into ROOT/ood/lsun_resize/"),
    SuiteSet("isun", "iSUN (ODIN, 8,925 at 32×32)", "folder", folders=("ood/isun", "iSUN"),
             how="extract ODIN's iSUN.tar.gz into ROOT/ood/isun/"),
    SuiteSet("inaturalist", "iNaturalist (MOS subset, 10,000)", "folder", folders=("ood/inaturalist", "iNaturalist"),
             how="the iNaturalist OOD subset of MOS (Huang & Li, 2021) into ROOT/ood/inaturalist/ "
                 "(pytorch-ood versions that have it: pytorch_ood.dataset.img.iNaturalist)"),
    SuiteSet("sun", "SUN (MOS subset, 10,000)", "folder", folders=("ood/sun", "SUN"),
             how="the SUN OOD subset of MOS (Huang & Li, 2021) into ROOT/ood/sun/"),
    SuiteSet("tinyimagenet", "TinyImageNet (validation OOD only)", "folder",
             folders=("ood/tinyimagenet", "Imagenet", "Imagenet_resize", "tiny-imagenet-200/val"),
             how="pytorch-ood: pytorch_ood.dataset.img.TinyImageNetCrop(ROOT, download=True) (→ ROOT/Imagenet); "
                 "or the TinyImageNet val images in ROOT/ood/tinyimagenet/", role="validation"),
)}

# The paper's test suites (Section 4.1 + SVHN as in the authors' configs; Table 2/16 show the first six).
PAPER_SUITE = {
    "cifar10": ["cifar100", "textures", "places365", "sun", "lsun", "inaturalist", "svhn"],
    "cifar100": ["cifar10", "textures", "places365", "sun", "lsun", "inaturalist", "svhn"],
}


def uses_suite(image_shape: Sequence[int] | None = None, dataset: str | None = None) -> bool:
    """Suite names apply to 32×32 RGB ID data (CIFAR); elsewhere OOD names are the built-ins."""
    if dataset is not None:
        return dataset in PAPER_SUITE
    return tuple(image_shape or ()) == (3, SUITE_SIZE, SUITE_SIZE)


def is_suite_name(spec: str) -> bool:
    return spec.strip().lower() in SUITE


def _check_name(name: str, id_dataset: str | None, allow_validation: bool) -> SuiteSet:
    key = name.strip().lower()
    if key not in SUITE:
        raise UserError(f"unknown OOD suite set {name!r}; choose from {', '.join(SUITE)}")
    s = SUITE[key]
    if s.role == "validation" and not allow_validation:
        raise UserError(f"{key} is the validation OOD set (choosing ζ / the keep ratio); it is never a test set")
    if id_dataset is not None and key == id_dataset:
        raise UserError(f"{key} is the in-distribution dataset; it cannot be an OOD set")
    return s


def find_folder(s: SuiteSet, root: Path) -> Path | None:
    for rel in s.folders:
        p = root / rel
        if p.is_dir() and next(iter(image_files(p)), None) is not None:
            return p
    return None


def _svhn_file(root: Path) -> Path:
    return root / "svhn" / "test_32x32.mat"


def location(name: str, root: str | Path | None) -> Path:
    """Where a set is expected (the canonical place)."""
    s, r = SUITE[name], data_root(root)
    if s.kind == "cifar":
        return r / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    if s.kind == "svhn":
        return _svhn_file(r)
    return r / s.folders[0]


def present(name: str, root: str | Path | None) -> Path | None:
    """The path a set is found at, or None."""
    s, r = SUITE[name], data_root(root)
    if s.kind == "cifar":
        return location(name, r) if cifar_present(name, r) else None
    if s.kind == "svhn":
        return _svhn_file(r) if _svhn_file(r).is_file() else None
    return find_folder(s, r)


def data_status(data_root_: str | Path | None, id_dataset: str = "cifar10") -> list[dict]:
    """One row per suite set: name, title, role (test / validation / ID), expected path, found path, how to get."""
    rows = []
    for name, s in SUITE.items():
        found = present(name, data_root_)
        role = "ID" if name == id_dataset else s.role
        if role == "test" and name not in PAPER_SUITE.get(id_dataset, []):
            role = "extra test"
        rows.append({"name": name, "title": s.title, "role": role, "expected": str(location(name, data_root_)),
                     "present": found is not None, "found": str(found) if found else None,
                     "how": s.how.replace("ROOT", str(data_root(data_root_)))})
    return rows


def format_status(rows: list[dict]) -> str:
    w = max(len(r["name"]) for r in rows)
    lines = [f"{'name':<{w}}  {'role':<10}  {'status':<7}  location / how to get it"]
    for r in rows:
        status = "present" if r["present"] else "MISSING"
        lines.append(f"{r['name']:<{w}}  {r['role']:<10}  {status:<7}  {r['found'] or r['expected']}")
        if not r["present"]:
            lines.append(f"{'':<{w}}  {'':<10}  {'':<7}  get it: {r['how']}")
    return "\n".join(lines)


def check_available(names: Sequence[str], root: str | Path | None, id_dataset: str | None = None,
                    download: bool = False, allow_validation: bool = False) -> None:
    """Fail with ONE message naming every missing set and its fix (call before any training).

    With ``download``, sets torchvision can fetch (CIFAR, SVHN) are downloaded first.
    """
    missing = []
    for name in names:
        s = _check_name(name, id_dataset, allow_validation)
        if present(s.name, root) is None and download and s.kind in ("cifar", "svhn"):
            try:
                _download(s.name, root)
            except UserError:
                pass
        if present(s.name, root) is None:
            missing.append(f"{s.name} (expected at {location(s.name, root)}; get it: "
                           f"{s.how.replace('ROOT', str(data_root(root)))})")
    if missing:
        raise UserError(f"{len(missing)} OOD set(s) missing under {data_root(root)}: " + "; ".join(missing)
                        + ". See `unleash-ood data list` and docs/paper-scale.md.")


def _download(name: str, root: str | Path | None) -> None:
    r = data_root(root)
    if SUITE[name].kind == "cifar":
        download_cifar(name, r)
        return

    try:
        torchvision.datasets.SVHN(str(r / "svhn"), split="test", download=True)
    except Exception as e:
        raise UserError(f"SVHN download failed: {e}") from None


def resize_center_crop(image: np.ndarray, size: int = SUITE_SIZE) -> np.ndarray:
    """``Resize(size)`` (shorter side to ``size``, bilinear, antialiased) + ``CenterCrop(size)`` on an
    H×W or H×W×C uint8/float array; images already ``size``×``size`` are returned unchanged."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    x = torch.from_numpy(np.array(image, copy=True)).float()
    if image.dtype == np.uint8:
        x = x / 255.0
    x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False,
                                        antialias=True).clamp_(0, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[0, :, top:top + size, left:left + size]
    out = x[0] if image.ndim == 2 else x.permute(1, 2, 0)
    return out.numpy().astype(np.float32)


def _subset(n_total: int, n: int | None, seed: int) -> np.ndarray:
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng([7, seed]).choice(n_total, size=n, replace=False))


def load_suite_set(name: str, root: str | Path | None = None, image_shape: tuple[int, int, int] = (3, 32, 32),
                   n: int | None = None, seed: int = 0, id_dataset: str | None = None,
                   allow_validation: bool = False, download: bool = False) -> torch.Tensor:
    """Load one suite set (a seeded subset of at most ``n`` images) as float32 N×C×H×W in [0, 1]."""
    s = _check_name(name, id_dataset, allow_validation)
    check_available([s.name], root, id_dataset, download=download, allow_validation=allow_validation)
    r = data_root(root)
    if s.kind == "cifar":
        x, _, _ = load_cifar(s.name, r, train=False, download=False)
        return to_image_format(x[torch.from_numpy(_subset(len(x), n, seed))], image_shape, source=s.name)
    if s.kind == "svhn":
        path = _svhn_file(r)
        try:
            images = loadmat(str(path))["X"]  # 32×32×3×N uint8
        except Exception as e:
            raise UserError(f"cannot read SVHN file {path}: {e}") from None
        images = np.transpose(images, (3, 0, 1, 2))
        return to_image_format(images[_subset(len(images), n, seed)], image_shape, source=str(path))
    folder = find_folder(s, r)
    files = image_files(folder)
    files = [files[i] for i in _subset(len(files), n, seed)]
    out = torch.empty((len(files), *image_shape), dtype=torch.float32)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as im:
                im.load()
                arr = pil_to_array(im)
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise UserError(f"cannot read image file {path}: {e}") from None
        out[i] = to_image_format(resize_center_crop(arr)[None], image_shape, source=str(path))[0]
    return out


def materialize(names: Sequence[str], root: str | Path | None, cache_dir: str | Path,
                image_shape: tuple[int, int, int] = (3, 32, 32), n: int | None = None, seed: int = 0,
                id_dataset: str | None = None, allow_validation: bool = False) -> dict[str, Path]:
    """Write each set once to ``cache_dir/<name>.npz`` (uint8 ``images``, the layout ``npz:`` specs read)
    and return ``{name: path}``; the display name of ``npz:cache_dir/<name>.npz`` is ``<name>``."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        key = name.strip().lower()
        path = cache / f"{key}.npz"
        stamp = f"{data_root(root).resolve()}|{image_shape}|{n}|{seed}"
        if path.is_file():
            with np.load(path) as z:
                if "stamp" in z.files and str(z["stamp"]) == stamp:
                    out[key] = path
                    continue
        x = load_suite_set(key, root, image_shape, n, seed, id_dataset, allow_validation)
        u8 = to_uint8(x).permute(0, 2, 3, 1).numpy()
        def write(tmp: str, u8=u8, stamp=stamp) -> None:
            with open(tmp, "wb") as f:  # a file object: numpy appends no ".npz" to the temp name
                np.savez(f, images=u8, stamp=np.array(stamp))
        atomic_write(path, write)  # a full disk: a WriteError naming the file, no half-written cache
        out[key] = path
    return out


def resolve_specs(specs: Sequence[str], dataset: str, root: str | Path | None, cache_dir: str | Path,
                  n: int | None = None, seed: int = 0) -> list[str]:
    """Map suite names in ``specs`` to ``npz:`` specs (other specs untouched) for CIFAR ID data; a no-op
    for other ID datasets (their names stay built-ins)."""
    if not uses_suite(dataset=dataset):
        return list(specs)
    names = [s for s in specs if is_suite_name(s)]
    paths = materialize(names, root, cache_dir, n=n, seed=seed, id_dataset=dataset)
    return [f"npz:{paths[s.strip().lower()]}" if is_suite_name(s) else s for s in specs]


def load_ood_sets(specs: Sequence[str], dataset: str, root: str | Path | None, image_shape: tuple[int, int, int],
                  n: int | None = None, seed: int = 0, download: bool = False,
                  heldout: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Like :func:`unleash_ood.data.specs.load_ood_suite`, but for CIFAR ID data suite names (``svhn``,
    ``textures`` = DTD, …) load the suite sets (a subset of at most ``n``); all other specs (built-ins
    for non-CIFAR data, ``npz:``, ``folder:``) go to ``load_ood_suite``. Missing suite sets fail together
    before anything is loaded. ``heldout``: the open-set protocol's held-out test images (``heldout-classes``)."""
    sources = Sources(str(root) if root else None, download, heldout)
    if not uses_suite(dataset=dataset):
        return load_ood_suite(list(specs), image_shape, seed=seed, n=n or 2000, sources=sources)
    names = [s.strip().lower() for s in specs if is_suite_name(s)]
    check_available(names, root, id_dataset=dataset, download=download)
    others = [s for s in specs if not is_suite_name(s)]
    loaded = load_ood_suite(others, image_shape, seed=seed, n=n or 2000, sources=sources) if others else {}
    out: dict[str, torch.Tensor] = {}
    for s in specs:
        if is_suite_name(s):
            key = s.strip().lower()
            out[key] = load_suite_set(key, root, image_shape, n=n, seed=seed, id_dataset=dataset)
        else:
            name = ood_name(s)
            if name in out:
                raise UserError(f"two OOD sets are named {name!r}; rename the file or folder of {s!r}")
            out[name] = loaded[name]
    return out
