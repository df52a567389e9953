"""The one training loop: base training, UM, UMAP and the outlier methods differ only in the
step loss and in which parameters are trainable."""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..config import OptimConfig
from ..data.batches import split_batch
from ..errors import UserError
from ..eval.forward import to_model_input
from ..utils import runtime
from ..utils.files import atomic_write

StepLoss = Callable[[nn.Module, object], tuple[torch.Tensor, torch.Tensor]]


"""``(model, batch) -> (objective, plain ID cross-entropy)``; the second is only logged."""


def lr_factor(schedule: str, progress: float) -> float:
    """Learning-rate multiplier at ``progress`` ∈ [0, 1) of training (the four schedules of Appendix E).

    cosine: Loshchilov & Hutter; linear: constant for the first third, linearly to 0.1 over the second,
    to 0.01 over the last; multi_decay: minus 10% of the initial rate every 10% of training;
    multi_step: ×0.1 every 30% of training.
    """
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "linear":
        if progress < 1 / 3:
            return 1.0
        if progress < 2 / 3:
            return 1.0 - 0.9 * (3 * progress - 1)
        return 0.1 - 0.09 * (3 * progress - 2)
    if schedule == "multi_decay":
        return max(1.0 - 0.1 * math.floor(10 * progress), 0.01)
    if schedule == "multi_step":
        return 0.1 ** math.floor(progress / 0.3)
    return 1.0


class NonFiniteLossError(UserError):
    """The training objective became NaN or infinite."""


def ce_step(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain cross-entropy on a labelled batch."""
    x, y = split_batch(batch)
    logits = model(to_model_input(x, model))
    ce = F.cross_entropy(logits, y.to(logits.device))
    return ce, ce.detach()


def make_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig, steps_per_epoch: int):
    """SGD + the configured schedule, stepped once per optimizer step."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise UserError("nothing to train: no parameter requires grad")
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                          weight_decay=cfg.weight_decay)
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(cfg.schedule, min(step / total, 1.0)))
    return opt, sched


@dataclass
class ResumeState:
    """Where :func:`train` keeps its resumable state and whether to resume from it.

    After every epoch (after ``on_epoch_end``) rank 0 atomically writes ``path`` with ``torch.save``:
    model, optimizer and scheduler state dicts, the torch CPU/CUDA RNG states, the batches' generator
    state (e.g. :class:`~unleash_ood.data.batches.TensorBatches`), the epoch, the history and ``extra()``
    (a JSON-able payload, e.g. the tracked log). It holds only tensors, numbers, strings and containers
    and is loaded with ``weights_only=True``: loading never executes code. With ``resume`` and an
    existing file, training continues after its epoch, after ``restore(payload)`` got the saved
    ``extra()`` payload back (before any ``on_epoch_end``). A state written under a different
    :class:`OptimConfig` is refused. ``elapsed_s``: training seconds over every session so far (stored
    in the file, so a resumed run reports its whole training time).
    """

    path: Path
    resume: bool = False
    extra: Callable[[], object] | None = None
    restore: Callable[[object], None] | None = None
    resumed_epoch: int = 0
    elapsed_s: float = 0.0


