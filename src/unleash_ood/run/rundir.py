"""The one owner of a run's output directory (``--out``).

:class:`RunDir` is a context manager around a command that writes a run:

* the path is checked before any work (a file, or a folder that cannot be written, is a :class:`UserError`);
* a lock (``.unleash-ood.lock``: ``fcntl.flock`` on a file naming the holder's pid, host, command and
  start time) is held for the run; a second run into the same directory is refused, naming the holder;
* a directory that already holds files of the layout is refused unless ``resume`` (continue it) or
  ``overwrite`` (its files are removed first);
* when the run fails (:class:`UserError`, a NaN, Ctrl-C) before any result exists, nothing is left
  behind: the directory is removed if this run created it, else what this run wrote.

It is a path (``os.PathLike``), so the library's functions take it wherever they take ``out_dir``.
Under torchrun only rank 0 owns the directory (the other ranks write to scratch, see
:func:`unleash_ood.utils.runtime.output_dir`); on those ranks a ``RunDir`` checks, locks and removes nothing.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import torch

from ..errors import UserError, WriteError, os_error_reason
from .layout import SETUP_FILES, RunLayout

LOCK_NAME = ".unleash-ood.lock"




def _launch_rank() -> int:
    """The process's rank as torchrun sets it (readable before the process group exists)."""
    return int(os.environ.get("RANK", "0"))


