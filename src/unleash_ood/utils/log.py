"""What every run starts from: the prepared data (ID splits, OOD sets and their groups), the model built
or loaded from a checkpoint, the run's config read back, and the stage messages."""

from __future__ import annotations

from tqdm.auto import tqdm


def say(msg: str) -> None:
    """A stage message that does not break progress bars."""
    tqdm.write(msg)
