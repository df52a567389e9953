"""A run's validation side: the validation OOD proxies it may choose on (near: letters from the glyph
fonts held out of the test set, or TinyImageNet for CIFAR; far: patch-shuffled ID validation images;
each plus the user's known outliers ``data.val_near``/``val_far`` — :func:`~.select_keep.validation_ood`),
the probes ``data.val_probes`` it only reports (group ``synthetic``, weight 0), checked before training, and the files ``validation.json|csv|md``
(every model × detector × params against them) and ``tuning.json|csv|md`` (``scores.tune``'s choices
with every grid value). The OOD test sets are never part of it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import DemoConfig
from ..data.prepared import EvalSets, Prepared
from ..data.probes import make_probe
from ..detectors.base import Detector
from ..errors import UserError
from ..eval.forward import classifier_layer
from ..eval.tuning import Validation, tuned_detector, tuning_plan, with_tuned
from ..report.tables import dicts_csv, md_table
from ..utils.files import write_json, write_text
from ..utils.log import say
from .layout import RunLayout
from .select_keep import validation_ood

SET_NAMES = {"near": "val_near", "far": "val_ood"}  # val_ood: the name prep.val_sets() gives the far proxy
PROBE_GROUP = "synthetic"  # the probes' group: no weight in the rule, so never chosen on
NOT_TUNED = ("ODIN keeps its configured values (its own gradient pass is not re-run per grid value); MSP, "
             "MaxLogit, GEN, Mahalanobis and fDBD have no grid.")


@dataclass(frozen=True)
class ValidationSets:
    """The ID validation split against the validation OOD proxies (``sets``), and what each proxy is."""

    sets: EvalSets
    described: dict[str, dict]
    missing: dict[str, str] = field(default_factory=dict)  # group → why it has no proxy (said, and in the files)


def prepare_validation(cfg: DemoConfig, prep: Prepared, model: nn.Module) -> ValidationSets | None:
    """The validation sets of a run (None without an ID validation split); with ``scores.tune`` the grids
    are checked against the model's feature size and the training size here, before anything trains."""
    if not len(prep.id.val[0]):
        return None
    if cfg.scores.tune:
        tuning_plan(cfg.scores, classifier_layer(model).in_features, len(prep.id.train[0]))
    missing = {}
    try:
        proxies = validation_ood(cfg.data, prep.val_ood, prep.id.image_shape, prep.val_user)  # + data.val_near/far
    except UserError as e:  # e.g. one glyph font family only: no held-out fonts for the near proxy
        missing["near"] = str(e)
        say(f"validation OOD: no near proxy ({e}); validation uses the far proxy only")
        far = ("patch-shuffled ID validation", prep.val_ood)
        if "far" in prep.val_user:
            far = (f"{far[0]} + {prep.val_user['far'][0]}", torch.cat([far[1], prep.val_user["far"][1]]))
        proxies = {**({"near": prep.val_user["near"]} if "near" in prep.val_user else {}), "far": far}
    order = [g for g in ("near", "far") if g in proxies]
    ood = {SET_NAMES[g]: proxies[g][1] for g in order}
    groups = {SET_NAMES[g]: g for g in order}
    described = {SET_NAMES[g]: {"group": g, "source": proxies[g][0], "size": len(proxies[g][1])} for g in order}
    n_probe = max(1, min(cfg.data.val_ood_size // 2, len(prep.id.val[0])))
    for p in cfg.data.val_probes:
        ood[f"probe_{p}"] = make_probe(p, n_probe, cfg.data.seed, prep.id.image_shape, prep.id.val[0])
        groups[f"probe_{p}"] = PROBE_GROUP
        described[f"probe_{p}"] = {"group": PROBE_GROUP, "source": f"probe: {p} (reported, never chosen on)",
                                   "size": n_probe}
    return ValidationSets(EvalSets(prep.id.val, ood, groups), described, missing)


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "—"


def _f(x: float) -> str:
    return f"{x:.2f}"


CANDIDATE_KEYS = ("model", "score", "detector", "params", "near_fpr95", "far_fpr95", "val_fpr95", "near_auroc",
                  "far_auroc", "val_auroc")


def write_validation(run: RunLayout, val: Validation, vs: ValidationSets) -> None:
    """``validation.json|csv|md``: what ``recommend`` ranks, from files only."""
    groups = [g for g in ("near", "far") if g in val.sets.values()]
    write_json(run.validation(".json"), {
        "id": {"split": "ID validation", "size": len(vs.sets.id[0])}, "sets": vs.described,
        "missing": vs.missing, "weights": val.weights, "val_acc": val.val_acc, "tuned": bool(val.tuning),
        "candidates": val.candidates, "records": val.records})
    rows = [{**c, "params": json.dumps(c["params"])} for c in val.candidates]
    write_text(run.validation(".csv"), dicts_csv(rows, [k for k in CANDIDATE_KEYS if any(k in r for r in rows)]))
    sets = "; ".join(f"{d['group']}: {d['source']} ({d['size']} images, `{n}`)" for n, d in vs.described.items()
                     if d["group"] != PROBE_GROUP)
    probes = ", ".join(f"`{n}`" for n, d in vs.described.items() if d["group"] == PROBE_GROUP)
    table = md_table(["model", "score", "params", *(f"{g} FPR95 ↓" for g in groups), "val FPR95 ↓",
                      "val AUROC ↑"],
                     [[c["model"], c["score"], _params_text(c["params"]), *(_f(c[f"{g}_fpr95"]) for g in groups),
                       _f(c["val_fpr95"]), _f(c["val_auroc"])] for c in val.candidates])
    weights = ", ".join(f"{g} {w:g}" for g, w in val.weights.items())
    write_text(run.validation(".md"), "\n".join([
        "# Validation", "", (f"ID validation split ({len(vs.sets.id[0])} images) against the validation OOD "
                             f"proxies ({sets}); never an OOD test set. val FPR95: the weighted mean over the "
                             f"groups ({weights})." + (f" Probes {probes} are scored (validation.json: "
                                                       "records, candidates' sets_fpr95) but never chosen on."
                                                       if probes else "")),
        *(f"No {g} proxy: {why}" for g, why in vs.missing.items()), "", table, ""]))


def write_tuning(run: RunLayout, val: Validation, vs: ValidationSets) -> None:
    """``tuning.json|csv|md``: per model and tuned detector the choice and every grid value's validation
    FPR95 per proxy (nothing when the run did not tune)."""
    if not val.tuning:
        return
    write_json(run.tuning(".json"), {"rule": val.rule, "weights": val.weights, "sets": vs.described,
                                     "not_tuned": NOT_TUNED, "cost_s": val.seconds["tune"], "models": val.tuning})
    flat = [{"model": m, "detector": d, "param": t["param"], "value": r["value"], "chosen": r["value"] == t["chosen"],
             "default": r["value"] == t["default"], **{f"{s}_fpr95": v for s, v in r["fpr95"].items()},
             **{k: r[k] for k in ("near_fpr95", "far_fpr95", "val_fpr95", "val_auroc") if k in r}}
            for m, by_det in val.tuning.items() for d, t in by_det.items() for r in t["grid"]]
    keys = list(dict.fromkeys(k for r in flat for k in r))
    write_text(run.tuning(".csv"), dicts_csv(flat, keys))
    rows = [[m, d, t["param"], f"{t['default']:g} → **{t['chosen']:g}**",
             f"{_f(t['default_val_fpr95'])} → {_f(t['val_fpr95'])}",
             ", ".join(f"{r['value']:g}: {_f(r['val_fpr95'])}" for r in t["grid"])]
            for m, by_det in val.tuning.items() for d, t in by_det.items()]
    write_text(run.tuning(".md"), "\n".join([
        "# Detector hyperparameters chosen on validation", "", f"Rule: {val.rule}", "", f"Not tuned: {NOT_TUNED}",
        "", f"Cost: {val.seconds['tune']:.1f} s of fits and scores on one shared forward pass per model and set.",
        "", md_table(["model", "detector", "param", "default → chosen", "val FPR95 default → chosen",
                      "grid (value: val FPR95)"], rows), ""]))


def tuned_rows(run: RunLayout, detectors: list[Detector]) -> dict[str, list[Detector]] | None:
    """Each tuned model's ``detectors`` with the ``NAME (tuned)`` rows of the run's ``tuning.json`` (None
    without one): ``eval --run`` reports them on other OOD sets with the values chosen at run time."""
    if not run.tuning().is_file():
        return None
    try:
        models = json.loads(run.tuning().read_text())["models"]
        return {m: with_tuned(detectors, [tuned_detector(d, t["params"]) for d, t in by_det.items()])
                for m, by_det in models.items()}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"corrupt {run.tuning()}: {e}") from None
