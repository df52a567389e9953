"""Device, mixed precision and distributed (DDP) helpers: the ONE place that decides where tensors live.

* :func:`select_device` picks the device once; the pipeline moves the model there once and every batch
  follows the model (:func:`unleash_ood.eval.forward.to_model_input`). No ``.cuda()`` anywhere else.
* :func:`autocast` is bf16 autocast on CUDA (when supported, ``amp="auto"``), a no-op on CPU by default.
* Under ``torchrun --nproc_per_node=N`` (``WORLD_SIZE > 1``) :func:`setup` joins the process group
  (NCCL on CUDA, gloo on CPU). :func:`unleash_ood.methods.train.train` then wraps the model in
  DistributedDataParallel and gives each rank a disjoint slice of every batch (:class:`ShardedBatches`):

  - **batch size stays GLOBAL**: ``batch_size`` in the config is the global batch; each of the N ranks
    gets ~``batch_size / N`` images of it (so learning rates and schedules mean the same as in a
    one-process run, and a run is the same optimisation at any N up to float rounding). All ranks
    draw the same shuffled order and the same augmentation (same seed), augment the global batch and
    keep their slice — identical data to the one-process run. A final batch smaller than N is dropped.
  - **BatchNorm**: on CUDA the model is converted to ``SyncBatchNorm`` (batch statistics over the
    global batch, as in one process); on CPU/gloo it is not (SyncBatchNorm needs a GPU), so per-rank
    batch statistics are used and rank 0's running statistics are broadcast each forward.
  - **ζ estimation and the final evaluation** run redundantly on every rank (identical weights →
    identical results; no collective can time out during a long evaluation); the tracking evaluation
    during base training runs on rank 0 only (the others wait at the next step's all-reduce) and its
    log is broadcast. **Only rank 0 writes files** (:func:`output_dir` gives the other ranks a scratch
    directory). Resuming: rank 0 reads the state file and broadcasts it.
  - CUDA runs set ``cudnn.benchmark`` (fixed CIFAR shapes); bitwise-exact resume is a CPU guarantee.
"""

from __future__ import annotations

import atexit
import datetime
import os
import platform
import socket
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UserError

DEVICES = ("auto", "cpu", "cuda")


AMP_MODES = ("auto", "bf16", "off")


@dataclass
class Runtime:
    """The run's device decision and precision policy (set once by :func:`setup`)."""

    device: torch.device = torch.device("cpu")
    amp_dtype: torch.dtype | None = None
    compile: bool = False


_current = Runtime()


def machine() -> dict[str, object]:
    """Where and when a run ran: host, CPU model, core count, torch threads, versions, start time (UTC)."""
    cpu = platform.processor() or platform.machine()
    try:  # Linux names the CPU model here; platform.processor() is often empty
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def current() -> Runtime:
    return _current


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_primary() -> bool:
    """True on rank 0 (and in every non-distributed run): the process that writes files."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def select_device(pref: str = "auto") -> torch.device:
    """``auto``: CUDA if available, else CPU; ``cuda`` fails clearly without a GPU. Under torchrun each
    process takes the GPU of its ``LOCAL_RANK``."""
    if pref not in DEVICES:
        raise UserError(f"runtime.device must be one of {DEVICES}, got {pref!r}")
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("runtime.device=cuda but no CUDA GPU is available (use runtime.device=auto or cpu)")
    index = local_rank() if int(os.environ.get("WORLD_SIZE", "1")) > 1 else torch.cuda.current_device()
    return torch.device("cuda", index)


def select_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 on a CUDA device that supports it, else off; ``bf16``: always (CPU too); ``off``."""
    if amp not in AMP_MODES:
        raise UserError(f"runtime.amp must be one of {AMP_MODES}, got {amp!r}")
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def init_distributed(device: torch.device) -> None:
    """Join the process group torchrun describes (``WORLD_SIZE > 1``): NCCL on CUDA, gloo on CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    atexit.register(_shutdown)


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def setup(device: str = "auto", amp: str = "auto", compile: bool = False) -> Runtime:
    """Make the run's one device decision (joining the process group under torchrun) and AMP policy."""
    global _current
    dev = select_device(device)
    init_distributed(dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    _current = Runtime(dev, select_amp(amp, dev), bool(compile))
    return _current


def place(model: nn.Module, rt: Runtime | None = None) -> nn.Module:
    """Move the model to the run's device, once (channels_last kept). Under DDP on CUDA BatchNorm layers
    become SyncBatchNorm (global-batch statistics; the state_dict keys are unchanged)."""
    rt = rt or _current
    if world_size() > 1 and rt.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(rt.device)


def autocast(device: torch.device | str | None = None) -> AbstractContextManager:
    """bf16 autocast for ``device`` (default: the run's) under the run's AMP policy, else a no-op."""
    rt = _current
    dev = torch.device(device) if device is not None else rt.device
    if rt.amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=dev.type, dtype=rt.amp_dtype)


def output_dir(out: str | Path) -> Path:
    """Rank 0 writes into ``out``; every other rank into a scratch directory removed at exit."""
    if is_primary():
        return Path(out)
    scratch = Path(tempfile.mkdtemp(prefix=f"unleash-ood-rank{rank()}-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return scratch


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (pickled; only between our own processes)."""
    if world_size() <= 1:
        return obj
    box = [obj if is_primary() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum of ``values`` over ranks (identity in one process)."""
    if world_size() <= 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def global_batch_mean(value: torch.Tensor, count: int) -> torch.Tensor:
    """The mean over the global batch of a per-rank batch mean ``value`` of ``count`` samples
    (a collective under DDP; ``value`` itself in one process). Detached."""
    if world_size() <= 1:
        return value.detach()
    t = torch.stack([value.detach().double() * count, torch.tensor(float(count), dtype=torch.float64,
                                                                    device=value.device)])
    dist.all_reduce(t)
    return (t[0] / t[1]).to(value.dtype)


def all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank (a collective under DDP, so all ranks stop together)."""
    ok = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if world_size() > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def _shard(obj, index: int, parts: int):
    if isinstance(obj, torch.Tensor):
        return torch.tensor_split(obj, parts)[index]
    if isinstance(obj, (tuple, list)):
        return type(obj)(_shard(o, index, parts) for o in obj)
    return obj


def batch_size_of(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return len(obj)
    if isinstance(obj, (tuple, list)) and obj:
        return batch_size_of(obj[0])
    return 0


class ShardedBatches:
    """This rank's slice of every batch of ``batches`` (the DistributedSampler equivalent).

    Every rank iterates the same global batches (same seed → same order and augmentation) and keeps
    ``tensor_split(batch, world)[rank]`` of each tensor in it (nested tuples too, e.g. ID + outlier
    batches), so the ranks see disjoint shards whose union is the global batch. Batches with fewer
    samples than ranks are dropped (on every rank alike). ``generator`` is the wrapped loader's.
    """

    def __init__(self, batches: Iterable, rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    @property
    def generator(self):
        return getattr(self.batches, "generator", None)

    def __iter__(self) -> Iterator:
        for batch in self.batches:
            if batch_size_of(batch) < self.world:
                continue
            yield _shard(batch, self.rank, self.world)
