"""One forward pass per dataset → logits, penultimate features, every score and the metrics."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import UserError
from .metrics import AGGREGATE_GROUP, accuracy, group_means, ood_metrics, set_groups
from .scores import ALL_SCORES, LOGIT_SCORES, Mahalanobis, odin_score


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


def odin_scores(model: nn.Module, batches: Iterable, temperature: float = 1000.0, epsilon: float = 0.0014,
                desc: str | None = None) -> np.ndarray:
    """ODIN scores over ``batches`` (its own gradient pass)."""
    was_training = model.training
    model.eval()
    try:
        out = [odin_score(model, to_model_input(split_batch(b)[0], model), temperature, epsilon).cpu()
               for b in tqdm(batches, desc=desc, leave=False, disable=desc is None)]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


def fit_mahalanobis(model: nn.Module, train_batches: Iterable, num_classes: int) -> Mahalanobis:
    """Fit class means and tied covariance on the training set's penultimate features."""
    out = collect_outputs(model, train_batches, desc="fit Mahalanobis")
    if out.labels is None:
        raise UserError("Mahalanobis needs labelled training batches (x, y)")
    return Mahalanobis.fit(out.features, out.labels, num_classes)


def score_outputs(outputs: Outputs, scores: Iterable[str], mahalanobis: Mahalanobis | None = None,
                  energy_temperature: float = 1.0) -> dict[str, np.ndarray]:
    """Every logit/feature score from one forward pass's outputs."""
    result = {}
    for name in scores:
        if name == "Energy":
            result[name] = LOGIT_SCORES[name](outputs.logits, energy_temperature).numpy()
        elif name in LOGIT_SCORES:
            result[name] = LOGIT_SCORES[name](outputs.logits).numpy()
        elif name == "Mahalanobis":
            if mahalanobis is None:
                raise UserError("Mahalanobis score requested but not fitted (pass train data)")
            result[name] = mahalanobis(outputs.features).numpy()
    return result


def check_scores(scores: Iterable[str]) -> list[str]:
    """Validate score names."""
    scores = list(scores)
    bad = [s for s in scores if s not in ALL_SCORES]
    if bad:
        raise UserError(f"unknown score(s) {bad}; choose from {', '.join(ALL_SCORES)}")
    return scores


@dataclass
class Evaluation:
    """Per-sample scores by dataset (``id`` first) and score name, plus ID accuracy."""

    scores: dict[str, dict[str, np.ndarray]]
    id_acc: float

    def records(self, model_name: str, groups: Mapping[str, str] | None = None) -> list[dict]:
        """Metric records per (score, OOD set), then aggregate records per score.

        ``groups`` maps OOD set names to ``near``/``far`` (a set it leaves out is ``far``). A per-set
        record's ``group`` is its set's; the aggregate records (``ood`` = ``near``, ``far`` — wherever
        the group has sets — and ``mean``, over all sets) have ``group`` = ``"aggregate"`` and each
        metric's unweighted mean over their sets.
        """
        rows = []
        id_scores = self.scores["id"]
        group_of = set_groups([ds for ds in self.scores if ds != "id"], groups)
        for score in id_scores:
            head = {"model": model_name, "score": score}
            per_set = {ds: ood_metrics(id_scores[score], self.scores[ds][score]) for ds in group_of}
            rows += [{**head, "ood": ds, "group": group_of[ds], **m, "id_acc": self.id_acc}
                     for ds, m in per_set.items()]
            rows += [{**head, "ood": agg, "group": AGGREGATE_GROUP, **m, "id_acc": self.id_acc}
                     for agg, m in group_means(per_set, group_of).items()]
        return rows


def evaluate(model: nn.Module, id_test: Iterable, ood_sets: dict[str, Iterable],
             scores: Iterable[str] = ALL_SCORES, train: Iterable | None = None, num_classes: int | None = None,
             odin_temperature: float = 1000.0, odin_epsilon: float = 0.0014) -> Evaluation:
    """Score the labelled ID test batches and each OOD set with every requested score.

    ``train`` (labelled batches) and ``num_classes`` are needed for Mahalanobis only.
    """
    scores = check_scores(scores)
    maha = None
    if "Mahalanobis" in scores:
        if train is None or num_classes is None:
            raise UserError("Mahalanobis needs the training batches and num_classes")
        maha = fit_mahalanobis(model, train, num_classes)
    result: dict[str, dict[str, np.ndarray]] = {}
    id_acc = float("nan")
    for name, batches in {"id": id_test, **ood_sets}.items():
        out = collect_outputs(model, batches, desc=f"eval {name}")
        if name == "id":
            if out.labels is None:
                raise UserError("the ID test batches must carry labels (x, y)")
            id_acc = accuracy(out.logits.numpy(), out.labels.numpy())
        result[name] = score_outputs(out, scores, maha)
        if "ODIN" in scores:
            result[name]["ODIN"] = odin_scores(model, batches, odin_temperature, odin_epsilon, desc=f"ODIN {name}")
        result[name] = {s: result[name][s] for s in scores}
    return Evaluation(scores=result, id_acc=id_acc)
