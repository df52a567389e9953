"""The embedded-default pipeline as plain library calls: train with once-covered tracking,
UM, the CE control, UMAP, evaluation and the result files. The CLI is a thin shell over this.

The pieces live in :mod:`.prepare` (data, model, checkpoints), :mod:`.stages` (training stages) and
:mod:`.evaluation` (evaluation and result files); their names stay importable from here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from .checkpoint import load_masks, save_masks, save_model
from .config import DemoConfig
from .errors import UserError
from .evaluation import best_epochs, evaluate_models, track, validation_metrics, write_outputs
from .plots import plot_training_curve
from .prepare import (EVAL_BATCH, Prepared, build, load_checkpoint, load_run_config, model_meta, prepare_data, say,
                      start_run)
from .report import MODEL_ORDER, OUTLIER_LABELS, write_json
from .stages import BaseLog, BaseTraining, append_jsonl, resolve_zeta, run_um, run_umap, train_base, zeta_line

__all__ = ["EVAL_BATCH", "STAGES", "BaseLog", "BaseTraining", "Prepared", "RunOutput", "append_jsonl", "best_epochs",
           "build", "demo_stages", "eval_run", "evaluate_models", "load_checkpoint", "load_run_config", "model_meta",
           "prepare_data", "resolve_zeta", "run_demo", "run_notes", "run_pipeline", "run_stages", "run_um",
           "run_umap", "say", "start_run", "track", "train_base", "validation_metrics", "write_outputs",
           "zeta_line"]


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
                 init_checkpoint: str | Path | None = None, resume: bool = False) -> list[dict]:
    """Run ``stages`` (train → ζ → UM, CE control → UMAP), then evaluate every model and write the results.

    Without ``train``, the base model comes from ``init_checkpoint`` (copied into the run directory, so
    ``eval --run`` works on any run). Returns the metric records (:func:`run_stages`: everything).
    """
    return run_stages(cfg, out_dir, stages, init_checkpoint, resume).records


def run_stages(cfg: DemoConfig, out_dir: str | Path, stages: tuple[str, ...] = STAGES,
               init_checkpoint: str | Path | None = None, resume: bool = False,
               extra_summary: dict | None = None) -> RunOutput:
    """:func:`run_pipeline`, returning the :class:`RunOutput`; ``extra_summary`` joins summary.json."""
    unknown = set(stages) - set(STAGES)
    if unknown or not stages:
        raise UserError(f"unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
    if "train" not in stages and init_checkpoint is None:
        raise UserError("without the train stage a base checkpoint is needed (--checkpoint)")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    cfg, prep, model, out = start_run(cfg, out_dir, init_checkpoint)
    meta = model_meta(cfg.model, prep.id, "base")
    write_json(out / "config.json", cfg.model_dump())
    timings["data"] = time.perf_counter() - t0
    summary: dict = {"stages": list(stages), "init_checkpoint": str(init_checkpoint) if init_checkpoint else None}

    if "train" in stages:
        say(f"training {cfg.model.arch} on {len(prep.id.train[0])} images for {cfg.base.epochs} epochs")
        t = time.perf_counter()
        log = train_base(model, prep, BaseTraining.of(cfg), out, resume=resume)
        timings["train"] = log.train_s  # every session's training, a resumed run's included
        plot_training_curve(log, out / "plots" / "fpr95_along_training.png", scores=cfg.track_scores[:2],
                            groups=prep.groups)
        summary["best_epochs"] = best_epochs(log, cfg.track_scores)
    else:
        save_model(out / "checkpoints" / "base.safetensors", model, meta)

    models: dict[str, tuple[nn.Module, dict | None]] = {"base": (model, None)}
    histories: dict[str, list[dict]] = {}
    if {"um", "control", "umap"} & set(stages):
        t = time.perf_counter()
        zeta = resolve_zeta(model, prep, cfg.um, cfg.seed)
        say(zeta_line(zeta))
        write_json(out / "zeta.json", zeta.as_dict())
        summary["zeta"] = zeta.as_dict()
        timings["zeta"] = time.perf_counter() - t
    for name, stage_zeta in (("um", "um"), ("ce_finetune", "control")):
        if stage_zeta in stages:
            t = time.perf_counter()
            z = zeta.value if name == "um" else 0.0
            tuned, histories[name] = run_um(model, prep, cfg.um, z, cfg.seed, cfg.data.augment)
            save_model(out / "checkpoints" / f"{name}.safetensors", tuned, {**meta, "kind": name, "zeta": z})
            models[name] = (tuned, None)
            timings[name] = time.perf_counter() - t
    if "umap" in stages:
        t = time.perf_counter()
        umap_zeta = cfg.umap.zeta if cfg.umap.zeta is not None else zeta.value
        masks, histories["umap"] = run_umap(model, prep, cfg.umap, umap_zeta, cfg.seed, cfg.data.augment)
        save_masks(out / "checkpoints" / "umap_mask.safetensors", masks,
                   {**meta, "kind": "umap_mask", "keep_ratio": cfg.umap.keep_ratio, "zeta": umap_zeta})
        models["umap"] = (model, masks)
        summary["umap_zeta"] = umap_zeta
        timings["umap"] = time.perf_counter() - t
    if histories:
        write_json(out / "finetune_log.json", histories)

    t = time.perf_counter()
    ev = evaluate_models(models, prep, cfg.scores.detectors(),
                         features_path=out / "features.npz" if cfg.save_features else None)
    if len(prep.id.val[0]):
        summary["validation"] = validation_metrics(models, prep)
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    summary.update(umap_masked_id_acc=ev.masked_acc.get("umap"), timings_s=timings)
    write_json(out / "summary.json", {**summary, **(extra_summary or {})})
    notes = run_notes(cfg, prep, summary)
    write_outputs(out, ev, notes, title=f"unleash-ood: {prep.id.name} (ID)")
    return RunOutput(ev.records, ev.flat(), notes, {**summary, **(extra_summary or {})})


def demo_stages(cfg: DemoConfig) -> tuple[str, ...]:
    """The demo's stages: all of them (the CE control only with ``control``)."""
    return STAGES if cfg.control else ("train", "um", "umap")


