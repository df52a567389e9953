"""Small helpers the analyses share: their tables (Markdown/CSV/JSON), mean-over-OOD-set rows, and
per-sample losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import GROUPS
from ..data.prepared import Prepared
from ..eval.forward import collect_outputs
from ..metrics import mean_sets, set_groups
from ..report.tables import dicts_csv, md_table
from ..utils.files import write_json, write_text


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.2f}"
    return "" if v is None else str(v)


def write_table(out: Path, name: str, rows: list[dict], title: str = "") -> None:
    """``name``.md / .csv / .json with one row per dict (columns: the union of keys, in order)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    write_json(out / f"{name}.json", rows)
    write_text(out / f"{name}.csv", dicts_csv(rows, cols))
    md = ([f"# {title}", ""] if title else []) + [md_table(cols, [[_fmt(r.get(k)) for k in cols] for r in rows])]
    write_text(out / f"{name}.md", "\n".join(md) + "\n")


def mean_rows(records: list[dict]) -> dict[tuple[str, str], dict]:
    """``(model, score) → mean-over-OOD-sets record`` from evaluate_models' records, with the near, far
    (and synthetic) group means as ``near_fpr95``, ``far_auroc``, …"""
    out = {(r["model"], r["score"]): dict(r) for r in records if r["ood"] == "mean"}
    for r in records:
        if r["ood"] in GROUPS and r.get("group") == "aggregate":
            out[(r["model"], r["score"])].update({f"{r['ood']}_{k}": r[k] for k in ("fpr95", "auroc")})
    return out


def mean_fpr(rec: dict, score: str, groups: dict[str, str] | None = None) -> float:
    """Mean FPR95 over the OOD sets of one training-log record (the near and far ones, by ``groups``)."""
    return mean_metric(rec, score, "fpr95", groups)


def mean_metric(rec: dict, score: str, metric: str, groups: dict[str, str] | None = None) -> float:
    """Mean ``metric`` over the OOD sets of one training-log record: the near and far ones by ``groups``
    (a set it leaves out is far; see :func:`unleash_ood.metrics.mean_sets`)."""
    sets = mean_sets(set_groups(rec["ood"], groups))
    return float(np.mean([rec["ood"][d][score][metric] for d in sets]))


def group_metric(rec: dict, score: str, metric: str, groups: dict[str, str], group: str) -> float | None:
    """Mean ``metric`` over the OOD sets of one ``group`` (near/far/synthetic) of a training-log record."""
    sets = [d for d in rec["ood"] if groups.get(d, "far") == group]
    return float(np.mean([rec["ood"][d][score][metric] for d in sets])) if sets else None


def metric_row(rec: dict) -> dict:
    """The table columns of a mean record (from :func:`mean_rows`): near + far means, then per group."""
    row = {"AUROC": rec["auroc"], "AUPR": rec["aupr_in"], "FPR95": rec["fpr95"]}
    for g in GROUPS:
        if f"{g}_fpr95" in rec:
            row.update({f"{g}_FPR95": rec[f"{g}_fpr95"], f"{g}_AUROC": rec[f"{g}_auroc"]})
    return {**row, "ID-ACC": rec["id_acc"]}


def per_sample(model: nn.Module, x: torch.Tensor, y: torch.Tensor, prep: Prepared) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample CE and predicted class of ``model`` on ``(x, y)``."""
    out = collect_outputs(model, prep.batches(x, y))
    return F.cross_entropy(out.logits, out.labels, reduction="none").numpy(), out.logits.argmax(1).numpy()
