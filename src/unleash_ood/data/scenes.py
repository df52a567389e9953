"""``scenes``: the source pictures of a far-OOD set of natural photographs, many distinct ones.

31 photographs (landscapes, plants, animals, objects, people) from pinned files: the Debian wallpaper
packages that ``make data`` installs (:data:`SCENE_PACKAGES`: lomiri-wallpapers-16.04, 14 pictures;
lomiri-wallpapers-20.04, 2; mate-backgrounds, its 12 ``nature`` pictures) and the sample images that
scikit-learn (``china.jpg``, ``flower.jpg``) and matplotlib (``grace_hopper.jpg``) ship. The packages'
illustrations and abstract wallpapers are left out. None of them is a picture of the auxiliary-outlier
pool (:data:`unleash_ood.data.auxpool.AUX_PICTURES`) or of ``photos``/``textures`` (scikit-image's).

Each picture is decoded once per process, scaled (JPEG draft mode, then Lanczos) so that its shorter
side is :data:`SCENE_SIDE` pixels, and kept as uint8; ``builtin`` cuts the random crops. A missing file
fails with one line naming the package to install.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
import sklearn.datasets
import torch
from PIL import Image

from ..errors import UserError
from .images import to_image_format

SCENE_PACKAGES = "lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds"  # the Makefile's
SCIKIT_LEARN, MATPLOTLIB = "scikit-learn", "matplotlib"
SCENE_SIDE = 384  # the shorter side of a source picture, in pixels, before cropping
_BACKGROUNDS = Path("/usr/share/backgrounds")
# each picture as (package, file name), in a fixed order (the crops' RNG draws index into it)
SCENE_PICTURES: tuple[tuple[str, str], ...] = (
    *(("lomiri-wallpapers-16.04", f) for f in (
        "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
        "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
        "analogpattern_by_Peter_Nerlich.jpg", "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg",
        "greentock_by_Peter_Nerlich.jpg", "life_by_Aitzol_Berasategi.jpg", "picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "seeding_by_Clements_Engelhardt.jpg", "sunset_by_Aitzol_Berasategi.jpg")),
    *(("lomiri-wallpapers-20.04", f) for f in ("Kleiber_by_Lukas_Baubkus.jpg", "Infinite-Sea_by_Aury88.jpg")),
    *(("mate-backgrounds", f) for f in (
        "Aqua.jpg", "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg", "Garden.jpg", "GreenMeadow.jpg", "LadyBird.jpg",
        "RainDrops.jpg", "Storm.jpg", "TwoWings.jpg", "Wood.jpg", "YellowFlower.jpg")),
    (SCIKIT_LEARN, "china.jpg"), (SCIKIT_LEARN, "flower.jpg"), (MATPLOTLIB, "grace_hopper.jpg"),
)


def package_dir(package: str) -> Path:
    """The folder holding a package's scene pictures."""
    if package == SCIKIT_LEARN:
        return Path(sklearn.datasets.__file__).parent / "images"
    if package == MATPLOTLIB:
        return Path(matplotlib.get_data_path()) / "sample_data"
    return _BACKGROUNDS / "mate" / "nature" if package == "mate-backgrounds" else _BACKGROUNDS


def scene_sources() -> tuple[str, ...]:
    """Every picture as ``package:file`` (what a run records as the set's sources)."""
    return tuple(f"{package}:{name}" for package, name in SCENE_PICTURES)


def scene_paths() -> list[Path]:
    """The pictures' paths; any missing fails with one line naming the packages to install."""
    paths = [package_dir(package) / name for package, name in SCENE_PICTURES]
    missing = sorted({package for (package, _), path in zip(SCENE_PICTURES, paths) if not path.is_file()})
    if missing:
        debian = [p for p in missing if p not in (SCIKIT_LEARN, MATPLOTLIB)]
        fix = (f"apt-get install {' '.join(debian)} (or `make data`)" if debian
               else f"reinstall {' and '.join(missing)}")
        raise UserError(f"OOD set 'scenes' needs its source pictures; missing those of {', '.join(missing)}: {fix}")
    return paths


@lru_cache(maxsize=len(SCENE_PICTURES))
def read_scene(path: Path) -> np.ndarray:
    """One picture as H×W×3 uint8, its shorter side scaled to :data:`SCENE_SIDE` (decoded once per process)."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (2 * SCENE_SIDE, 2 * SCENE_SIDE))  # JPEG: decode at a reduced scale
            rgb = image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"OOD set 'scenes': cannot read picture {path}: {e}") from None
    scale = SCENE_SIDE / min(rgb.size)
    size = (max(SCENE_SIDE, round(rgb.width * scale)), max(SCENE_SIDE, round(rgb.height * scale)))
    return np.asarray(rgb.resize(size, Image.Resampling.LANCZOS))


def scene_pictures(channels: int) -> list[torch.Tensor]:
    """Every scene picture as float 1×C×H×W in [0, 1] at its (scaled) size."""
    out = []
    for path in scene_paths():
        picture = read_scene(path)
        height, width = picture.shape[:2]
        out.append(to_image_format(picture[None], (channels, height, width), source=str(path)))
    return out
