"""Analyses of the training trajectory and of overfitting: once-covered (Fig. 1/2), score histograms
(Fig. 5), typical vs atypical fine-tuning (Tables 9-13) and overfitting remedies (Tables 4-7)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import OptimConfig, UMConfig
from ..eval.evaluate import configured_detectors
from ..eval.models import evaluate_models
from ..run.stages import run_um
from . import figures
from .cache import Context, stable_hash
from .common import GROUPS, group_metric, mean_fpr, mean_metric, mean_rows, metric_row, per_sample, write_table

EPOCH_KINDS = ("final", "val-selected", "test-best (upper bound)")


def _epoch_row(log: list[dict], i: int, score: str, groups: dict[str, str], cols: dict) -> dict:
    """One tracked epoch's metrics: means over the near and far OOD sets, then per group."""
    r = log[i]
    row = {**cols, "score": score, "epoch": r["epoch"], "FPR95": mean_metric(r, score, "fpr95", groups),
           "AUROC": mean_metric(r, score, "auroc", groups)}
    for g in GROUPS:
        if any(groups.get(d, "far") == g for d in r["ood"]):
            row[f"{g}_FPR95"] = group_metric(r, score, "fpr95", groups, g)
            row[f"{g}_AUROC"] = group_metric(r, score, "auroc", groups, g)
    return {**row, "ID-ACC": r["id_acc"], "train_CE": r["train_ce"]}


def once_covered(ctx: Context) -> dict:
    """Per schedule and score: the final epoch, the epoch picked on validation OOD, and — as an upper
    bound only — the epoch best on the OOD test sets themselves."""
    scores = ctx.params["scores"]
    schedules = list(dict.fromkeys([*ctx.params["schedules"], *ctx.params.get("extra_schedules", [])]))
    runs = {s: ctx.base(schedule=s) for s in schedules}
    groups = ctx.prep.groups
    rows = []
    for score in scores:
        val_epochs = {}
        for sched, run in runs.items():
            val_epochs[sched] = run.best_val_epoch(score)
            picks = (len(run.log) - 1, run.epochs().index(val_epochs[sched]),
                     int(np.argmin([mean_fpr(r, score, groups) for r in run.log])))
            rows += [_epoch_row(run.log, i, score, groups, {"schedule": sched, "epoch_kind": kind})
                     for kind, i in zip(EPOCH_KINDS, picks)]
        ctx.pngs.append(figures.once_covered_figure({s: r.log for s, r in runs.items()}, val_epochs, score,
                                                    ctx.out / f"once_covered_{score.lower()}.png", groups))
    write_table(ctx.out, "once_covered", rows, "Once-covered: final vs val-selected epoch (test-best: upper bound only)")
    return {"rows": rows, "logs": {s: str(r.dir / "train_log.jsonl") for s, r in runs.items()}}


def score_hist(ctx: Context) -> dict:
    base = ctx.base()
    sel = ctx.params["select_score"]
    ep = base.best_val_epoch(sel)
    final = base.epochs()[-1]
    um_model, _ = ctx.um(base)
    masks, _ = ctx.umap(base)

    def models() -> dict:  # names stable across seeds (the epochs are in the summary)
        final_model = base.load()
        return {"val-selected epoch": (base.load(ep), None), "final epoch": (final_model, None),
                "UM": (um_model, None), "UMAP": (final_model, masks)}

    res = ctx.evaluate(ctx.out / "eval", "evaluate selected/final/UM/UMAP", models, keep_scores=True)
    flat = np.load(ctx.out / "eval" / "scores.npz")  # the cached per-sample scores of the evaluation
    for score in ("Energy", "MSP"):
        ctx.pngs.append(figures.score_hist_figure(flat, mean_rows(res["records"]), score,
                                                  ctx.out / f"score_hist_{score.lower()}.png"))
    rows = [{"model": m, "score": s, **metric_row(r)} for (m, s), r in mean_rows(res["records"]).items()]
    write_table(ctx.out, "score_hist", rows, "Score histograms: mean metrics over OOD sets")
    return {"rows": rows, "selected_epoch": ep, "final_epoch": final}


def typical_atypical(ctx: Context) -> dict:
    base = ctx.base()
    p, prep = ctx.params, ctx.prep
    ep = base.best_val_epoch(p["select_score"])
    x, y = prep.id.train
    loss, pred = per_sample(base.load(ep), x, y, prep)
    order = np.argsort(loss)
    um_cfg = UMConfig(zeta=0.0, optim=OptimConfig(epochs=p["epochs"], lr=p["lr"], weight_decay=ctx.cfg.um.optim.weight_decay,
                                                  batch_size=ctx.cfg.um.optim.batch_size))
    rows = []
    base_res = ctx.evaluate(ctx.out / f"eval_epoch{ep}", f"evaluate the epoch-{ep} checkpoint",
                            lambda: {"selected": (base.load(ep), None)})
    for (_, s), r in mean_rows(base_res["records"]).items():
        rows.append({"subset": f"none (epoch {ep})", "size": 0, "subset_ACC": None, "score": s, **metric_row(r)})
    for n in p["sizes"]:
        n = min(n, len(x) // 2)
        for kind, idx in (("atypical", order[-n:]), ("typical", order[:n])):
            sub = dataclasses.replace(prep, id=dataclasses.replace(prep.id, train=(x[idx], y[idx])))
            acc = float(100 * (pred[idx] == y.numpy()[idx]).mean())

            def run(d: Path, sub=sub) -> dict:
                tuned, hist = run_um(base.load(ep), sub, um_cfg, 0.0, ctx.cfg.seed, ctx.cfg.data.augment)
                # the subset is only what is fine-tuned on: detectors are fitted on the whole training set
                ev = evaluate_models({"ft": (tuned, None)}, prep, configured_detectors(ctx.scores_config()))
                return {"records": ev.records, "history": hist}

            res = ctx.subrun(ctx.out / f"{kind}_{n}", f"fine-tune epoch {ep} on {n} {kind} samples", run)
            for (_, s), r in mean_rows(res["records"]).items():
                rows.append({"subset": kind, "size": n, "subset_ACC": acc, "score": s, **metric_row(r)})
    title = (f"Fine-tuning the val-OOD-selected epoch {ep} on typical vs atypical training samples (Tables 9-13); "
             f"OOD sets: {', '.join(prep.ood)}")
    ctx.pngs.append(figures.typical_atypical_figure(rows, ep, title, ctx.out / "typical_atypical.png"))
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
    scores = ctx.scores_config().use
    rows = []
    for i, (label, fn) in enumerate(entries):
        # train (or load) the variant outside the evaluation cache so the base folders are shared
        if label.startswith(("weight decay", "dropout")):
            fn()
        res = ctx.evaluate(ctx.out / f"eval_{i:02d}_{stable_hash(label)}", f"evaluate {label}", fn, scores)
        for (_, s), r in mean_rows(res["records"]).items():
            rows.append({"method": label, "score": s, **metric_row(r)})
    title = f"Overfitting remedies vs UM/UMAP (Tables 4-7); OOD sets: {', '.join(ctx.prep.ood)}"
    ctx.pngs.append(figures.overfitting_figure(rows, [e[0] for e in entries], scores, title,
                                               ctx.out / "overfitting.png"))
    write_table(ctx.out, "overfitting", rows, "Overfitting remedies vs UM/UMAP (mean over OOD sets)")
    return {"rows": rows, "es_acc_epoch": es_acc, "es_ood_epoch": es_ood}
