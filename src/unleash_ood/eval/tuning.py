"""Every detector on validation data, and (``scores.tune``) each tunable detector's hyperparameter chosen
per model on the validation OOD proxies only: :func:`validate_models`.

One eval-mode forward pass per model and set — the ID training split (what the detectors fit on), the
ID validation split and each validation OOD proxy — gives the logits and features that every detector
and every grid value is fitted and scored from: a grid costs fits and scores, never another network
pass. ODIN scores the validation sets with its own gradient pass at its configured values; it is never
tuned (nor are MSP, MaxLogit, GEN, Mahalanobis, fDBD: see :data:`~unleash_ood.detectors.params.TUNING_GRIDS`).

**The rule.** Per (model, tunable detector): the candidate with the lowest validation FPR95 (ID positive,
%), the weighted mean over the validation OOD groups (:data:`GROUP_WEIGHTS`: near 0.5, far 0.5; a
group's value is the mean over its sets; a group without sets drops out and the others are
renormalized). The candidates are the grid's values and the configured (default) one; ties go to the
configured value, then to the value nearest it. The OOD test sets are never looked at.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ..config import ScoresConfig
from ..data.prepared import EvalSets, Prepared
from ..detectors.base import Detector, FitData, build_detector, load_builtins
from ..detectors.params import TUNING_GRIDS, tuning_grid
from ..detectors.subspace import vim_default_dim
from ..errors import UserError
from ..masking import apply_masks, remove_masks
from ..metrics import accuracy, auroc, fpr_at_95_tpr, ood_metrics
from ..utils.log import say
from .evaluate import Evaluation, configured_detectors, input_scores, score_outputs
from .forward import Outputs, classifier_layer, classifier_params, collect_outputs

GROUP_WEIGHTS: dict[str, float] = {"near": 0.5, "far": 0.5}
TUNED_SUFFIX = " (tuned)"
RULE = ("lowest validation FPR95 (ID positive, %): the weighted mean over the validation OOD groups "
        "(weights {weights}; a group's value is the mean over its sets), ID validation split vs each "
        "validation OOD proxy; candidates: the grid and the configured value; ties: the configured value, "
        "then the nearest to it. OOD test sets are never used.")
LEGACY_SCORES = ("Energy", "MSP")  # summary.json's "validation": these two on the far proxy ``val_ood``


def weighted(by_group: Mapping[str, float], weights: Mapping[str, float] = GROUP_WEIGHTS) -> float:
    """``Σ w_g · value_g / Σ w_g`` over the groups present in ``by_group`` with a positive weight."""
    present = {g: w for g, w in weights.items() if g in by_group and w > 0}
    if not present:
        raise UserError(f"no validation OOD group with a positive weight: groups {sorted(by_group)}, "
                        f"weights {dict(weights)}")
    return float(sum(w * by_group[g] for g, w in present.items()) / sum(present.values()))


def tuned_detector(name: str, params: Mapping) -> Detector:
    """Detector ``name`` with ``params``, named ``NAME (tuned)``: a row of its own next to the default's."""
    base = load_builtins()[name]
    cls = type(f"{base.__name__}Tuned", (base,), {"name": f"{name}{TUNED_SUFFIX}", "__module__": __name__})
    return cls(**params)


@dataclass(frozen=True)
class Grid:
    """One detector's candidates: ``param``, its ``values`` (ascending, the configured ``default`` among
    them) and the detector's other configured params."""

    name: str
    param: str
    values: list
    default: float | int
    configured: dict

    def params(self, value) -> dict:
        return {**self.configured, self.param: value}


def tuning_plan(scores: ScoresConfig, feature_size: int, train_size: int) -> dict[str, Grid]:
    """The grids of the tunable detectors in ``scores.use`` for a model with ``feature_size``-dim features
    fitted on ``train_size`` images: ViM's fractions become dims (below the feature size; an absolute
    dim at or above it is a UserError), KNN's k is capped at the training size. Called before a run
    trains, so a grid that cannot fit fails first."""
    plan = {}
    for name in scores.use:
        if name not in TUNING_GRIDS:
            continue
        configured = scores.params(name)
        param, values = tuning_grid(name, scores.grid)
        if name == "ViM":
            n = feature_size
            default = configured.get("dim") or vim_default_dim(n)
            if param == "dim_fraction":
                values = [max(1, min(n - 1, round(f * n))) for f in values]
            bad = [d for d in values if d >= n]
            if bad:
                raise UserError(f"invalid config: scores.grid.ViM.dim={bad[0]}: must be below the feature size {n}")
            param = "dim"
        elif name == "KNN":
            default = configured["k"]
            values = [min(int(k), train_size) for k in values]
        else:
            default = configured[param]
        plan[name] = Grid(name, param, sorted(set(values) | {default}), default, configured)
    return plan


