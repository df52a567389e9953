"""Paired effects over seeds: for every detector, UM / UMAP / the control minus the base model,
FPR95 (ID positive) on the near and far groups, mean ± sd of the per-seed differences.

    python docs/experiments/seed_deltas.py runs/seeds      # a `demo --seeds` output directory
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from unleash_ood.detectors.params import TABLE_ORDER


def main(root: str) -> None:
    runs = sorted(Path(root).glob("seed*/results.json"))
    by = {}
    for run in runs:
        for r in json.loads(run.read_text()):
            if r["ood"] in ("near", "far"):
                by[(run.parent.name, r["model"], r["score"], r["ood"])] = r["fpr95"]
    seeds = sorted({k[0] for k in by})
    print(f"seeds: {', '.join(seeds)}; cells: Δ FPR95 (model − base), mean ± sd over seeds; negative = better\n")
    print("| detector | base near | base far | UM near | UM far | UMAP near | UMAP far | control near | control far |")
    print("|---|---|---|---|---|---|---|---|---|")
    for score in TABLE_ORDER:
        cells = []
        for g in ("near", "far"):
            v = [by[(s, "base", score, g)] for s in seeds]
            cells.append(f"{statistics.fmean(v):.1f} ± {statistics.stdev(v) if len(v) > 1 else 0:.1f}")
        for model in ("um", "umap", "ce_finetune"):
            for g in ("near", "far"):
                d = [by[(s, model, score, g)] - by[(s, "base", score, g)] for s in seeds]
                sd = statistics.stdev(d) if len(d) > 1 else 0.0
                cells.append(f"{statistics.fmean(d):+.1f} ± {sd:.1f}")
        print(f"| {score} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
