"""Run by hand: `python benchmarks/bench_throughput.py`. Prints

1. the cost of all logit/feature scores from ONE forward pass vs one forward pass per score (ratio);
2. images/s for training and evaluation of the demo CNN (channels_last vs not).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from unleash_ood.data.batches import TensorBatches
from unleash_ood.eval.forward import collect_outputs
from unleash_ood.eval.evaluate import fit_detectors, make_detectors, score_outputs
from unleash_ood.models import build_model

SCORES = ["MSP", "Energy", "MaxLogit", "Mahalanobis"]


def timed(fn, repeat: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, width=16).to(memory_format=torch.channels_last).eval()
    x = torch.rand(10_000, 1, 28, 28)
    batches = TensorBatches(x, None, 512)
    detectors = make_detectors(SCORES)
    fit_detectors(model, detectors, TensorBatches(x, torch.arange(len(x)) % 10, 512))

    one_pass = timed(lambda: score_outputs(collect_outputs(model, batches), detectors))
    per_score = timed(lambda: [score_outputs(collect_outputs(model, batches), [d]) for d in detectors])
    print(f"scores {SCORES} on 10k images: one pass {one_pass:.2f}s, one pass per score {per_score:.2f}s, "
          f"ratio {per_score / one_pass:.2f}x")

    for channels_last in (False, True):
        m = build_model("small_cnn", 10, width=16)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        xb, yb = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)

        def step() -> None:
            for _ in range(10):
                opt.zero_grad()
                F.cross_entropy(m(xb), yb).backward()
                opt.step()

        train_ips = 1280 / timed(step)
        m.eval()
        xe = torch.rand(512, 1, 28, 28)
        if channels_last:
            xe = xe.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            eval_ips = 5 * 512 / timed(lambda: [m(xe) for _ in range(5)])
        print(f"small_cnn width 16, channels_last={channels_last}: train {train_ips:.0f} img/s "
              f"(60k-image epoch {60_000 / train_ips:.1f}s), eval {eval_ips:.0f} img/s")


if __name__ == "__main__":
    main()
