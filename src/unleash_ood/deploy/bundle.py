"""The deploy bundle on disk: one directory with ``detector.json`` and safetensors or ONNX files.

``detector.json`` records everything needed to rebuild the detector (architecture, classes, input spec,
score and threshold) and the SHA-256 of every other file; reading a bundle checks those hashes first.
Nothing in a bundle is executable: JSON, safetensors and (ONNX bundles) an ONNX graph.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import UserError, WriteError, os_error_reason

SPEC_FILE = "detector.json"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"  # the classifier's weights (for UMAP: the unmasked base)
MASK_FILE = "mask.safetensors"  # UMAP only: binary masks by layer name
STATS_FILE = "detector.safetensors"  # the score's fitted statistics
ONNX_FILE = "model.onnx"  # ONNX bundles: inputs → (logits, score), masks baked into the weights


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    """What ``detect`` feeds the model: float32 N×C×H×W in ``range``; normalization is inside the model."""

    channels: int = Field(ge=1)
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    range: tuple[float, float] = (0.0, 1.0)
    layout: Literal["NCHW"] = "NCHW"

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.channels, self.height, self.width


class ModelSpec(_Strict):
    arch: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    num_classes: int = Field(ge=1)
    kind: str  # the run's model name: base, um, ce_finetune, umap, oe_umap, …
    masked_score: bool = False  # UMAP: class from the unmasked model, score from the masked one
    normalization: dict[str, Any] = Field(default_factory=dict)  # what the model does to its input


class ScoreSpec(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    stats_shapes: dict[str, list[int]] = Field(default_factory=dict)
    higher_is_id: bool = True


class Calibration(_Strict):
    """The threshold: ``score >= threshold`` is ID; it accepts ``tpr`` of the held-out ID validation split."""

    threshold: float
    tpr: float = Field(gt=0, lt=1)
    split: str = "ID validation"
    size: int = Field(ge=1)
    flag_rate: float  # fraction of that split flagged OOD by this threshold (≈ 1 - tpr)
    engine: Literal["torch", "onnxruntime"] = "torch"  # what scored the split (the bundle's own engine)


class FileEntry(_Strict):
    sha256: str
    bytes: int


class BundleSpec(_Strict):
    """The content of ``detector.json``."""

    format_version: Literal[1] = FORMAT_VERSION
    format: Literal["torch", "onnx"]
    model: ModelSpec
    classes: list[str]
    dataset: str
    input: InputSpec
    score: ScoreSpec
    calibration: Calibration
    run: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    files: dict[str, FileEntry] = Field(default_factory=dict)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bundle(out: str | Path, spec: BundleSpec, write_files: Callable[[Path], None]) -> Path:
    """Write a bundle atomically: ``write_files(tmp_dir)`` writes the data files, then their hashes go into
    ``detector.json`` and the directory is renamed onto ``out`` (an existing bundle there is replaced)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / SPEC_FILE).is_file())):
        raise UserError(f"{out} exists and is not a bundle; choose a new --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as e:
        raise WriteError(out, os_error_reason(e), e.errno) from e
    try:
        write_files(tmp)
        files = {p.name: FileEntry(sha256=sha256(p), bytes=p.stat().st_size)
                 for p in sorted(tmp.iterdir()) if p.is_file()}
        spec = spec.model_copy(update={"files": files})
        (tmp / SPEC_FILE).write_text(spec.model_dump_json(indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # a full disk...: one line naming the bundle, not its temp folder
            raise WriteError(out, e.reason if isinstance(e, WriteError) else os_error_reason(e), e.errno) from e
        raise
    return out


def read_spec(bundle: str | Path) -> BundleSpec:
    """Parse ``detector.json`` and check every file it lists against its SHA-256 (UserError otherwise)."""
    root = Path(bundle)
    path = root / SPEC_FILE
    if not root.is_dir():
        raise UserError(f"bundle {root} not found (a directory written by `unleash-ood export`)")
    if not path.is_file():
        raise UserError(f"{root} is not a bundle: {SPEC_FILE} is missing")
    try:
        spec = BundleSpec.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt bundle {root}: {SPEC_FILE} is not valid JSON ({e})") from None
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise UserError(f"corrupt bundle {root}: {SPEC_FILE}: {where}: {err['msg']}") from None
    need = {ONNX_FILE} if spec.format == "onnx" else {WEIGHTS_FILE, STATS_FILE} | (
        {MASK_FILE} if spec.model.masked_score else set())
    if need - set(spec.files):
        raise UserError(f"corrupt bundle {root}: {SPEC_FILE} lists no {', '.join(sorted(need - set(spec.files)))}")
    for name, entry in spec.files.items():
        file = root / name
        if Path(name).name != name or not file.is_file():
            raise UserError(f"corrupt bundle {root}: {name} is missing")
        if file.stat().st_size != entry.bytes or sha256(file) != entry.sha256:
            raise UserError(f"bundle {root}: {name} does not match {SPEC_FILE} (SHA-256 differs); "
                            "the bundle was modified or is damaged")
    if len(spec.classes) != spec.model.num_classes:
        raise UserError(f"corrupt bundle {root}: {len(spec.classes)} class names for "
                        f"{spec.model.num_classes} classes")
    return spec
