"""Run by hand: `python benchmarks/bench_detectors.py [--threads N]`. Prints each detector's fit and
score cost relative to one forward pass, on the default small_cnn (width 16), a 12,000-image bank
(Fashion-MNIST train) and 2,000 queries (Fashion-MNIST test).

- fit: the detector's ``fit`` on the bank's (already computed) outputs, ÷ one forward pass over the bank;
- score: ``score_bulk`` (what ``evaluate`` calls) on the queries' outputs, ÷ one forward pass over them.
The shared forward passes themselves are not counted; ODIN's score includes its own gradient pass.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from unleash_ood.data.fashion import load_fashion_mnist
from unleash_ood.detectors.base import DETECTORS, FitData, build_detector
from unleash_ood.detectors.params import all_detector_names
from unleash_ood.data.batches import TensorBatches
from unleash_ood.eval.forward import classifier_params, collect_outputs
from unleash_ood.eval.evaluate import input_scores
from unleash_ood.models import build_model


def timed(fn, repeat: int = 3) -> float:
    """The best of ``repeat`` timings (after one warm-up call), in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--bank", type=int, default=12_000)
    ap.add_argument("--queries", type=int, default=2_000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = load_fashion_mnist()
    xt, _ = load_fashion_mnist(train=False)
    model = build_model("small_cnn", 10, width=16).eval()
    bank_b = TensorBatches(x[: args.bank], y[: args.bank], batch_size=512)
    query_b = TensorBatches(xt[: args.queries], batch_size=512)
    fwd_bank = timed(lambda: collect_outputs(model, bank_b), repeat=2)
    fwd_query = timed(lambda: collect_outputs(model, query_b))
    bank, queries = collect_outputs(model, bank_b), collect_outputs(model, query_b)
    weight, bias = classifier_params(model)
    data = FitData(bank.logits, bank.features, bank.labels, weight, bias)

    print(f"small_cnn width 16, {args.bank} bank images, {args.queries} queries, {args.threads} thread(s), "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"one forward pass: bank {fwd_bank:.3f} s, queries {fwd_query:.3f} s\n")
    print("| detector | fit (s) | fit ÷ bank pass | score (s) | score ÷ query pass |")
    print("|---|---:|---:|---:|---:|")
    total = 0.0
    for name in all_detector_names():
        det = build_detector(name)
        fit_s = timed(lambda: det.fit(data), repeat=1 if det.needs_fit else 3)
        if DETECTORS[name].needs_inputs:
            score_s = timed(lambda: input_scores(model, query_b, det), repeat=1)
        else:
            score_s = timed(lambda: det.score_bulk(queries.logits, queries.features))
            total += score_s
        print(f"| {name} | {fit_s:.4f} | {fit_s / fwd_bank:.3f} | {score_s:.4f} | {score_s / fwd_query:.3f} |")
    print(f"\nall non-ODIN scores together: {total:.3f} s = {total / fwd_query:.3f}× one forward pass "
          f"(budget 1.3×); load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
