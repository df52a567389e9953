"""A run's result files: ``results.json|csv|md``, the per-sample ``scores.npz`` and the score histograms."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..config import MODEL_ORDER
from ..eval.models import ModelsEvaluation
from ..report.plots import plot_score_histograms
from ..report.tables import markdown_report, records_csv
from ..utils.files import atomic_write, write_json, write_text
from .layout import RunLayout


def write_outputs(out: Path, ev: ModelsEvaluation, notes: str, title: str) -> None:
    """``results.*``, ``scores.npz`` and the score histograms of one run's evaluation."""
    save_results(out, ev.records, ev.flat(), title=title, notes=notes)
    models = [m for m in MODEL_ORDER if m in ev.scores]
    for score in ("Energy", "MSP"):
        if all(score in ev.scores[m]["id"] for m in models):
            plot_score_histograms({m: {d: v[score] for d, v in ev.scores[m].items()} for m in models}, score,
                                  RunLayout(out).plots / f"score_hist_{score.lower()}.png", models)


def save_results(out_dir: str | Path, records: Sequence[dict], scores: dict[str, np.ndarray],
                 title: str = "OOD detection results", notes: str = "") -> None:
    """Write results.json, results.csv, results.md and scores.npz into ``out_dir``."""
    run = RunLayout(Path(out_dir))
    write_json(run.results(".json"), list(records))
    write_text(run.results(".csv"), records_csv(records))
    write_text(run.results(".md"), markdown_report(records, title, notes))
    atomic_write(run.scores, lambda tmp: _save_npz(tmp, scores))


def _save_npz(tmp: str, scores: dict[str, np.ndarray]) -> None:
    with open(tmp, "wb") as f:  # a file object keeps numpy from appending ".npz" to the temp name
        np.savez_compressed(f, **scores)
