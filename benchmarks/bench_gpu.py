"""GPU benchmark, ONE prepared script for a lent H100/H200 (about 3–5 minutes):

1. train-step and eval throughput (images/s) and peak memory of DenseNet-BC-100 and WRN-40-4 on
   synthetic CIFAR-shaped batches (batch 64 and 256), fp32 vs bf16 autocast, NCHW vs channels_last
   (warm-up, ``cuda.synchronize``, ~20 timed steps each), through the library's own training step;
2. a 2-epoch smoke run of the FULL pipeline (:func:`unleash_ood.run.pipeline.run_pipeline`: train with
   tracking and a resumable state → ζ → UM → CE control → UMAP → evaluation with every score → result
   files) on synthetic CIFAR-shaped data (``prepare_data`` is replaced; no dataset files needed).

Prints a Markdown report and writes it to ``$OUT/bench_gpu.md`` when ``OUT`` is set. On the lent machine
(pydantic is not in its image: carry the wheels in ``.whl``, see ``python -m pip download`` in the
device README):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 python3 benchmarks/bench_gpu.py 2>$OUT/stderr.txt

    python benchmarks/bench_gpu.py                # on the GPU machine
    python benchmarks/bench_gpu.py --cpu-smoke    # tiny sizes on CPU: checks the script end to end
    python benchmarks/bench_gpu.py --compile      # also a torch.compile row (adds ~1–2 min of compiling)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from unleash_ood.run import pipeline
from unleash_ood.utils import runtime
from unleash_ood.config import DemoConfig
from unleash_ood.data import IDData, patch_shuffle
from unleash_ood.eval.forward import to_model_input
from unleash_ood.models import build_model
from unleash_ood.config import OptimConfig
from unleash_ood.methods.train import ce_step, load_state, make_optimizer

ARCHS = ("densenet100", "wrn40_4")
COMBOS = (("off", False), ("off", True), ("bf16", False), ("bf16", True))  # (amp, channels_last)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(arch: str, batch: int, amp: str, channels_last: bool, device: torch.device, steps: int,
               warmup: int, compile: bool = False) -> dict:
    """Images/s of the library's training step (SGD + schedule, autocast as configured) and of eval."""
    runtime.setup(device.type, amp, compile)
    torch.manual_seed(0)
    model = build_model(arch, 10)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = runtime.place(model)
    step_model = torch.compile(model) if compile else model
    opt, sched = make_optimizer(model.parameters(), OptimConfig(epochs=1, batch_size=batch), steps + warmup)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def train_step() -> None:
        with runtime.autocast(device):
            loss, _ = ce_step(step_model, (x, y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

    def eval_step() -> None:
        with torch.no_grad(), runtime.autocast(device):
            step_model(to_model_input(x, model))

    rates = {}
    for name, fn, mode in (("train", train_step, True), ("eval", eval_step, False)):
        model.train(mode)
        for _ in range(warmup):
            fn()
        sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        rates[name] = steps * batch / (time.perf_counter() - t)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"arch": arch, "batch": batch, "amp": amp, "channels_last": channels_last, "compile": compile,
            "train_ips": rates["train"], "eval_ips": rates["eval"], "peak_gib": mem}


def synthetic_prepared(n_train: int, n_test: int, n_ood: int, seed: int = 0) -> pipeline.Prepared:
    """Learnable synthetic CIFAR-shaped data: each class adds its own colour/pattern to noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(10, 3, 32, 32, generator=g)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]  # every class present
        return (0.5 * torch.rand(n, 3, 32, 32, generator=g) + 0.5 * protos[y]).clamp(0, 1), y

    train, test = split(n_train), split(n_test)
    data = IDData("synthetic-cifar", train, (train[0][:0], train[1][:0]), test, tuple(str(i) for i in range(10)))
    ood = {"uniform": torch.rand(n_ood, 3, 32, 32, generator=g),
           "blobs": torch.rand(n_ood, 3, 4, 4, generator=g).repeat_interleave(8, 2).repeat_interleave(8, 3)}
    return pipeline.Prepared(data, ood, patch_shuffle(train[0][:n_ood], patch=8, seed=seed))


def smoke(device: torch.device, arch: str, n_train: int, n_test: int, n_ood: int, batch: int,
          out: Path) -> tuple[list[str], dict]:
    """The full pipeline for 2 base epochs (1 for UM/control/UMAP) on synthetic data."""
    prep = synthetic_prepared(n_train, n_test, n_ood)
    original = pipeline.prepare_data
    pipeline.prepare_data = lambda *a, **k: prep  # noqa: E731 - the one substitution: data
    d = DemoConfig().model_dump()
    d["model"] = {"arch": arch, "kwargs": {}}
    d["base"].update(epochs=2, batch_size=batch)
    d["eval_every"] = 1
    d["um"]["optim"].update(epochs=1, batch_size=batch)
    d["um"]["zeta_draws"] = 1
    d["umap"]["optim"].update(epochs=1, batch_size=batch)
    d["runtime"] = {"device": device.type, "amp": "auto", "compile": False}
    cfg = DemoConfig.model_validate(d)
    try:
        t = time.perf_counter()
        records = pipeline.run_pipeline(cfg, out)
        total = time.perf_counter() - t
    finally:
        pipeline.prepare_data = original
    import json

    summary = json.loads((out / "summary.json").read_text())
    state = load_state(out / "checkpoints" / "last_state.pt")  # weights_only: the resumable state loads
    lines = [f"Full pipeline ({arch}, {n_train} train / {n_test} test images, batch {batch}, AMP "
             f"{runtime.current().amp_dtype}): {total:.1f} s; resumable state at epoch {state['epoch']} "
             f"(keys: {', '.join(sorted(state))})", "",
             "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in summary["timings_s"].items()]
    lines += ["", "| model | score | mean FPR95 | mean AUROC | ID-ACC |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['score']} | {r['fpr95']:.1f} | {r['auroc']:.1f} | {r['id_acc']:.1f} |"
              for r in records if r["ood"] == "mean"]
    return lines, summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU (check the script here)")
    p.add_argument("--compile", action="store_true", help="add torch.compile rows (batch 256, bf16, CL)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()
    if args.cpu_smoke:
        torch.set_num_threads(1)  # a shared CPU: more threads are slower
        device, batches, steps, warmup = torch.device("cpu"), (4,), 1, 1
        sizes = {"n_train": 40, "n_test": 20, "n_ood": 16, "batch": 16}
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU: use --cpu-smoke", file=sys.stderr)
            return 2
        device, batches, steps, warmup = runtime.select_device("cuda"), (64, 256), args.steps, args.warmup
        sizes = {"n_train": 8192, "n_test": 2000, "n_ood": 1000, "batch": 128}
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report = ["# unleash-ood GPU benchmark", "",
              f"Device: {name}; torch {torch.__version__}; bf16 supported: "
              f"{device.type == 'cuda' and torch.cuda.is_bf16_supported()}; {steps} timed steps after {warmup} "
              "warm-up steps; synthetic 3×32×32 batches", "",
              "| model | batch | AMP | channels_last | compile | train img/s | eval img/s | peak GiB |",
              "|---|---:|---|---|---|---:|---:|---:|"]
    t_all = time.perf_counter()
    combos = [(a, b, amp, cl, False) for a in ARCHS for b in batches for amp, cl in COMBOS]
    if args.compile:
        combos += [(a, max(batches), "bf16", True, True) for a in ARCHS]
    for arch, batch, amp, cl, comp in combos:
        try:
            r = throughput(arch, batch, amp, cl, device, steps, warmup, comp)
            row = (f"| {arch} | {batch} | {amp} | {cl} | {comp} | {r['train_ips']:.0f} | {r['eval_ips']:.0f} | "
                   f"{r['peak_gib']:.2f} |")
        except Exception as e:  # noqa: BLE001 - report the row, keep benchmarking
            row = f"| {arch} | {batch} | {amp} | {cl} | {comp} | failed: {type(e).__name__}: {str(e)[:80]} | | |"
        print(row, flush=True)
        report.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report += ["", f"Throughput section: {time.perf_counter() - t_all:.0f} s", "", "## Pipeline smoke run", ""]
    out = Path(tempfile.mkdtemp()) / "run"  # not under $OUT: only a few files come back from there
    try:
        lines, _ = smoke(device, "densenet100", out=out, **sizes)
        report += lines
    except Exception:  # noqa: BLE001
        report += ["Pipeline smoke run FAILED:", "", "```", traceback.format_exc()[-3000:], "```"]
    report += ["", f"Total: {time.perf_counter() - t_all:.0f} s"]
    text = "\n".join(report) + "\n"
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_gpu.md").write_text(text)
    return 1 if "FAILED" in text else 0


if __name__ == "__main__":
    sys.exit(main())
