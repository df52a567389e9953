"""Batches over in-memory tensors (seeded shuffling, optional augmentation) and the ``(x, y)`` split of a batch."""

from __future__ import annotations

from collections.abc import Iterator

import torch


class TensorBatches:
    """Re-iterable mini-batches over in-memory tensors (the loader of the embedded default).

    Any iterable of ``x`` or ``(x, y, ...)`` batches — e.g. a ``torch.utils.data.DataLoader`` —
    can be used wherever this class is accepted.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = 512,
                 shuffle: bool = False, seed: int = 0, augment=None) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor] | torch.Tensor]:
        n = len(self.images)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.images[idx]
            if self.augment is not None:
                x = self.augment(x, generator=self.generator)
            yield x if self.labels is None else (x, self.labels[idx])


def split_batch(batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x`` or ``(x, y, ...)`` → ``(x, y or None)``."""
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None
