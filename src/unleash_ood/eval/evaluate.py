"""Detectors on one model: fitted on one training pass, scored from one forward pass per dataset, with
the ID-positive metrics per OOD set and per group (:func:`evaluate`, the Python API's entry point)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import ScoresConfig
from ..data.batches import split_batch
from ..detectors.base import Detector, FitData, build_detector
from ..detectors.params import DEFAULT_SCORES
from ..errors import UserError
from ..metrics import AGGREGATE_GROUP, accuracy, group_means, ood_metrics, set_groups
from .forward import Outputs, classifier_params, collect_outputs, to_model_input


def make_detectors(scores: Iterable[str | Detector]) -> list[Detector]:
    """Fresh, unfitted detectors: names are built with their defaults, instances are copied (never their fit)."""
    out = []
    for s in scores:
        if isinstance(s, Detector):
            out.append(type(s)(**s.config()))
        else:
            out.append(build_detector(s))
    if len({d.name for d in out}) != len(out):
        raise UserError(f"a score is listed twice: {[d.name for d in out]}")
    return out


def configured_detectors(scores: ScoresConfig) -> list[Detector]:
    """Fresh, unfitted detectors of a config's ``scores.use``, with their configured hyperparameters."""
    return [build_detector(n, scores.params(n)) for n in scores.use]


def fit_detectors(model: nn.Module, detectors: list[Detector], train: Iterable | None = None,
                  keep_pass: bool = False) -> Outputs | None:
    """Fit every detector on the network as it is used: one pass over ``train`` (only if one needs it, or
    ``keep_pass`` and ``train`` is given) and the effective classifier layer. Returns that pass (or None)."""
    weight, bias = classifier_params(model)
    out = None
    if keep_pass and train is not None and not any(d.needs_fit for d in detectors):
        out = collect_outputs(model, train, desc="training features")
    elif any(d.needs_fit for d in detectors):
        if train is None:
            need = [d.name for d in detectors if d.needs_fit]
            raise UserError(f"{', '.join(need)} need(s) the training batches to fit on")
        out = collect_outputs(model, train, desc="fit detectors")
    data = FitData(logits=out.logits if out else None, features=out.features if out else None,
                   labels=out.labels if out else None, weight=weight, bias=bias)
    for d in detectors:
        d.fit(data)
    return out


def score_outputs(outputs: Outputs, detectors: Iterable[str | Detector]) -> dict[str, np.ndarray]:
    """Every score that is a function of one forward pass (all but ODIN), from that pass's outputs."""
    dets = [build_detector(d) if isinstance(d, str) else d for d in detectors]
    return {d.name: d.score_bulk(outputs.logits, outputs.features).cpu().numpy() for d in dets if not d.needs_inputs}


def input_scores(model: nn.Module, batches: Iterable, detector: Detector, desc: str | None = None) -> np.ndarray:
    """A detector's scores from the inputs themselves (ODIN: its own gradient pass)."""
    was_training = model.training
    model.eval()
    try:
        out = [detector.score_inputs(model, to_model_input(split_batch(b)[0], model)).cpu()
               for b in tqdm(batches, desc=desc, leave=False, disable=desc is None)]
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


@dataclass
class Evaluation:
    """Per-sample scores by dataset (``id`` first) and score name, plus ID accuracy; the detectors as
    fitted on this model; with ``keep_features``, the penultimate features by dataset (plus ``train``)
    and the effective classifier ``weight`` / ``bias``."""

    scores: dict[str, dict[str, np.ndarray]]
    id_acc: float
    detectors: list[Detector] = field(default_factory=list)
    features: dict[str, torch.Tensor] | None = None
    id_ce: float = float("nan")

    def records(self, model_name: str, groups: Mapping[str, str] | None = None) -> list[dict]:
        """Metric records per (score, OOD set), then aggregate records per score.

        ``groups`` maps OOD set names to ``near``/``far``/``synthetic`` (a set it leaves out is ``far``).
        A per-set record's ``group`` is its set's; the aggregate records (``ood`` = ``near``, ``far``,
        ``synthetic`` — wherever the group has sets — and ``mean``, over the near and far sets) have
        ``group`` = ``"aggregate"`` and each metric's unweighted mean over their sets.
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
             scores: Iterable[str | Detector] = DEFAULT_SCORES, train: Iterable | None = None,
             num_classes: int | None = None, keep_features: bool = False, progress: bool = True) -> Evaluation:
    """Score the labelled ID test batches and each OOD set with every requested detector.

    Detectors are fitted here, on ``model`` as it is (masks included), from one pass over ``train``
    (labelled batches; needed by the feature detectors); a fitted detector passed in is copied, never
    reused. ``num_classes``, if given, is checked against the classifier. ``keep_features`` keeps the
    penultimate features of every set in ``Evaluation.features``. ``progress`` False: no progress bars
    (an evaluation inside a training loop).
    """
    detectors = make_detectors(scores)
    if num_classes is not None and classifier_params(model)[0].shape[0] != num_classes:
        raise UserError(f"the classifier has {classifier_params(model)[0].shape[0]} outputs, not {num_classes}")
    train_out = fit_detectors(model, detectors, train, keep_pass=keep_features)
    features: dict[str, torch.Tensor] = {}
    result: dict[str, dict[str, np.ndarray]] = {}
    id_acc = id_ce = float("nan")
    for name, batches in {"id": id_test, **ood_sets}.items():
        out = collect_outputs(model, batches, desc=f"eval {name}" if progress else None)
        if name == "id":
            if out.labels is None:
                raise UserError("the ID test batches must carry labels (x, y)")
            id_acc = accuracy(out.logits.numpy(), out.labels.numpy())
            id_ce = float(F.cross_entropy(out.logits, out.labels))
        by_score = score_outputs(out, detectors)
        for d in detectors:
            if d.needs_inputs:
                by_score[d.name] = input_scores(model, batches, d, desc=f"{d.name} {name}" if progress else None)
        result[name] = {d.name: by_score[d.name] for d in detectors}
        if keep_features:
            features[name] = out.features
    if keep_features:
        weight, bias = classifier_params(model)
        features.update({"weight": weight, **({"bias": bias} if bias is not None else {}),
                         **({"train": train_out.features} if train_out is not None else {})})
    return Evaluation(scores=result, id_acc=id_acc, detectors=detectors, features=features if keep_features else None,
                      id_ce=id_ce)
