"""Sub-run caching for the analyses: every sub-run writes into its own folder and leaves a
``result.json`` marker, and a re-run skips finished sub-runs. Base trainings are shared between
analyses in ``<out>/../_base_<hash>``, keyed by everything that determines them; ζ, UM and UMAP runs
on a base, and its evaluations, are cached inside that folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import DataConfig, DemoConfig
from ..data.prepared import Prepared, prepare_data
from ..errors import UserError
from ..eval.evaluate import configured_detectors
from ..eval.models import evaluate_models, val_fpr95
from ..models.checkpoint import load_masks, save_masks, save_model
from ..models.loading import build, load_checkpoint, model_meta
from ..run.layout import RunLayout
from ..run.stages import BaseTraining, resolve_zeta, run_um, run_umap, train_base
from ..utils.files import atomic_write, write_json
from ..utils.log import say


def stable_hash(obj) -> str:
    """A short, stable hash of a JSON-able object (cache folder names)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def add_fc_dropout(model: nn.Module, p: float) -> nn.Module:
    """Dropout(p) on the classifier's input in training mode, as a forward pre-hook on ``model.fc``
    (SmallCNN has no dropout; the state dict and the architecture are unchanged)."""
    if p > 0:
        model.fc.register_forward_pre_hook(lambda m, args: (F.dropout(args[0], p, m.training),))
    return model


class PrepCache:
    """The prepared data per data config: analyses run in one process (``all``, ``--seeds``) load each
    split once."""

    def __init__(self) -> None:
        self._preps: dict[str, Prepared] = {}

    def get(self, data: DataConfig, seed: int) -> Prepared:
        key = stable_hash(data.model_dump())
        if key not in self._preps:
            torch.manual_seed(seed)
            self._preps[key] = prepare_data(data)
        return self._preps[key]


@dataclasses.dataclass
class BaseRun:
    """A finished base training (shared between analyses)."""

    dir: Path
    log: list[dict]
    ctx: Context

    def epochs(self) -> list[int]:
        return [r["epoch"] for r in self.log]

    def load(self, epoch: int | None = None) -> nn.Module:
        run = RunLayout(self.dir)
        path = run.checkpoint("base") if epoch is None else run.epoch_checkpoint(epoch)
        model, _ = load_checkpoint(path, self.ctx.prep.id.num_classes)
        model.eval()
        return model

    def best_val_epoch(self, score: str) -> int:
        """The epoch with the lowest mean FPR95 on the VALIDATION OOD sets (never on test OOD sets)."""
        if "val_ood" not in self.log[0]:
            raise UserError("selecting an epoch needs a validation split (data.val_size > 0)")
        return self.log[int(np.argmin([val_fpr95(r, score) for r in self.log]))]["epoch"]

    def best_val_acc_epoch(self) -> int:
        return self.log[int(np.argmax([r["val_acc"] for r in self.log]))]["epoch"]


