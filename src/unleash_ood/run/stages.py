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

from ..config import DemoConfig, ModelConfig, OptimConfig, UMAPConfig, UMConfig, build_config
from ..data.prepared import Prepared, prepare_data
from ..errors import UserError, WriteError, os_error_reason
from ..eval.models import track, val_fpr95
from ..methods.train import NonFiniteLossError, ResumeState, train
from ..methods.um import (
    CHANCE_FRACTION,
    ZetaEstimate,
    chance_ce,
    estimate_zeta,
    mean_cross_entropy,
    toward_chance,
    unleash,
)
from ..methods.umap import learn_umap_mask
from ..metrics import mean_sets, set_groups
from ..models.checkpoint import save_model
from ..models.inputs import with_input_kwargs
from ..models.loading import build, load_checkpoint, model_meta, with_data_channels
from ..utils import runtime
from ..utils.log import say
from .layout import RunLayout


def start_run(cfg: DemoConfig, out_dir: str | Path, init_checkpoint: str | Path | None = None,
              ) -> tuple[DemoConfig, Prepared, nn.Module, Path]:
    """What every run starts with: seed, data, the model (built, or loaded from ``init_checkpoint`` —
    its architecture then replaces ``cfg.model``), the one device decision, the output directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    prep = prepare_data(cfg.data)
    fitted = with_data_channels(cfg.model, prep.id.image_shape[0])  # timm:NAME: in_chans from the data
    if fitted != cfg.model:
        cfg = build_config({**cfg.model_dump(), "model": fitted.model_dump()})
    if init_checkpoint is not None:
        model, model_cfg = load_checkpoint(init_checkpoint, prep.id.num_classes, fallback=cfg.model)
        cfg = build_config({**cfg.model_dump(), "model": model_cfg.model_dump()})  # the checkpoint's model
    else:  # own data: the input's channels and normalization go into model.kwargs (and config.json)
        cfg = build_config({**cfg.model_dump(), "model": with_input_kwargs(cfg.model, prep.id).model_dump()})
        model = build(cfg.model, prep.id.num_classes)
    rt = runtime.setup(cfg.runtime.device, cfg.runtime.amp, cfg.runtime.compile)
    model = runtime.place(model, rt)  # moved once; batches follow it (to_model_input)
    return cfg, prep, model, runtime.output_dir(out)  # under torchrun only rank 0 writes there


def append_jsonl(path: Path, record: dict) -> None:
    """One JSON line more (a full disk: a WriteError naming ``path``; a resume rewrites the log)."""
    try:
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(path, os_error_reason(e), e.errno) from e


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
    run = RunLayout(out)
    log_path, ckpt_dir = run.train_log, run.checkpoints
    log: list[dict] = []
    last_good: list[Path] = []
    meta = model_meta(spec.model, prep.id, "base")
    primary = runtime.is_primary()
    state = ResumeState(run.last_state, resume=resume, extra=lambda: log)
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
        path = save_model(run.epoch_checkpoint(epoch), model, {**meta, "epoch": epoch})
        last_good[:] = [path]
        rec = {**record, **track(model, prep, track_scores), "checkpoint": str(path.relative_to(out))}
        log.append(rec)
        append_jsonl(log_path, rec)
        sets = mean_sets(set_groups(rec["ood"], prep.groups))  # near + far: the synthetic sets apart
        mean = {s: np.mean([rec["ood"][d][s]["fpr95"] for d in sets]) for s in track_scores}
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
        save_model(run.checkpoint("base"), model, {**meta, "epoch": optim.epochs})
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


def check_levels(model: nn.Module, prep: Prepared, levels: dict[str, float], cfg: DemoConfig,
                 refuse: bool = True, note: str = "") -> dict:
    """UM's guard rail, before any fine-tuning: the model's own training CE (one eval-mode pass over the
    training split) against the flooding levels ``levels`` (stage → ζ) and ln C.

    UM assumes a model that has memorized its training set (training CE near 0) and floods it up to ζ.
    A ζ ≥ ½·ln C (:func:`~unleash_ood.methods.um.toward_chance`) would push it toward chance: with
    ``refuse``, one :class:`UserError` line says why (an undertrained model, or a mask too destructive)
    and what to change (``note`` appended). Returns the record for summary.json."""
    train_ce = mean_cross_entropy(model, prep.batches(*prep.id.train), desc="training CE")
    classes = prep.id.num_classes
    ln_c, limit = chance_ce(classes), CHANCE_FRACTION * chance_ce(classes)
    bad = [(stage, z) for stage, z in levels.items() if toward_chance(z, classes)]
    say(f"training CE {train_ce:.4f}; " + ", ".join(f"{s} zeta {z:.4f}" for s, z in levels.items())
        + f"; UM refuses zeta >= {limit:.4f} (half of ln {classes})")
    if bad and refuse:
        stage, z = bad[0]
        given = None  # ζ estimated with um.keep_ratio, or set by the user in one of these keys:
        if stage == "umap" and cfg.umap.zeta is not None:
            given = "umap.zeta"
        elif cfg.um.zeta is not None:
            given = "um.zeta"
        if train_ce >= limit:
            why = (f"the model has not memorized its training set (its own training CE is {train_ce:.3f}); "
                   "train it further first (more base.epochs) or start from a well-trained checkpoint")
        elif given:
            why = f"the model's own training CE is {train_ce:.4f}; set a lower {given} (below {limit:.3f})"
        else:
            keep = round(1 - (1 - cfg.um.keep_ratio) / 2, 6)
            why = (f"the model's own training CE is {train_ce:.4f}: the random mask (keep ratio "
                   f"{cfg.um.keep_ratio:g}) removes too much; use a larger keep ratio (um.keep_ratio={keep:g})")
        raise UserError(f"{stage.upper()} at ζ = {z:.3f} would push the model toward chance (ζ ≥ ½·ln {classes} "
                        f"= {limit:.3f}, ln {classes} being chance-level CE): {why}, or pass --force to fine-tune "
                        f"anyway{note}")
    return {"train_ce": train_ce, "zeta": dict(levels), "ln_classes": ln_c, "limit": limit,
            "rule": f"refuse zeta >= {CHANCE_FRACTION:g} * ln(classes)", "passed": not bad, "guard": refuse}


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


def best_epochs(log: list[dict], scores: list[str], groups: dict[str, str] | None = None) -> dict:
    """Per tracked score: epoch of the best mean FPR95 on the OOD test sets (near + far by ``groups``;
    analysis only) and on the validation OOD sets (:func:`val_fpr95`, a legitimate selection), vs the final
    epoch."""
    out = {}
    for s in scores:
        test = [np.mean([r["ood"][d][s]["fpr95"] for d in mean_sets(set_groups(r["ood"], groups))]) for r in log]
        row = {"final_epoch": log[-1]["epoch"], "final_test_fpr95": float(test[-1]),
               "best_test_epoch": log[int(np.argmin(test))]["epoch"], "best_test_fpr95": float(np.min(test))}
        if "val_ood" in log[0]:
            val = [val_fpr95(r, s) for r in log]
            i = int(np.argmin(val))
            row.update(best_val_epoch=log[i]["epoch"], test_fpr95_at_best_val=float(test[i]))
        out[s] = row
    return out
