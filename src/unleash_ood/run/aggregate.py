"""Mean ± standard deviation over seeds of finished runs' ``results.json`` — the one aggregation that
both ``report RUN_DIR…`` and ``demo --seeds`` use.

A RUN_DIR is a run (holding ``results.json``) or a folder of runs (``*/results.json``: ``seed<N>/`` from
``run``, ``seed<s>/`` from ``demo --seeds``); a run's ``outliers/`` sub-run (OE / Energy / POEM
fine-tuning) is included, without the records its parent already holds (its copy of the base model). Runs are grouped by setting (ID dataset ×
architecture, from each run's ``config.json``); within a setting, records are matched on (model, score,
OOD set), the per-set and the near / far / synthetic / mean aggregate records alike.

An aggregate record has the keys of a run's record (``model``, ``score``, ``ood``, ``group``, every
metric — now the mean over seeds), plus ``<metric>_std`` for every metric (the sample standard deviation,
ddof = 1; 0 for a single seed), ``n_seeds``, ``setting`` and ``runs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..metrics import AGGREGATES
from ..report.tables import CONVENTION, METRIC_KEYS, markdown_sections, records_csv, sort_records
from ..utils.files import write_json, write_text
from .layout import RunLayout


def find_runs(run_dirs: Sequence[str | Path]) -> list[Path]:
    """Every finished run under ``run_dirs`` (each itself a run or a folder of runs), outlier sub-runs too."""
    return [r.root for r in RunLayout.find(run_dirs)]


def _setting(run: Path) -> str:
    cfg = RunLayout(run).read_config()
    try:
        return f"{cfg['data']['dataset']} / {cfg['model']['arch']}"
    except (KeyError, TypeError):
        return "run"


def _group(rec: dict) -> str:
    """A record's group; records written before groups existed count as far (aggregates: 'aggregate')."""
    return rec.get("group") or ("aggregate" if rec["ood"] in AGGREGATES else "far")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def aggregate(run_dirs: Sequence[str | Path]) -> list[dict]:
    """Records over seeds: a run's record keys (metrics = means) + ``<metric>_std``, ``n_seeds``,
    ``setting``, ``runs`` (see the module docstring)."""
    matched: dict[tuple, list[dict]] = {}
    seen: dict[Path, set[tuple]] = {}
    runs = find_runs(run_dirs)
    for run in runs:
        records = RunLayout(run).read_results()
        setting = _setting(run)
        # an outlier run inside a run adds only what its parent lacks (its 'base' is the parent's; the
        # demo's merged table already holds the outlier models)
        skip = seen.get(run.parent, set())
        seen[run] = {(r["model"], r["score"], r["ood"]) for r in records}
        for r in records:
            if (r["model"], r["score"], r["ood"]) not in skip:
                matched.setdefault((setting, r["model"], r["score"], r["ood"]), []).append({**r, "_run": str(run)})
    out = []
    for (setting, model, score, ood), rs in matched.items():
        groups = {_group(r) for r in rs}
        if len(groups) > 1:
            raise UserError(f"OOD set {ood!r} is in different groups across runs ({', '.join(sorted(groups))}); "
                            "aggregate runs with the same OOD groups (near / far / synthetic)")
        rec = {"setting": setting, "model": model, "score": score, "ood": ood, "group": groups.pop(),
               **({"aux": rs[0]["aux"]} if "aux" in rs[0] else {})}
        stds = {}
        for k in METRIC_KEYS:
            vals = [r[k] for r in rs if r.get(k) is not None]
            if vals:
                rec[k], stds[f"{k}_std"] = mean_std(vals)
        out.append({**rec, "n_seeds": len(rs), **stds, "runs": [r["_run"] for r in rs]})
    return out


def report_markdown(records: Sequence[dict], title: str = "unleash-ood: results over seeds") -> str:
    """Per setting: the near/far, mean and per-set tables, each cell mean ± std over seeds."""
    parts = [f"# {title}", "", CONVENTION, "",
             "Cells are mean ± sample standard deviation over seeds (ddof = 1; the seeds column counts them).", ""]
    records = sort_records(records)
    for setting in dict.fromkeys(r["setting"] for r in records):
        rs = [r for r in records if r["setting"] == setting]
        runs = sorted({run for r in rs for run in r["runs"]})
        parts += [f"## {setting}", "", f"Runs: {', '.join(runs)}", "", *markdown_sections(rs, level=3)]
    return "\n".join(parts)


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, stem: str = "report",
                 title: str = "unleash-ood: results over seeds") -> list[dict]:
    """Aggregate and write ``<stem>.md``, ``<stem>.csv``, ``<stem>.json`` into ``out_dir``."""
    records = aggregate(run_dirs)
    out = RunLayout(Path(out_dir))
    write_json(out.results(".json", stem), records)
    write_text(out.results(".csv", stem), records_csv(records))
    write_text(out.results(".md", stem), report_markdown(records, title))
    return records
