#!/usr/bin/env bash
# The deploy path on a finished default demo run (issue 11's done-means):
# export torch and ONNX bundles, detect on the ID test images and on every built-in OOD set,
# then compare with the run's scores.npz. Usage: bash docs/experiments/deploy_check.sh RUN_DIR WORK_DIR
set -euo pipefail
run=$1; work=$2; mkdir -p "$work"
python - "$run" "$work" <<'PY'
import sys
from pathlib import Path
import numpy as np
from unleash_ood.data.prepared import prepare_data
from unleash_ood.run.layout import RunLayout
run, work = Path(sys.argv[1]), Path(sys.argv[2])
prep = prepare_data(RunLayout(run).load_config().data)
np.savez(work / "id_test.npz", images=(prep.id.test[0].numpy()[:, 0] * 255).round().astype(np.uint8))
for name, x in prep.ood.items():
    np.savez(work / f"{name}.npz", images=x.numpy()[:, 0].astype(np.float32))
PY
for model_score in "umap Energy" "base Energy" "um Energy" "umap KNN"; do
  set -- $model_score
  for fmt in torch onnx; do
    b="$work/bundle-$1-$2-$fmt"
    unleash-ood export --run "$run" --model "$1" --score "$2" --format "$fmt" --out "$b" --overwrite 2>/dev/null \
      || unleash-ood export --run "$run" --model "$1" --score "$2" --format "$fmt" --out "$b"
    for s in id_test glyphs digits textures photos gaussian uniform; do
      unleash-ood detect "$b" "npz:$work/$s.npz" --out "$work/pred-$1-$2-$fmt-$s.csv" >/dev/null 2>&1
    done
  done
done
python - "$run" "$work" <<'PY'
import csv, sys
from pathlib import Path
import numpy as np
run, work = Path(sys.argv[1]), Path(sys.argv[2])
scores = np.load(run / "scores.npz")
for model, score in (("umap", "Energy"), ("base", "Energy"), ("um", "Energy"), ("umap", "KNN")):
    for fmt in ("torch", "onnx"):
        rates = {}
        for s in ("id_test", "glyphs", "digits", "textures", "photos", "gaussian", "uniform"):
            rows = list(csv.DictReader(open(work / f"pred-{model}-{score}-{fmt}-{s}.csv")))
            rates[s] = 100 * np.mean([int(r["is_ood"]) for r in rows])
            got = np.array([float(r["score"]) for r in rows])
            ref = scores[f"{model}/{score}/{'id' if s == 'id_test' else s}"]
            rates[s + "_maxdiff"] = float(np.abs(got - ref).max())
        print(model, score, fmt, " ".join(f"{k}={v:.4g}" for k, v in rates.items()))
PY