@dataclass
class Validation:
    """What :func:`validate_models` found.

    ``sets``: validation OOD set → group; ``records``: as results.json's (per set and the near / far /
    mean aggregates, against the ID validation split), each with the detector's ``params``;
    ``candidates``: one row per (model, score) with its group FPR95 / AUROC and the weighted ``val_fpr95``
    (what ``recommend`` ranks); ``tuning``: model → detector → the choice and every grid value's
    metrics; ``tuned``: model → the fitted-later ``NAME (tuned)`` detectors (fresh, with the chosen params);
    ``legacy``: summary.json's ``validation`` (val_acc, Energy and MSP on ``val_ood``); ``seconds``:
    ``validate`` (the passes and the default rows) and ``tune`` (the grids' fits and scores)."""

    sets: dict[str, str]
    weights: dict[str, float]
    records: list[dict] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)
    tuning: dict[str, dict[str, dict]] = field(default_factory=dict)
    tuned: dict[str, list[Detector]] = field(default_factory=dict)
    val_acc: dict[str, float] = field(default_factory=dict)
    legacy: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=lambda: {"validate": 0.0, "tune": 0.0})

    @property
    def rule(self) -> str:
        return RULE.format(weights=", ".join(f"{g} {w:g}" for g, w in self.weights.items()))

    def with_tuned(self, model: str, detectors: Sequence[Detector]) -> list[Detector]:
        """``detectors`` with each of ``model``'s ``NAME (tuned)`` rows right after its default row."""
        return with_tuned(detectors, self.tuned.get(model, []))


def with_tuned(detectors: Sequence[Detector], tuned: Sequence[Detector]) -> list[Detector]:
    """``detectors`` with each ``NAME (tuned)`` detector of ``tuned`` right after its ``NAME``."""
    by_name = {d.name.removesuffix(TUNED_SUFFIX): d for d in tuned}
    return [x for d in detectors for x in ((d, by_name[d.name]) if d.name in by_name else (d,))]


def _group_metrics(id_scores: np.ndarray, ood: Mapping[str, np.ndarray], groups: Mapping[str, str],
                   weights: Mapping[str, float]) -> dict:
    """FPR95 / AUROC per validation set, per group (mean over its sets) and weighted over the groups."""
    fpr = {s: 100 * fpr_at_95_tpr(id_scores, x) for s, x in ood.items()}
    roc = {s: 100 * auroc(id_scores, x) for s, x in ood.items()}
    row: dict = {"fpr95": fpr, "auroc": roc}
    by_g_fpr, by_g_roc = {}, {}
    for g in dict.fromkeys(groups[s] for s in ood):
        members = [s for s in ood if groups[s] == g]
        by_g_fpr[g], by_g_roc[g] = float(np.mean([fpr[s] for s in members])), float(np.mean([roc[s] for s in members]))
        row[f"{g}_fpr95"], row[f"{g}_auroc"] = by_g_fpr[g], by_g_roc[g]
    row["val_fpr95"], row["val_auroc"] = weighted(by_g_fpr, weights), weighted(by_g_roc, weights)
    return row


def _sweep(grid: Grid, fit: FitData, outs: Mapping[str, Outputs], groups: Mapping[str, str],
           weights: Mapping[str, float]) -> tuple[dict, dict[str, np.ndarray]]:
    """Every candidate of ``grid`` fitted and scored from the shared outputs; the choice and its scores."""
    rows, scores = [], {}
    for value in grid.values:
        det = build_detector(grid.name, grid.params(value)).fit(fit)
        s = {ds: det.score_bulk(o.logits, o.features).cpu().numpy() for ds, o in outs.items()}
        rows.append({"value": value, "params": det.config(),
                     **_group_metrics(s["id"], {k: v for k, v in s.items() if k != "id"}, groups, weights)})
        scores[value] = s
    best = min(rows, key=lambda r: (r["val_fpr95"], abs(r["value"] - grid.default), r["value"]))
    default = next(r for r in rows if r["value"] == grid.default)
    return ({"param": grid.param, "default": grid.default, "chosen": best["value"], "params": best["params"],
             "val_fpr95": best["val_fpr95"], "default_val_fpr95": default["val_fpr95"], "grid": rows},
            scores[best["value"]])


