"""One eval-mode forward pass: model inputs on the model's device, logits and penultimate features of
a dataset, and the classifier layer's effective weight and bias."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.batches import split_batch
from ..errors import UserError


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def to_model_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Move a batch to the model's device, channels_last when the model is."""
    x = x.to(model_device(model), non_blocking=True)
    first = next(model.parameters())
    if x.dim() == 4 and first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The classifier: the last ``nn.Linear`` in module order (its input is the penultimate feature)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError("model has no nn.Linear classifier; feature scores need one")
    return linears[-1]


@contextmanager
def capture_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the classifier's inputs (penultimate features) during forward passes."""
    store: list[torch.Tensor] = []
    handle = classifier_layer(model).register_forward_pre_hook(
        lambda _m, inputs: store.append(inputs[0].detach().flatten(1).float().cpu()))
    try:
        yield store
    finally:
        handle.remove()


@dataclass
class Outputs:
    """Logits, penultimate features and labels (if any) of one dataset."""

    logits: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor | None


@torch.no_grad()
def collect_outputs(model: nn.Module, batches: Iterable, desc: str | None = None) -> Outputs:
    """One eval-mode forward pass over ``batches``: logits and penultimate features."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        with capture_features(model) as feats:
            for batch in tqdm(batches, desc=desc, leave=False, disable=desc is None):
                x, y = split_batch(batch)
                logits.append(model(to_model_input(x, model)).float().cpu())
                if y is not None:
                    labels.append(y.cpu())
    finally:
        model.train(was_training)
    if not logits:
        raise UserError(f"empty dataset{f' ({desc})' if desc else ''}: nothing to evaluate")
    return Outputs(torch.cat(logits), torch.cat(feats), torch.cat(labels) if labels else None)


def classifier_params(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The classifier's effective weight and bias (masked, where a mask is applied), detached on the CPU."""
    layer = classifier_layer(model)
    bias = layer.bias.detach().float().cpu() if layer.bias is not None else None
    return layer.weight.detach().float().cpu(), bias
