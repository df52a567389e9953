"""Runtime: device selection, resuming an interrupted base training exactly, DDP (gloo, 2 processes) ==
one process on the same global batch."""

from __future__ import annotations

import importlib
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from conftest import sgd_tol, small_cnn
from torch import nn

from unleash_ood.config import OptimConfig
from unleash_ood.data import IDData
from unleash_ood.data.batches import TensorBatches
from unleash_ood.data.prepared import Prepared
from unleash_ood.errors import UserError
from unleash_ood.methods.train import load_state, train
from unleash_ood.run.stages import BaseTraining, train_base
from unleash_ood.utils import runtime

train_mod = importlib.import_module("unleash_ood.methods.train")  # the package exports a function named train


def test_select_device_cpu(monkeypatch):
    assert runtime.select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.select_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="no CUDA"):
        runtime.select_device("cuda")
    with pytest.raises(UserError):
        runtime.select_device("tpu")
    assert runtime.select_amp("auto", torch.device("cpu")) is None
    assert runtime.select_amp("off", torch.device("cpu")) is None
    assert runtime.select_amp("bf16", torch.device("cpu")) is torch.bfloat16
    rt = runtime.setup("auto", "auto")
    assert rt.device.type == "cpu" and rt.amp_dtype is None and runtime.world_size() == 1
    model = runtime.place(nn.Linear(2, 2), rt)
    assert next(model.parameters()).device.type == "cpu"


def test_sharded_batches_partition_each_global_batch():
    x, y = torch.arange(10).float().view(10, 1), torch.arange(10)
    base = TensorBatches(x, y, batch_size=4, shuffle=True, seed=3)
    expected = list(TensorBatches(x, y, batch_size=4, shuffle=True, seed=3))
    shards = [list(runtime.ShardedBatches(TensorBatches(x, y, batch_size=4, shuffle=True, seed=3), r, 2))
              for r in range(2)]
    assert len(runtime.ShardedBatches(base, 0, 2)) == len(base)
    for i, (gx, gy) in enumerate(expected):  # last global batch has 2 samples: one per rank
        assert torch.equal(torch.cat([shards[0][i][0], shards[1][i][0]]), gx)
        assert torch.equal(torch.cat([shards[0][i][1], shards[1][i][1]]), gy)
    nested = list(runtime.ShardedBatches([((x[:4], y[:4]), x[4:8])], 1, 2))
    assert torch.equal(nested[0][0][0], x[2:4]) and torch.equal(nested[0][1], x[6:8])


# --- resume ---------------------------------------------------------------------------------------

def _prepared(fmnist_small) -> Prepared:
    x, y, xt, yt = fmnist_small
    empty = (x[:0], y[:0])
    data = IDData("fmnist-tiny", (x[:256], y[:256]), empty, (xt[:128], yt[:128]), tuple(str(i) for i in range(10)))
    g = torch.Generator().manual_seed(0)
    return Prepared(data, {"noise": torch.rand(64, 1, 28, 28, generator=g)}, torch.rand(64, 1, 28, 28, generator=g))


class _Killed(Exception):
    pass


def _base(prep, out, resume=False, seed=0):
    from unleash_ood.config import ModelConfig

    model = small_cnn(seed).to(memory_format=torch.channels_last)
    cfg = OptimConfig(epochs=4, lr=0.05, batch_size=32)
    spec = BaseTraining(cfg, ModelConfig(arch="small_cnn", kwargs={"width": 8}), eval_every=1,
                        track_scores=("Energy",), augment=True)
    log = train_base(model, prep, spec, out, resume=resume)
    return model, log


