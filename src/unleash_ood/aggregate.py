"""``report RUN_DIR…``: mean ± standard deviation over seeds of finished runs' ``results.json``.

A RUN_DIR is a run (holding ``results.json``) or a folder of runs (``seed_*/results.json``, as written
by ``unleash-ood run``); a run's ``outliers/`` sub-run (OE / Energy / POEM fine-tuning, written by
``run`` when the recipe's ``outliers.enabled``) is included, without its copy of the base model. Runs
are grouped by setting (ID dataset × architecture, from each run's ``config.json``); within a setting, records are matched on (model, score, OOD set). The standard
deviation is the sample one (ddof = 1; 0 for a single seed). Output: ``report.md`` (Table 1 shape:
metrics averaged over OOD sets; Table 2 shape: FPR95 / AUROC per OOD set), ``report.csv``, ``report.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import UserError
from .report import CONVENTION, METRIC_KEYS, _md_table, dicts_csv, row_label, write_json, write_text

AGG_KEYS = ("setting", "model", "score", "ood", "n_seeds")


def find_runs(run_dirs: Sequence[str | Path]) -> list[Path]:
    runs: list[Path] = []
    for d in map(Path, run_dirs):
        if (d / "results.json").is_file():
            runs.append(d)
            if (d / "outliers" / "results.json").is_file():
                runs.append(d / "outliers")
            continue
        found = sorted(p.parent for p in [*d.glob("*/results.json"), *d.glob("*/outliers/results.json")])
        if not found:
            raise UserError(f"{d}: no results.json in it or in its subfolders (is the run finished?)")
        runs += found
    return list(dict.fromkeys(runs))


def _setting(run: Path) -> str:
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        return "run"
    try:
        cfg = json.loads(cfg_path.read_text())
        return f"{cfg['data']['dataset']} / {cfg['model']['arch']}"
    except (json.JSONDecodeError, KeyError, TypeError):
        return "run"


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def aggregate(run_dirs: Sequence[str | Path]) -> list[dict]:
    """Records ``{setting, model, score, ood, n_seeds, runs, <metric>_mean, <metric>_std …}``."""
    groups: dict[tuple, list[dict]] = {}
    runs = find_runs(run_dirs)
    for run in runs:
        try:
            records = json.loads((run / "results.json").read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"corrupt {run / 'results.json'}: {e}") from None
        setting = _setting(run)
        nested = run.parent in runs  # an outlier run inside a run: its 'base' is the parent's, already counted
        for r in records:
            if nested and r.get("aux") is False:
                continue
            groups.setdefault((setting, r["model"], r["score"], r["ood"]), []).append({**r, "_run": str(run)})
    out = []
    for (setting, model, score, ood), rs in groups.items():
        rec = {"setting": setting, "model": model, "score": score, "ood": ood, "n_seeds": len(rs),
               "runs": [r["_run"] for r in rs]}
        for k in METRIC_KEYS:
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                rec[f"{k}_mean"], rec[f"{k}_std"] = _mean_std(vals)
        out.append(rec)
    return out


def _pm(rec: dict, key: str) -> str:
    if f"{key}_mean" not in rec:
        return ""
    return f"{rec[f'{key}_mean']:.2f} ± {rec[f'{key}_std']:.2f}"


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def overall_table(records: Sequence[dict]) -> str:
    """Table 1's shape: one row per score (+ method), metrics averaged over the OOD sets, mean ± std."""
    rows = [[row_label(r["model"], r["score"]), _pm(r, "auroc"), _pm(r, "aupr_in"), _pm(r, "fpr95"),
             _pm(r, "id_acc"), str(r["n_seeds"])]
            for r in _sorted(records) if r["ood"] == "mean"]
    return _md_table(["Method", "AUROC ↑", "AUPR ↑", "FPR95 ↓", "ID-ACC ↑", "seeds"], rows)


def _sorted(records: Sequence[dict]) -> list[dict]:
    """Scores grouped, base model first within a score (the paper's row order: Energy, Energy+UM, …)."""
    from .pipeline import MODEL_ORDER

    scores = _ordered(r["score"] for r in records)
    models = _ordered(r["model"] for r in records)
    rank = {m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER) + models.index(m)) for m in models}
    return sorted(records, key=lambda r: (scores.index(r["score"]), rank[r["model"]]))


def per_set_table(records: Sequence[dict]) -> str:
    """Table 2's shape: one row per (score, method); per OOD set FPR95 ↓ and AUROC ↑ as mean ± std."""
    sets = [s for s in _ordered(r["ood"] for r in records) if s != "mean"]
    cell = {(r["model"], r["score"], r["ood"]): r for r in records}
    header = ["Method"] + [f"{s} {m}" for s in sets for m in ("FPR95 ↓", "AUROC ↑")]
    rows = []
    for r in _sorted(records):
        if r["ood"] != "mean":
            continue
        row = [row_label(r["model"], r["score"])]
        for s in sets:
            c = cell.get((r["model"], r["score"], s))
            row += [_pm(c, "fpr95"), _pm(c, "auroc")] if c else ["", ""]
        rows.append(row)
    return _md_table(header, rows)


def report_markdown(records: Sequence[dict]) -> str:
    parts = ["# unleash-ood: results over seeds", "", CONVENTION,
             "Cells are mean ± sample standard deviation over seeds.", ""]
    for setting in _ordered(r["setting"] for r in records):
        rs = [r for r in records if r["setting"] == setting]
        n = len(_ordered(r["ood"] for r in rs if r["ood"] != "mean"))
        runs = sorted({run for r in rs for run in r["runs"]})
        parts += [f"## {setting}", "", f"Runs: {', '.join(runs)}", "",
                  f"### Mean over {n} OOD sets (Table 1 shape)", "", overall_table(rs), "",
                  "### Per OOD set (Table 2 shape)", "", per_set_table(rs), ""]
    return "\n".join(parts)


def report_csv(records: Sequence[dict]) -> str:
    return dicts_csv(records, [*AGG_KEYS] + [f"{k}_{s}" for k in METRIC_KEYS for s in ("mean", "std")])


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path) -> list[dict]:
    """Aggregate and write ``report.md``, ``report.csv``, ``report.json`` into ``out_dir``."""
    records = aggregate(run_dirs)
    out = Path(out_dir)
    write_json(out / "report.json", records)
    write_text(out / "report.csv", report_csv(records))
    write_text(out / "report.md", report_markdown(records))
    return records
