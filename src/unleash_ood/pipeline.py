"""The embedded-default pipeline as plain library calls: train with once-covered tracking,
UM, the CE control, UMAP, evaluation and the result files. The CLI is a thin shell over this."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import load_into, load_masks, save_masks, save_model
from .config import DataConfig, DemoConfig, ModelConfig, UMAPConfig, UMConfig, validate
from .data import IDData, default_patch, load_id_data, patch_shuffle
from .data.specs import config_groups
from .data.suite import load_ood_sets
from .data.transforms import random_shift_flip
from .errors import UserError
from .detectors import Detector
from .evaluate import TensorBatches, collect_outputs, evaluate, score_outputs
from .features import flatten_features, save_features
from .masking import apply_masks, remove_masks
from .methods.um import ZetaEstimate, estimate_zeta, unleash
from .methods.umap import learn_umap_mask
from .metrics import accuracy, ood_metrics
from .models import build_model
from .plots import plot_score_histograms, plot_training_curve
from . import runtime
from .report import MODEL_ORDER, OUTLIER_LABELS, flatten_scores, save_results, write_json
from .train import NonFiniteLossError, OptimConfig, ResumeState, train

EVAL_BATCH = 512


def say(msg: str) -> None:
    """A stage message that does not break progress bars."""
    tqdm.write(msg)


@dataclass
class Prepared:
    """Everything a run evaluates on: ID splits, OOD test sets, the synthetic validation OOD set, and
    each OOD test set's group (``groups[name]``: ``near`` or ``far``)."""

    id: IDData
    ood: dict[str, torch.Tensor]
    val_ood: torch.Tensor
    groups: dict[str, str] = field(default_factory=dict)

    def batches(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> TensorBatches:
        return TensorBatches(images, labels, EVAL_BATCH)

    def train_batches(self, batch_size: int, seed: int, augment: bool) -> TensorBatches:
        return TensorBatches(*self.id.train, batch_size=batch_size, shuffle=True, seed=seed,
                             augment=random_shift_flip if augment else None)

    def ood_batches(self) -> dict[str, TensorBatches]:
        return {name: self.batches(x) for name, x in self.ood.items()}


def prepare_data(cfg: DataConfig, ood_specs: list[str] | None = None,
                 near_specs: list[str] | None = None) -> Prepared:
    """Load the ID splits and the OOD suite with its groups. ``ood_specs`` (far) and ``near_specs``, when
    either is given, replace the config's suite; a built-in keeps its own group either way."""
    say(f"loading {cfg.dataset} and OOD sets")
    data = load_id_data(cfg.dataset, cfg.data_root, cfg.val_size, cfg.train_size, cfg.test_size, cfg.seed,
                        cfg.download, cfg.id_classes)
    pairs = (config_groups(near_specs or [], ood_specs or [], (), cfg.dataset) if ood_specs or near_specs
             else cfg.ood_groups())
    ood = load_ood_sets([spec for spec, _ in pairs], cfg.dataset, cfg.data_root, data.image_shape,
                        n=cfg.ood_size, seed=cfg.seed, download=cfg.download, heldout=data.heldout)
    groups = dict(zip(ood, (group for _, group in pairs)))  # load_ood_sets keeps the order of the specs
    val_x = data.val[0][: cfg.val_ood_size] if len(data.val[0]) else data.train[0][: cfg.val_ood_size]
    return Prepared(data, ood, patch_shuffle(val_x, patch=default_patch(val_x.shape[-1]), seed=cfg.seed), groups)


def build(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Build the configured model in channels_last (faster convolutions on CPU)."""
    return build_model(cfg.arch, num_classes, **cfg.kwargs).to(memory_format=torch.channels_last)


def model_meta(model_cfg: ModelConfig, data: IDData, kind: str) -> dict:
    return {"arch": model_cfg.arch, "model_kwargs": model_cfg.kwargs, "num_classes": data.num_classes,
            "dataset": data.name, "kind": kind}


def track(model: nn.Module, prep: Prepared, scores: list[str]) -> dict:
    """One epoch's once-covered record: ID test/val accuracy and CE, OOD test and validation-OOD metrics."""
    test = collect_outputs(model, prep.batches(*prep.id.test))
    id_scores = score_outputs(test, scores)
    rec = {"id_acc": accuracy(test.logits.numpy(), test.labels.numpy()),
           "test_ce": float(F.cross_entropy(test.logits, test.labels)), "ood": {}}
    for name, x in prep.ood.items():
        ood_scores = score_outputs(collect_outputs(model, prep.batches(x)), scores)
        rec["ood"][name] = {s: ood_metrics(id_scores[s], ood_scores[s]) for s in scores}
    if len(prep.id.val[0]):
        val = collect_outputs(model, prep.batches(*prep.id.val))
        val_scores = score_outputs(val, scores)
        shuffled = score_outputs(collect_outputs(model, prep.batches(prep.val_ood)), scores)
        rec["val_acc"] = accuracy(val.logits.numpy(), val.labels.numpy())
        rec["val_ood"] = {s: ood_metrics(val_scores[s], shuffled[s]) for s in scores}
    return rec


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


class BaseLog(list):
    """The tracked records of a base training (a list), with ``train_s``: its training seconds over
    every session (a resumed training included)."""

    train_s: float = 0.0


def train_base(model: nn.Module, prep: Prepared, optim: OptimConfig, out: Path, eval_every: int,
               track_scores: list[str], augment: bool, seed: int, model_cfg: ModelConfig,
               resume: bool = False) -> BaseLog:
    """Base training; every ``eval_every`` epochs (and at the end) a tracked record and a checkpoint.

    After every epoch ``checkpoints/last_state.pt`` holds all that resuming needs (model, optimizer,
    scheduler, RNG states, epoch, the log so far); ``resume=True`` continues from it (a finished
    training is not repeated) and ends with the same weights and log as an uninterrupted run.
    The log file is rewritten only once a resume was accepted (a refused one leaves it as it was).
    Under torchrun only rank 0 evaluates and writes; the log is then broadcast to every rank.
    """
    log_path, ckpt_dir = out / "train_log.jsonl", out / "checkpoints"
    log: list[dict] = []
    last_good: list[Path] = []
    meta = model_meta(model_cfg, prep.id, "base")
    primary = runtime.is_primary()
    state = ResumeState(ckpt_dir / "last_state.pt", resume=resume, extra=lambda: log)
    if primary and not (resume and state.path.is_file()):
        log_path.unlink(missing_ok=True)

    def restore(saved_log) -> None:  # resuming: the log so far, rewritten (drops records of a lost epoch)
        log[:] = saved_log or []
        if primary:
            log_path.unlink(missing_ok=True)
            for rec in log:
                append_jsonl(log_path, rec)
        say(f"resuming base training after epoch {state.resumed_epoch}")

    state.restore = restore

    def on_epoch_end(epoch: int, record: dict) -> None:
        if (epoch % eval_every and epoch != optim.epochs) or not primary:
            return
        path = save_model(ckpt_dir / f"base_epoch{epoch:03d}.safetensors", model, {**meta, "epoch": epoch})
        last_good[:] = [path]
        rec = {**record, **track(model, prep, track_scores), "checkpoint": str(path.relative_to(out))}
        log.append(rec)
        append_jsonl(log_path, rec)
        mean = {s: np.mean([rec["ood"][d][s]["fpr95"] for d in rec["ood"]]) for s in track_scores}
        say(f"epoch {epoch:3d}  train CE {record['train_ce']:.4f}  test acc {rec['id_acc']:.2f}  "
            + "  ".join(f"{s} FPR95 {v:.1f}" for s, v in mean.items()))

    try:
        train(model, prep.train_batches(optim.batch_size, seed, augment), optim, on_epoch_end=on_epoch_end,
              desc="base", state=state)
    except NonFiniteLossError as e:
        if not last_good and state.resumed_epoch:  # the epochs before the resume left their checkpoints
            last_good = sorted(ckpt_dir.glob("base_epoch*.safetensors"))[-1:]
        where = f"last good checkpoint: {last_good[0]}" if last_good else "no checkpoint was written yet"
        raise NonFiniteLossError(f"{e}; {where}") from None
    if primary:
        save_model(ckpt_dir / "base.safetensors", model, {**meta, "epoch": optim.epochs})
    result = BaseLog(runtime.broadcast_object(log))
    result.train_s = state.elapsed_s
    return result


def resolve_zeta(model: nn.Module, prep: Prepared, cfg: UMConfig, seed: int) -> ZetaEstimate:
    """ζ given directly, or estimated over ``zeta_draws`` random masks on the training set."""
    if cfg.zeta is not None:
        return ZetaEstimate(keep_ratio=cfg.keep_ratio, values=[cfg.zeta], estimator=cfg.zeta_estimator)
    say(f"estimating zeta: keep ratio {cfg.keep_ratio}, {cfg.zeta_draws} mask draws, {cfg.zeta_estimator}")
    return estimate_zeta(model, prep.batches(*prep.id.train), cfg.keep_ratio, cfg.zeta_draws, seed,
                         cfg.zeta_estimator)


def zeta_line(zeta: ZetaEstimate) -> str:
    """One log line: the chosen ζ, its estimator, and the draws' mean ± sd and median."""
    return (f"zeta = {zeta.value:.4f} ({zeta.estimator} of {len(zeta.values)} draw(s); "
            f"mean {zeta.mean:.4f} ± {zeta.sd:.4f}, median {zeta.median:.4f})")


def run_um(base: nn.Module, prep: Prepared, cfg: UMConfig, zeta: float, seed: int,
           augment: bool) -> tuple[nn.Module, list[dict]]:
    """Fine-tune a copy of ``base`` with flooding at ζ (ζ = 0: the plain-CE control)."""
    model = copy.deepcopy(base)
    hist = unleash(model, prep.train_batches(cfg.optim.batch_size, seed + 1, augment), zeta, cfg.optim)
    return model, hist


def run_umap(base: nn.Module, prep: Prepared, cfg: UMAPConfig, zeta: float, seed: int,
             augment: bool) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Learn the UMAP mask on the frozen ``base``."""
    return learn_umap_mask(base, prep.train_batches(cfg.optim.batch_size, seed + 2, augment), zeta,
                           cfg.keep_ratio, cfg.optim, init=cfg.init, seed=seed)


def evaluate_models(models: dict[str, tuple[nn.Module, dict | None]], prep: Prepared,
                    scores: Iterable[str | Detector], features_path: Path | None = None,
                    ) -> tuple[list[dict], dict[str, np.ndarray], dict[str, dict], dict[str, float]]:
    """Evaluate each ``name → (model, mask or None)``; a masked model's ID-ACC is the unmasked one's.

    Detectors are fitted afresh per model, on the network as it is used (the mask applied). With
    ``features_path``, the penultimate features and effective classifier of each model go there."""
    records, flat, by_model, masked_acc, feats = [], {}, {}, {}, {}
    scores = list(scores)
    train_b = prep.batches(*prep.id.train)
    for name, (model, masks) in models.items():
        say(f"evaluating {name}")
        if masks is not None:
            apply_masks(model, masks)
        try:
            ev = evaluate(model, prep.batches(*prep.id.test), prep.ood_batches(), scores, train=train_b,
                          num_classes=prep.id.num_classes, keep_features=features_path is not None)
        finally:
            if masks is not None:
                remove_masks(model)
        if masks is not None:
            masked_acc[name] = ev.id_acc
            test = collect_outputs(model, prep.batches(*prep.id.test))
            ev.id_acc = accuracy(test.logits.numpy(), test.labels.numpy())
        records += ev.records(name, prep.groups)
        flat.update(flatten_scores(name, ev.scores))
        by_model[name] = ev.scores
        if ev.features is not None:
            feats.update(flatten_features(name, ev.features))
    if features_path is not None:
        save_features(features_path, feats)
    return records, flat, by_model, masked_acc


def validation_metrics(models: dict[str, tuple[nn.Module, dict | None]], prep: Prepared,
                       scores: tuple[str, ...] = ("Energy", "MSP")) -> dict[str, dict]:
    """Per model: ID validation accuracy and metrics on the synthetic validation OOD set — what
    hyperparameters may be selected on (the OOD test sets never are)."""
    out = {}
    for name, (model, masks) in models.items():
        if masks is not None:
            apply_masks(model, masks)
        try:
            val = collect_outputs(model, prep.batches(*prep.id.val))
            shuffled = collect_outputs(model, prep.batches(prep.val_ood))
        finally:
            if masks is not None:
                remove_masks(model)
        val_s, ood_s = score_outputs(val, scores), score_outputs(shuffled, scores)
        out[name] = {"val_acc": accuracy(val.logits.numpy(), val.labels.numpy()),
                     **{s: ood_metrics(val_s[s], ood_s[s]) for s in scores}}
    return out


def best_epochs(log: list[dict], scores: list[str]) -> dict:
    """Per tracked score: epoch of the best mean FPR95 on the OOD test sets (analysis only) and on the
    validation OOD set (a legitimate selection), vs the final epoch."""
    out = {}
    for s in scores:
        test = [np.mean([r["ood"][d][s]["fpr95"] for d in r["ood"]]) for r in log]
        row = {"final_epoch": log[-1]["epoch"], "final_test_fpr95": float(test[-1]),
               "best_test_epoch": log[int(np.argmin(test))]["epoch"], "best_test_fpr95": float(np.min(test))}
        if "val_ood" in log[0]:
            val = [r["val_ood"][s]["fpr95"] for r in log]
            i = int(np.argmin(val))
            row.update(best_val_epoch=log[i]["epoch"], test_fpr95_at_best_val=float(test[i]))
        out[s] = row
    return out


def write_outputs(out: Path, records: list[dict], flat: dict, by_model: dict, notes: str,
                  title: str) -> None:
    save_results(out, records, flat, title=title, notes=notes)
    models = [m for m in MODEL_ORDER if m in by_model]
    for score in ("Energy", "MSP"):
        if all(score in by_model[m]["id"] for m in models):
            plot_score_histograms({m: {d: v[score] for d, v in by_model[m].items()} for m in models}, score,
                                  out / "plots" / f"score_hist_{score.lower()}.png", models)


def start_run(cfg: DemoConfig, out_dir: str | Path, init_checkpoint: str | Path | None = None,
              ) -> tuple[DemoConfig, Prepared, nn.Module, Path]:
    """What every run starts with: seed, data, the model (built, or loaded from ``init_checkpoint`` —
    its architecture then replaces ``cfg.model``), the one device decision, the output directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    prep = prepare_data(cfg.data)
    if init_checkpoint is not None:
        model, model_cfg = load_checkpoint(init_checkpoint, prep.id.num_classes, fallback=cfg.model)
        cfg = cfg.model_copy(update={"model": model_cfg})
    else:
        model = build(cfg.model, prep.id.num_classes)
    rt = runtime.setup(cfg.runtime.device, cfg.runtime.amp, cfg.runtime.compile)
    model = runtime.place(model, rt)  # moved once; batches follow it (to_model_input)
    return cfg, prep, model, runtime.output_dir(out)  # under torchrun only rank 0 writes there


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
        log = train_base(model, prep, cfg.base, out, cfg.eval_every, cfg.track_scores, cfg.data.augment,
                         cfg.seed, cfg.model, resume=resume)
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
    records, flat, by_model, masked_acc = evaluate_models(models, prep, cfg.scores.detectors(),
                                                          out / "features.npz" if cfg.save_features else None)
    if len(prep.id.val[0]):
        summary["validation"] = validation_metrics(models, prep)
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    summary.update(umap_masked_id_acc=masked_acc.get("umap"), timings_s=timings)
    write_json(out / "summary.json", {**summary, **(extra_summary or {})})
    notes = run_notes(cfg, prep, summary)
    write_outputs(out, records, flat, by_model, notes, title=f"unleash-ood: {prep.id.name} (ID)")
    return RunOutput(records, flat, notes, {**summary, **(extra_summary or {})})


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


def load_run_config(run_dir: Path) -> DemoConfig:
    path = run_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a finished run: {path} is missing")
    try:
        return validate(DemoConfig, json.loads(path.read_text()))  # type: ignore[return-value]
    except json.JSONDecodeError as e:
        raise UserError(f"corrupt run config {path}: {e}") from None


def load_checkpoint(path: str | Path, num_classes: int | None = None,
                    fallback: ModelConfig | None = None) -> tuple[nn.Module, ModelConfig]:
    """Build the model a checkpoint's metadata names (``fallback`` for a bare state_dict) and load it strictly.

    ``path`` may also be ``pytorch-ood:NAME``: resolved (cached, SHA-256 checked, converted) first."""
    from .checkpoint import load_tensors
    from .pretrained import resolve_checkpoint

    path = resolve_checkpoint(path)
    _, meta = load_tensors(path)
    if "arch" in meta:
        model_cfg = ModelConfig(arch=meta["arch"], kwargs=meta.get("model_kwargs", {}))
    elif fallback is not None:
        model_cfg = fallback
    else:
        raise UserError(f"checkpoint {path} has no architecture metadata; say which model it is (model.arch=...)")
    if num_classes and meta.get("num_classes") not in (None, num_classes):
        raise UserError(f"checkpoint {path} has {meta['num_classes']} classes, the dataset has {num_classes}")
    model = build(model_cfg, num_classes or meta.get("num_classes"))
    load_into(path, model)
    return model, model_cfg


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
    records, flat, by_model, _ = evaluate_models(models, prep, cfg.scores.detectors(),
                                                 out / "features.npz" if save_features else None)
    if any(name.split("_")[0] in OUTLIER_LABELS for name in models):
        for r in records:
            r["aux"] = r["model"].split("_")[0] in OUTLIER_LABELS
    write_outputs(out, records, flat, by_model, f"Models of run {run}.", title="unleash-ood eval")
    return records
