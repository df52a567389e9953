"""``unleash-ood recommend``: ONE (model × detector × params) of a finished run, chosen on validation only.

**The rule.** Every row of the run's ``validation.json`` — each model (base, um, ce_finetune, umap) with
each detector of ``scores.use`` at its configured values and, with ``scores.tune``, each ``NAME (tuned)``
row — is ranked by its validation FPR95 (ID positive, %): the weighted mean over the validation OOD
groups (default near 0.5, far 0.5, the weights tuning used; a group's value is the mean over its sets;
a group the run has no set for drops out). Ties: the higher weighted validation AUROC, then the base
model, then table order. The base model's best is the same rule over the base's rows; when no other
model beats it, the base's best is the recommendation, and the files say so. The OOD test sets are
never used to choose: their numbers (``results.json``) are reported next to the pick's and the base's
best. Files only: no network pass.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from ..errors import UserError
from ..eval.tuning import weighted
from ..metrics import AGGREGATES
from ..report.tables import dicts_csv, md_table
from ..utils.files import read_json, write_json, write_text
from .layout import RunLayout

GROUPS = ("near", "far")  # the validation OOD groups (run.validation: SET_NAMES)
RUNNERS_UP = 5
RULE = ("the (model, detector, params) with the lowest validation FPR95 (ID positive, %), the weighted mean "
        "over the validation OOD groups (weights {weights}; a group's value is the mean over its sets), ID "
        "validation split vs each validation OOD proxy; ties: higher weighted validation AUROC, then the base "
        "model, then table order. The base model's best: the same rule over its rows. OOD test sets are never "
        "used to choose.")
TEST_KEYS = ("ood", "group", "fpr95", "auroc", "aupr_in", "fpr95_ood_positive", "id_acc")


def read_validation(run: RunLayout) -> dict:
    """The run's ``validation.json`` (a UserError when the run is not finished or has none)."""
    if not run.finished:
        raise UserError(f"{run.root} is not a finished run: {run.results().name} is missing")
    if not run.validation().is_file():
        raise UserError(f"run {run.root} has no validation results ({run.validation().name}): it was made without "
                        "an ID validation split (data.val_size=0) or by an older version; run it again")
    return read_json(run.validation(), "validation results")  # type: ignore[return-value]


def check_weights(weights: Mapping[str, float], groups: list[str]) -> dict[str, float]:
    """Validated group weights: known groups the run has validation sets for, non-negative, not all zero."""
    out = {}
    for g, w in weights.items():
        if g not in GROUPS:
            raise UserError(f"unknown validation group {g!r} in the weights; choose from {', '.join(GROUPS)}")
        if g not in groups:
            raise UserError(f"the run has no {g} validation OOD set (it has {', '.join(groups)}); drop {g}=")
        if not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0 or math.isnan(w):
            raise UserError(f"the weight of {g} must be a number ≥ 0, got {w!r}")
        out[g] = float(w)
    if not any(out.values()):
        raise UserError("at least one group weight must be positive")
    return out


def rank(candidates: list[dict], weights: Mapping[str, float]) -> list[dict]:
    """The candidates with ``val_fpr95`` / ``val_auroc`` under ``weights``, best first (the rule). A tuned
    row that chose the default value (``same_as_default``) is the default row again: it is listed once,
    under the default's name."""
    rows = []
    for i, c in enumerate(candidates):
        if c.get("same_as_default"):
            continue
        groups = [g for g in GROUPS if f"{g}_fpr95" in c]
        rows.append({**c, "val_fpr95": weighted({g: c[f"{g}_fpr95"] for g in groups}, weights),
                     "val_auroc": weighted({g: c[f"{g}_auroc"] for g in groups}, weights), "_order": i})
    rows.sort(key=lambda r: (r["val_fpr95"], -r["val_auroc"], r["model"] != "base", r["_order"]))
    return [{k: v for k, v in r.items() if k != "_order"} | {"rank": i + 1} for i, r in enumerate(rows)]


def _test_rows(records: list[dict], c: dict) -> list[dict]:
    """The OOD test records of one (model, score): per set, then near / far / mean (reported, never chosen on)."""
    rows = [{k: r.get(k) for k in TEST_KEYS} for r in records if r["model"] == c["model"] and r["score"] == c["score"]]
    return sorted(rows, key=lambda r: r["ood"] in AGGREGATES)


def recommend(run_dir: str | Path, weights: Mapping[str, float] | None = None) -> dict:
    """The recommendation of run ``run_dir`` under the rule (module docstring), from its files only."""
    run = RunLayout(Path(run_dir))
    val = read_validation(run)
    groups = [g for g in GROUPS if g in {d["group"] for d in val["sets"].values()}]
    if weights is None:  # the run's own weights: a group it has no validation set for drops out
        weights = {g: x for g, x in val["weights"].items() if g in groups}
    w = check_weights(weights, groups)
    ranked = rank(val["candidates"], w)
    if not ranked:
        raise UserError(f"{run.validation()} holds no candidates")
    pick = ranked[0]
    base = next((c for c in ranked if c["model"] == "base"), None)
    others = sorted({c["model"] for c in ranked} - {"base"})
    if pick["model"] == "base":
        statement = (f"No other model ({', '.join(others)}) beats the base model on validation: the recommendation "
                     "is the base model's best detector." if others else
                     "The run holds only the base model: the recommendation is its best detector.")
    else:
        statement = (f"{pick['model']} + {pick['score']} beats the base model's best ({base['score']}) on validation: "
                     f"FPR95 {pick['val_fpr95']:.2f} vs {base['val_fpr95']:.2f}." if base else
                     f"{pick['model']} + {pick['score']} is the best on validation (the run has no base model rows).")
    records = run.read_results()
    return {"rule": RULE.format(weights=", ".join(f"{g} {x:g}" for g, x in w.items())), "weights": w,
            "validation_sets": val["sets"], "pick": pick, "base_best": base,
            "beats_base": pick["model"] != "base", "statement": statement,
            "runners_up": ranked[1:1 + RUNNERS_UP],
            "test": {"pick": _test_rows(records, pick), "base_best": _test_rows(records, base) if base else []},
            "ranking": ranked}


