"""Several seeds of one analysis: the mean ± std of every table row over seeds, and the paper's claims
as paired comparisons (same seed, model A − model B) with a verdict each.

Verdicts, used the same way everywhere: the 95% t-interval of the mean paired difference over seeds
lies entirely on the side the paper claims → **held**; entirely on the other side → **did not hold**;
it contains 0 → **within noise**. One seed gives no interval → **one seed**.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from ..run.aggregate import mean_std
from . import figures_seeds
from .common import GROUPS, write_table

KEYS = {  # the columns that name a row of each analysis's table (the rest are measurements)
    "once-covered": ("schedule", "score", "epoch_kind"), "score-hist": ("model", "score"),
    "keep-ratio": ("keep_ratio", "method", "score"), "finetune-epochs": ("method", "epochs", "score"),
    "prune-rate": ("keep_ratio", "method", "score"), "typical-atypical": ("subset", "size", "score"),
    "overfitting": ("method", "score"), "weights": ("layer", "method")}


METRICS = ("FPR95", "near_FPR95", "far_FPR95", "AUROC", "near_AUROC", "far_AUROC", "ID-ACC")


VERDICTS = ("held", "did not hold", "within noise", "one seed")


@dataclass(frozen=True)
class Claim:
    """The paper's claim that rows matching ``better`` have a lower FPR95 than rows matching ``than``."""

    label: str
    better: dict
    than: dict


def verdict(diffs: list[float], lower_is_claimed: bool = True) -> tuple[str, float]:
    """The verdict on paired differences (A − B) and the 95% t-interval's half-width."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return "one seed", float("nan")
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    m = d.mean() if lower_is_claimed else -d.mean()
    if m + half < 0:
        return "held", half
    if m - half > 0:
        return "did not hold", half
    return "within noise", half


def aggregate_rows(per_seed: list[list[dict]], keys: tuple[str, ...]) -> list[dict]:
    """Rows with the same ``keys`` over seeds → one row: every numeric column's mean, ``<col>_std``
    (ddof 1; 0 for one seed) and ``n_seeds``; the first seed's row order."""
    groups: dict[tuple, list[dict]] = {}
    for rows in per_seed:
        for r in rows:
            groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        row = dict(zip(keys, key))
        cols = [c for c in rs[0] if c not in keys and isinstance(rs[0][c], (int, float)) and not isinstance(rs[0][c], bool)]
        for c in cols:
            vals = [r[c] for r in rs if r.get(c) is not None]
            row[c], row[f"{c}_std"] = mean_std(vals) if vals else (None, 0.0)
        out.append({**row, "n_seeds": len(rs)})
    return out


def claims(name: str, rows: list[dict]) -> list[Claim]:
    """The paper's claims an analysis tests, for every score (and schedule) its rows have."""
    scores = list(dict.fromkeys(r["score"] for r in rows if "score" in r))
    out: list[Claim] = []
    if name == "once-covered":
        for sched in dict.fromkeys(r["schedule"] for r in rows):
            for s in scores:
                k = {"schedule": sched, "score": s}
                out.append(Claim(f"{sched}, {s}: val-selected epoch vs final", {**k, "epoch_kind": "val-selected"},
                                 {**k, "epoch_kind": "final"}))
                out.append(Claim(f"{sched}, {s}: test-best epoch vs final (upper bound, picked on test)",
                                 {**k, "epoch_kind": "test-best (upper bound)"}, {**k, "epoch_kind": "final"}))
    elif name == "score-hist":
        for s in scores:
            for m in ("UM", "UMAP", "val-selected epoch"):
                out.append(Claim(f"{s}: {m} vs final epoch", {"model": m, "score": s}, {"model": "final epoch", "score": s}))
    elif name == "keep-ratio":
        for k in dict.fromkeys(r["keep_ratio"] for r in rows if r["method"] == "UM"):
            for s in scores:
                out.append(Claim(f"{s}: UM keep {k} vs base", {"keep_ratio": k, "method": "UM", "score": s},
                                 {"method": "base", "score": s}))
    elif name == "finetune-epochs":
        for m in ("UM", "UMAP"):
            for e in dict.fromkeys(r["epochs"] for r in rows if r["method"] == m):
                for s in scores:
                    out.append(Claim(f"{s}: {m} {e} epochs vs base", {"method": m, "epochs": e, "score": s},
                                     {"method": "base", "score": s}))
    elif name == "prune-rate":
        for k in dict.fromkeys(r["keep_ratio"] for r in rows):
            out += [Claim(f"{s}: UMAP vs plain pruning, keep {k}", {"keep_ratio": k, "method": "UMAP", "score": s},
                          {"keep_ratio": k, "method": "pruning (ζ=0)", "score": s}) for s in scores]
    elif name == "typical-atypical":
        for n in sorted({r["size"] for r in rows if r["size"]}):
            out += [Claim(f"{s}: {n} typical vs {n} atypical samples", {"subset": "typical", "size": n, "score": s},
                          {"subset": "atypical", "size": n, "score": s}) for s in scores]
    elif name == "overfitting":
        remedies = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in ("UM", "UMAP")]
        for um in ("UM", "UMAP"):
            out += [Claim(f"{s}: {um} vs {m}", {"method": um, "score": s}, {"method": m, "score": s})
                    for m in remedies for s in scores]
    return out


def find(rows: list[dict], match: dict) -> dict | None:
    """The first row whose columns equal ``match``."""
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def compare(claim: Claim, per_seed: list[list[dict]], seeds: list[int]) -> list[dict]:
    """One row per metric (FPR95 over all sets, near, far): the paired differences, their mean ± std,
    the 95% interval's half-width and the verdict."""
    out = []
    for metric in ("FPR95", *(f"{g}_FPR95" for g in GROUPS)):
        diffs, used = [], []
        for s, rows in zip(seeds, per_seed):
            a, b = find(rows, claim.better), find(rows, claim.than)
            if a is not None and b is not None and a.get(metric) is not None and b.get(metric) is not None:
                diffs.append(a[metric] - b[metric])
                used.append(s)
        if not diffs:
            continue
        v, half = verdict(diffs)
        out.append({"claim": claim.label, "metric": metric, "delta_mean": float(np.mean(diffs)),
                    "delta_std": float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0, "ci95_half": half,
                    "n_seeds": len(diffs), "seeds": used, "per_seed": [round(x, 2) for x in diffs], "verdict": v})
    return out


def combine(name: str, summaries: list[dict], out: Path) -> dict:
    """The seeds' summaries of one analysis → ``out/<name>_seeds.*`` (mean ± std rows),
    ``out/<name>_claims.*`` (paired comparisons and verdicts) and the band figures."""
    seeds = [s["seed"] for s in summaries]
    per_seed = [s["rows"] for s in summaries]
    stem = name.replace("-", "_")
    rows = aggregate_rows(per_seed, KEYS[name])
    write_table(out, f"{stem}_seeds", rows, f"{name}: mean ± std over seeds {', '.join(map(str, seeds))}")
    comp = [c for cl in claims(name, rows) for c in compare(cl, per_seed, seeds)]
    write_table(out, f"{stem}_claims", comp, f"{name}: paired differences (A − B, FPR95 points; negative = A better)")
    pngs = figures_seeds.seed_figures(name, summaries, rows, out)
    return {"analysis": name, "seeds": seeds, "rows": rows, "claims": comp, "pngs": [p.name for p in pngs],
            "per_seed": [{k: s.get(k) for k in ("seed", "wall_s", "selected_epoch", "final_epoch")} for s in summaries],
            "groups": summaries[0].get("groups"), "ood_sets": summaries[0].get("ood_sets")}
