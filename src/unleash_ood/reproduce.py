"""``unleash-ood reproduce NAME``: the paper's analyses at embedded scale (Fashion-MNIST, small_cnn).

Every analysis is a composition of the library's own calls (``pipeline.train_base`` with its
once-covered tracking, ``resolve_zeta``, ``run_um``, ``run_umap``, ``evaluate_models``, the masking
helpers). Each sub-run writes into its own folder and leaves a ``result.json`` marker; a re-run skips
finished sub-runs. Base trainings are shared between analyses in ``<out>/../_base_<hash>`` keyed by
everything that determines them; UM/UMAP runs on a base are cached inside that folder.

Interpretations (documented in docs/gallery.md as well):
- "early stopping on OOD" selects on the synthetic validation OOD set (patch-shuffled held-out ID
  images, ``val_ood`` in the training log), never on an OOD test set;
- dropout for SmallCNN (which has none) is a forward pre-hook on the classifier ``fc`` that drops its
  input features in training mode; the state dict and architecture stay those of ``small_cnn``;
- "plain pruning" is edge-popup with plain CE, i.e. ``run_umap`` with ζ = 0;
- "masking scores" ranks weights by the |scores| of an edge-popup mask briefly learned with plain CE
  on the frozen model; "masking weights" ranks them by |weight| (magnitude). Layer-wise keeps the top
  fraction of each layer, model-wise the top fraction over all layers pooled.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import hashlib
import io
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import atomic_write, load_masks, save_masks, save_model
from .config import DemoConfig, UMConfig, apply_overrides, validate
from .errors import UserError
from .evaluate import collect_outputs
from .masking import (add_popup_masks, maskable_layers, masked, original_weight, random_layer_masks,
                      remove_masks, topk_mask)
from .methods.umap import frozen_eval_mode
from .pipeline import (Prepared, build, evaluate_models, model_meta, prepare_data, resolve_zeta, run_um,
                       run_umap, say, train_base)
from .report import write_json, write_text
from .train import OptimConfig, ce_step, train

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SCHEDULES = ("cosine", "linear", "multi_decay", "multi_step")

# The embedded-scale default of every analysis (≈ 2–5 min each on 2 CPU cores) and the --quick variant.
DEFAULTS = {
    "data": {"train_size": 6000, "test_size": 1500, "val_size": 1500, "ood_size": 800, "val_ood_size": 800},
    "model": {"kwargs": {"width": 8}},
    "base": {"epochs": 20},
    "eval_every": 2,
    "um": {"keep_ratio": 0.95, "zeta_draws": 2, "optim": {"epochs": 5}},  # the gallery's setting
    "umap": {"optim": {"epochs": 5}},
    "scores": ["MSP", "ODIN", "Energy"],
}
QUICK = {
    "data": {"train_size": 600, "test_size": 300, "val_size": 300, "ood_size": 150, "val_ood_size": 150,
             "ood": ["digits", "uniform"]},
    "model": {"kwargs": {"width": 8}},
    "base": {"epochs": 2},
    "eval_every": 1,
    "um": {"zeta_draws": 1, "optim": {"epochs": 1}},
    "umap": {"optim": {"epochs": 1}},
    "scores": ["MSP", "Energy"],
}

# Analysis-specific parameters (override with analysis.KEY=VALUE): (default, quick).
PARAMS: dict[str, dict[str, tuple]] = {
    "once-covered": {"schedules": (list(SCHEDULES), list(SCHEDULES)), "scores": (["Energy", "MSP"],) * 2},
    "score-hist": {"select_score": ("Energy",) * 2},
    "mask-loss": {"keep_ratios": ([1.0, 0.995, 0.99, 0.975, 0.95, 0.9, 0.8, 0.7, 0.5], [1.0, 0.9, 0.5]),
                  "draws": (2, 1), "batch": (128, 64), "batch_keep": (0.95, 0.95), "grid_keep": (0.8, 0.8),
                  "popup_epochs": (1, 1), "grid_n": (16, 8)},
    "keep-ratio": {"keep_ratios": ([0.995, 0.99, 0.975, 0.95, 0.9, 0.8], [0.95, 0.8])},
    "prune-rate": {"keep_ratios": ([0.3, 0.5, 0.7, 0.9], [0.5, 0.9])},
    "finetune-epochs": {"short": (2, 1), "long": (10, 2)},
    "typical-atypical": {"sizes": ([500, 1500], [50, 100]), "epochs": (5, 1), "lr": (0.01, 0.01),
                         "select_score": ("Energy",) * 2},
    "overfitting": {"weight_decays": ([0.1, 0.01, 0.001],) * 2, "dropouts": ([0.3, 0.4, 0.5],) * 2,
                    "select_score": ("Energy",) * 2},
    # the paper's Fig. 11 uses 50%; here the masked CE stays above ζ at 0.5, where UMAP ≡ plain pruning
    "weights": {"keep_ratio": (0.7, 0.5)},
}
ANALYSES = tuple(PARAMS)


# ----------------------------------------------------------------------------- small helpers

def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _merge(dst: dict, src: dict) -> dict:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)
    return dst


def _savefig(fig, path: Path) -> Path:
    fig.tight_layout()
    if fig._suptitle is not None:  # above the panel titles (bbox_inches="tight" makes room)
        fig._suptitle.set_y(1.0)
        fig._suptitle.set_va("bottom")
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.2f}"
    return "" if v is None else str(v)


def write_table(out: Path, name: str, rows: list[dict], title: str = "") -> None:
    """``name``.md / .csv / .json with one row per dict (columns: the union of keys, in order)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    write_json(out / f"{name}.json", rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{r[k]:.4f}" if isinstance(r.get(k), float) else r.get(k, "")) for k in cols})
    write_text(out / f"{name}.csv", buf.getvalue())
    md = ([f"# {title}", ""] if title else []) + ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    md += ["| " + " | ".join(_fmt(r.get(k)) for k in cols) + " |" for r in rows]
    write_text(out / f"{name}.md", "\n".join(md) + "\n")


def mean_rows(records: list[dict]) -> dict[tuple[str, str], dict]:
    """``(model, score) → mean-over-OOD-sets record`` from evaluate_models' records."""
    return {(r["model"], r["score"]): r for r in records if r["ood"] == "mean"}


def mean_fpr(rec: dict, score: str) -> float:
    return float(np.mean([rec["ood"][d][score]["fpr95"] for d in rec["ood"]]))


def mean_metric(rec: dict, score: str, metric: str) -> float:
    return float(np.mean([rec["ood"][d][score][metric] for d in rec["ood"]]))


def add_fc_dropout(model: nn.Module, p: float) -> nn.Module:
    """Dropout(p) on the classifier's input in training mode, as a forward pre-hook on ``model.fc``
    (SmallCNN has no dropout; the state dict and the architecture are unchanged)."""
    if p > 0:
        model.fc.register_forward_pre_hook(lambda m, args: (F.dropout(args[0], p, m.training),))
    return model


# ----------------------------------------------------------------------------- context and caching

@dataclasses.dataclass
class BaseRun:
    """A finished base training (shared between analyses)."""

    dir: Path
    log: list[dict]
    ctx: Context

    def epochs(self) -> list[int]:
        return [r["epoch"] for r in self.log]

    def load(self, epoch: int | None = None) -> nn.Module:
        from .pipeline import load_checkpoint

        name = "base.safetensors" if epoch is None else f"base_epoch{epoch:03d}.safetensors"
        model, _ = load_checkpoint(self.dir / "checkpoints" / name, self.ctx.prep.id.num_classes)
        model.eval()
        return model

    def best_val_epoch(self, score: str) -> int:
        """The epoch with the lowest FPR95 on the VALIDATION OOD set (never on test OOD sets)."""
        if "val_ood" not in self.log[0]:
            raise UserError("selecting an epoch needs a validation split (data.val_size > 0)")
        return self.log[int(np.argmin([r["val_ood"][score]["fpr95"] for r in self.log]))]["epoch"]

    def best_val_acc_epoch(self) -> int:
        return self.log[int(np.argmax([r["val_acc"] for r in self.log]))]["epoch"]


_PREP_CACHE: dict[str, Prepared] = {}


class Context:
    """One analysis run: config, output folder, shared base folder, lazily prepared data, progress."""

    def __init__(self, name: str, cfg: DemoConfig, params: dict, out: Path, quick: bool) -> None:
        self.name, self.cfg, self.params, self.out, self.quick = name, cfg, params, out, quick
        self.shared = out.parent
        self._prep: Prepared | None = None
        self.step_no = 0
        self.pngs: list[Path] = []

    @property
    def prep(self) -> Prepared:
        if self._prep is None:
            key = _hash(self.cfg.data.model_dump())
            if key not in _PREP_CACHE:  # analyses run in one process (``all``, tests) load the data once
                torch.manual_seed(self.cfg.seed)
                _PREP_CACHE.clear()
                _PREP_CACHE[key] = prepare_data(self.cfg.data)
            self._prep = _PREP_CACHE[key]
        return self._prep

    def subrun(self, d: Path, label: str, fn: Callable[[Path], dict]) -> dict:
        """Run ``fn(d)`` unless ``d/result.json`` exists; the result dict is that file."""
        self.step_no += 1
        marker = d / "result.json"
        if marker.is_file():
            say(f"[{self.name}] ({self.step_no}) {label}: done earlier, skipped")
            return json.loads(marker.read_text())
        say(f"[{self.name}] ({self.step_no}) {label} ...")
        t = time.perf_counter()
        d.mkdir(parents=True, exist_ok=True)
        res = fn(d)
        res["wall_s"] = round(time.perf_counter() - t, 1)
        write_json(marker, res)
        say(f"[{self.name}] ({self.step_no}) {label}: finished in {res['wall_s']:.0f}s")
        return res

    # -- shared base training ------------------------------------------------------------
    def base(self, schedule: str | None = None, weight_decay: float | None = None, dropout: float = 0.0,
             track: bool = True) -> BaseRun:
        cfg = self.cfg
        optim = cfg.base.model_copy(update={k: v for k, v in (("schedule", schedule), ("weight_decay", weight_decay))
                                            if v is not None})
        data = cfg.data.model_dump(exclude={"data_root", "download"})
        eval_every = cfg.eval_every if track else optim.epochs
        key = {"data": data, "model": cfg.model.model_dump(), "base": optim.model_dump(), "eval_every": eval_every,
               "track_scores": cfg.track_scores, "seed": cfg.seed, "dropout": dropout}
        d = self.shared / f"_base_{_hash(key)}"
        label = f"base training ({optim.schedule}, wd {optim.weight_decay}, dropout {dropout}, {optim.epochs} epochs)"

        def run(d: Path) -> dict:
            write_json(d / "config.json", key)
            torch.manual_seed(cfg.seed)
            model = add_fc_dropout(build(cfg.model, self.prep.id.num_classes), dropout)
            log = train_base(model, self.prep, optim, d, eval_every, cfg.track_scores, cfg.data.augment, cfg.seed,
                             cfg.model)
            return {"epochs": [r["epoch"] for r in log]}

        self.subrun(d, label, run)
        log = [json.loads(line) for line in (d / "train_log.jsonl").read_text().splitlines()]
        return BaseRun(d, log, self)

    # -- UM / UMAP on a base (cached in the base folder) ----------------------------------------
    def zeta(self, base: BaseRun, keep_ratio: float | None = None, epoch: int | None = None) -> dict:
        um = self.cfg.um if keep_ratio is None else self.cfg.um.model_copy(update={"keep_ratio": keep_ratio})
        key = {"keep": um.keep_ratio, "zeta": um.zeta, "draws": um.zeta_draws, "epoch": epoch, "seed": self.cfg.seed}
        return self.subrun(base.dir / "zeta" / _hash(key), f"ζ at keep ratio {um.keep_ratio}",
                           lambda d: resolve_zeta(base.load(epoch), self.prep, um, self.cfg.seed).as_dict())

    def um(self, base: BaseRun, keep_ratio: float | None = None, epochs: int | None = None,
           zeta: float | None = None) -> tuple[nn.Module, dict]:
        um = self.cfg.um
        if keep_ratio is not None:
            um = um.model_copy(update={"keep_ratio": keep_ratio})
        if epochs is not None:
            um = um.model_copy(update={"optim": um.optim.model_copy(update={"epochs": epochs})})
        z = self.zeta(base, um.keep_ratio)["mean"] if zeta is None else zeta
        key = {"um": um.model_dump(), "zeta": z, "seed": self.cfg.seed, "augment": self.cfg.data.augment}
        d = base.dir / "um" / _hash(key)

        def run(d: Path) -> dict:
            tuned, hist = run_um(base.load(), self.prep, um, z, self.cfg.seed, self.cfg.data.augment)
            save_model(d / "um.safetensors", tuned, {**model_meta(self.cfg.model, self.prep.id, "um"), "zeta": z})
            return {"config": key, "zeta": z, "history": hist}

        info = self.subrun(d, f"UM (keep {um.keep_ratio}, ζ {z:.4f}, {um.optim.epochs} epochs)", run)
        from .pipeline import load_checkpoint

        model, _ = load_checkpoint(d / "um.safetensors", self.prep.id.num_classes)
        return model.eval(), info

    def umap(self, base: BaseRun, keep_ratio: float | None = None, epochs: int | None = None,
             zeta: float | None = None) -> tuple[dict, dict]:
        cfg = self.cfg.umap
        if keep_ratio is not None:
            cfg = cfg.model_copy(update={"keep_ratio": keep_ratio})
        if epochs is not None:
            cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"epochs": epochs})})
        if zeta is None:
            zeta = cfg.zeta if cfg.zeta is not None else self.zeta(base)["mean"]
        key = {"umap": cfg.model_dump(), "zeta": zeta, "seed": self.cfg.seed, "augment": self.cfg.data.augment}
        d = base.dir / "umap" / _hash(key)
        what = "plain pruning (ζ = 0)" if zeta == 0 else f"UMAP (ζ {zeta:.4f})"

        def run(d: Path) -> dict:
            masks, hist = run_umap(base.load(), self.prep, cfg, zeta, self.cfg.seed, self.cfg.data.augment)
            save_masks(d / "mask.safetensors", masks, {"keep_ratio": cfg.keep_ratio, "zeta": zeta})
            return {"config": key, "zeta": zeta, "history": hist}

        info = self.subrun(d, f"{what}, keep {cfg.keep_ratio}, {cfg.optim.epochs} epochs", run)
        return load_masks(d / "mask.safetensors")[0], info

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, d: Path, label: str, models: Callable[[], dict], scores: list[str] | None = None,
                 keep_scores: bool = False) -> dict:
        """Evaluate ``models()`` (name → (model, mask|None)) once; the mean rows, cached in ``d``."""
        scores = scores or self.cfg.scores

        def run(d: Path) -> dict:
            records, flat, _, masked_acc = evaluate_models(models(), self.prep, scores)
            if keep_scores:
                atomic_write(d / "scores.npz", lambda tmp: _savez(tmp, flat))
            return {"records": records, "masked_acc": masked_acc}

        return self.subrun(d, label, run)