def _label(c: dict) -> str:
    params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in c["params"].items())
    return f"{c['model']} + {c['score']}" + (f" ({params})" if params else "")


def pick_line(rec: dict) -> str:
    """One line: the pick, its validation FPR95, and whether it beats the base."""
    p = rec["pick"]
    groups = ", ".join(f"{g} {p[f'{g}_fpr95']:.2f}" for g in GROUPS if f"{g}_fpr95" in p)
    return (f"recommended (chosen on validation only): {_label(p)}; validation FPR95 {p['val_fpr95']:.2f} ({groups})"
            + ("" if rec["beats_base"] else "; no variant beats the base model"))


def _cells(rows: list[dict], ood: str) -> list[str]:
    r = next((r for r in rows if r["ood"] == ood), None)
    return [f"{r['fpr95']:.2f}", f"{r['auroc']:.2f}"] if r else ["", ""]


def write_recommendation(run_dir: str | Path, rec: dict) -> tuple[Path, ...]:
    """``recommendation.json`` (everything but the full ranking), ``.csv`` (the full ranking) and ``.md``."""
    run = RunLayout(Path(run_dir))
    write_json(run.recommendation(".json"), {k: v for k, v in rec.items() if k != "ranking"})
    keys = ["rank", "model", "score", "detector", "params", *(f"{g}_fpr95" for g in GROUPS), "val_fpr95",
            *(f"{g}_auroc" for g in GROUPS), "val_auroc"]
    rows = [{**c, "params": json.dumps(c["params"])} for c in rec["ranking"]]
    write_text(run.recommendation(".csv"), dicts_csv(rows, [k for k in keys if any(k in r for r in rows)]))
    groups = [g for g in GROUPS if f"{g}_fpr95" in rec["pick"]]
    ranking = md_table(["rank", "model + score (params)", *(f"val {g} FPR95 ↓" for g in groups), "val FPR95 ↓",
                        "val AUROC ↑"],
                       [[str(c["rank"]), _label(c), *(f"{c[f'{g}_fpr95']:.2f}" for g in groups),
                         f"{c['val_fpr95']:.2f}", f"{c['val_auroc']:.2f}"]
                        for c in [rec["pick"], *rec["runners_up"]]])
    test, base = rec["test"]["pick"], rec["test"]["base_best"]
    sets = list(dict.fromkeys(r["ood"] for r in [*test, *base]))
    group_of = {r["ood"]: r["group"] for r in [*test, *base]}
    base_label = _label(rec["base_best"]) if rec["base_best"] else "—"
    test_table = md_table(["OOD test set", "pick FPR95 ↓", "pick AUROC ↑", "base's best FPR95 ↓",
                           "base's best AUROC ↑"],
                          [[s if group_of[s] == "aggregate" else f"{s} ({group_of[s]})", *_cells(test, s),
                            *_cells(base, s)] for s in sets])
    sets_text = "; ".join(f"{d['group']}: {d['source']}" for d in rec["validation_sets"].values())
    write_text(run.recommendation(".md"), "\n".join([
        "# Recommendation", "", f"**{_label(rec['pick'])}**", "", rec["statement"], "",
        f"Rule: {rec['rule']}", "", f"Validation OOD proxies: {sets_text}.", "",
        "## The pick and the runners-up (validation)", "", ranking, "",
        f"## On the OOD test sets (reported, never chosen on): the pick vs the base model's best ({base_label})", "",
        test_table, ""]))
    return run.recommendation(".json"), run.recommendation(".csv"), run.recommendation(".md")


def recommend_run(run_dir: str | Path) -> dict | None:
    """The demo's last step: recommend and write the files; None when the run has no validation results."""
    if not RunLayout(Path(run_dir)).validation().is_file():
        return None
    rec = recommend(run_dir)
    write_recommendation(run_dir, rec)
    return rec


def read_pick(run_dir: str | Path) -> dict:
    """The pick of a run's ``recommendation.json``: ``model``, ``score`` (row name), ``detector``, ``params``."""
    run = RunLayout(Path(run_dir))
    if not run.recommendation().is_file():
        raise UserError(f"run {run.root} has no recommendation ({run.recommendation().name}); "
                        f"run `unleash-ood recommend --run {run.root}` first")
    pick = read_json(run.recommendation(), "recommendation").get("pick")  # type: ignore[union-attr]
    if not isinstance(pick, dict) or not {"model", "detector", "params"} <= set(pick):
        raise UserError(f"corrupt recommendation {run.recommendation()}: no pick")
    return pick
