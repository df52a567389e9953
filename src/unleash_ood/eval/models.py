"""Evaluation along a run, all through one :func:`evaluate_models`: every model's final evaluation,
the once-covered record of a tracked epoch, and the validation metrics hyperparameters may be selected on."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from ..data.prepared import EvalSets, Prepared
from ..detectors.base import Detector
from ..masking import apply_masks, remove_masks
from ..metrics import AGGREGATE_GROUP, accuracy
from ..utils.log import say
from .evaluate import evaluate
from .features import flatten_features, save_features
from .forward import collect_outputs

RECORD_KEYS = ("model", "score", "ood", "group", "id_acc")


@dataclass
class ModelsEvaluation:
    """What :func:`evaluate_models` found. ``records``: one per (model, score, OOD set) plus the near /
    far / mean aggregates; ``scores``: per-sample scores, model → dataset (``id`` first) → score;
    ``id_acc``: each model's ID accuracy as deployed (a masked model's is the unmasked network's);
    ``masked_acc``: a masked model's accuracy with its mask; ``id_ce``: ID cross-entropy as evaluated."""

    records: list[dict] = field(default_factory=list)
    scores: dict[str, dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    id_acc: dict[str, float] = field(default_factory=dict)
    masked_acc: dict[str, float] = field(default_factory=dict)
    id_ce: dict[str, float] = field(default_factory=dict)

    def flat(self) -> dict[str, np.ndarray]:
        """The per-sample scores as ``{"MODEL/SCORE/DATASET": array}`` (``scores.npz``)."""
        return {k: v for name, by_ds in self.scores.items() for k, v in flatten_scores(name, by_ds).items()}

    def per_set(self, model: str) -> dict[str, dict[str, dict]]:
        """``{OOD set: {score: metrics}}`` of one model (the layout of the once-covered log)."""
        out: dict[str, dict[str, dict]] = {}
        for r in self.records:
            if r["model"] == model and r["group"] != AGGREGATE_GROUP:
                out.setdefault(r["ood"], {})[r["score"]] = {k: v for k, v in r.items() if k not in RECORD_KEYS}
        return out

    def aggregate(self, model: str, score: str, ood: str = "mean") -> dict:
        """One aggregate record (``ood``: ``mean``, ``near``, ``far`` or ``synthetic``)."""
        return next(r for r in self.records if r["model"] == model and r["score"] == score and r["ood"] == ood
                    and r["group"] == AGGREGATE_GROUP)


def evaluate_models(models: dict[str, tuple[nn.Module, dict | None]], prep: Prepared,
                    scores: Iterable[str | Detector], sets: EvalSets | None = None,
                    features_path: Path | None = None, progress: bool = True,
                    per_model: Mapping[str, Sequence[str | Detector]] | None = None) -> ModelsEvaluation:
    """Evaluate each ``name → (model, mask or None)`` on ``sets`` (default: the test sets): every final
    evaluation, each tracked epoch, the validation metrics and the keep-ratio selection go through here.
    ``per_model[name]``, where given, replaces ``scores`` for that model (the tuned rows of ``scores.tune``).

    Detectors are fitted afresh per model, on the network as it is used (the mask applied), from one
    training pass when one of them needs it. A masked model's ``id_acc`` is the unmasked network's
    (what is deployed). With ``features_path``, the penultimate features and effective classifier of
    each model go there."""
    sets = sets or prep.test_sets()
    result, feats = ModelsEvaluation(), {}
    scores = list(scores)
    train_b = prep.batches(*prep.id.train)
    id_b, ood_b = prep.batches(*sets.id), {n: prep.batches(x) for n, x in sets.ood.items()}
    for name, (model, masks) in models.items():
        if progress:
            say(f"evaluating {name}")
        if masks is not None:
            apply_masks(model, masks)
        try:
            ev = evaluate(model, id_b, ood_b, (per_model or {}).get(name, scores), train=train_b,
                          num_classes=prep.id.num_classes,
                          keep_features=features_path is not None, progress=progress)
        finally:
            if masks is not None:
                remove_masks(model)
        if masks is not None:
            result.masked_acc[name] = ev.id_acc
            test = collect_outputs(model, id_b)
            ev.id_acc = accuracy(test.logits.numpy(), test.labels.numpy())
        result.records += ev.records(name, sets.groups)
        result.scores[name], result.id_acc[name], result.id_ce[name] = ev.scores, ev.id_acc, ev.id_ce
        if ev.features is not None:
            feats.update(flatten_features(name, ev.features))
    if features_path is not None:
        save_features(features_path, feats)
    return result


def track(model: nn.Module, prep: Prepared, scores: list[str]) -> dict:
    """One epoch's once-covered record: ID test accuracy and CE with the OOD test sets' metrics, and
    ID validation accuracy with the validation-OOD metrics: ``val_ood`` (the patch-shuffled proxy) and,
    where the user gave known outliers (``data.val_near``/``val_far``), ``val_user`` (per set)."""
    test = evaluate_models({"m": (model, None)}, prep, scores, progress=False)
    rec = {"id_acc": test.id_acc["m"], "test_ce": test.id_ce["m"], "ood": test.per_set("m")}
    if len(prep.id.val[0]):
        val = evaluate_models({"m": (model, None)}, prep, scores, prep.val_sets(), progress=False)
        rec["val_acc"] = val.id_acc["m"]
        rec.update(_validation_sets(val, "m"))
    return rec


def _validation_sets(ev: ModelsEvaluation, model: str) -> dict:
    """``{"val_ood": metrics}`` of one model on ``prep.val_sets()``, with ``val_user`` (the user's known
    outliers, per set) where there are any."""
    per_set = ev.per_set(model)
    out = {"val_ood": per_set.pop("val_ood")}
    if per_set:
        out["val_user"] = per_set
    return out


def val_fpr95(record: dict, score: str) -> float:
    """A tracked record's validation FPR95 for ``score``: the mean over the validation OOD sets (the
    patch-shuffled proxy and each of the user's known outliers, equal weights), what epochs are
    selected on."""
    sets = [record["val_ood"], *record.get("val_user", {}).values()]
    return float(np.mean([s[score]["fpr95"] for s in sets]))


def validation_metrics(models: dict[str, tuple[nn.Module, dict | None]], prep: Prepared,
                       scores: tuple[str, ...] = ("Energy", "MSP")) -> dict[str, dict]:
    """Per model: ID validation accuracy (with its mask, if any) and metrics on the synthetic validation
    OOD set, and the user's known outliers (``data.val_near``/``val_far``) under ``val_user`` — what
    hyperparameters may be selected on (the OOD test sets never are)."""
    ev = evaluate_models(models, prep, list(scores), prep.val_sets(), progress=False)
    out = {}
    for name in models:
        sets = _validation_sets(ev, name)
        out[name] = {"val_acc": ev.masked_acc.get(name, ev.id_acc[name]), **sets.pop("val_ood"), **sets}
    return out


def flatten_scores(model: str, by_dataset: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{dataset: {score: array}}`` → ``{"MODEL/SCORE/DATASET": array}`` (``id`` for the ID test set)."""
    return {f"{model}/{score}/{ds}": arr for ds, by_score in by_dataset.items() for score, arr in by_score.items()}
