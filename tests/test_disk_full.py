"""A full disk: one line naming the file that could not be written (and the run's last complete checkpoint),
exit 2, no half-written file; `--resume` continues once there is space again.

The fault is the kernel's own ENOSPC: the temp file of a chosen write is made a symlink to /dev/full, so
whatever writes it (torch.save, safetensors, numpy, matplotlib, plain text) fails exactly as on a full disk.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from unleash_ood.cli import main
from unleash_ood.errors import UserError
from unleash_ood.methods.train import _save_state
from unleash_ood.models.checkpoint import save_tensors
from unleash_ood.run.rundir import RunDir
from unleash_ood.run.stages import append_jsonl
from unleash_ood.utils.files import atomic_write, write_text

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")

# test_cli.py's SMALL, with two scores, no features and no CE control: the cheapest full demo (--force: its
# base model does not memorize its training set, and UM's guard would stop it before fine-tuning)
TINY = ["--force", "data.train_size=600", "data.test_size=300", "data.val_size=300", "data.ood_size=150",
        "data.val_ood_size=150", "data.ood=[digits, uniform]", "base.epochs=2", "um.optim.epochs=1",
        "umap.optim.epochs=1", "um.zeta_draws=2", "model.kwargs={width: 8}", "scores=[MSP, Energy]",
        "save_features=false", "control=false"]


class DiskFull:
    """The ``nth`` atomic write of a file named ``name`` (counting from 1) goes to /dev/full."""

    def __init__(self, monkeypatch, name: str, nth: int = 1) -> None:
        self.name, self.nth, self.seen, self.armed = name, nth, 0, True
        real = tempfile.mkstemp

        def mkstemp(*args, **kwargs):
            fd, tmp = real(*args, **kwargs)
            if self.armed and Path(tmp).name.startswith(f".{name}."):
                self.seen += 1
                if self.seen == self.nth:
                    os.close(fd)
                    os.unlink(tmp)
                    os.symlink("/dev/full", tmp)
                    fd = os.open(tmp, os.O_WRONLY)
            return fd, tmp

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        chmod = os.chmod

        def guarded_chmod(path, *args, **kwargs):  # a writer that ignored ENOSPC must not chmod /dev/full
            if os.path.realpath(path) == "/dev/full":
                raise AssertionError(f"{path}: written to /dev/full without an error (data silently lost)")
            return chmod(path, *args, **kwargs)

        monkeypatch.setattr(os, "chmod", guarded_chmod)


def _npz(path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, a=np.zeros(1000))
    atomic_write(path, write)


def _png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))  # as report/plots.py and analyses
    finally:
        plt.close(fig)


WRITERS = {  # each of the ways a run writes its files
    "text": lambda path: write_text(path, "x" * 10_000),
    "torch.save": lambda path: _save_state(path, {"epoch": 1, "model": {"w": torch.zeros(1000)}}),
    "safetensors": lambda path: save_tensors(path, {"w": torch.zeros(1000)}, {"kind": "base"}),
    "npz": _npz,
    "png": _png,
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_full_disk_is_a_one_line_write_error_naming_the_file(tmp_path, monkeypatch, writer) -> None:
    path = tmp_path / "sub" / "out.bin"
    WRITERS[writer](path)  # a complete earlier version
    before = path.read_bytes()
    DiskFull(monkeypatch, "out.bin")
    with pytest.raises(UserError) as info:
        WRITERS[writer](path)
    e = info.value
    assert str(e) == f"cannot write {path}: No space left on device"
    assert isinstance(e, OSError) and e.errno == errno.ENOSPC  # still an OSError for code that handles those
    assert path.read_bytes() == before  # the complete earlier version stays; no temp file is left
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.bin"]


def error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.replace("\r", "\n").splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("unleash-ood: error: "), captured.err
    return errors[0]


def test_demo_on_a_full_disk_exits_2_naming_the_file_and_resumes(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "demo"
    ck = out / "checkpoints"
    fault = DiskFull(monkeypatch, "last_state.pt", nth=2)  # the resumable state after epoch 2 of 2
    assert main(["demo", "--quick", "--out", str(out), *TINY]) == 2
    line = error_line(capsys)
    assert line.startswith(f"unleash-ood: error: cannot write {ck / 'last_state.pt'}: No space left on device; "), line
    assert f"last complete checkpoint: {ck / 'base_epoch002.safetensors'}" in line, line
    assert f"--resume continues from {ck / 'last_state.pt'} (after epoch 1)" in line, line
    # nothing half-written: no temp file, no result; the previous resumable state is complete
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.is_symlink()]
    assert not (out / "results.json").exists() and not (ck / "base.safetensors").exists()
    assert torch.load(ck / "last_state.pt", weights_only=True)["epoch"] == 1

    fault.armed = False  # space freed
    assert main(["demo", "--quick", "--out", str(out), "--resume", *TINY]) == 0
    assert "resuming base training after epoch 1" in capsys.readouterr().out
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    records = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in records} == {"base", "um", "umap"}
    assert (ck / "base.safetensors").is_file() and (ck / "umap_mask.safetensors").is_file()


class FullFile:
    """A file object whose writes fail as on a full disk (a write into an open file names no path)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_run_dir_turns_any_os_error_into_one_line_with_the_last_checkpoint(tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    ck = run / "checkpoints"
    with RunDir(run):
        save_tensors(ck / "base_epoch001.safetensors", {"w": torch.zeros(3)})
        _save_state(ck / "last_state.pt", {"epoch": 1})
    log = run / "train_log.jsonl"
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: FullFile() if self == log else real_open(self, *a, **k))
    with pytest.raises(UserError) as info, RunDir(run, resume=True):
        append_jsonl(log, {"epoch": 2})
    assert str(info.value) == (f"cannot write {log}: No space left on device; last complete checkpoint: "
                               f"{ck / 'base_epoch001.safetensors'}; free some space, then --resume continues "
                               f"from {ck / 'last_state.pt'} (after epoch 1)")
    assert not isinstance(info.value, OSError)  # converted once: an enclosing run directory leaves it alone
    assert (ck / "base_epoch001.safetensors").is_file()  # a run with checkpoints is kept for --resume

    # a folder without checkpoints (e.g. `eval --out`) and an OSError that names its file
    with pytest.raises(UserError) as info, RunDir(tmp_path / "ev"):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "ev" / "results.json"))
    assert str(info.value) == f"cannot write {tmp_path / 'ev' / 'results.json'}: Read-only file system"
    assert not (tmp_path / "ev").exists()  # nothing written: removed as after any failure


