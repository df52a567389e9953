"""The run directory: every file and folder name a run writes, and which models a finished run holds.

Every command asks :class:`RunLayout` for its paths; nothing else spells a run's file names::

    RUN/config.json  summary.json  zeta.json  finetune_log.json  train_log.jsonl  keep_selection.json
    RUN/results.json|csv|md  scores.npz  features.npz  plots/*.png
    RUN/validation.json|csv|md  tuning.json|csv|md  recommendation.json|csv|md   (chosen on validation only)
    RUN/checkpoints/{base,um,ce_finetune,…}.safetensors  {umap,…}_mask.safetensors  last_state.pt
    RUN/outliers/   (a run of its own: OE / Energy / POEM fine-tuned from RUN's base)
    RUN/eval/       (``eval --run RUN``)        RUN/seed<N>/   (one run per seed; RUN/results.* = mean ± std)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import MODEL_ORDER, DemoConfig, build_config
from ..errors import UserError
from ..utils.files import checkpoint_meta, read_json

SETUP_FILES = ("config.json", "recipe.json", "ood_cache")  # written before any result: a failure leaves nothing
RESULT_SUFFIXES = (".json", ".csv", ".md")
MASK_SUFFIX = "_mask"


@dataclass(frozen=True)
class RunModel:
    """One model of a finished run: its weights and, for a mask on the frozen base (UMAP), the mask."""

    name: str
    weights: Path
    mask: Path | None = None

    @property
    def kind(self) -> str:
        return "mask" if self.mask is not None else "weights"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory ``root``."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    config = property(lambda self: self.root / "config.json")
    recipe = property(lambda self: self.root / "recipe.json")
    ood_cache = property(lambda self: self.root / "ood_cache")
    summary = property(lambda self: self.root / "summary.json")
    zeta = property(lambda self: self.root / "zeta.json")
    finetune_log = property(lambda self: self.root / "finetune_log.json")
    outlier_log = property(lambda self: self.root / "outlier_log.json")
    train_log = property(lambda self: self.root / "train_log.jsonl")
    keep_selection = property(lambda self: self.root / "keep_selection.json")
    scores = property(lambda self: self.root / "scores.npz")
    features = property(lambda self: self.root / "features.npz")
    plots = property(lambda self: self.root / "plots")
    checkpoints = property(lambda self: self.root / "checkpoints")
    last_state = property(lambda self: self.root / "checkpoints" / "last_state.pt")
    outliers = property(lambda self: RunLayout(self.root / "outliers"))
    eval = property(lambda self: self.root / "eval")
    recommended = property(lambda self: self.root / "recommended")  # the demo's export of its recommendation

    def results(self, suffix: str = ".json", stem: str = "results") -> Path:
        """``results.json|csv|md`` (``stem="report"``: the aggregate of ``unleash-ood report``)."""
        return self.root / f"{stem}{suffix}"

    def result_files(self, stem: str = "results") -> tuple[Path, ...]:
        return tuple(self.results(s, stem) for s in RESULT_SUFFIXES)

    def validation(self, suffix: str = ".json") -> Path:
        """``validation.json|csv|md``: every (model, detector, params) on the validation OOD proxies."""
        return self.results(suffix, "validation")

    def tuning(self, suffix: str = ".json") -> Path:
        """``tuning.json|csv|md``: the hyperparameters ``scores.tune`` chose per model, with every grid value."""
        return self.results(suffix, "tuning")

    def recommendation(self, suffix: str = ".json") -> Path:
        """``recommendation.json|csv|md``: the one (model, detector, params) ``recommend`` picked."""
        return self.results(suffix, "recommendation")

    def checkpoint(self, name: str) -> Path:
        """A model's weights (``base``, ``um``, ``ce_finetune``, ``oe``, …) or any other tensors file."""
        return self.checkpoints / f"{name}.safetensors"

    def mask(self, name: str) -> Path:
        """The mask of a model that is the frozen base plus a mask (``umap``, ``oe_umap``, …)."""
        return self.checkpoint(f"{name}{MASK_SUFFIX}")

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoint(f"base_epoch{epoch:03d}")

    def seed(self, seed: int) -> RunLayout:
        """One seed's run of a multi-seed run."""
        return RunLayout(self.root / f"seed{seed}")

    @property
    def finished(self) -> bool:
        return self.results().is_file()

    def read_results(self, stem: str = "results") -> list[dict]:
        """The metric records of ``results.json`` (``stem="report"``: an aggregate's)."""
        return read_json(self.results(".json", stem), "results")

    def read_config(self) -> dict | None:
        """The raw ``config.json`` (None when missing or unreadable): for labels, not for running."""
        try:
            return json.loads(self.config.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    @staticmethod
    def find(dirs: Sequence[str | Path]) -> list[RunLayout]:
        """Every finished run under ``dirs`` (each itself a run or a folder of runs), outlier sub-runs too."""
        runs: list[RunLayout] = []
        for d in map(RunLayout, dirs):
            inner = [d] if d.finished else [RunLayout(p) for p in sorted(d.root.iterdir())] if d.root.is_dir() else []
            found = [r for run in inner for r in (run, run.outliers) if r.finished]
            if not found:
                raise UserError(f"{d.root}: no {d.results().name} in it or in its subfolders (is the run finished?)")
            runs += found
        return list(dict.fromkeys(runs))

    def load_config(self) -> DemoConfig:
        """The config the run was made with."""
        if not self.config.is_file():
            raise UserError(f"{self.root} is not a finished run: {self.config} is missing")
        try:
            return build_config(json.loads(self.config.read_text()))
        except json.JSONDecodeError as e:
            raise UserError(f"corrupt run config {self.config}: {e}") from None

    def _own_models(self) -> dict[str, RunModel]:
        """The models whose checkpoints this run directory wrote itself: a file whose metadata names an
        architecture and whose ``kind`` is its own name (not a tracked epoch, an index or a selection file)."""
        found: dict[str, RunModel] = {}
        for path in sorted(self.checkpoints.glob("*.safetensors")):
            meta = checkpoint_meta(path)
            if "arch" not in meta or meta.get("kind") != path.stem:
                continue
            name = path.stem.removesuffix(MASK_SUFFIX)
            if name != path.stem:
                found[name] = RunModel(name, self.checkpoint("base"), path)
            else:
                found[name] = RunModel(name, path)
        return found

    def models(self) -> dict[str, RunModel]:
        """Every model the run holds, its outlier sub-run's included: ``name → RunModel``, base, UM, the
        control and UMAP first. A model is its own weights, or the base's weights with its mask (UMAP)."""
        found = self._own_models()
        if "base" not in found:
            raise UserError(f"{self.root} is not a finished run: {self.checkpoint('base')} is missing")
        for name, m in self.outliers._own_models().items() if self.outliers.checkpoints.is_dir() else ():
            found.setdefault(name, m)
        order = {name: i for i, name in enumerate(MODEL_ORDER)}
        return dict(sorted(found.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))

    def model(self, name: str) -> RunModel:
        models = self.models()
        if name not in models:
            raise UserError(f"run {self.root} has no model {name!r}; it holds {', '.join(models)}")
        return models[name]
