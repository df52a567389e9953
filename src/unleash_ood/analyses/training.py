"""Analyses of the training trajectory and of overfitting: once-covered (Fig. 1/2), score histograms
(Fig. 5), typical vs atypical fine-tuning (Tables 9-13) and overfitting remedies (Tables 4-7)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..config import UMConfig
from ..pipeline import Prepared, evaluate_models, run_um
from ..train import OptimConfig
from . import figures
from .cache import Context, stable_hash
from .common import mean_fpr, mean_metric, mean_rows, metric_row, per_sample, write_table


def once_covered(ctx: Context) -> dict:
    scores = ctx.params["scores"]
    runs = {s: ctx.base(schedule=s) for s in ctx.params["schedules"]}
    rows = []
    for score in scores:
        val_epochs = {}
        for sched, run in runs.items():
            log, ep = run.log, run.epochs()
            test = [mean_fpr(r, score) for r in log]
            bi = int(np.argmin(test))
            val_epochs[sched] = run.best_val_epoch(score)
            vi = ep.index(val_epochs[sched])
            rows.append({"schedule": sched, "score": score, "final_epoch": ep[-1], "final_FPR95": test[-1],
                         "best_epoch": ep[bi], "best_FPR95": test[bi], "val_selected_epoch": ep[vi],
                         "FPR95_at_val_selected": test[vi], "final_AUROC": mean_metric(log[-1], score, "auroc"),
                         "best_AUROC": max(mean_metric(r, score, "auroc") for r in log),
                         "final_ID_acc": log[-1]["id_acc"], "ID_acc_at_val_selected": log[vi]["id_acc"],
                         "final_train_CE": log[-1]["train_ce"]})
        ctx.pngs.append(figures.once_covered_figure({s: r.log for s, r in runs.items()}, val_epochs, score,
                                                    ctx.out / f"once_covered_{score.lower()}.png"))
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
                records, _, _, _ = evaluate_models({"ft": (tuned, None)}, sub, ctx.cfg.scores.detectors())
                return {"records": records, "history": hist}

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
    scores = [s for s in ("ODIN", "Energy") if s in ctx.cfg.scores.use] or ["Energy"]
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
