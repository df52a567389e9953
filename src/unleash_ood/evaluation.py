"""Evaluation along a run: the once-covered record of a tracked epoch, every model's final evaluation,
the validation metrics hyperparameters may be selected on, the best epochs, and the result files."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from torch import nn

from .detectors import Detector
from .evaluate import collect_outputs, evaluate, score_outputs
from .features import flatten_features, save_features
from .masking import apply_masks, remove_masks
from .metrics import accuracy, ood_metrics
from .plots import plot_score_histograms
from .prepare import Prepared, say
from .report import MODEL_ORDER, flatten_scores, save_results

def track(model: nn.Module, prep: Prepared, scores: list[str]) -> dict:
    """One epoch's once-covered record: ID test/val accuracy and CE, OOD test and validation-OOD metrics."""
    test = collect_outputs(model, prep.batches(*prep.id.test))
    id_scores = score_outputs(test, scores)
    rec = {"id_acc": accuracy(test.logits.numpy(), test.labels.numpy()),
           "test_ce": float(F.cross_entropy(test.logits, test.labels)), "ood": {}}
    for name, x in prep.ood.items():
        ood_scores = score_outputs(collect_outputs(model, prep.batches(x)), scores)
        rec["ood"][name] = {s: ood_metrics(id_scores[s], ood_scores[s]) for s in scores}
    if len(prep.id.val[0]):
        val = collect_outputs(model, prep.batches(*prep.id.val))
        val_scores = score_outputs(val, scores)
        shuffled = score_outputs(collect_outputs(model, prep.batches(prep.val_ood)), scores)
        rec["val_acc"] = accuracy(val.logits.numpy(), val.labels.numpy())
        rec["val_ood"] = {s: ood_metrics(val_scores[s], shuffled[s]) for s in scores}
    return rec


def evaluate_models(models: dict[str, tuple[nn.Module, dict | None]], prep: Prepared,
                    scores: Iterable[str | Detector], features_path: Path | None = None,
                    ) -> tuple[list[dict], dict[str, np.ndarray], dict[str, dict], dict[str, float]]:
    """Evaluate each ``name → (model, mask or None)``; a masked model's ID-ACC is the unmasked one's.

    Detectors are fitted afresh per model, on the network as it is used (the mask applied). With
    ``features_path``, the penultimate features and effective classifier of each model go there."""
    records, flat, by_model, masked_acc, feats = [], {}, {}, {}, {}
    scores = list(scores)
    train_b = prep.batches(*prep.id.train)
    for name, (model, masks) in models.items():
        say(f"evaluating {name}")
        if masks is not None:
            apply_masks(model, masks)
        try:
            ev = evaluate(model, prep.batches(*prep.id.test), prep.ood_batches(), scores, train=train_b,
                          num_classes=prep.id.num_classes, keep_features=features_path is not None)
        finally:
            if masks is not None:
                remove_masks(model)
        if masks is not None:
            masked_acc[name] = ev.id_acc
            test = collect_outputs(model, prep.batches(*prep.id.test))
            ev.id_acc = accuracy(test.logits.numpy(), test.labels.numpy())
        records += ev.records(name, prep.groups)
        flat.update(flatten_scores(name, ev.scores))
        by_model[name] = ev.scores
        if ev.features is not None:
            feats.update(flatten_features(name, ev.features))
    if features_path is not None:
        save_features(features_path, feats)
    return records, flat, by_model, masked_acc


def validation_metrics(models: dict[str, tuple[nn.Module, dict | None]], prep: Prepared,
                       scores: tuple[str, ...] = ("Energy", "MSP")) -> dict[str, dict]:
    """Per model: ID validation accuracy and metrics on the synthetic validation OOD set — what
    hyperparameters may be selected on (the OOD test sets never are)."""
    out = {}
    for name, (model, masks) in models.items():
        if masks is not None:
            apply_masks(model, masks)
        try:
            val = collect_outputs(model, prep.batches(*prep.id.val))
            shuffled = collect_outputs(model, prep.batches(prep.val_ood))
        finally:
            if masks is not None:
                remove_masks(model)
        val_s, ood_s = score_outputs(val, scores), score_outputs(shuffled, scores)
        out[name] = {"val_acc": accuracy(val.logits.numpy(), val.labels.numpy()),
                     **{s: ood_metrics(val_s[s], ood_s[s]) for s in scores}}
    return out


def best_epochs(log: list[dict], scores: list[str]) -> dict:
    """Per tracked score: epoch of the best mean FPR95 on the OOD test sets (analysis only) and on the
    validation OOD set (a legitimate selection), vs the final epoch."""
    out = {}
    for s in scores:
        test = [np.mean([r["ood"][d][s]["fpr95"] for d in r["ood"]]) for r in log]
        row = {"final_epoch": log[-1]["epoch"], "final_test_fpr95": float(test[-1]),
               "best_test_epoch": log[int(np.argmin(test))]["epoch"], "best_test_fpr95": float(np.min(test))}
        if "val_ood" in log[0]:
            val = [r["val_ood"][s]["fpr95"] for r in log]
            i = int(np.argmin(val))
            row.update(best_val_epoch=log[i]["epoch"], test_fpr95_at_best_val=float(test[i]))
        out[s] = row
    return out


def write_outputs(out: Path, records: list[dict], flat: dict, by_model: dict, notes: str,
                  title: str) -> None:
    save_results(out, records, flat, title=title, notes=notes)
    models = [m for m in MODEL_ORDER if m in by_model]
    for score in ("Energy", "MSP"):
        if all(score in by_model[m]["id"] for m in models):
            plot_score_histograms({m: {d: v[score] for d, v in by_model[m].items()} for m in models}, score,
                                  out / "plots" / f"score_hist_{score.lower()}.png", models)
