"""Table 1's lower half as library calls: OE, Energy (w. D_aux) and POEM fine-tuned from a given base,
each alone, +UM and +UMAP, evaluated next to the base with every score."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..config import DemoConfig, OptimConfig, build_config
from ..data.auxiliary import aux_record_json, check_aux_overlap, load_aux_pool
from ..data.auxpool import AUX_MIX, AUX_PICTURES
from ..data.transforms import random_shift_flip
from ..errors import UserError
from ..eval.evaluate import configured_detectors
from ..eval.models import evaluate_models, validation_metrics
from ..methods.outlier_training import (
    METHODS,
    WITHS,
    FinetuneSettings,
    OutlierLoss,
    check_method,
    finetune_with_outliers,
    run_name,
)
from ..models.checkpoint import save_masks, save_model, save_tensors
from ..models.loading import model_meta
from ..utils.files import write_json
from ..utils.log import say
from .layout import RunLayout
from .pipeline import RunOutput, demo_stages, run_stages
from .results import save_results, write_outputs
from .stages import resolve_zeta, start_run, zeta_line

OUTLIER_ID_SEED_OFFSET = 3  # ID batch order: seed + 3 (base training uses seed, UM seed + 1, UMAP seed + 2)


OUTLIER_LABELS = {"oe": "OE", "energy": "Energy (w. D_aux)", "poem": "POEM"}


WITH_LABELS = {"none": "", "um": "+UM", "umap": "+UMAP"}


def _check_lists(methods: Sequence[str], withs: Sequence[str]) -> tuple[list[str], list[str]]:
    methods, withs = list(dict.fromkeys(methods)), list(dict.fromkeys(withs))
    if not methods or not withs:
        raise UserError(f"choose at least one method ({', '.join(METHODS)}) and one variant ({', '.join(WITHS)})")
    for m in methods:
        for w in withs:
            check_method(m, w)
    return methods, withs


def outlier_optim(cfg: DemoConfig, with_: str) -> OptimConfig:
    """Full fine-tuning: the UM optimizer settings with ``outliers.epochs``/``lr`` (paper: 10, 0.01, cosine).
    +UMAP: the UMAP mask optimizer (lr ``outliers.umap_lr`` or ``umap.optim.lr``, its weight decay)."""
    o = cfg.outliers
    if with_ == "umap":
        return cfg.umap.optim.model_copy(update={"epochs": o.epochs, "lr": o.umap_lr or cfg.umap.optim.lr})
    return cfg.um.optim.model_copy(update={"epochs": o.epochs, "lr": o.lr})


def finetune_settings(cfg: DemoConfig, with_: str) -> FinetuneSettings:
    """The library's :class:`FinetuneSettings` for one variant, from ``cfg.outliers`` (and ``umap``, ``seed``)."""
    o = cfg.outliers
    return FinetuneSettings(optim=outlier_optim(cfg, with_), keep_ratio=cfg.umap.keep_ratio, init=cfg.umap.init,
                            aux_batch_size=o.aux_batch_size,
                            loss=OutlierLoss(lam=o.lam, energy_weight=o.energy_weight, m_in=o.m_in, m_out=o.m_out),
                            poem=o.poem, seed=cfg.seed,
                            aux_augment=random_shift_flip if cfg.data.augment else None)


