"""Results on disk: JSON + CSV + Markdown tables, per-sample scores (npz) and PNG plots.

Every file is written atomically (temp file + rename).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write

METRIC_KEYS = ("fpr95", "auroc", "aupr_in", "aupr_out", "id_acc")
RECORD_KEYS = ("model", "score", "ood", *METRIC_KEYS)
MODEL_LABELS = {"base": "", "um": "+UM", "umap": "+UMAP", "ce_finetune": "+CE-FT (control)"}
CONVENTION = ("ID is the positive class. FPR95 = % of OOD samples accepted at the threshold that accepts "
              "95% of ID test samples (lower is better); AUROC and AUPR (= AUPR-In) higher is better; ×100.")


def write_text(path: str | Path, text: str) -> Path:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")
    return atomic_write(path, write)


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def records_csv(records: Sequence[dict]) -> str:
    """Metric records as CSV (an ``aux`` column when any record has one)."""
    return dicts_csv(records, RECORD_KEYS + (("aux",) if any("aux" in r for r in records) else ()))


def dicts_csv(records: Sequence[dict], keys: Sequence[str]) -> str:
    """Rows of dicts as CSV with the given columns; floats with 4 decimals, missing cells empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: (f"{r[k]:.4f}" if isinstance(r.get(k), float) else r.get(k, "")) for k in keys})
    return buf.getvalue()


OUTLIER_LABELS = {"oe": "OE", "energy": "Energy (w. D_aux)", "poem": "POEM"}


def row_label(model: str, score: str) -> str:
    """Table row name: ``Energy+UM`` for the post-hoc family, ``OE+UMAP (MSP)`` for outlier fine-tuning."""
    method, _, variant = model.partition("_")
    if method in OUTLIER_LABELS and variant in ("", "um", "umap"):
        return f"{OUTLIER_LABELS[method]}{MODEL_LABELS[variant or 'base']} ({score})"
    return score + MODEL_LABELS.get(model, f"+{model}")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _ordered(records: Sequence[dict], key: str) -> list[str]:
    return list(dict.fromkeys(r[key] for r in records))


def mean_table(records: Sequence[dict]) -> str:
    """Paper-shaped table (Table 1): one row per score (+ method), metrics averaged over OOD sets."""
    with_aux = any("aux" in r for r in records)
    rows = []
    for model in _ordered(records, "model"):
        for r in records:
            if r["model"] == model and r["ood"] == "mean":
                aux = ["✓" if r.get("aux") else ""] if with_aux else []
                rows.append([row_label(model, r["score"]), *aux, f"{r['auroc']:.2f}", f"{r['aupr_in']:.2f}",
                             f"{r['fpr95']:.2f}", f"{r['id_acc']:.2f}"])
    header = ["Method", *(["w. D_aux"] if with_aux else []), "AUROC ↑", "AUPR ↑", "FPR95 ↓", "ID-ACC ↑"]
    return _md_table(header, rows)


def per_set_table(records: Sequence[dict], metric: str = "fpr95") -> str:
    """One row per (score, method), one column per OOD set (Table 2's shape)."""
    sets = [s for s in _ordered(records, "ood") if s != "mean"] + ["mean"]
    cell = {(r["model"], r["score"], r["ood"]): r[metric] for r in records}
    rows = [[row_label(m, s)] + [f"{cell[(m, s, o)]:.2f}" if (m, s, o) in cell else "" for o in sets]
            for m in _ordered(records, "model") for s in _ordered(records, "score")
            if (m, s, "mean") in cell]
    return _md_table(["Method", *sets], rows)


def markdown_report(records: Sequence[dict], title: str = "OOD detection results", notes: str = "") -> str:
    n_sets = len([s for s in _ordered(records, "ood") if s != "mean"])
    parts = [f"# {title}", "", CONVENTION, "", f"## Mean over {n_sets} OOD sets", "", mean_table(records), ""]
    for metric, name in (("fpr95", "FPR95 ↓"), ("auroc", "AUROC ↑")):
        parts += [f"## {name} per OOD set", "", per_set_table(records, metric), ""]
    if notes:
        parts += [notes, ""]
    return "\n".join(parts)


def save_results(out_dir: str | Path, records: Sequence[dict], scores: dict[str, np.ndarray],
                 title: str = "OOD detection results", notes: str = "") -> None:
    """Write results.json, results.csv, results.md and scores.npz into ``out_dir``."""
    out = Path(out_dir)
    write_json(out / "results.json", list(records))
    write_text(out / "results.csv", records_csv(records))
    write_text(out / "results.md", markdown_report(records, title, notes))
    atomic_write(out / "scores.npz", lambda tmp: _save_npz(tmp, scores))


def _save_npz(tmp: str, scores: dict[str, np.ndarray]) -> None:
    with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz" to the temp name
        np.savez_compressed(f, **scores)


def flatten_scores(model: str, by_dataset: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``{dataset: {score: array}}`` → ``{"MODEL/SCORE/DATASET": array}`` (``id`` for the ID test set)."""
    return {f"{model}/{score}/{ds}": arr for ds, by_score in by_dataset.items() for score, arr in by_score.items()}
