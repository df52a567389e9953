"""The run directory: path checks before any work, the lock, non-empty refusal, --overwrite, cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unleash_ood.errors import UserError
from unleash_ood.run.rundir import LOCK_NAME, RunDir


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_out_that_is_a_file_is_refused_before_anything(tmp_path):
    f = tmp_path / "results"
    f.write_text("not a folder")
    with pytest.raises(UserError, match="is a file"):
        RunDir(f).__enter__()
    with pytest.raises(UserError, match="is a file"):
        RunDir(f / "sub").__enter__()
    assert f.read_text() == "not a folder" and _tree(tmp_path) == {"results"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_a_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(UserError, match="no permission"):
        RunDir(ro / "run").__enter__()


def test_out_that_cannot_be_created_is_one_line():
    with pytest.raises(UserError, match="cannot create the output directory"):
        RunDir("/proc/unleash-ood-test/run").__enter__()


def test_second_run_into_a_locked_directory_names_the_holder(tmp_path):
    run = tmp_path / "run"
    with RunDir(run):
        assert (run / LOCK_NAME).is_file()
        with pytest.raises(UserError, match=rf"in use by another run \(pid {os.getpid()} on .*started .*: "):
            RunDir(run, resume=True).__enter__()
    assert not (run / LOCK_NAME).exists()  # released and removed at the end


def test_lock_held_by_another_process(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from unleash_ood.run.rundir import RunDir\n"
         f"with RunDir({str(run)!r}):\n    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"pid {holder.pid} on .*, started .*: -c"):
            RunDir(run, overwrite=True).__enter__()
    finally:
        holder.kill()
        holder.wait()
    with RunDir(run, resume=True):  # the kernel released a killed holder's lock
        pass


def test_non_empty_directory_needs_resume_or_overwrite(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "um.safetensors").write_text("old")
    (run / "results.md").write_text("old")
    with pytest.raises(UserError, match="already holds a run .*--resume.*--overwrite"):
        RunDir(run).__enter__()
    assert _tree(run) == {"checkpoints", "checkpoints/um.safetensors", "results.md"}
    with RunDir(run, resume=True):
        assert (run / "results.md").exists()
    with RunDir(run, overwrite=True):
        assert _tree(run) == {LOCK_NAME}  # stale files of the old run are gone
    with pytest.raises(UserError, match="not both"):
        RunDir(run, resume=True, overwrite=True)


def test_failure_before_any_result_removes_a_created_directory(tmp_path):
    run = tmp_path / "new" / "run"
    for exc in (UserError("bad input"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with RunDir(run) as out:
                (Path(out) / "config.json").write_text("{}")
                raise exc
        assert not (tmp_path / "new").exists()


def test_failure_before_any_result_removes_only_what_this_run_wrote(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("mine")
    (run / "ood_cache").mkdir()
    with pytest.raises(UserError):
        with RunDir(run, resume=True):
            (run / "config.json").write_text("{}")
            (run / "ood_cache" / "digits.npz").write_text("x")
            raise UserError("bad input")
    assert _tree(run) == {"keep.txt", "ood_cache"}


def test_failure_after_a_result_keeps_everything(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(UserError):
        with RunDir(run):
            (run / "checkpoints").mkdir()
            (run / "checkpoints" / "base_epoch002.safetensors").write_text("good")
            raise UserError("loss became nan")
    assert _tree(run) == {"checkpoints", "checkpoints/base_epoch002.safetensors"}


def test_owned_entries_only(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.md").write_text("a run's own result")
    with RunDir(run, owns=("report.md", "report.csv")):
        (run / "report.md").write_text("r")
    with pytest.raises(UserError, match="report.md"):
        RunDir(run, owns=("report.md",)).__enter__()
    with RunDir(run, overwrite=True, owns=("report.md",)):
        assert _tree(run) == {"results.md", LOCK_NAME}


def test_non_primary_ranks_touch_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    f = tmp_path / "file"
    f.write_text("x")
    with RunDir(f):  # rank 0 checks; this rank writes to scratch
        pass
    assert not (tmp_path / LOCK_NAME).exists()


def test_cli_refuses_before_any_work(tmp_path, capsys):
    from unleash_ood.cli import main

    f = tmp_path / "out.txt"
    f.write_text("x")
    t = time.perf_counter()
    assert main(["train", "--out", str(f)]) == 2
    run = tmp_path / "run"
    (run / "results.md").mkdir(parents=True)
    assert main(["demo", "--quick", "--out", str(run)]) == 2
    with RunDir(tmp_path / "busy"):
        assert main(["eval", "--run", str(run), "--ood", "digits", "--out", str(tmp_path / "busy")]) == 2
    assert time.perf_counter() - t < 10  # no data was loaded
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("unleash-ood: error: ") for line in err)
    assert "is a file" in err[0] and "already holds a run" in err[1] and "in use by another run" in err[2]


def test_cleanup_spares_another_run_in_a_parent_both_created(tmp_path):
    with pytest.raises(UserError):
        with RunDir(tmp_path / "runs" / "a"):
            (tmp_path / "runs" / "b").mkdir()  # another run starts beside this one meanwhile
            raise UserError("bad input")
    assert _tree(tmp_path) == {"runs", "runs/b"}