def test_an_os_error_outside_a_run_is_one_line(monkeypatch, capsys) -> None:
    from unleash_ood.cli import pipeline

    def full(args) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/bundle/model.onnx")

    monkeypatch.setattr(pipeline, "cmd_config", full)
    assert main(["config"]) == 2
    assert capsys.readouterr().err == "unleash-ood: error: /data/bundle/model.onnx: No space left on device\n"


def test_a_bundle_on_a_full_disk_names_the_bundle_and_leaves_nothing(tmp_path, monkeypatch) -> None:
    from unleash_ood.deploy.bundle import WEIGHTS_FILE, BundleSpec, write_bundle

    spec = BundleSpec.model_validate({
        "format": "torch", "model": {"arch": "small_cnn", "num_classes": 2, "kind": "base"}, "classes": ["a", "b"],
        "dataset": "fashion_mnist", "input": {"channels": 1, "height": 28, "width": 28}, "score": {"name": "MSP"},
        "calibration": {"threshold": 0.0, "tpr": 0.95, "size": 10, "flag_rate": 0.05}})
    DiskFull(monkeypatch, WEIGHTS_FILE)
    out = tmp_path / "bundle"
    with pytest.raises(UserError) as info:
        write_bundle(out, spec, lambda tmp: save_tensors(tmp / WEIGHTS_FILE, {"w": torch.zeros(1000)}))
    assert str(info.value) == f"cannot write {out}: No space left on device"
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its temp folder


def test_a_full_disk_at_the_lock_names_the_lock_and_the_run_is_kept(tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    with RunDir(run):
        save_tensors(run / "checkpoints" / "base.safetensors", {"w": torch.zeros(3)})
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if bytes(data).startswith(b'{"pid"'):  # the lock's holder record
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(UserError) as info, RunDir(run, resume=True):
        pytest.fail("entered a run directory whose lock could not be written")
    monkeypatch.undo()
    assert str(info.value) == (f"cannot write {run / '.unleash-ood.lock'}: No space left on device; last complete "
                               f"checkpoint: {run / 'checkpoints' / 'base.safetensors'}; free some space, then run "
                               "again with --resume")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints"]  # the lock is gone, the run kept