class Context:
    """One analysis run: config, parameters, output folder, shared base folder, lazily prepared data,
    progress, and the PNGs written so far."""

    def __init__(self, name: str, cfg: DemoConfig, params: dict, out: Path, prep_cache: PrepCache | None = None,
                 shared: Path | None = None) -> None:
        self.name, self.cfg, self.params, self.out = name, cfg, params, out
        self.shared = shared or out.parent
        self._cache = prep_cache or PrepCache()
        self._prep: Prepared | None = None
        self.step_no = self.computed = self.reused = 0
        self.pngs: list[Path] = []

    @property
    def prep(self) -> Prepared:
        if self._prep is None:
            self._prep = self._cache.get(self.cfg.data, self.cfg.seed)
        return self._prep

    @property
    def prepared(self) -> bool:
        """Whether the data was loaded (an analysis that failed early never loads it)."""
        return self._prep is not None

    def subrun(self, d: Path, label: str, fn: Callable[[Path], dict]) -> dict:
        """Run ``fn(d)`` unless ``d/result.json`` exists; the result dict is that file."""
        self.step_no += 1
        marker = d / "result.json"
        if marker.is_file():
            say(f"[{self.name}] ({self.step_no}) {label}: done earlier, skipped")
            self.reused += 1
            return json.loads(marker.read_text())
        say(f"[{self.name}] ({self.step_no}) {label} ...")
        t = time.perf_counter()
        d.mkdir(parents=True, exist_ok=True)
        res = fn(d)
        res["wall_s"] = round(time.perf_counter() - t, 1)
        write_json(marker, res)
        self.computed += 1
        say(f"[{self.name}] ({self.step_no}) {label}: finished in {res['wall_s']:.0f}s")
        return res

    # -- shared base training ------------------------------------------------------------
    def base(self, schedule: str | None = None, weight_decay: float | None = None, dropout: float = 0.0,
             track: bool = True) -> BaseRun:
        cfg = self.cfg
        optim = cfg.base.model_copy(update={k: v for k, v in (("schedule", schedule), ("weight_decay", weight_decay))
                                            if v is not None})
        data = cfg.data.model_dump(exclude={"data_root", "download"})
        eval_every = cfg.eval_every if track else optim.epochs
        key = {"data": data, "model": cfg.model.model_dump(), "base": optim.model_dump(), "eval_every": eval_every,
               "track_scores": cfg.track_scores, "seed": cfg.seed, "dropout": dropout}
        d = self.shared / f"_base_{stable_hash(key)}"
        label = f"base training ({optim.schedule}, wd {optim.weight_decay}, dropout {dropout}, {optim.epochs} epochs)"

        def run(d: Path) -> dict:
            write_json(RunLayout(d).config, key)
            torch.manual_seed(cfg.seed)
            model = add_fc_dropout(build(cfg.model, self.prep.id.num_classes), dropout)
            log = train_base(model, self.prep, BaseTraining.of(cfg, optim, eval_every), d)
            return {"epochs": [r["epoch"] for r in log]}

        self.subrun(d, label, run)
        log = [json.loads(line) for line in (d / "train_log.jsonl").read_text().splitlines()]
        return BaseRun(d, log, self)

    # -- UM / UMAP on a base (cached in the base folder) ----------------------------------------
    def zeta(self, base: BaseRun, keep_ratio: float | None = None, epoch: int | None = None) -> dict:
        um = self.cfg.um if keep_ratio is None else self.cfg.um.model_copy(update={"keep_ratio": keep_ratio})
        key = {"keep": um.keep_ratio, "zeta": um.zeta, "draws": um.zeta_draws, "estimator": um.zeta_estimator, "epoch": epoch, "seed": self.cfg.seed}
        return self.subrun(base.dir / "zeta" / stable_hash(key), f"ζ at keep ratio {um.keep_ratio}",
                           lambda d: resolve_zeta(base.load(epoch), self.prep, um, self.cfg.seed).as_dict())

    def um(self, base: BaseRun, keep_ratio: float | None = None, epochs: int | None = None,
           zeta: float | None = None) -> tuple[nn.Module, dict]:
        um = self.cfg.um
        if keep_ratio is not None:
            um = um.model_copy(update={"keep_ratio": keep_ratio})
        if epochs is not None:
            um = um.model_copy(update={"optim": um.optim.model_copy(update={"epochs": epochs})})
        z = self.zeta(base, um.keep_ratio)["value"] if zeta is None else zeta
        key = {"um": um.model_dump(), "zeta": z, "seed": self.cfg.seed, "augment": self.cfg.data.augment}
        d = base.dir / "um" / stable_hash(key)

        def run(d: Path) -> dict:
            tuned, hist = run_um(base.load(), self.prep, um, z, self.cfg.seed, self.cfg.data.augment)
            save_model(d / "um.safetensors", tuned, {**model_meta(self.cfg.model, self.prep.id, "um"), "zeta": z})
            return {"config": key, "zeta": z, "history": hist}

        info = {**self.subrun(d, f"UM (keep {um.keep_ratio}, ζ {z:.4f}, {um.optim.epochs} epochs)", run), "dir": d}
        model, _ = load_checkpoint(d / "um.safetensors", self.prep.id.num_classes)
        return model.eval(), info

    def umap(self, base: BaseRun, keep_ratio: float | None = None, epochs: int | None = None,
             zeta: float | None = None) -> tuple[dict, dict]:
        cfg = self.cfg.umap
        if keep_ratio is not None:
            cfg = cfg.model_copy(update={"keep_ratio": keep_ratio})
        if epochs is not None:
            cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"epochs": epochs})})
        if zeta is None:
            zeta = cfg.zeta if cfg.zeta is not None else self.zeta(base)["value"]
        key = {"umap": cfg.model_dump(), "zeta": zeta, "seed": self.cfg.seed, "augment": self.cfg.data.augment}
        d = base.dir / "umap" / stable_hash(key)
        what = "plain pruning (ζ = 0)" if zeta == 0 else f"UMAP (ζ {zeta:.4f})"

        def run(d: Path) -> dict:
            masks, hist = run_umap(base.load(), self.prep, cfg, zeta, self.cfg.seed, self.cfg.data.augment)
            save_masks(d / "mask.safetensors", masks, {"keep_ratio": cfg.keep_ratio, "zeta": zeta})
            return {"config": key, "zeta": zeta, "history": hist}

        info = {**self.subrun(d, f"{what}, keep {cfg.keep_ratio}, {cfg.optim.epochs} epochs", run), "dir": d}
        return load_masks(d / "mask.safetensors")[0], info

    # -- evaluation --------------------------------------------------------------------------
    def scores_config(self, scores: list[str] | None = None):
        """The detectors an evaluation uses: ``scores``, else the analysis's ``scores`` parameter, else
        every configured one."""
        scores = scores or self.params.get("scores")
        return self.cfg.scores.subset(scores) if scores else self.cfg.scores

    def evaluate_in(self, home: Path, label: str, models: Callable[[], dict], scores: list[str] | None = None) -> dict:
        """:meth:`evaluate` cached in ``home/eval/<detectors>``: a model's own folder (base, UM, UMAP),
        so that analyses evaluating the same model with the same detectors share the result."""
        key = stable_hash(self.scores_config(scores).model_dump())
        return self.evaluate(home / "eval" / key, label, models, scores)

    def evaluate(self, d: Path, label: str, models: Callable[[], dict], scores: list[str] | None = None,
                 keep_scores: bool = False) -> dict:
        """Evaluate ``models()`` (name → (model, mask|None)) once; the mean rows, cached in ``d``."""
        detectors = configured_detectors(self.scores_config(scores))

        def run(d: Path) -> dict:
            ev = evaluate_models(models(), self.prep, detectors)
            if keep_scores:
                atomic_write(d / "scores.npz", lambda tmp: _savez(tmp, ev.flat()))
            return {"records": ev.records, "masked_acc": ev.masked_acc}

        return self.subrun(d, label, run)


def _savez(tmp: str, arrays: dict) -> None:
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