def _savez(tmp: str, arrays: dict) -> None:
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def _metric_row(rec: dict) -> dict:
    return {"AUROC": rec["auroc"], "AUPR": rec["aupr_in"], "FPR95": rec["fpr95"], "ID-ACC": rec["id_acc"]}


# ----------------------------------------------------------------------------- analyses

def once_covered(ctx: Context) -> dict:
    scores = ctx.params["scores"]
    runs = {s: ctx.base(schedule=s) for s in ctx.params["schedules"]}
    rows = []
    for score in scores:
        fig, axes = plt.subplots(len(runs), 4, figsize=(20, 3.6 * len(runs)), squeeze=False)
        for i, (sched, run) in enumerate(runs.items()):
            log, ep = run.log, run.epochs()
            test = [mean_fpr(r, score) for r in log]
            bi = int(np.argmin(test))
            vi = ep.index(run.best_val_epoch(score))
            ax = axes[i][0]
            for ds in log[0]["ood"]:
                ax.plot(ep, [r["ood"][ds][score]["fpr95"] for r in log], lw=1, marker=".", label=ds)
            ax.plot(ep, test, color="black", lw=2.5, label="mean")
            ax.axvline(ep[bi], color="grey", ls="--", lw=1, label=f"best mean (test, analysis): ep {ep[bi]}")
            ax.axvline(ep[vi], color="tab:green", ls=":", lw=1.5, label=f"picked on val OOD: ep {ep[vi]}")
            ax.set(title=f"{sched}: {score} FPR95 per OOD set", xlabel="epoch", ylabel="FPR95 (%) ↓")
            ax.legend(fontsize=6)
            ax = axes[i][1]
            for metric, name in (("auroc", "AUROC"), ("aupr_in", "AUPR")):
                ax.plot(ep, [mean_metric(r, score, metric) for r in log], marker=".", label=f"mean {name}")
            ax.axvline(ep[bi], color="grey", ls="--", lw=1)
            ax.set(title=f"{sched}: {score} AUROC / AUPR (mean over OOD sets)", xlabel="epoch", ylabel="% ↑")
            ax.legend(fontsize=7)
            ax = axes[i][2]
            ax.plot(ep, [r["train_ce"] for r in log], label="train CE")
            ax.plot(ep, [r["test_ce"] for r in log], label="test CE")
            ax.set_yscale("log")
            ax.axvline(ep[bi], color="grey", ls="--", lw=1)
            ax.set(title=f"{sched}: ID loss", xlabel="epoch", ylabel="cross-entropy (log)")
            ax.legend(fontsize=7)
            ax = axes[i][3]
            ax.plot(ep, [r["id_acc"] for r in log], label="test accuracy")
            if "val_acc" in log[0]:
                ax.plot(ep, [r["val_acc"] for r in log], label="validation accuracy")
            ax.axvline(ep[bi], color="grey", ls="--", lw=1)
            ax.set(title=f"{sched}: ID accuracy", xlabel="epoch", ylabel="accuracy (%)")
            ax.legend(fontsize=7)
            for a in axes[i]:
                a.grid(alpha=0.3)
            rows.append({"schedule": sched, "score": score, "final_epoch": ep[-1], "final_FPR95": test[-1],
                         "best_epoch": ep[bi], "best_FPR95": test[bi], "val_selected_epoch": ep[vi],
                         "FPR95_at_val_selected": test[vi], "final_AUROC": mean_metric(log[-1], score, "auroc"),
                         "best_AUROC": max(mean_metric(r, score, "auroc") for r in log),
                         "final_ID_acc": log[-1]["id_acc"], "ID_acc_at_val_selected": log[vi]["id_acc"],
                         "final_train_CE": log[-1]["train_ce"]})
        fig.suptitle(f"Once-covered OOD detection along training ({score} score, OOD test sets: "
                     f"{', '.join(next(iter(runs.values())).log[0]['ood'])}; ID positive)")
        ctx.pngs.append(_savefig(fig, ctx.out / f"once_covered_{score.lower()}.png"))
    write_table(ctx.out, "once_covered", rows, "Once-covered: best intermediate epoch vs final epoch (mean FPR95 over OOD sets)")
    return {"rows": rows}