def run_demo(cfg: DemoConfig, out_dir: str | Path, resume: bool = False) -> list[dict]:
    """The main job: every stage on the embedded default."""
    return run_pipeline(cfg, out_dir, demo_stages(cfg), resume=resume)


def run_notes(cfg: DemoConfig, prep: Prepared, summary: dict) -> str:
    """The 'Run' section of results.md: data, ζ, UMAP accuracy with the mask, best epochs, timings."""
    lines = ["## Run", "",
             f"- ID: {prep.id.name}, {len(prep.id.train[0])} train / {len(prep.id.val[0])} validation / "
             f"{len(prep.id.test[0])} test images; model {cfg.model.arch} {cfg.model.kwargs}"]
    if summary.get("init_checkpoint"):
        lines.append(f"- base model from {summary['init_checkpoint']}")
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
    run = Path(run_dir)
    cfg = load_run_config(run)
    out = Path(out_dir) if out_dir else run / "eval"
    prep = prepare_data(cfg.data, [*(far_specs or []), *(ood_specs or [])], near_specs)
    ck = run / "checkpoints"
    base, _ = load_checkpoint(ck / "base.safetensors", prep.id.num_classes, cfg.model)
    models: dict[str, tuple[nn.Module, dict | None]] = {"base": (base, None)}
    order = {name: i for i, name in enumerate(MODEL_ORDER)}
    for path in sorted(ck.glob("*.safetensors"), key=lambda p: (order.get(p.stem.removesuffix("_mask"), 99), p.stem)):
        name = path.stem
        if name in ("base", "aux_subset") or name.startswith("base_epoch") or name.endswith("_selected"):
            continue
        if name.endswith("_mask"):  # a UMAP-style mask on the frozen base
            models[name[: -len("_mask")]] = (base, load_masks(path)[0])
        else:
            models[name] = (load_checkpoint(path, prep.id.num_classes, cfg.model)[0], None)
    ev = evaluate_models(models, prep, cfg.scores.detectors(),
                         features_path=out / "features.npz" if save_features else None)
    if any(name.split("_")[0] in OUTLIER_LABELS for name in models):
        for r in ev.records:
            r["aux"] = r["model"].split("_")[0] in OUTLIER_LABELS
    write_outputs(out, ev, f"Models of run {run}.", title="unleash-ood eval")
    return ev.records