def validate_models(models: dict[str, tuple[nn.Module, dict | None]], prep: Prepared, sets: EvalSets,
                    scores: ScoresConfig, tune: bool | None = None, weights: Mapping[str, float] = GROUP_WEIGHTS,
                    progress: bool = True) -> Validation:
    """Every detector of ``scores.use`` (configured values) on ``sets`` — ID validation images against the
    validation OOD proxies — per model (masks applied), and with ``tune`` (default ``scores.tune``) each
    tunable detector's grid, from one forward pass per model and set (see the module docstring)."""
    tune = scores.tune if tune is None else tune
    groups = dict(sets.groups)
    val = Validation(sets=groups, weights={g: float(w) for g, w in weights.items()})
    train_b = prep.batches(*prep.id.train)
    batches = {"id": prep.batches(*sets.id), **{n: prep.batches(x) for n, x in sets.ood.items()}}
    for name, (model, masks) in models.items():
        if progress:
            say(f"validating {name}" + (" and tuning its detectors" if tune else ""))
        t0, tune_s = time.perf_counter(), 0.0
        if masks is not None:
            apply_masks(model, masks)
        try:
            train = collect_outputs(model, train_b)
            weight, bias = classifier_params(model)
            fit = FitData(train.logits, train.features, train.labels, weight, bias)
            outs = {ds: collect_outputs(model, b) for ds, b in batches.items()}
            dets = configured_detectors(scores)
            for d in dets:
                d.fit(fit)
            by_ds = {ds: score_outputs(o, dets) for ds, o in outs.items()}
            for d in (d for d in dets if d.needs_inputs):
                for ds, b in batches.items():
                    by_ds[ds][d.name] = input_scores(model, b, d)
            plan = tuning_plan(scores, classifier_layer(model).in_features, len(train.logits)) if tune else {}
            params = {d.name: d.config() for d in dets}
            tuned_scores: dict[str, dict[str, np.ndarray]] = {}
            t1 = time.perf_counter()
            for det_name, grid in plan.items():
                val.tuning.setdefault(name, {})[det_name], tuned_scores[det_name] = _sweep(
                    grid, fit, outs, groups, val.weights)
            tune_s = time.perf_counter() - t1
        finally:
            if masks is not None:
                remove_masks(model)
        val_acc = accuracy(outs["id"].logits.numpy(), outs["id"].labels.numpy())
        ordered: dict[str, dict[str, np.ndarray]] = {ds: {} for ds in outs}
        for d in dets:  # each tuned row right after its default row
            for ds in outs:
                ordered[ds][d.name] = by_ds[ds][d.name]
            if d.name in tuned_scores:
                tuned = tuned_detector(d.name, val.tuning[name][d.name]["params"])
                val.tuned.setdefault(name, []).append(tuned)
                params[tuned.name] = tuned.config()
                for ds in outs:
                    ordered[ds][tuned.name] = tuned_scores[d.name][ds]
        recs = Evaluation(scores=ordered, id_acc=val_acc).records(name, groups)
        val.records += [{**r, "params": params[r["score"]]} for r in recs]
        for score in ordered["id"]:
            detector = score.removesuffix(TUNED_SUFFIX)
            m = _group_metrics(ordered["id"][score], {ds: ordered[ds][score] for ds in outs if ds != "id"},
                               groups, val.weights)
            t = val.tuning.get(name, {}).get(detector) if score != detector else None
            val.candidates.append({"model": name, "score": score, "detector": detector, "params": params[score],
                                   **{k: v for k, v in m.items() if k not in ("fpr95", "auroc")},
                                   "sets_fpr95": m["fpr95"],
                                   **({"same_as_default": t["chosen"] == t["default"]} if t else {})})
        val.val_acc[name] = val_acc
        if "val_ood" in outs:
            legacy = {s: build_detector(s) for s in LEGACY_SCORES}
            val.legacy[name] = {"val_acc": val_acc, **{
                s: ood_metrics(*(d.score_bulk(outs[ds].logits, outs[ds].features).cpu().numpy()
                                 for ds in ("id", "val_ood"))) for s, d in legacy.items()}}
        val.seconds["tune"] += tune_s
        val.seconds["validate"] += time.perf_counter() - t0 - tune_s
    return val