def score_hist(ctx: Context) -> dict:
    base = ctx.base()
    sel = ctx.params["select_score"]
    ep = base.best_val_epoch(sel)
    final = base.epochs()[-1]
    um_model, _ = ctx.um(base)
    masks, _ = ctx.umap(base)

    def models() -> dict:
        final_model = base.load()
        return {f"epoch {ep} (val-selected)": (base.load(ep), None), f"final (epoch {final})": (final_model, None),
                "UM": (um_model, None), "UMAP": (final_model, masks)}

    res = ctx.evaluate(ctx.out / "eval", "evaluate selected/final/UM/UMAP", models, ["MSP", "Energy"], keep_scores=True)
    flat = np.load(ctx.out / "eval" / "scores.npz")
    names = list(dict.fromkeys(k.split("/")[0] for k in flat.files))
    sets = list(dict.fromkeys(k.split("/")[2] for k in flat.files))
    for score in ("Energy", "MSP"):
        fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), squeeze=False)
        rm = mean_rows(res["records"])
        for ax, m in zip(axes[0], names):
            allv = np.concatenate([flat[f"{m}/{score}/{s}"] for s in sets])
            bins = np.linspace(*np.percentile(allv, [0.5, 99.5]), 60)
            ax.hist(flat[f"{m}/{score}/id"], bins=bins, density=True, alpha=0.45, label="ID test")
            for s in sets:
                if s != "id":
                    ax.hist(flat[f"{m}/{score}/{s}"], bins=bins, density=True, histtype="step", lw=1.2, label=s)
            r = rm[(m, score)]
            ax.set(title=f"{m}\nmean FPR95 {r['fpr95']:.1f}, AUROC {r['auroc']:.1f}",
                   xlabel=f"{score} score (higher = more ID)", ylabel="density")
            ax.legend(fontsize=6)
        fig.suptitle(f"ID vs OOD {score} score: epoch picked on validation OOD vs final epoch, and after UM/UMAP")
        ctx.pngs.append(_savefig(fig, ctx.out / f"score_hist_{score.lower()}.png"))
    rows = [{"model": m, "score": s, **_metric_row(r)} for (m, s), r in mean_rows(res["records"]).items()]
    write_table(ctx.out, "score_hist", rows, "Score histograms: mean metrics over OOD sets")
    return {"rows": rows, "selected_epoch": ep, "final_epoch": final}


