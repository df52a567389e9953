"""The training stages of a run: base training with tracking and resumable checkpoints, ζ, UM (and the
plain-CE control), and the UMAP mask."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import runtime
from .checkpoint import save_model
from .config import DemoConfig, ModelConfig, UMAPConfig, UMConfig
from .evaluation import track
from .methods.um import ZetaEstimate, estimate_zeta, unleash
from .methods.umap import learn_umap_mask
from .prepare import Prepared, model_meta, say
from .train import NonFiniteLossError, OptimConfig, ResumeState, train

def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


class BaseLog(list):
    """The tracked records of a base training (a list), with ``train_s``: its training seconds over
    every session (a resumed training included)."""

    train_s: float = 0.0


@dataclass(frozen=True)
class BaseTraining:
    """How a base model is trained: ``optim``, a tracked record and checkpoint every ``eval_every`` epochs
    (scores ``track_scores``), ``augment``, the shuffling ``seed``, and ``model`` (the checkpoints' metadata)."""

    optim: OptimConfig
    model: ModelConfig
    eval_every: int = 1
    track_scores: tuple[str, ...] = ("Energy",)
    augment: bool = False
    seed: int = 0

    @classmethod
    def of(cls, cfg: DemoConfig, optim: OptimConfig | None = None, eval_every: int | None = None) -> BaseTraining:
        """The base training a run config asks for (``optim``/``eval_every`` replace the config's)."""
        return cls(optim or cfg.base, cfg.model, cfg.eval_every if eval_every is None else eval_every,
                   tuple(cfg.track_scores), cfg.data.augment, cfg.seed)


def train_base(model: nn.Module, prep: Prepared, spec: BaseTraining, out: Path, resume: bool = False) -> BaseLog:
    """Base training; every ``spec.eval_every`` epochs (and at the end) a tracked record and a checkpoint.

    After every epoch ``checkpoints/last_state.pt`` holds all that resuming needs (model, optimizer,
    scheduler, RNG states, epoch, the log so far); ``resume=True`` continues from it (a finished
    training is not repeated) and ends with the same weights and log as an uninterrupted run.
    The log file is rewritten only once a resume was accepted (a refused one leaves it as it was).
    Under torchrun only rank 0 evaluates and writes; the log is then broadcast to every rank.
    """
    optim, eval_every, track_scores = spec.optim, spec.eval_every, list(spec.track_scores)
    log_path, ckpt_dir = out / "train_log.jsonl", out / "checkpoints"
    log: list[dict] = []
    last_good: list[Path] = []
    meta = model_meta(spec.model, prep.id, "base")
    primary = runtime.is_primary()
    state = ResumeState(ckpt_dir / "last_state.pt", resume=resume, extra=lambda: log)
    if primary and not (resume and state.path.is_file()):
        log_path.unlink(missing_ok=True)

    def restore(saved_log) -> None:  # resuming: the log so far, rewritten (drops records of a lost epoch)
        log[:] = saved_log or []
        if primary:
            log_path.unlink(missing_ok=True)
            for rec in log:
                append_jsonl(log_path, rec)
        say(f"resuming base training after epoch {state.resumed_epoch}")

    state.restore = restore

    def on_epoch_end(epoch: int, record: dict) -> None:
        if (epoch % eval_every and epoch != optim.epochs) or not primary:
            return
        path = save_model(ckpt_dir / f"base_epoch{epoch:03d}.safetensors", model, {**meta, "epoch": epoch})
        last_good[:] = [path]
        rec = {**record, **track(model, prep, track_scores), "checkpoint": str(path.relative_to(out))}
        log.append(rec)
        append_jsonl(log_path, rec)
        mean = {s: np.mean([rec["ood"][d][s]["fpr95"] for d in rec["ood"]]) for s in track_scores}
        say(f"epoch {epoch:3d}  train CE {record['train_ce']:.4f}  test acc {rec['id_acc']:.2f}  "
            + "  ".join(f"{s} FPR95 {v:.1f}" for s, v in mean.items()))

    try:
        train(model, prep.train_batches(optim.batch_size, spec.seed, spec.augment), optim, on_epoch_end=on_epoch_end,
              desc="base", state=state)
    except NonFiniteLossError as e:
        if not last_good and state.resumed_epoch:  # the epochs before the resume left their checkpoints
            last_good = sorted(ckpt_dir.glob("base_epoch*.safetensors"))[-1:]
        where = f"last good checkpoint: {last_good[0]}" if last_good else "no checkpoint was written yet"
        raise NonFiniteLossError(f"{e}; {where}") from None
    if primary:
        save_model(ckpt_dir / "base.safetensors", model, {**meta, "epoch": optim.epochs})
    result = BaseLog(runtime.broadcast_object(log))
    result.train_s = state.elapsed_s
    return result


def resolve_zeta(model: nn.Module, prep: Prepared, cfg: UMConfig, seed: int) -> ZetaEstimate:
    """ζ given directly, or estimated over ``zeta_draws`` random masks on the training set."""
    if cfg.zeta is not None:
        return ZetaEstimate(keep_ratio=cfg.keep_ratio, values=[cfg.zeta], estimator=cfg.zeta_estimator)
    say(f"estimating zeta: keep ratio {cfg.keep_ratio}, {cfg.zeta_draws} mask draws, {cfg.zeta_estimator}")
    return estimate_zeta(model, prep.batches(*prep.id.train), cfg.keep_ratio, cfg.zeta_draws, seed,
                         cfg.zeta_estimator)


def zeta_line(zeta: ZetaEstimate) -> str:
    """One log line: the chosen ζ, its estimator, and the draws' mean ± sd and median."""
    return (f"zeta = {zeta.value:.4f} ({zeta.estimator} of {len(zeta.values)} draw(s); "
            f"mean {zeta.mean:.4f} ± {zeta.sd:.4f}, median {zeta.median:.4f})")


def run_um(base: nn.Module, prep: Prepared, cfg: UMConfig, zeta: float, seed: int,
           augment: bool) -> tuple[nn.Module, list[dict]]:
    """Fine-tune a copy of ``base`` with flooding at ζ (ζ = 0: the plain-CE control)."""
    model = copy.deepcopy(base)
    hist = unleash(model, prep.train_batches(cfg.optim.batch_size, seed + 1, augment), zeta, cfg.optim)
    return model, hist


def run_umap(base: nn.Module, prep: Prepared, cfg: UMAPConfig, zeta: float, seed: int,
             augment: bool) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Learn the UMAP mask on the frozen ``base``."""
    return learn_umap_mask(base, prep.train_batches(cfg.optim.batch_size, seed + 2, augment), zeta,
                           cfg.keep_ratio, cfg.optim, init=cfg.init, seed=seed)
