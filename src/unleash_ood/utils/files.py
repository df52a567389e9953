"""Files on disk: every write is atomic (temp file + rename; a failed write names the path), and the
metadata of a safetensors checkpoint read without loading its tensors."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError, safe_open

from ..errors import UserError, WriteError, os_error_reason


def write_text(path: str | Path, text: str) -> Path:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")
    return atomic_write(path, write)


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: set it straight back
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file.

    The file gets the permissions of a plainly created one (0666 minus the umask, e.g. 0644), not
    the temp file's 0600.

    An OSError on the way (a full disk, a quota, a read-only folder) becomes a :class:`WriteError` naming
    ``path`` (a UserError, and still an OSError). ``write`` must report a failed write as an OSError:
    serialize in memory and write the bytes with Python when a library's own writer does not (torch.save
    raises a RuntimeError on a full disk, safetensors' ``save_file`` can lose the error)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            other = e.filename is not None and str(e.filename) not in (tmp, str(path), str(path.parent))
            reason = os_error_reason(e) + (f" ({e.filename})" if other else "")
            raise WriteError(path, reason, e.errno) from e
        raise
    return path


def checkpoint_meta(path: str | Path) -> dict:
    """The JSON metadata a checkpoint was saved with (the ``meta`` key), tensors not read; ``{}`` when
    the file is not a readable safetensors file."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            return json.loads((f.metadata() or {}).get("meta", "{}"))
    except (SafetensorError, OSError, ValueError):
        return {}


def read_json(path: Path, what: str):
    """A JSON file the project wrote; one UserError naming ``what`` when it is corrupt or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"corrupt {what} {path}: {e}") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
