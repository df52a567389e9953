"""Base training in the pipeline: what a resumed run reports and keeps (NaN message, log file, time)."""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import small_cnn

from unleash_ood.config import ModelConfig, OptimConfig
from unleash_ood.data import IDData
from unleash_ood.data.prepared import Prepared
from unleash_ood.errors import UserError
from unleash_ood.methods.train import NonFiniteLossError, load_state
from unleash_ood.run.stages import BaseTraining, train_base
from unleash_ood.utils import runtime

train_mod = importlib.import_module("unleash_ood.methods.train")


class _Killed(Exception):
    pass


@pytest.fixture
def prep(fmnist_small) -> Prepared:
    x, y, xt, yt = fmnist_small
    data = IDData("fmnist-tiny", (x[:128], y[:128]), (x[:0], y[:0]), (xt[:64], yt[:64]),
                  tuple(str(i) for i in range(10)))
    return Prepared(data, {"noise": torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))},
                    torch.rand(32, 1, 28, 28))


def _base(prep, out, resume=False, epochs=4):
    runtime.setup("cpu", "off")
    spec = BaseTraining(OptimConfig(epochs=epochs, lr=0.05, batch_size=32),
                        ModelConfig(arch="small_cnn", kwargs={"width": 8}), eval_every=1, track_scores=("Energy",))
    return train_base(small_cnn(0), prep, spec, out, resume=resume)


@pytest.fixture
def cut_run(prep, tmp_path, monkeypatch):
    """A base training interrupted after epoch 2 (its state, 2 epoch checkpoints and 2 log lines exist)."""
    save = train_mod._save_state

    def save_then_die(path, state):
        save(path, state)
        if state["epoch"] == 2:
            raise _Killed

    monkeypatch.setattr(train_mod, "_save_state", save_then_die)
    with pytest.raises(_Killed):
        _base(prep, tmp_path)
    monkeypatch.setattr(train_mod, "_save_state", save)
    return tmp_path


def test_nan_after_resume_names_the_newest_epoch_checkpoint(prep, cut_run, monkeypatch):
    monkeypatch.setattr(runtime, "all_finite", lambda loss: False)
    with pytest.raises(NonFiniteLossError, match=r"last good checkpoint: .*base_epoch002\.safetensors"):
        _base(prep, cut_run, resume=True)


def test_refused_resume_keeps_the_training_log(prep, cut_run):
    before = (cut_run / "train_log.jsonl").read_text()
    assert len(before.splitlines()) == 2
    with pytest.raises(UserError, match="other optimizer settings"):
        _base(prep, cut_run, resume=True, epochs=6)
    assert (cut_run / "train_log.jsonl").read_text() == before


def test_resumed_training_time_includes_the_earlier_session(prep, cut_run):
    earlier = load_state(cut_run / "checkpoints" / "last_state.pt")["elapsed_s"]
    assert earlier > 0
    log = _base(prep, cut_run, resume=True)
    assert len(log) == 4 and log.train_s > earlier
    total = load_state(cut_run / "checkpoints" / "last_state.pt")["elapsed_s"]
    finished = _base(prep, cut_run, resume=True)  # nothing left to train: the stored total (+ loading it)
    assert total <= finished.train_s < total + 5
