"""Run by hand: `python benchmarks/bench_deploy.py`. Prints images/s of a deployed detector on the CPU:
eager PyTorch (``ScoringNet``) vs onnxruntime (the graph ``export --format onnx`` writes), for the demo's
small CNN (width 16) as base (one pass) and UMAP (masked score + unmasked class: two passes), with Energy
and Mahalanobis, at batch 512 and batch 1. Weights are random: throughput does not depend on them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from unleash_ood.deploy.detector import onnx_session
from unleash_ood.deploy.net import ScoringNet, materialize_masks
from unleash_ood.deploy.onnx_export import export_onnx
from unleash_ood.detectors.base import build_detector
from unleash_ood.data.batches import TensorBatches
from unleash_ood.eval.evaluate import fit_detectors
from unleash_ood.masking import random_layer_masks
from unleash_ood.models import build_model


def images_per_s(fn, x: torch.Tensor, batch: int, min_s: float = 1.0) -> float:
    x = x[:256] if batch == 1 else x
    fn(x[:batch])  # warm-up
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_s:
        for start in range(0, len(x), batch):
            fn(x[start:start + batch])
            done += len(x[start:start + batch])
    return done / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=2048, help="images per timing round")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, width=16).to(memory_format=torch.channels_last).eval()
    x = torch.rand(args.n, 1, 28, 28)
    train = TensorBatches(torch.rand(2000, 1, 28, 28), torch.arange(2000) % 10, 512)
    print(f"CPU, {args.threads} thread(s), small_cnn width 16, 28×28 inputs; images/s")
    print(f"{'model':6} {'score':12} {'batch':>5} {'eager':>9} {'onnxrt':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("base", "umap"):
            scorer = materialize_masks(model, random_layer_masks(model, 0.8)) if kind == "umap" else model
            for score in ("Energy", "Mahalanobis"):
                det = build_detector(score)
                fit_detectors(scorer, [det], train)
                net = ScoringNet(model, scorer, det)
                path = export_onnx(net, Path(tmp) / f"{kind}_{score}.onnx", x[:2])
                session = onnx_session(path, args.threads)
                for batch in (512, 1):
                    eager = images_per_s(net.outputs, x, batch)
                    ort = images_per_s(lambda b: session.run(None, {"images": b.numpy()}), x, batch)
                    print(f"{kind:6} {score:12} {batch:5d} {eager:9.0f} {ort:9.0f} {ort / eager:5.2f}x", flush=True)


if __name__ == "__main__":
    main()
