"""Small helpers the analyses share: their tables (Markdown/CSV/JSON), mean-over-OOD-set rows, and
per-sample losses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..evaluate import collect_outputs
from ..pipeline import Prepared
from ..report import dicts_csv, write_json, write_text


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.2f}"
    return "" if v is None else str(v)


def write_table(out: Path, name: str, rows: list[dict], title: str = "") -> None:
    """``name``.md / .csv / .json with one row per dict (columns: the union of keys, in order)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    write_json(out / f"{name}.json", rows)
    write_text(out / f"{name}.csv", dicts_csv(rows, cols))
    md = ([f"# {title}", ""] if title else []) + ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    md += ["| " + " | ".join(_fmt(r.get(k)) for k in cols) + " |" for r in rows]
    write_text(out / f"{name}.md", "\n".join(md) + "\n")


def mean_rows(records: list[dict]) -> dict[tuple[str, str], dict]:
    """``(model, score) → mean-over-OOD-sets record`` from evaluate_models' records."""
    return {(r["model"], r["score"]): r for r in records if r["ood"] == "mean"}


def mean_fpr(rec: dict, score: str) -> float:
    """Mean FPR95 over the OOD sets of one training-log record."""
    return float(np.mean([rec["ood"][d][score]["fpr95"] for d in rec["ood"]]))


def mean_metric(rec: dict, score: str, metric: str) -> float:
    """Mean ``metric`` over the OOD sets of one training-log record."""
    return float(np.mean([rec["ood"][d][score][metric] for d in rec["ood"]]))


def metric_row(rec: dict) -> dict:
    """The table columns of a mean record."""
    return {"AUROC": rec["auroc"], "AUPR": rec["aupr_in"], "FPR95": rec["fpr95"], "ID-ACC": rec["id_acc"]}


def per_sample(model: nn.Module, x: torch.Tensor, y: torch.Tensor, prep: Prepared) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample CE and predicted class of ``model`` on ``(x, y)``."""
    out = collect_outputs(model, prep.batches(x, y))
    return F.cross_entropy(out.logits, out.labels, reduction="none").numpy(), out.logits.argmax(1).numpy()