def run_outlier_methods(cfg: DemoConfig, out_dir: str | Path, base_checkpoint: str | Path) -> RunOutput:
    """Fine-tune copies of the base at ``base_checkpoint`` with auxiliary outliers for every
    (method, variant) of ``cfg.outliers``, evaluate them next to the base with ``cfg.scores``, write the run
    directory; return what was written (:class:`~unleash_ood.run.pipeline.RunOutput`).

    The auxiliary pool is ``load_aux_pool(outliers.aux, image_shape, outliers.aux_size, cfg.data.seed)``
    (``builtin``: the generated pool, disjoint from every built-in OOD test set; a path spec overlapping an
    OOD test set of the run is refused); the sampled indices go to ``checkpoints/aux_subset.safetensors``.
    ζ is estimated once (``um`` settings) when a +UM/+UMAP variant runs; +UMAP uses ``umap.zeta`` when set,
    like the main pipeline. Records carry ``aux``: whether the model saw auxiliary data (False for the base).
    """
    o = cfg.outliers
    methods, withs = _check_lists(o.methods, o.withs)
    check_aux_overlap(o.aux, cfg.data.ood_specs(), cfg.data.data_root, cfg.data.dataset)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    cfg, prep, base, out = start_run(cfg, out_dir, base_checkpoint)
    meta = model_meta(cfg.model, prep.id, "base")
    run = RunLayout(out)
    write_json(run.config, cfg.model_dump())
    save_model(run.checkpoint("base"), base, meta)
    say(f"auxiliary pool: {o.aux_size} images from {o.aux} (seed {cfg.data.seed})")
    aux, aux_rec = load_aux_pool(o.aux, prep.id.image_shape, n=o.aux_size, seed=cfg.data.seed,
                                 data_root=cfg.data.data_root)
    save_tensors(run.checkpoint("aux_subset"),
                 {k: v for k, v in aux_rec.items() if isinstance(v, torch.Tensor)},
                 {"kind": "aux_subset", **aux_record_json(aux_rec)})
    timings["data"] = time.perf_counter() - t0

    pool_info = {"source": "load_auxiliary_pool" if aux_rec["kind"] == "builtin" else aux_rec["kind"],
                 "size": o.aux_size, **aux_record_json(aux_rec),
                 "indices_file": str(run.checkpoint("aux_subset").relative_to(run.root))}
    if aux_rec["kind"] == "builtin":
        pool_info.update(mix=AUX_MIX, pictures=AUX_PICTURES)
    summary: dict = {"base_checkpoint": str(base_checkpoint), "methods": methods, "withs": withs,
                     "aux_pool": pool_info,
                     "settings": {"epochs": o.epochs, "lr": o.lr, "umap_lr": o.umap_lr or cfg.umap.optim.lr,
                                  "aux_batch_size": o.aux_batch_size or cfg.um.optim.batch_size,
                                  "id_batch_size": cfg.um.optim.batch_size, "lam": o.lam,
                                  "energy_weight": o.energy_weight, "m_in": o.m_in, "m_out": o.m_out,
                                  "umap_keep_ratio": cfg.umap.keep_ratio, "poem": o.poem or {}}}
    zeta = umap_zeta = None
    if {"um", "umap"} & set(withs):
        t = time.perf_counter()
        estimate = resolve_zeta(base, prep, cfg.um, cfg.seed)
        zeta = estimate.value
        umap_zeta = cfg.umap.zeta if cfg.umap.zeta is not None else zeta
        say(zeta_line(estimate))
        write_json(run.zeta, estimate.as_dict())
        summary.update(zeta=estimate.as_dict(), umap_zeta=umap_zeta)
        timings["zeta"] = time.perf_counter() - t

    models: dict[str, tuple[nn.Module, dict | None]] = {"base": (base, None)}
    logs: dict[str, dict] = {}
    for method in methods:
        for with_ in withs:
            name = run_name(method, with_)
            z = {"none": None, "um": zeta, "umap": umap_zeta}[with_]
            say(f"{name}: {OUTLIER_LABELS[method]}{WITH_LABELS[with_]}" + (f", zeta {z:.4f}" if z is not None else ""))
            t = time.perf_counter()
            model = copy.deepcopy(base)
            batches = prep.train_batches(cfg.um.optim.batch_size, cfg.seed + OUTLIER_ID_SEED_OFFSET,
                                         cfg.data.augment)
            result = finetune_with_outliers(model, batches, aux, method, with_, z, finetune_settings(cfg, with_))
            run_meta = {**meta, "kind": name, "method": method, "with": with_, "zeta": z,
                        "aux_size": o.aux_size, "aux_seed": cfg.data.seed}
            _save_variant(run, name, model, result, run_meta, cfg)
            models[name] = (model, result["masks"])
            info = {k: v for k, v in result["aux"].items() if k != "indices"}
            info["num_indices_used"] = len(result["aux"]["indices"])
            logs[name] = {"zeta": z, "history": result["history"], "aux": info}
            timings[name] = time.perf_counter() - t
            say(f"{name}: {timings[name]:.0f} s, final train CE {result['history'][-1]['train_ce']:.4f}")
    write_json(run.outlier_log, logs)

    t = time.perf_counter()
    ev = evaluate_models(models, prep, configured_detectors(cfg.scores))
    if len(prep.id.val[0]):  # ID validation accuracy + synthetic validation OOD: what may be selected on
        summary["validation"] = validation_metrics(models, prep)
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    for r in ev.records:
        r["aux"] = r["model"] != "base"
    summary.update(masked_id_acc=ev.masked_acc, timings_s=timings)
    write_json(run.summary, summary)
    notes = outlier_notes(cfg, prep, summary)
    write_outputs(out, ev, notes, title=f"unleash-ood: {prep.id.name} (ID), fine-tuning with auxiliary outliers")
    return RunOutput(ev.records, ev.flat(), notes, summary)