class RunDir(os.PathLike):
    """A run's output directory, checked, locked and cleaned as described in the module docstring.

    ``owns``: glob patterns (relative names) of the entries this command's layout owns, e.g.
    ``("report.md", "report.csv", "report.json")`` for a report written beside other files; by default
    everything in the directory. Only owned entries make the directory "non-empty" and only they are
    removed by ``overwrite``.
    """

    def __init__(self, path: str | Path, resume: bool = False, overwrite: bool = False,
                 owns: tuple[str, ...] | None = None) -> None:
        if resume and overwrite:
            raise UserError("give --resume or --overwrite, not both")
        self.path = Path(path)
        self.resume, self.overwrite, self.owns = resume, overwrite, owns
        self._fd: int | None = None
        self._created: Path | None = None  # the topmost folder this run created
        self._before: set[Path] = set()  # every entry (files and folders) found on entering

    @classmethod
    def for_command(cls, path: str | Path, args, owns: tuple[str, ...] | None = None) -> RunDir:
        """The run directory of a CLI command, with its ``--resume`` / ``--overwrite`` flags (if any)."""
        return cls(path, resume=getattr(args, "resume", False), overwrite=getattr(args, "overwrite", False),
                   owns=owns)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    # ------------------------------------------------------------------ entering

    def __enter__(self) -> RunDir:
        if _launch_rank() != 0:
            return self
        self.check()
        self._created = _first_missing(self.path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the output directory {self.path}: {e.strerror}") from None
        try:
            self._lock()
            stale = self.owned_entries()
            if stale and not (self.resume or self.overwrite):
                names = ", ".join(sorted(p.name for p in stale)[:4])
                raise UserError(f"{self.path} already holds a run ({names}{', …' if len(stale) > 4 else ''}); "
                                "continue it with --resume, replace it with --overwrite, or choose another --out")
            if self.overwrite:
                for p in stale:
                    _remove(p)
            self._before = set(self.path.rglob("*"))
        except BaseException as e:
            if self._fd is not None:  # never remove a directory another run holds
                self._remove_created()
            self._release()
            if isinstance(e, OSError):  # a full disk...: one line, with what the run can go on from
                raise UserError(_write_failure(self.path, e)) from None
            raise
        return self

    def check(self) -> None:
        """Refuse a path that is a file or lies in a folder this process cannot write (one line each)."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path} is a file, not a directory")
        existing = self.path if self.path.exists() else _nearest_existing(self.path)
        if not existing.is_dir():
            raise UserError(f"--out {self.path}: {existing} is a file, not a directory")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"--out {self.path}: no permission to write in {existing}")

    def owned_entries(self) -> list[Path]:
        """The directory's entries that this command's layout owns (the lock excluded)."""
        entries = [p for p in self.path.iterdir() if p.name != LOCK_NAME]
        if self.owns is None:
            return entries
        return [p for p in entries if any(fnmatch.fnmatch(p.name, pat) for pat in self.owns)]

    def _lock(self) -> None:
        lock = self.path / LOCK_NAME
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise UserError(f"{self.path} is in use by another run ({holder}); wait for it to finish "
                                "or choose another --out") from None
            try:  # the holder may have removed the file between our open and flock: lock the current one
                if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        self._fd = fd  # held from here on: a failure below releases it (and removes what this run created)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
        except OSError as e:  # a full disk: the write names no path

            raise WriteError(lock, os_error_reason(e), e.errno) from None

    # ------------------------------------------------------------------ leaving

    def __exit__(self, exc_type, exc, tb) -> bool:
        if _launch_rank() != 0:
            return False
        line = None
        try:
            if isinstance(exc, OSError):  # a full disk, a quota...: one line, with what the run can go on from
                line = _write_failure(self.path, exc)
            failed = exc_type is not None and issubclass(exc_type, (UserError, KeyboardInterrupt, OSError))
            if failed:
                written = [p for p in _files(self.path) if p not in self._before]
                if not any(_is_result(p.relative_to(self.path)) for p in written):
                    self._clean(written)
        finally:
            self._release()
        if line is not None:
            raise UserError(line) from None
        return False

    def _clean(self, written: list[Path]) -> None:
        if self._created is not None:
            self._remove_created()  # still holding the lock
            return
        for p in written:
            p.unlink(missing_ok=True)
        for d in sorted((p for p in self.path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if d not in self._before and not any(d.iterdir()):
                d.rmdir()

    def _release(self) -> None:
        if self._fd is None:
            return
        (self.path / LOCK_NAME).unlink(missing_ok=True)  # while still held: no one else holds this inode
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def _remove_created(self) -> None:
        """Remove the run directory this run created, then the parents it created while empty (another
        run may have started inside them meanwhile)."""
        if self._created is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        for parent in self.path.parents:
            if not parent.is_relative_to(self._created):
                break
            try:
                parent.rmdir()
            except OSError:
                break


def _write_failure(root: Path, e: OSError) -> str:
    """The one line for an OSError in the run ``root``: the file (a :class:`WriteError`: the one that could
    not be written), then the run's last complete checkpoint and what ``--resume`` continues from."""
    if isinstance(e, WriteError):
        line, failed = str(e), Path(e.path)
    elif e.filename:
        writing = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
        line = f"{'cannot write ' if writing else ''}{e.filename}: {os_error_reason(e)}"
        failed = Path(os.fsdecode(e.filename))
    else:
        line, failed = f"{os_error_reason(e)} (while writing the run {root})", None
    return line + _checkpoint_note(root, failed, e.errno)


def _checkpoint_note(root: Path, failed: Path | None, err: int | None) -> str:
    """``; last complete checkpoint: …; … --resume …`` for the run (``root`` or the sub-run holding
    ``failed``) that has a checkpoints folder; empty for one without."""
    inside = failed is not None and failed.is_relative_to(root)
    runs = [d for d in failed.parents if d.is_relative_to(root)] if inside else [root]  # innermost first
    layout = next((RunLayout(d) for d in runs if RunLayout(d).checkpoints.is_dir()), None)
    if layout is None:
        return ""
    done = []
    for p in layout.checkpoints.glob("*.safetensors"):
        try:
            done.append((p.stat().st_mtime_ns, p))
        except OSError:
            continue
    done = sorted(x for x in done if x[1] != failed)
    note = f"; last complete checkpoint: {done[-1][1]}" if done else "; no checkpoint was written yet"
    fix = "free some space" if err in (errno.ENOSPC, errno.EDQUOT) else "fix that"
    if layout.last_state.is_file():  # complete even when its own rewrite failed: it is replaced atomically
        epoch = _state_epoch(layout.last_state)
        after = f" (after epoch {epoch})" if epoch is not None else ""
        return f"{note}; {fix}, then --resume continues from {layout.last_state}{after}"
    return f"{note}; {fix}, then run again with --resume" if done else note


def _state_epoch(path: Path) -> int | None:
    """The epoch a resumable training state was saved after (None if it cannot be read)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # noqa: BLE001 - only a detail of an error message
        return None


def _first_missing(path: Path) -> Path | None:
    """The topmost folder of ``path`` (itself included) that does not exist yet."""
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing


def _nearest_existing(path: Path) -> Path:
    for p in path.absolute().parents:
        if p.exists():
            return p
    return Path("/")


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if not p.is_dir() and p.name != LOCK_NAME]


def _is_result(rel: Path) -> bool:
    return rel.parts[0] not in SETUP_FILES


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    return f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}: {info.get('command')}"
