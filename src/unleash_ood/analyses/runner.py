"""Run one analysis by name: effective config, output folder, the analysis, its summary and PNG copies."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ..pipeline import say
from ..report import write_json
from .cache import Context, PrepCache
from .masks import mask_loss, weights
from .presets import build_config
from .sweeps import finetune_epochs, keep_ratio, prune_rate
from .training import once_covered, overfitting, score_hist, typical_atypical

RUNNERS: dict[str, Callable[[Context], dict]] = {
    "once-covered": once_covered, "score-hist": score_hist, "mask-loss": mask_loss, "keep-ratio": keep_ratio,
    "prune-rate": prune_rate, "finetune-epochs": finetune_epochs, "typical-atypical": typical_atypical,
    "overfitting": overfitting, "weights": weights}


def run_analysis(name: str, out: str | Path | None = None, overrides: list[str] = (), quick: bool = False,
                 data_root: str | None = None, docs: str | Path | None = None, recipe: str | None = None,
                 prep_cache: PrepCache | None = None) -> dict:
    """Run one analysis; returns its summary (also written to ``out/summary.json``). ``prep_cache``
    shares the prepared data between analyses run one after another (``all``)."""
    cfg, params = build_config(name, list(overrides), quick, data_root, recipe)
    out = Path(out) if out else Path("runs/reproduce") / name
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"analysis": name, "quick": quick, "params": params, "config": cfg.model_dump()})
    ctx = Context(name, cfg, params, out, prep_cache)
    t = time.perf_counter()
    say(f"[{name}] output: {out}")
    summary = RUNNERS[name](ctx)
    summary.update(analysis=name, wall_s=round(time.perf_counter() - t, 1), pngs=[str(p.name) for p in ctx.pngs],
                   ood_sets=list(ctx.prep.ood) if ctx.prepared else None)
    write_json(out / "summary.json", summary)
    if docs:
        d = Path(docs)
        d.mkdir(parents=True, exist_ok=True)
        for p in ctx.pngs:
            shutil.copyfile(p, d / f"{name}_{p.name}")
    say(f"[{name}] done in {summary['wall_s']:.0f}s: {out} ({', '.join(summary['pngs'])})")
    return summary
