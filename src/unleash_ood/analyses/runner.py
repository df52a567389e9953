"""Run one analysis by name: effective config, output folder, the analysis, its summary and PNG copies;
with several seeds, each seed into ``OUT/seed<N>/`` and then the mean ± std over seeds
(:mod:`.seeds`)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..run.layout import RunLayout
from ..utils.files import write_json
from ..utils.log import say
from .cache import Context, PrepCache
from .claims import combine
from .masks import mask_loss, weights
from .presets import analysis_config
from .sweeps import finetune_epochs, keep_ratio, prune_rate
from .training import once_covered, overfitting, score_hist, typical_atypical

RUNNERS: dict[str, Callable[[Context], dict]] = {
    "once-covered": once_covered, "score-hist": score_hist, "mask-loss": mask_loss, "keep-ratio": keep_ratio,
    "prune-rate": prune_rate, "finetune-epochs": finetune_epochs, "typical-atypical": typical_atypical,
    "overfitting": overfitting, "weights": weights}


@dataclass(frozen=True)
class Request:
    """What the user asked for, the same for every analysis of one command."""

    overrides: tuple[str, ...] = ()
    quick: bool = False
    data_root: str | None = None
    recipe: str | None = None
    docs: Path | None = None


def run_analysis(name: str, out: Path, req: Request = Request(), prep_cache: PrepCache | None = None,
                 seed: int | None = None, shared: Path | None = None, first_seed: bool = True) -> dict:
    """Run one analysis (one seed; ``seed`` None: the config's) into ``out``; returns its summary (also
    written to ``out/summary.json``). Base trainings are shared in ``shared`` (default ``out.parent``);
    ``prep_cache`` shares the prepared data between analyses of one command. Analyses other than the
    ``first_seed`` skip their one-seed extras (``extra_schedules``)."""
    cfg, params = analysis_config(name, list(req.overrides), req.quick, req.data_root, req.recipe, seed)
    if not first_seed:
        params["extra_schedules"] = []
    out.mkdir(parents=True, exist_ok=True)
    write_json(RunLayout(out).config, {"analysis": name, "quick": req.quick, "params": params, "config": cfg.model_dump()})
    ctx = Context(name, cfg, params, out, prep_cache, shared)
    t = time.perf_counter()
    say(f"[{name}] output: {out}")
    summary = RUNNERS[name](ctx)
    summary.update(analysis=name, seed=cfg.seed, wall_s=round(time.perf_counter() - t, 1),
                   pngs=[str(p.name) for p in ctx.pngs], ood_sets=list(ctx.prep.ood) if ctx.prepared else None,
                   groups=dict(ctx.prep.groups) if ctx.prepared else None,
                   subruns={"computed": ctx.computed, "reused": ctx.reused})
    write_json(out / "summary.json", summary)
    if req.docs and first_seed:
        copy_pngs(ctx.pngs, req.docs, name)
    say(f"[{name}] done in {summary['wall_s']:.0f}s: {out} ({', '.join(summary['pngs'])})")
    return summary


def run_seeded(name: str, out: Path, seeds: Sequence[int], req: Request = Request(),
               prep_cache: PrepCache | None = None, shared: Path | None = None) -> dict:
    """Run ``name`` for each seed into ``out/seed<N>/`` (finished sub-runs are reused), then write the
    mean ± std over seeds, the paired comparisons with their verdicts, and the band figures into
    ``out``. Returns the combined summary (``out/summary.json``)."""
    shared = shared or out.parent
    t = time.perf_counter()
    seed_req = replace(req, docs=None)  # the combined figures (with the first seed's) are copied below
    per_seed = [run_analysis(name, out / f"seed{s}", seed_req, prep_cache, s, shared, first_seed=i == 0)
                for i, s in enumerate(seeds)]
    summary = combine(name, per_seed, out)
    summary["wall_s"] = round(time.perf_counter() - t, 1)
    summary["subruns"] = {k: sum(s["subruns"][k] for s in per_seed) for k in ("computed", "reused")}
    write_json(out / "summary.json", summary)
    if req.docs:
        copy_pngs([out / p for p in summary["pngs"]], req.docs, name)
    say(f"[{name}] {len(seeds)} seeds done in {summary['wall_s']:.0f}s: {out}")
    return summary


def copy_pngs(pngs: Sequence[Path], docs: Path, name: str) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    for p in pngs:
        shutil.copyfile(p, docs / f"{name}_{p.name}")
