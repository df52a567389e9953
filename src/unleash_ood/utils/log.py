"""Stage messages that do not break progress bars."""

from __future__ import annotations

from tqdm.auto import tqdm


def say(msg: str) -> None:
    """A stage message that does not break progress bars."""
    tqdm.write(msg)
