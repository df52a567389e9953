"""ζ and UM's ID accuracy across seeds: the old estimator (mean of 3 draws) against the new default
(median of 5 draws), on finished `demo --seeds` runs.

For each seed directory it reads the 5 ζ draws in ``zeta.json``, forms both estimates, fine-tunes the
run's base model with UM at the *old* estimate (the run itself already holds UM at the new one) and
measures ID test accuracy for both. Writes ``zeta_spread.json`` next to this script.

    python docs/experiments/zeta_spread.py runs/seeds/seed0 runs/seeds/seed1 runs/seeds/seed2
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from unleash_ood.metrics import accuracy
from unleash_ood.eval.forward import collect_outputs
from unleash_ood.models.loading import load_checkpoint
from unleash_ood.run.layout import RunLayout
from unleash_ood.data.prepared import prepare_data
from unleash_ood.run.stages import run_um


def id_accuracy(model, prep) -> float:
    out = collect_outputs(model, prep.batches(*prep.id.test))
    return accuracy(out.logits.numpy(), out.labels.numpy())


def main(run_dirs: list[str]) -> None:
    rows = []
    for run in map(Path, run_dirs):
        layout = RunLayout(run)
        cfg = layout.load_config()
        draws = json.loads(layout.zeta.read_text())["values"]
        old, new = statistics.fmean(draws[:3]), statistics.median(draws)
        prep = prepare_data(cfg.data, ood_specs=["uniform"])
        base, _ = load_checkpoint(layout.checkpoint("base"), prep.id.num_classes, cfg.model)
        um_new, _ = load_checkpoint(layout.checkpoint("um"), prep.id.num_classes, cfg.model)
        um_old, _ = run_um(base, prep, cfg.um, old, cfg.seed, cfg.data.augment)
        rows.append({"run": str(run), "seed": cfg.seed, "draws": draws, "zeta_mean3": old, "zeta_median5": new,
                     "base_acc": id_accuracy(base, prep), "um_acc_mean3": id_accuracy(um_old, prep),
                     "um_acc_median5": id_accuracy(um_new, prep)})
        print(rows[-1])
    summary = {k: {"mean": statistics.fmean(r[k] for r in rows),
                   "sd": statistics.stdev(r[k] for r in rows) if len(rows) > 1 else 0.0}
               for k in ("zeta_mean3", "zeta_median5", "base_acc", "um_acc_mean3", "um_acc_median5")}
    out = Path(__file__).with_name("zeta_spread.json")
    out.write_text(json.dumps({"runs": rows, "summary": summary}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