def _per_sample(model: nn.Module, x: torch.Tensor, y: torch.Tensor, prep: Prepared) -> tuple[np.ndarray, np.ndarray]:
    out = collect_outputs(model, prep.batches(x, y))
    return F.cross_entropy(out.logits, out.labels, reduction="none").numpy(), out.logits.argmax(1).numpy()


def _ranked_masks(model: nn.Module, ranking: dict[str, torch.Tensor], keep: float, global_: bool) -> dict:
    if not global_:
        return {n: topk_mask(r.abs(), keep).bool() for n, r in ranking.items()}
    flat = torch.cat([r.abs().flatten() for r in ranking.values()])
    thr = flat.kthvalue(max(1, len(flat) - round(keep * len(flat)) + 1)).values if keep < 1 else flat.min() - 1
    return {n: (r.abs() >= thr) for n, r in ranking.items()}


def mask_loss(ctx: Context) -> dict:
    p, prep = ctx.params, ctx.prep
    base = ctx.base()
    x, y = prep.id.train
    model = base.load()

    # (b) masked training loss vs keep ratio
    def sweep(d: Path) -> dict:
        rows = []
        for k in p["keep_ratios"]:
            um_cfg = ctx.cfg.um.model_copy(update={"keep_ratio": k, "zeta_draws": p["draws"], "zeta": None})
            z = resolve_zeta(model, prep, um_cfg, ctx.cfg.seed)
            rows.append({"keep_ratio": k, "train_CE_mean": z.mean, "train_CE_sd": z.sd})
        return {"rows": rows}

    sw = ctx.subrun(ctx.out / "loss_vs_keep", "masked training loss vs keep ratio", sweep)["rows"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar([r["keep_ratio"] for r in sw], [r["train_CE_mean"] for r in sw], yerr=[r["train_CE_sd"] for r in sw],
                marker="o", capsize=3, label="random layer-wise mask m_δ (mean ± sd over draws)")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set(title="Training CE of the randomly masked final model (Fig. 3b)", xlabel="keep ratio (fraction of weights kept)",
           ylabel="mean training CE (log)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ctx.pngs.append(_savefig(fig, ctx.out / "mask_loss_vs_keep_ratio.png"))
    write_table(ctx.out, "mask_loss_vs_keep_ratio", sw, "Masked training CE vs keep ratio")

    # (4c) per-sample loss with and without a random mask on one training batch
    n = min(p["batch"], len(x))
    xb, yb = x[:n], y[:n]
    l0, _ = _per_sample(model, xb, yb, prep)
    with masked(model, random_layer_masks(model, p["batch_keep"], ctx.cfg.seed)):
        l1, _ = _per_sample(model, xb, yb, prep)
    order = np.argsort(l0)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(np.arange(n), l0[order], marker=".", ls="", label="original model")
    ax.plot(np.arange(n), l1[order], marker=".", ls="", label=f"randomly masked (keep {p['batch_keep']})")
    ax.set_yscale("log")
    ax.set(title=f"Per-sample training CE on a batch of {n}, sorted by the original loss (Fig. 4c)",
           xlabel="sample (sorted by original CE)", ylabel="cross-entropy (log)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ctx.pngs.append(_savefig(fig, ctx.out / "per_sample_loss.png"))
    rho = float(np.corrcoef(np.log(l0 + 1e-12), np.log(l1 + 1e-12))[0, 1])
    top = order[-max(1, n // 10):]
    batch_stats = {"keep_ratio": p["batch_keep"], "mean_CE_original": float(l0.mean()), "mean_CE_masked": float(l1.mean()),
                   "log_corr": rho, "share_of_increase_from_top10pct_original_loss":
                   float((l1[top] - l0[top]).sum() / max((l1 - l0).sum(), 1e-12))}

    # (3c / 12) training samples the mask turns into errors: layer-wise vs model-wise, weights vs scores
    def grid(d: Path) -> dict:
        k = p["grid_keep"]
        weights = {nme: original_weight(m).detach().clone() for nme, m in maskable_layers(model).items()}
        pop = copy.deepcopy(model)
        for q in pop.parameters():
            q.requires_grad_(False)
        score_params = add_popup_masks(pop, k, init="kaiming", seed=ctx.cfg.seed)
        train(pop, prep.train_batches(ctx.cfg.umap.optim.batch_size, ctx.cfg.seed + 3, False),
              ctx.cfg.umap.optim.model_copy(update={"epochs": p["popup_epochs"]}), ce_step, params=score_params,
              train_mode=frozen_eval_mode, desc="popup scores (plain CE)")
        pop_scores = {nme: s.detach().clone() for nme, s in zip(maskable_layers(pop), score_params)}
        remove_masks(pop)
        kinds = {"random layer-wise (UM's m_δ)": random_layer_masks(model, k, ctx.cfg.seed),
                 "weights, layer-wise": _ranked_masks(model, weights, k, False),
                 "weights, model-wise": _ranked_masks(model, weights, k, True),
                 "popup scores, layer-wise": _ranked_masks(model, pop_scores, k, False),
                 "popup scores, model-wise": _ranked_masks(model, pop_scores, k, True)}
        base_loss, base_pred = _per_sample(model, x, y, prep)
        ranks = base_loss.argsort().argsort() / max(len(base_loss) - 1, 1)
        out, flips = {}, {}
        for kind, m in kinds.items():
            with masked(model, m):
                loss, pred = _per_sample(model, x, y, prep)
            idx = np.where((base_pred == y.numpy()) & (pred != y.numpy()))[0]
            idx = idx[np.argsort(-(loss[idx] - base_loss[idx]))]
            flips[kind] = {"idx": idx[: p["grid_n"]].tolist(), "pred": pred[idx[: p["grid_n"]]].tolist()}
            out[kind] = {"n_flipped": int(len(idx)), "kept_fraction": float(
                sum(v.sum().item() for v in m.values()) / sum(v.numel() for v in m.values())),
                "masked_train_acc": float(100 * (pred == y.numpy()).mean()), "mean_masked_CE": float(loss.mean()),
                "median_original_loss_percentile_of_flipped": float(np.median(ranks[idx]) * 100) if len(idx) else None}
        return {"rows": [{"mask": kd, **v} for kd, v in out.items()], "flips": flips,
                "train_acc": float(100 * (base_pred == y.numpy()).mean())}

    g = ctx.subrun(ctx.out / "grid", f"samples turned into errors by masks (keep {p['grid_keep']})", grid)
    classes = prep.id.classes
    kinds = list(g["flips"])
    cols = p["grid_n"]
    fig, axes = plt.subplots(len(kinds), cols, figsize=(1.1 * cols, 1.45 * len(kinds) + 0.6), squeeze=False)
    for i, kind in enumerate(kinds):
        f = g["flips"][kind]
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(f["idx"]):
                ax.imshow(x[f["idx"][j], 0].numpy(), cmap="gray")
                ax.set_title(f"{classes[int(y[f['idx'][j]])][:7]}→{classes[f['pred'][j]][:7]}", fontsize=5)
            if j == 0:
                ax.set_ylabel(f"{kind}\n({g['rows'][i]['n_flipped']} flips)", fontsize=6)
    fig.suptitle(f"Training samples correct without the mask, wrong with it (keep {p['grid_keep']}; "
                 "true→masked prediction; largest loss increase first)", fontsize=8)
    ctx.pngs.append(_savefig(fig, ctx.out / "masked_errors_grid.png"))
    write_table(ctx.out, "masked_errors", g["rows"], "Samples the mask turns into errors")
    write_json(ctx.out / "per_sample_batch.json", batch_stats)
    return {"loss_vs_keep": sw, "batch": batch_stats, "grid": g["rows"], "train_acc": g["train_acc"]}


def keep_ratio(ctx: Context) -> dict:
    base = ctx.base()
    ratios = ctx.params["keep_ratios"]
    rows = []
    base_res = ctx.evaluate(base.dir / "eval" / _hash(ctx.cfg.scores), "evaluate base",
                            lambda: {"base": (base.load(), None)})
    for s, r in mean_rows(base_res["records"]).items():
        rows.append({"keep_ratio": 1.0, "method": "base", "zeta": 0.0, "score": s[1], **_metric_row(r)})
    for k in ratios:
        model, info = ctx.um(base, keep_ratio=k)
        res = ctx.evaluate(ctx.out / f"um_keep{k}", f"evaluate UM keep {k}", lambda m=model: {"um": (m, None)})
        for s, r in mean_rows(res["records"]).items():
            rows.append({"keep_ratio": k, "method": "UM", "zeta": info["zeta"], "score": s[1], **_metric_row(r)})
    scores = list(dict.fromkeys(r["score"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    um_rows = [r for r in rows if r["method"] == "UM"]
    for s in scores:
        rs = [r for r in um_rows if r["score"] == s]
        b = next(r for r in rows if r["method"] == "base" and r["score"] == s)
        line = axes[0].plot([r["keep_ratio"] for r in rs], [r["FPR95"] for r in rs], marker="o", label=f"UM, {s}")
        axes[0].axhline(b["FPR95"], color=line[0].get_color(), ls="--", lw=1, label=f"base, {s}")
        line = axes[1].plot([r["keep_ratio"] for r in rs], [r["AUROC"] for r in rs], marker="o", label=f"UM, {s}")
        axes[1].axhline(b["AUROC"], color=line[0].get_color(), ls="--", lw=1, label=f"base, {s}")
    rs = [r for r in um_rows if r["score"] == scores[0]]
    axes[2].plot([r["keep_ratio"] for r in rs], [r["ID-ACC"] for r in rs], marker="o", label="UM ID accuracy")
    axes[2].axhline(next(r for r in rows if r["method"] == "base")["ID-ACC"], ls="--", color="grey", label="base")
    ax2 = axes[2].twinx()
    ax2.plot([r["keep_ratio"] for r in rs], [r["zeta"] for r in rs], marker="s", color="tab:red", label="ζ")
    ax2.set_ylabel("ζ (masked training CE)")
    ax2.legend(loc="lower left", fontsize=7)
    for ax, t, yl in zip(axes, ("mean FPR95 over OOD sets", "mean AUROC over OOD sets", "ID test accuracy and ζ"),
                         ("FPR95 (%) ↓", "AUROC (%) ↑", "accuracy (%)")):
        ax.set(title=f"UM vs keep ratio: {t}", xlabel="keep ratio of the random mask", ylabel=yl)
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"UM's OOD detection vs mask keep ratio (Fig. 4d/10); OOD sets: {', '.join(ctx.prep.ood)}")
    ctx.pngs.append(_savefig(fig, ctx.out / "keep_ratio.png"))
    write_table(ctx.out, "keep_ratio", rows, "UM vs keep ratio (mean over OOD sets)")
    return {"rows": rows}


def prune_rate(ctx: Context) -> dict:
    base = ctx.base()
    zeta = ctx.zeta(base)["mean"]
    rows, hists = [], {}
    final = base.load()
    for k in ctx.params["keep_ratios"]:
        for method, z in (("UMAP", zeta), ("pruning (ζ=0)", 0.0)):
            masks, info = ctx.umap(base, keep_ratio=k, zeta=z)
            hists[(method, k)] = info["history"]
            res = ctx.evaluate(ctx.out / f"{'umap' if z else 'prune'}_keep{k}", f"evaluate {method} keep {k}",
                               lambda m=masks: {"masked": (final, m)})
            for s, r in mean_rows(res["records"]).items():
                rows.append({"keep_ratio": k, "method": method, "score": s[1], **_metric_row(r),
                             "masked_ID-ACC": res["masked_acc"]["masked"], "final_train_CE": info["history"][-1]["train_ce"],
                             "zeta": z})
    scores = list(dict.fromkeys(r["score"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for method, ls in (("UMAP", "-"), ("pruning (ζ=0)", "--")):
        for s in scores:
            rs = [r for r in rows if r["method"] == method and r["score"] == s]
            axes[0].plot([r["keep_ratio"] for r in rs], [r["FPR95"] for r in rs], ls=ls, marker="o", label=f"{method}, {s}")
        rs = [r for r in rows if r["method"] == method and r["score"] == scores[0]]
        axes[1].plot([r["keep_ratio"] for r in rs], [r["masked_ID-ACC"] for r in rs], ls=ls, marker="o",
                     label=f"{method}: masked model")
    axes[1].axhline(rows[0]["ID-ACC"], color="grey", ls=":", label="deployed (unmasked) model")
    for (method, k), h in hists.items():
        axes[2].plot([r["epoch"] for r in h], [r["train_ce"] for r in h], ls="-" if method == "UMAP" else "--",
                     marker=".", label=f"{method}, keep {k}")
    axes[2].axhline(zeta, color="black", lw=1.5, label=f"ζ = {zeta:.3f}")
    axes[2].set_yscale("log")
    for ax, t, xl, yl in ((axes[0], "mean FPR95 over OOD sets", "keep ratio (authors' prune_rate)", "FPR95 (%) ↓"),
                          (axes[1], "ID test accuracy", "keep ratio (authors' prune_rate)", "accuracy (%)"),
                          (axes[2], "training CE of the masked model", "epoch", "train CE (log)")):
        ax.set(title=f"UMAP vs plain pruning: {t}", xlabel=xl, ylabel=yl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"UMAP vs plain pruning across prune rates (Fig. 4e/8); OOD sets: {', '.join(ctx.prep.ood)}")
    ctx.pngs.append(_savefig(fig, ctx.out / "prune_rate.png"))
    write_table(ctx.out, "prune_rate", rows, "UMAP vs plain pruning (mean over OOD sets)")
    return {"rows": rows, "zeta": zeta}


def finetune_epochs(ctx: Context) -> dict:
    base = ctx.base()
    rows = []
    base_res = ctx.evaluate(base.dir / "eval" / _hash(ctx.cfg.scores), "evaluate base",
                            lambda: {"base": (base.load(), None)})
    for (_, s), r in mean_rows(base_res["records"]).items():
        rows.append({"method": "base", "epochs": 0, "score": s, **_metric_row(r)})
    final = base.load()
    for tag in ("short", "long"):
        e = ctx.params[tag]
        model, _ = ctx.um(base, epochs=e)
        masks, _ = ctx.umap(base, epochs=e)
        res = ctx.evaluate(ctx.out / f"eval_{e}", f"evaluate UM/UMAP after {e} epochs",
                           lambda m=model, k=masks: {"um": (m, None), "umap": (final, k)})
        for (m, s), r in mean_rows(res["records"]).items():
            rows.append({"method": m.upper(), "epochs": e, "score": s, **_metric_row(r)})
    scores = list(dict.fromkeys(r["score"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    labels = [f"{r['method']} {r['epochs']}ep" if r["epochs"] else "base" for r in rows if r["score"] == scores[0]]
    xs = np.arange(len(labels))
    for i, s in enumerate(scores):
        rs = [r for r in rows if r["score"] == s]
        for ax, key in zip(axes, ("FPR95", "AUROC")):
            ax.bar(xs + (i - 1) * 0.27, [r[key] for r in rs], width=0.27, label=s)
    for ax, key in zip(axes, ("FPR95 (%) ↓", "AUROC (%) ↑")):
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set(title=f"Short vs long fine-tuning: mean {key.split()[0]}", xlabel="method / fine-tuning epochs", ylabel=key)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"UM/UMAP after {ctx.params['short']} vs {ctx.params['long']} fine-tuning epochs (Tables 14-15); "
                 f"OOD sets: {', '.join(ctx.prep.ood)}")
    ctx.pngs.append(_savefig(fig, ctx.out / "finetune_epochs.png"))
    write_table(ctx.out, "finetune_epochs", rows, "Short vs long fine-tuning (mean over OOD sets)")
    return {"rows": rows}


def typical_atypical(ctx: Context) -> dict:
    base = ctx.base()
    p, prep = ctx.params, ctx.prep
    ep = base.best_val_epoch(p["select_score"])
    x, y = prep.id.train
    loss, pred = _per_sample(base.load(ep), x, y, prep)
    order = np.argsort(loss)
    um_cfg = UMConfig(zeta=0.0, optim=OptimConfig(epochs=p["epochs"], lr=p["lr"], weight_decay=ctx.cfg.um.optim.weight_decay,
                                                  batch_size=ctx.cfg.um.optim.batch_size))
    rows = []
    base_res = ctx.evaluate(ctx.out / f"eval_epoch{ep}", f"evaluate the epoch-{ep} checkpoint",
                            lambda: {"selected": (base.load(ep), None)})
    for (_, s), r in mean_rows(base_res["records"]).items():
        rows.append({"subset": f"none (epoch {ep})", "size": 0, "subset_ACC": None, "score": s, **_metric_row(r)})
    for n in p["sizes"]:
        n = min(n, len(x) // 2)
        for kind, idx in (("atypical", order[-n:]), ("typical", order[:n])):
            sub = Prepared(dataclasses.replace(prep.id, train=(x[idx], y[idx])), prep.ood, prep.val_ood)
            acc = float(100 * (pred[idx] == y.numpy()[idx]).mean())

            def run(d: Path, sub=sub) -> dict:
                tuned, hist = run_um(base.load(ep), sub, um_cfg, 0.0, ctx.cfg.seed, ctx.cfg.data.augment)
                records, _, _, _ = evaluate_models({"ft": (tuned, None)}, sub, ctx.cfg.scores)
                return {"records": records, "history": hist}

            res = ctx.subrun(ctx.out / f"{kind}_{n}", f"fine-tune epoch {ep} on {n} {kind} samples", run)
            for (_, s), r in mean_rows(res["records"]).items():
                rows.append({"subset": kind, "size": n, "subset_ACC": acc, "score": s, **_metric_row(r)})
    sizes = sorted({r["size"] for r in rows if r["size"]})
    scores = list(dict.fromkeys(r["score"] for r in rows))
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        xs = np.arange(len(scores))
        for i, kind in enumerate(("typical", "atypical")):
            vals = [next(r["FPR95"] for r in rows if r["subset"] == kind and r["size"] == n and r["score"] == s) for s in scores]
            ax.bar(xs + (i - 0.5) * 0.35, vals, width=0.35, label=f"fine-tuned on {kind}")
        ax.plot(xs, [next(r["FPR95"] for r in rows if r["size"] == 0 and r["score"] == s) for s in scores], "k_",
                ms=30, mew=2, label=f"epoch {ep} (before)")
        ax.set_xticks(xs, scores)
        ax.set(title=f"{n} samples per subset", xlabel="score", ylabel="mean FPR95 (%) ↓")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"Fine-tuning the val-OOD-selected epoch {ep} on typical vs atypical training samples (Tables 9-13); "
                 f"OOD sets: {', '.join(prep.ood)}")
    ctx.pngs.append(_savefig(fig, ctx.out / "typical_atypical.png"))
    write_table(ctx.out, "typical_atypical", rows, "Typical vs atypical fine-tuning (mean over OOD sets)")
    return {"rows": rows, "selected_epoch": ep}


def overfitting(ctx: Context) -> dict:
    p = ctx.params
    base = ctx.base()
    sel = p["select_score"]
    es_acc, es_ood = base.best_val_acc_epoch(), base.best_val_epoch(sel)
    entries: list[tuple[str, Callable[[], dict]]] = [
        ("baseline", lambda: {"m": (base.load(), None)}),
        (f"early stopping w. ACC (epoch {es_acc})", lambda: {"m": (base.load(es_acc), None)}),
        (f"early stopping w. val OOD (epoch {es_ood})", lambda: {"m": (base.load(es_ood), None)})]
    for wd in p["weight_decays"]:
        entries.append((f"weight decay {wd}", lambda wd=wd: {"m": (ctx.base(weight_decay=wd, track=False).load(), None)}))
    for dp in p["dropouts"]:
        entries.append((f"dropout {dp}", lambda dp=dp: {"m": (ctx.base(dropout=dp, track=False).load(), None)}))
    um_model, _ = ctx.um(base)
    masks, _ = ctx.umap(base)
    entries += [("UM", lambda: {"m": (um_model, None)}), ("UMAP", lambda: {"m": (base.load(), masks)})]
    scores = [s for s in ("ODIN", "Energy") if s in ctx.cfg.scores] or ["Energy"]
    rows = []
    for i, (label, fn) in enumerate(entries):
        # train (or load) the variant outside the evaluation cache so the base folders are shared
        if label.startswith(("weight decay", "dropout")):
            fn()
        res = ctx.evaluate(ctx.out / f"eval_{i:02d}_{_hash(label)}", f"evaluate {label}", fn, scores)
        for (_, s), r in mean_rows(res["records"]).items():
            rows.append({"method": label, "score": s, **_metric_row(r)})
    fig, axes = plt.subplots(1, len(scores), figsize=(7 * len(scores), 4.5), squeeze=False)
    labels = [e[0] for e in entries]
    for ax, s in zip(axes[0], scores):
        rs = [r for r in rows if r["score"] == s]
        ax.barh(np.arange(len(rs)), [r["FPR95"] for r in rs], color=["tab:grey"] * (len(rs) - 2) + ["tab:red", "tab:orange"])
        for j, r in enumerate(rs):
            ax.text(r["FPR95"], j, f" {r['FPR95']:.1f} (acc {r['ID-ACC']:.1f})", va="center", fontsize=7)
        ax.set_yticks(np.arange(len(rs)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set(title=f"{s}: mean FPR95 over OOD sets (ID acc in brackets)", xlabel="FPR95 (%) ↓", ylabel="method")
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"Overfitting remedies vs UM/UMAP (Tables 4-7); OOD sets: {', '.join(ctx.prep.ood)}")
    ctx.pngs.append(_savefig(fig, ctx.out / "overfitting.png"))
    write_table(ctx.out, "overfitting", rows, "Overfitting remedies vs UM/UMAP (mean over OOD sets)")
    return {"rows": rows, "es_acc_epoch": es_acc, "es_ood_epoch": es_ood}


def weights(ctx: Context) -> dict:
    base = ctx.base()
    k = ctx.params["keep_ratio"]
    umap_masks, _ = ctx.umap(base, keep_ratio=k)
    prune_masks, _ = ctx.umap(base, keep_ratio=k, zeta=0.0)
    model = base.load()
    layers = list(maskable_layers(model))
    pick = {"first conv": layers[0], "middle conv": layers[len(layers) // 2], "classifier": layers[-1]}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    rows = []
    for ax, (what, name) in zip(axes, pick.items()):
        w = original_weight(maskable_layers(model)[name]).detach().flatten().numpy()
        bins = np.linspace(w.min(), w.max(), 50)
        ax.hist(w, bins=bins, alpha=0.35, color="grey", label="original (all weights)")
        overlap = float((prune_masks[name] & umap_masks[name]).sum() / max(int(umap_masks[name].sum()), 1))
        for label, m, c in (("kept by plain pruning", prune_masks, "tab:blue"), ("kept by UMAP", umap_masks, "tab:red")):
            kept = w[m[name].flatten().numpy()]
            ax.hist(kept, bins=bins, histtype="step", lw=1.5, color=c, label=label)
            rows.append({"layer": f"{what} ({name})", "method": label, "kept": int(len(kept)), "of": int(len(w)),
                         "mean_abs_kept": float(np.abs(kept).mean()), "mean_abs_all": float(np.abs(w).mean()),
                         "share_kept_by_both": overlap})
        ax.set(title=f"{what} ({name})", xlabel="weight value", ylabel="count")
        ax.legend(fontsize=7)
    fig.suptitle(f"Weights kept by plain pruning vs UMAP, keep ratio {k} (Fig. 11)")
    ctx.pngs.append(_savefig(fig, ctx.out / "weights.png"))
    write_table(ctx.out, "weights", rows, "Kept weights: mean |w| of kept vs all")
    return {"rows": rows}


RUNNERS: dict[str, Callable[[Context], dict]] = {
    "once-covered": once_covered, "score-hist": score_hist, "mask-loss": mask_loss, "keep-ratio": keep_ratio,
    "prune-rate": prune_rate, "finetune-epochs": finetune_epochs, "typical-atypical": typical_atypical,
    "overfitting": overfitting, "weights": weights}


# ----------------------------------------------------------------------------- entry points

def build_config(name: str, overrides: list[str] = (), quick: bool = False,
                 data_root: str | None = None, recipe: str | None = None) -> tuple[DemoConfig, dict]:
    """The effective DemoConfig and analysis parameters (reproduction defaults — or a paper-scale
    ``recipe`` — < --quick < overrides)."""
    if name not in PARAMS:
        raise UserError(f"unknown analysis {name!r}; choose from: {', '.join(ANALYSES)} (or 'all')")
    if recipe is not None:
        from .recipes import load_recipe

        base = load_recipe(recipe, []).model_dump()
    else:
        base = copy.deepcopy(DEFAULTS)
    data = _merge(base, QUICK if quick else {})
    params = {k: copy.deepcopy(v[1 if quick else 0]) for k, v in PARAMS[name].items()}
    demo_over, param_over = [], []
    for o in overrides:
        (param_over if o.startswith("analysis.") else demo_over).append(o)
    data = apply_overrides(data, demo_over)
    if data_root:
        data.setdefault("data", {})["data_root"] = data_root
    pdict = apply_overrides({"analysis": {}}, param_over)["analysis"]
    unknown = sorted(set(pdict) - set(params))
    if unknown:
        raise UserError(f"unknown parameter(s) {unknown} for {name}; available: {sorted(params)}")
    params.update(pdict)
    return validate(DemoConfig, data), params  # type: ignore[return-value]


def run_analysis(name: str, out: str | Path | None = None, overrides: list[str] = (), quick: bool = False,
                 data_root: str | None = None, docs: str | Path | None = None, recipe: str | None = None) -> dict:
    """Run one analysis; returns its summary (also written to ``out/summary.json``)."""
    cfg, params = build_config(name, list(overrides), quick, data_root, recipe)
    out = Path(out) if out else Path("runs/reproduce") / name
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"analysis": name, "quick": quick, "params": params, "config": cfg.model_dump()})
    ctx = Context(name, cfg, params, out, quick)
    t = time.perf_counter()
    say(f"[{name}] output: {out}")
    summary = RUNNERS[name](ctx)
    summary.update(analysis=name, wall_s=round(time.perf_counter() - t, 1), pngs=[str(p.name) for p in ctx.pngs],
                   ood_sets=list(ctx.prep.ood) if ctx._prep else None)
    write_json(out / "summary.json", summary)
    if docs:
        d = Path(docs)
        d.mkdir(parents=True, exist_ok=True)
        for p in ctx.pngs:
            shutil.copyfile(p, d / f"{name}_{p.name}")
    say(f"[{name}] done in {summary['wall_s']:.0f}s: {out} ({', '.join(summary['pngs'])})")
    return summary


def cmd_reproduce(args: argparse.Namespace) -> None:
    names = list(ANALYSES) if args.name == "all" else [args.name]
    if args.name != "all" and args.name not in PARAMS:
        raise UserError(f"unknown analysis {args.name!r}; choose from: {', '.join(ANALYSES)} (or 'all')")
    for n in names:
        out = args.out if args.out and len(names) == 1 else (Path(args.out) / n if args.out else None)
        run_analysis(n, out, args.overrides, args.quick, args.data_root, args.docs, args.recipe)


class _IntermixedParser(argparse.ArgumentParser):
    """Lets key=value overrides follow options (``reproduce NAME --quick a=1``): plain argparse binds
    both positionals (NAME and the overrides) to the first positional chunk."""

    def parse_known_args(self, args=None, namespace=None):
        if getattr(self, "_inner", False):
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def add_reproduce_parser(subparsers) -> None:
    """Add ``reproduce NAME`` to the CLI's subparsers."""
    r = subparsers.add_parser(
        "reproduce", help="the paper's analyses at embedded scale",
        description="Analyses: " + ", ".join(ANALYSES) + " (or 'all'). Sub-runs are cached and skipped when re-run; "
                    "base trainings are shared in OUT/../_base_<hash>. Analysis parameters: analysis.KEY=VALUE.")
    r.__class__ = _IntermixedParser
    r.add_argument("name", metavar="NAME", help=", ".join(ANALYSES) + ", or all")
    r.add_argument("--out", help="output directory (default runs/reproduce/NAME; with 'all': OUT/NAME)")
    r.add_argument("--quick", action="store_true", help="tiny smoke variant (seconds)")
    r.add_argument("--overwrite", action="store_true", help="empty --out first (else finished sub-runs are reused)")
    r.add_argument("--data-root", help="folder with the Fashion-MNIST files")
    r.add_argument("--docs", help="also copy the PNGs into this folder (e.g. docs/gallery)")
    r.add_argument("--recipe", help="paper scale: start from a recipe's config (e.g. cifar10_densenet100) "
                                    "instead of the embedded default")
    r.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides (as for demo) and analysis.KEY=VALUE parameters")
    r.set_defaults(func=cmd_reproduce)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone ``reproduce`` entry point with the CLI's error convention (one line, exit 2)."""
    import sys

    p = argparse.ArgumentParser(prog="unleash-ood")
    add_reproduce_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"unleash-ood: error: {e}", file=sys.stderr)
        return 2
    return 0
