"""The exception types for a user's mistake or an environment problem (a full disk): the CLI prints
the message and exits 2."""


class UserError(Exception):
    """Bad input from the user (missing data, wrong checkpoint, invalid value, NaN loss...)."""


class WriteError(UserError, OSError):
    """A file could not be written (disk full, quota, read-only filesystem...): one line naming ``path``.

    Also an OSError (``errno`` is the OS's), so code that handles OSError keeps handling it."""

    def __init__(self, path, reason: str, errno: int | None = None) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.reason = path, reason
        self.errno = errno

    def __reduce__(self):  # picklable (e.g. across processes) with its own arguments
        return type(self), (self.path, self.reason, self.errno)


def os_error_reason(e: OSError) -> str:
    """The OS's reason for ``e`` ("No space left on device"), never empty."""
    return e.strerror or str(e) or type(e).__name__
