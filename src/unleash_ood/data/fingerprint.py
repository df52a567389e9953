"""What exactly a run evaluated on: per OOD set its SHA-256, size, shape and source images.

A set's hash is over its uint8 form (:func:`to_uint8`, the one rounding of [0, 1] images to 0–255 used
everywhere) and its shape: two users with the same hashes ran the same benchmark. ``summary.json``
holds a run's records (``"sets"``), ``unleash-ood data list --id fashion_mnist`` prints them for the
default settings, and ``docs/set_hashes.json`` holds the ones the docs' numbers were made with; a run
with the same data settings whose hashes differ says so in one line (:func:`warn_if_unlike_reference`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..config import SUITE_DATASETS, SUITE_NAMES, DataConfig
from ..utils.files import write_json
from ..utils.log import say
from .builtin import BUILTIN, Origin, Sources
from .glyphs import glyph_fonts
from .specs import load_ood, parse_spec

# docs/set_hashes.json of a source checkout (absent from an installed wheel: then nothing is compared)
REFERENCE_PATH = Path(__file__).resolve().parents[3] / "docs" / "set_hashes.json"
# the data settings a set's content depends on; hashes are compared only when all of them match
GLYPH_VAL_PROXY = "glyphs (validation fonts)"  # run.select_keep.validation_ood's near proxy, by its description
REFERENCE_KEYS: tuple[str, ...] = ("dataset", "seed", "ood_size", "val_ood_size", "val_size", "id_classes")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] float N×C×H×W → uint8 N×C×H×W: ``round(x · 255)`` (half to even), clamped to 0–255."""
    return (images.detach().float().cpu() * 255).round().clamp_(0, 255).to(torch.uint8)


def images_sha256(images: torch.Tensor) -> str:
    """SHA-256 of the shape (``"N,C,H,W;"``) followed by the uint8 bytes (:func:`to_uint8`, C order)."""
    digest = hashlib.sha256(",".join(str(d) for d in images.shape).encode("ascii") + b";")
    digest.update(to_uint8(images).contiguous().numpy().tobytes())
    return digest.hexdigest()


def set_record(images: torch.Tensor, origin: Origin) -> dict:
    """One set's record: ``sha256``, ``n``, ``shape`` (N, C, H, W), ``sources``, ``distinct_sources``."""
    return {"sha256": images_sha256(images), "n": len(images), "shape": list(images.shape),
            "sources": list(origin.sources), "distinct_sources": origin.distinct}


def spec_origin(spec: str, images: torch.Tensor, dataset: str = "fashion_mnist") -> Origin:
    """The origin of a loaded OOD spec: a built-in's own; a file, folder or CIFAR suite set: itself,
    each image a distinct source."""
    key = spec.strip().lower()
    if dataset in SUITE_DATASETS and key in SUITE_NAMES:
        return Origin((f"suite:{key}",), len(images))
    kind, value = parse_spec(spec)
    return BUILTIN[value].origin(images) if kind == "builtin" else Origin((f"{kind}:{value}",), len(images))


def suite_records(ood: Mapping[str, torch.Tensor], specs: Sequence[str], dataset: str) -> dict[str, dict]:
    """The records of loaded OOD sets, keyed by display name (``ood`` in the order of ``specs``)."""
    return {name: set_record(x, spec_origin(spec, x, dataset)) for (name, x), spec in zip(ood.items(), specs)}


def proxy_records(images: Mapping[str, torch.Tensor], described: Mapping[str, dict]) -> dict[str, dict]:
    """The records of a run's validation proxies (``{name: images}``, each described by its ``source``,
    ``"a + b"`` when the user's outliers join it): the held-out glyph fonts by name, other parts as named."""
    out = {}
    for name, x in images.items():
        parts = tuple(described[name]["source"].split(" + "))
        if parts == (GLYPH_VAL_PROXY,):
            fonts = glyph_fonts("val")
            origin = Origin(tuple(f.source for f in fonts), len(fonts))
        else:
            origin = Origin(parts, len(x))
        out[name] = set_record(x, origin)
    return out


def builtin_records(names: Sequence[str], image_shape: tuple[int, int, int], seed: int, n: int) -> dict[str, dict]:
    """The records of built-in sets loaded as a run loads them (``seed``, ``n`` = ``data.ood_size``)."""
    out = {}
    for name in names:
        images = load_ood(name, image_shape, seed, n, Sources())
        out[name] = set_record(images, BUILTIN[name].origin(images))
    return out


def reference_settings(cfg: DataConfig) -> dict:
    """The data settings a run's hashes depend on (:data:`REFERENCE_KEYS`)."""
    return {key: getattr(cfg, key) for key in REFERENCE_KEYS}


def write_reference(path: str | Path, cfg: DataConfig, records: Mapping[str, dict]) -> Path:
    """Write ``{"data": settings, "sets": records}`` (the layout of ``docs/set_hashes.json``)."""
    return write_json(path, {"data": reference_settings(cfg), "sets": dict(records)})


def read_reference(path: Path = REFERENCE_PATH) -> dict | None:
    """The reference hashes, or None when there is no readable file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("sets"), dict) else None


def differing_sets(records: Mapping[str, dict], cfg: DataConfig, reference: dict | None) -> list[str]:
    """The sets whose hash differs from ``reference``'s, with the same data settings and shape (else none)."""
    if not reference or reference.get("data") != json.loads(json.dumps(reference_settings(cfg))):
        return []
    ref = reference["sets"]
    return [name for name, rec in records.items() if name in ref and ref[name].get("shape") == rec["shape"]
            and ref[name].get("sha256") != rec["sha256"]]


def warn_if_unlike_reference(records: Mapping[str, dict], cfg: DataConfig, path: Path = REFERENCE_PATH) -> list[str]:
    """One line when some sets differ from the reference hashes (same settings); returns their names."""
    differ = differing_sets(records, cfg, read_reference(path))
    if differ:
        say(f"warning: OOD set(s) {', '.join(differ)} differ from {path.name} (same seed and sizes): this run's "
            "benchmark is not the one the docs' numbers were made with (see summary.json 'sets')")
    return differ