def _save_variant(run: RunLayout, name: str, model: nn.Module, result: dict, run_meta: dict, cfg: DemoConfig) -> None:
    """A variant's checkpoint (its mask for +UMAP) and POEM's per-epoch selections."""
    if result["masks"] is not None:
        save_masks(run.mask(name), result["masks"],
                   {**run_meta, "kind": f"{name}_mask", "keep_ratio": cfg.umap.keep_ratio})
    else:
        save_model(run.checkpoint(name), model, run_meta)
    if result["selected"] is not None:
        save_tensors(run.checkpoint(f"{name}_selected"),
                     {f"epoch{e:03d}": idx for e, idx in enumerate(result["selected"], 1)},
                     {"kind": f"{name}_selected", "aux_size": cfg.outliers.aux_size, "aux_seed": cfg.data.seed})


def outlier_notes(cfg: DemoConfig, prep, summary: dict) -> str:
    """The 'Run' section of results.md for an outlier run."""
    s, pool = summary["settings"], summary["aux_pool"]
    lines = ["## Run", "",
             f"- ID: {prep.id.name}, {len(prep.id.train[0])} train / {len(prep.id.test[0])} test images; "
             f"model {cfg.model.arch} {cfg.model.kwargs}; base from {summary['base_checkpoint']}",
             (f"- Auxiliary outliers (D_aux): {pool['size']} images from the built-in pool (seed {pool['seed']}; "
              "picture crops, blobs, shapes, noise), disjoint from every built-in OOD test set; "
              if pool.get("kind", "builtin") == "builtin" else
              f"- Auxiliary outliers (D_aux): {pool['size']} of {pool['pool_size']} images sampled from "
              f"`{pool['spec']}` (seed {pool['seed']}; indices in {pool['indices_file']}); ")
             + f"{s['aux_batch_size']} per ID batch of {s['id_batch_size']}.",
             f"- Fine-tuning: {s['epochs']} epochs, lr {s['lr']} (masks for +UMAP: lr {s['umap_lr']}, keep ratio "
             f"{s['umap_keep_ratio']}), cosine; OE λ = {s['lam']}; energy weight {s['energy_weight']}, "
             f"m_in = {s['m_in']}, m_out = {s['m_out']}; POEM re-selects its outliers every epoch."]
    if "zeta" in summary:
        z = summary["zeta"]
        lines.append(f"- +UM: ζ = {z['mean']:.4f} ± {z['sd']:.4f} (keep ratio {z['keep_ratio']}); "
                     f"+UMAP: ζ = {summary['umap_zeta']:.4f}. A +UMAP model's ID-ACC is the deployed (unmasked) "
                     "model's; with the mask: "
                     + (", ".join(f"{k} {v:.2f}" for k, v in summary["masked_id_acc"].items()) or "—"))
    t = summary["timings_s"]
    lines += ["", "Wall-clock (s): " + ", ".join(f"{k} {v:.0f}" for k, v in t.items())]
    return "\n".join(lines)


def _scored(cfg: DemoConfig) -> DemoConfig:
    return build_config(cfg, overrides=[{"scores": {"use": list(cfg.outliers.scores)}}])


def run_outliers(cfg: DemoConfig, out_dir: str | Path, base_checkpoint: str | Path) -> list[dict]:
    """:func:`run_outlier_methods` scored with ``outliers.scores``; returns the records."""
    return run_outlier_methods(_scored(cfg), out_dir, base_checkpoint).records


def demo_with_outliers(cfg: DemoConfig, out_dir: str | Path, checkpoint: str | Path | None = None,
                       force: bool = False) -> list[dict]:
    """The demo (on ``checkpoint`` instead of base training, if given; a ζ toward chance stops it unless
    ``force``), then the outlier family from its base into ``OUT/outliers``; one merged table in ``OUT``."""
    out = Path(out_dir)
    run = RunLayout(out)
    demo = run_stages(cfg, out, demo_stages(cfg, train=checkpoint is None), init_checkpoint=checkpoint,
                      guard=not force)
    extra = run_outlier_methods(_scored(cfg), run.outliers.root, run.checkpoint("base"))
    merged = [{**r, "aux": False} for r in demo.records] + [r for r in extra.records if r["model"] != "base"]
    scores = {**demo.scores, **{k: v for k, v in extra.scores.items() if not k.startswith("base/")}}
    # the blank lines as when the notes were cut from the demo's results.md
    notes = demo.notes + "\n\n\nOutlier fine-tuning: see outliers/results.md for its settings."
    save_results(out, merged, scores, title="unleash-ood demo: Fashion-MNIST (ID), with auxiliary outliers",
                 notes=notes)
    return merged