def load_state(path: str | Path) -> dict:
    """A resumable state file written by :func:`train` (code-free load)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise UserError(f"cannot resume from {path}: not a valid training state ({e})") from None


def _save_state(path: Path, state: dict) -> None:
    buf = io.BytesIO()  # serialized in memory: torch.save into a file turns a full disk into a RuntimeError
    torch.save(state, buf)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.getbuffer()))


def _rng_state(batches) -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    gen = getattr(batches, "generator", None)
    if isinstance(gen, torch.Generator):
        state["batches"] = gen.get_state()
    return state


def _set_rng_state(batches, state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    gen = getattr(batches, "generator", None)
    if "batches" in state and isinstance(gen, torch.Generator):
        gen.set_state(state["batches"])


def _step_model(model: nn.Module, device: torch.device) -> nn.Module:
    """What the step loss calls: the model, under torchrun wrapped in DDP, optionally compiled."""
    wrapped = model
    if runtime.world_size() > 1 and any(p.requires_grad for p in model.parameters()):
        wrapped = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if runtime.current().compile:
        wrapped = torch.compile(wrapped)
    return wrapped


@dataclass(frozen=True)
class TrainScope:
    """What a training optimizes (``params``; None: all the model's parameters) and the mode it sets each
    epoch (``train_mode``; None: ``model.train()``). UMAP trains only its mask scores, BatchNorm frozen."""

    params: Iterable[nn.Parameter] | None = None
    train_mode: Callable[[nn.Module], None] | None = None


def train(model: nn.Module, batches: Iterable, cfg: OptimConfig, step_loss: StepLoss = ce_step,
          on_epoch_end: Callable[[int, dict], None] | None = None, desc: str = "train",
          state: ResumeState | None = None, scope: TrainScope | None = None,
          flood_level: float | None = None) -> list[dict]:
    """Run ``cfg.epochs`` epochs of ``step_loss`` over ``batches``; return one record per epoch.

    ``scope``: the parameters optimized and the train mode (default: all parameters, ``model.train()``;
    see :class:`TrainScope`). ``on_epoch_end(epoch, record)``
    runs after every epoch (evaluation, checkpoints). A NaN/inf objective stops training with
    :class:`NonFiniteLossError` before the optimizer applies it. ``state``: save a resumable state
    after every epoch and/or resume from it (:class:`ResumeState`). ``flood_level`` (flooding's ζ, UM and
    UMAP): each record also holds ``ce_below_zeta``, the fraction of the epoch's steps whose batch CE was
    below ζ (the step loss's logged CE), where flooding ascends the CE instead of descending it.

    Forward passes run under the run's autocast policy (bf16 on CUDA by default, none on CPU;
    :mod:`unleash_ood.utils.runtime`). Under torchrun the model is wrapped in DistributedDataParallel and
    each rank trains on its slice of every (global) batch; records are global (reduced over ranks).
    """
    device = next(model.parameters()).device
    world = runtime.world_size()
    if world > 1:
        batches = runtime.ShardedBatches(batches, runtime.rank(), world)
    steps = len(batches) if hasattr(batches, "__len__") else 1
    scope = scope or TrainScope()
    opt, sched = make_optimizer(model.parameters() if scope.params is None else scope.params, cfg, steps)
    history: list[dict] = []
    start, t0, earlier_s = 1, time.perf_counter(), 0.0
    if state is not None and state.resume and (state.path.is_file() or world > 1):
        saved = runtime.broadcast_object(load_state(state.path) if runtime.is_primary() and state.path.is_file()
                                         else None)
        if saved is not None:
            if saved.get("optim") != cfg.model_dump_json():
                raise UserError(f"cannot resume from {state.path}: it was written with other optimizer settings "
                                f"({saved.get('optim')}); start afresh without resume")
            try:
                model.load_state_dict(saved["model"])
            except RuntimeError as e:
                raise UserError(f"cannot resume from {state.path}: it holds another model ({str(e)[:200]})") from None
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            _set_rng_state(batches, saved["rng"])
            history = json.loads(saved["history"])
            start = int(saved["epoch"]) + 1
            state.resumed_epoch = int(saved["epoch"])
            earlier_s = float(saved.get("elapsed_s", 0.0))
            if state.restore is not None:
                state.restore(json.loads(saved["extra"]))
    step_model = _step_model(model, device)
    for epoch in range(start, cfg.epochs + 1):
        (scope.train_mode or nn.Module.train)(model)
        total, total_ce, n, below, n_steps = 0.0, 0.0, 0, 0, 0
        bar = tqdm(batches, desc=f"{desc} {epoch}/{cfg.epochs}", leave=False, total=steps,
                   disable=not runtime.is_primary())
        for step, batch in enumerate(bar):
            with runtime.autocast(device):
                loss, ce = step_loss(step_model, batch)
            if not runtime.all_finite(loss):
                raise NonFiniteLossError(f"{desc}: loss became {loss.item()} at epoch {epoch}, step {step}; "
                                         "stopped (lower the learning rate?)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            size = runtime.batch_size_of(batch)  # paired (ID, outlier) batches count their ID part
            ce_value = ce.item()
            total, total_ce, n = total + loss.item() * size, total_ce + ce_value * size, n + size
            below, n_steps = below + (flood_level is not None and ce_value < flood_level), n_steps + 1
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        total, total_ce, n, below, n_steps = runtime.all_reduce_sum(
            [total, total_ce, float(n), float(below), float(n_steps)], device)
        record = {"epoch": epoch, "loss": total / max(n, 1), "train_ce": total_ce / max(n, 1),
                  "lr": opt.param_groups[0]["lr"]}
        if flood_level is not None:
            record["ce_below_zeta"] = below / max(n_steps, 1)
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
        if state is not None and runtime.is_primary():
            _save_state(state.path, {
                "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "rng": _rng_state(batches), "history": json.dumps(history),
                "optim": cfg.model_dump_json(), "elapsed_s": earlier_s + time.perf_counter() - t0,
                "extra": json.dumps(state.extra() if state.extra is not None else None)})
    if state is not None:
        state.elapsed_s = earlier_s + time.perf_counter() - t0
    return history