def test_resume_after_interruption_is_exact(fmnist_small, tmp_path, monkeypatch):
    prep = _prepared(fmnist_small)
    runtime.setup("cpu", "off")
    full, full_log = _base(prep, tmp_path / "full")

    save = train_mod._save_state

    def save_then_die(path, state):
        save(path, state)
        if state["epoch"] == 2:
            raise _Killed

    monkeypatch.setattr(train_mod, "_save_state", save_then_die)
    with pytest.raises(_Killed):
        _base(prep, tmp_path / "cut")
    monkeypatch.setattr(train_mod, "_save_state", save)
    state_file = tmp_path / "cut" / "checkpoints" / "last_state.pt"
    assert load_state(state_file)["epoch"] == 2  # a weights_only (code-free) load
    torch.manual_seed(1234)  # the resumed process's global RNG differs: the state file restores it
    resumed, resumed_log = _base(prep, tmp_path / "cut", resume=True, seed=99)

    for k, v in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    assert resumed_log == full_log and len(resumed_log) == 4
    lines = lambda d: [json.loads(s) for s in (d / "train_log.jsonl").read_text().splitlines()]  # noqa: E731
    assert lines(tmp_path / "cut") == lines(tmp_path / "full")

    # resuming a finished training repeats nothing and changes nothing
    again, again_log = _base(prep, tmp_path / "cut", resume=True, seed=5)
    assert again_log == full_log
    for k, v in full.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_resume_refuses_other_optimizer_settings(tmp_path):
    x, y = torch.rand(16, 4), torch.randint(0, 2, (16,))
    state = train_mod.ResumeState(tmp_path / "s.pt")
    train(nn.Linear(4, 2), TensorBatches(x, y, 8), OptimConfig(epochs=1, batch_size=8), state=state)
    state.resume = True
    with pytest.raises(UserError, match="other optimizer settings"):
        train(nn.Linear(4, 2), TensorBatches(x, y, 8), OptimConfig(epochs=2, batch_size=8), state=state)


# --- DDP ------------------------------------------------------------------------------------------

def _tiny_model() -> nn.Module:
    """No BatchNorm: DDP without SyncBatchNorm then computes exactly the one-process gradient."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 3))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.rand(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)


CFG = OptimConfig(epochs=2, lr=0.1, batch_size=16, weight_decay=5e-4)


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    rt = runtime.setup("cpu", "off")
    assert runtime.world_size() == world
    model = runtime.place(_tiny_model(), rt)
    x, y = _data()
    seen = []

    def counting_step(m, batch):
        seen.append(len(batch[0]))
        return train_mod.ce_step(m, batch)

    hist = train(model, TensorBatches(x, y, CFG.batch_size, shuffle=True, seed=0), CFG, counting_step)
    assert seen == [CFG.batch_size // world] * (len(x) // CFG.batch_size) * CFG.epochs  # a disjoint half
    if runtime.is_primary():
        torch.save({"state": model.state_dict(), "hist": json.dumps(hist)}, out)
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    got = torch.load(out, weights_only=True)
    runtime.setup("cpu", "off")
    single = _tiny_model()
    x, y = _data()
    hist = train(single, TensorBatches(x, y, CFG.batch_size, shuffle=True, seed=0), CFG)
    # the all-reduce sums the two half-batch gradients in another order than one batch does: float32 drift
    # of 6 steps whose conv-weight gradients sum batch × 8 × 8 terms (each ≤ 1: |∂CE/∂z| ≤ 1, inputs in
    # [0, 1], weights < 1); a loss moves by at most Σ|∂L/∂θ|·|δθ| ≤ n_params·drift
    drift = sgd_tol(len(hist) * len(x) // CFG.batch_size, CFG.lr, CFG.momentum, CFG.batch_size * 8 * 8)
    for k, v in single.state_dict().items():
        torch.testing.assert_close(got["state"][k], v, atol=drift, rtol=0, msg=k)
    n_params = sum(p.numel() for p in single.parameters())
    for a, b in zip(json.loads(got["hist"]), hist):  # records are global (reduced over ranks)
        assert a["loss"] == pytest.approx(b["loss"], rel=0, abs=n_params * drift) and a["lr"] == pytest.approx(b["lr"])
