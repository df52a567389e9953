"""The embedded-default pipeline as plain library calls: train with once-covered tracking,
UM, the CE control, UMAP, evaluation and the result files. The CLI is a thin shell over this.

The stages live in :mod:`.stages`, the run directory's names in :mod:`.layout`, evaluation in
:mod:`unleash_ood.eval.models` and the result files in :mod:`unleash_ood.run.results`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from ..config import DemoConfig
from ..data.fingerprint import proxy_records
from ..data.prepared import Prepared, prepare_data
from ..errors import UserError
from ..eval.evaluate import configured_detectors
from ..eval.models import evaluate_models
from ..eval.tuning import validate_models
from ..models.checkpoint import load_masks, save_masks, save_model
from ..models.loading import load_checkpoint, model_meta
from ..report.plots import plot_training_curve
from ..report.tables import OUTLIER_LABELS
from ..utils.files import write_json
from ..utils.log import say
from ..utils.runtime import machine
from .layout import RunLayout
from .results import write_outputs
from .stages import (
    BaseTraining,
    best_epochs,
    check_levels,
    resolve_zeta,
    run_um,
    run_umap,
    start_run,
    train_base,
    zeta_line,
)
from .validation import prepare_validation, tuned_rows, write_tuning, write_validation

STAGES = ("train", "um", "control", "umap")


@dataclass
class RunOutput:
    """What a run wrote, as objects: the metric ``records``, the flat per-sample ``scores``
    (``MODEL/SCORE/DATASET``), the 'Run' ``notes`` of results.md and the ``summary`` (summary.json)."""

    records: list[dict]
    scores: dict[str, np.ndarray]
    notes: str
    summary: dict


def run_pipeline(cfg: DemoConfig, out_dir: str | Path, stages: tuple[str, ...] = STAGES,
                 init_checkpoint: str | Path | None = None, resume: bool = False, guard: bool = False) -> list[dict]:
    """Run ``stages`` (train → ζ → UM, CE control → UMAP), then evaluate every model and write the results.

    Without ``train``, the base model comes from ``init_checkpoint`` (copied into the run directory, so
    ``eval --run`` works on any run). ``guard``: refuse a ζ that would push the model toward chance
    (:func:`~unleash_ood.run.stages.check_levels`; the CLI's default, off with ``--force``); the model's
    training CE, ζ and ln C are recorded either way. Returns the metric records (:func:`run_stages`: everything).
    """
    return run_stages(cfg, out_dir, stages, init_checkpoint, resume, guard=guard).records


def run_stages(cfg: DemoConfig, out_dir: str | Path, stages: tuple[str, ...] = STAGES,
               init_checkpoint: str | Path | None = None, resume: bool = False,
               extra_summary: dict | None = None, guard: bool = False) -> RunOutput:
    """:func:`run_pipeline`, returning the :class:`RunOutput`; ``extra_summary`` joins summary.json."""
    unknown = set(stages) - set(STAGES)
    if unknown or not stages:
        raise UserError(f"unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
    if "train" not in stages and init_checkpoint is None:
        raise UserError("without the train stage a base checkpoint is needed (--checkpoint)")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    cfg, prep, model, out = start_run(cfg, out_dir, init_checkpoint)
    val_sets = prepare_validation(cfg, prep, model)  # a tuning grid that cannot fit fails before anything is written
    meta = model_meta(cfg.model, prep.id, "base")
    run = RunLayout(out)
    write_json(run.config, cfg.model_dump())
    timings["data"] = time.perf_counter() - t0
    summary: dict = {"machine": machine(), "stages": list(stages), "init_checkpoint": str(init_checkpoint) if init_checkpoint else None,
                     "base_training": {"skipped": "train" not in stages,
                                       "checkpoint": None if "train" in stages else str(init_checkpoint)}}
    if prep.id.preprocessing is not None:  # own data: the input, and what was done to reach it
        summary["input"] = prep.id.preprocessing
    # what exactly each OOD test set and validation proxy (as the run chooses on it) was: sha256, n, shape, sources
    summary["sets"] = {**prep.sets, **(proxy_records(val_sets.sets.ood, val_sets.described) if val_sets else {})}

    if "train" in stages:
        say(f"training {cfg.model.arch} on {len(prep.id.train[0])} images for {cfg.base.epochs} epochs")
        t = time.perf_counter()
        log = train_base(model, prep, BaseTraining.of(cfg), out, resume=resume)
        timings["train"] = log.train_s  # every session's training, a resumed run's included
        plot_training_curve(log, run.plots / "fpr95_along_training.png", scores=cfg.track_scores[:2],
                            groups=prep.groups)
        summary["best_epochs"] = best_epochs(log, cfg.track_scores, prep.groups)

    models: dict[str, tuple[nn.Module, dict | None]] = {"base": (model, None)}
    histories: dict[str, list[dict]] = {}
    if {"um", "control", "umap"} & set(stages):
        t = time.perf_counter()
        zeta = resolve_zeta(model, prep, cfg.um, cfg.seed)
        say(zeta_line(zeta))
        levels = {"um": zeta.value, "umap": cfg.umap.zeta if cfg.umap.zeta is not None else zeta.value}
        kept = f"; the trained base model is kept in {run.checkpoint('base')}" if "train" in stages else ""
        summary["zeta_check"] = check_levels(model, prep, {s: z for s, z in levels.items() if s in stages}, cfg,
                                             refuse=guard, note=kept)
        write_json(run.zeta, zeta.as_dict())
        summary["zeta"] = zeta.as_dict()
        timings["zeta"] = time.perf_counter() - t
    if "train" not in stages:  # the given model, copied once it passed the checks (a refusal leaves no run)
        save_model(run.checkpoint("base"), model, meta)
    for name, stage_zeta in (("um", "um"), ("ce_finetune", "control")):
        if stage_zeta in stages:
            t = time.perf_counter()
            z = zeta.value if name == "um" else 0.0
            tuned, histories[name] = run_um(model, prep, cfg.um, z, cfg.seed, cfg.data.augment)
            save_model(run.checkpoint(name), tuned, {**meta, "kind": name, "zeta": z})
            models[name] = (tuned, None)
            timings[name] = time.perf_counter() - t
    if "umap" in stages:
        t = time.perf_counter()
        umap_zeta = cfg.umap.zeta if cfg.umap.zeta is not None else zeta.value
        masks, histories["umap"] = run_umap(model, prep, cfg.umap, umap_zeta, cfg.seed, cfg.data.augment)
        save_masks(run.mask("umap"), masks,
                   {**meta, "kind": "umap_mask", "keep_ratio": cfg.umap.keep_ratio, "zeta": umap_zeta})
        models["umap"] = (model, masks)
        summary["umap_zeta"] = umap_zeta
        timings["umap"] = time.perf_counter() - t
    if histories:
        write_json(run.finetune_log, histories)

    val = None
    if val_sets is not None:  # every detector (and with scores.tune each grid) on validation OOD only
        val = validate_models(models, prep, val_sets.sets, cfg.scores)
        write_validation(run, val, val_sets)
        write_tuning(run, val, val_sets)
        summary["validation"] = val.legacy
        timings.update(validate=val.seconds["validate"], **({"tune": val.seconds["tune"]} if cfg.scores.tune else {}))
    t = time.perf_counter()
    detectors = configured_detectors(cfg.scores)
    ev = evaluate_models(models, prep, detectors, features_path=run.features if cfg.save_features else None,
                         per_model={name: val.with_tuned(name, detectors) for name in models} if val else None)
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    summary.update(umap_masked_id_acc=ev.masked_acc.get("umap"), timings_s=timings)
    write_json(run.summary, {**summary, **(extra_summary or {})})
    notes = run_notes(cfg, prep, summary)
    write_outputs(out, ev, notes, title=f"unleash-ood: {prep.id.name} (ID)")
    return RunOutput(ev.records, ev.flat(), notes, {**summary, **(extra_summary or {})})


def demo_stages(cfg: DemoConfig, train: bool = True) -> tuple[str, ...]:
    """The demo's stages: all of them (the CE control only with ``control``; base training only with ``train``)."""
    return tuple(s for s in STAGES if (s != "control" or cfg.control) and (s != "train" or train))


def run_demo(cfg: DemoConfig, out_dir: str | Path, resume: bool = False, checkpoint: str | Path | None = None,
             force: bool = False) -> list[dict]:
    """The main job: every stage on the embedded default; with ``checkpoint``, on that model instead of
    base training. A ζ that would push the model toward chance stops it unless ``force``."""
    return run_pipeline(cfg, out_dir, demo_stages(cfg, train=checkpoint is None), init_checkpoint=checkpoint,
                        resume=resume, guard=not force)


def run_notes(cfg: DemoConfig, prep: Prepared, summary: dict) -> str:
    """The 'Run' section of results.md: data, ζ, UMAP accuracy with the mask, best epochs, timings."""
    lines = ["## Run", "",
             f"- ID: {prep.id.name}, {len(prep.id.train[0])} train / {len(prep.id.val[0])} validation / "
             f"{len(prep.id.test[0])} test images; model {cfg.model.arch} {cfg.model.kwargs}"]
    if summary.get("init_checkpoint"):
        lines.append(f"- base model from {summary['init_checkpoint']}")
    if "zeta_check" in summary:
        c = summary["zeta_check"]
        lines.append(f"- base model's training CE {c['train_ce']:.4f} vs ln C = {c['ln_classes']:.3f}; UM refuses "
                     f"ζ ≥ {c['limit']:.3f}" + ("" if c["passed"] else " (ζ is above it; the guard was off: --force)"))
    if "zeta" in summary:
        z = summary["zeta"]
        lines.append(f"- UM: keep ratio {cfg.um.keep_ratio}, ζ = {z['value']:.4f} ({z['estimator']} of "
                     f"{len(z['values'])} draw(s): {', '.join(f'{v:.4f}' for v in z['values'])}; mean {z['mean']:.4f} "
                     f"± {z['sd']:.4f}); fine-tune {cfg.um.optim.epochs} epochs, lr {cfg.um.optim.lr}")
    if "umap_zeta" in summary:
        lines.append(f"- UMAP: keep ratio {cfg.umap.keep_ratio}, ζ = {summary['umap_zeta']:.4f}, "
                     f"{cfg.umap.optim.epochs} epochs; ID-ACC shown is the deployed (unmasked) model's; "
                     f"accuracy with the mask: {summary['umap_masked_id_acc']:.2f}")
    if "control" in summary["stages"]:
        lines.append("- CE-FT (control): the UM schedule with plain cross-entropy (ζ = 0).")
    if cfg.scores.tune:
        lines.append("- `NAME (tuned)` rows: that detector with its hyperparameter chosen per model on the validation "
                     "OOD proxies only (the choices and every grid value: tuning.md).")
    lines.append("")
    for s, b in summary.get("best_epochs", {}).items():
        lines.append(f"- {s}: mean FPR95 {b['final_test_fpr95']:.2f} at the final epoch {b['final_epoch']}; "
                     f"best along training {b['best_test_fpr95']:.2f} at epoch {b['best_test_epoch']} (analysis only)"
                     + (f"; epoch picked on validation OOD: {b['best_val_epoch']} "
                        f"(test FPR95 {b['test_fpr95_at_best_val']:.2f})" if "best_val_epoch" in b else ""))
    t = summary["timings_s"]
    lines += ["", "Wall-clock (s): " + ", ".join(f"{k} {v:.0f}" for k, v in t.items())]
    return "\n".join(lines)


def eval_run(run_dir: str | Path, ood_specs: list[str] | None, out_dir: str | Path | None = None,
             near_specs: list[str] | None = None, far_specs: list[str] | None = None,
             save_features: bool = False) -> list[dict]:
    """Evaluate every model of a finished run (base, um, ce_finetune, umap, outlier models) on other OOD
    sets: ``near_specs`` and ``far_specs`` + ``ood_specs`` (far); none given: the run's own suite
    (``save_features``: also write ``features.npz``)."""
    run = RunLayout(Path(run_dir))
    cfg = run.load_config()
    out = Path(out_dir) if out_dir else run.eval
    found = run.models()  # fails before any data is loaded when the run is incomplete
    prep = prepare_data(cfg.data, [*(far_specs or []), *(ood_specs or [])], near_specs)
    base, _ = load_checkpoint(run.checkpoint("base"), prep.id.num_classes, cfg.model)
    models: dict[str, tuple[nn.Module, dict | None]] = {}
    for name, m in found.items():
        if m.mask is not None:  # a UMAP-style mask on the frozen base
            models[name] = (base, load_masks(m.mask)[0])
        else:
            models[name] = (base if name == "base" else load_checkpoint(m.weights, prep.id.num_classes, cfg.model)[0],
                            None)
    detectors = configured_detectors(cfg.scores)
    ev = evaluate_models(models, prep, detectors, features_path=RunLayout(out).features if save_features else None,
                         per_model=tuned_rows(run, detectors))  # scores.tune's choices, as at run time
    if any(name.split("_")[0] in OUTLIER_LABELS for name in models):
        for r in ev.records:
            r["aux"] = r["model"].split("_")[0] in OUTLIER_LABELS
    write_outputs(out, ev, f"Models of run {run.root}.", title="unleash-ood eval")
    return ev.records
