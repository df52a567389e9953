"""Sweeps of UM/UMAP's settings: the random mask's keep ratio for UM (Fig. 4d/10), UMAP vs plain
pruning across prune rates (Fig. 4e/8), and short vs long fine-tuning (Tables 14-15)."""

from __future__ import annotations

from . import figures
from .cache import Context
from .common import mean_rows, metric_row, write_table


def _base_rows(ctx: Context, base, **cols) -> list[dict]:
    """The base model's mean rows (its evaluation is cached in the base folder, shared by analyses)."""
    res = ctx.evaluate_in(base.dir, "evaluate base", lambda: {"base": (base.load(), None)})
    return [{**cols, "score": s, **metric_row(r)} for (_, s), r in mean_rows(res["records"]).items()]


def keep_ratio(ctx: Context) -> dict:
    base = ctx.base()
    rows = _base_rows(ctx, base, keep_ratio=1.0, method="base", zeta=0.0)
    for k in ctx.params["keep_ratios"]:
        model, info = ctx.um(base, keep_ratio=k)
        res = ctx.evaluate_in(info["dir"], f"evaluate UM keep {k}", lambda m=model: {"um": (m, None)})
        for s, r in mean_rows(res["records"]).items():
            rows.append({"keep_ratio": k, "method": "UM", "zeta": info["zeta"], "score": s[1], **metric_row(r)})
    title = f"UM's OOD detection vs mask keep ratio (Fig. 4d/10); OOD sets: {', '.join(ctx.prep.ood)}"
    ctx.pngs.append(figures.keep_ratio_figure(rows, title, ctx.out / "keep_ratio.png"))
    write_table(ctx.out, "keep_ratio", rows, "UM vs keep ratio (mean over OOD sets)")
    return {"rows": rows}


def prune_rate(ctx: Context) -> dict:
    base = ctx.base()
    zeta = ctx.zeta(base)["value"]
    rows, hists = [], {}
    final = base.load()
    for k in ctx.params["keep_ratios"]:
        for method, z in (("UMAP", zeta), ("pruning (ζ=0)", 0.0)):
            masks, info = ctx.umap(base, keep_ratio=k, zeta=z)
            hists[(method, k)] = info["history"]
            res = ctx.evaluate_in(info["dir"], f"evaluate {method} keep {k}", lambda m=masks: {"masked": (final, m)})
            for s, r in mean_rows(res["records"]).items():
                rows.append({"keep_ratio": k, "method": method, "score": s[1], **metric_row(r),
                             "masked_ID-ACC": res["masked_acc"]["masked"], "final_train_CE": info["history"][-1]["train_ce"],
                             "zeta": z})
    title = f"UMAP vs plain pruning across prune rates (Fig. 4e/8); OOD sets: {', '.join(ctx.prep.ood)}"
    ctx.pngs.append(figures.prune_rate_figure(rows, hists, zeta, title, ctx.out / "prune_rate.png"))
    write_table(ctx.out, "prune_rate", rows, "UMAP vs plain pruning (mean over OOD sets)")
    return {"rows": rows, "zeta": zeta}


def finetune_epochs(ctx: Context) -> dict:
    base = ctx.base()
    rows = _base_rows(ctx, base, method="base", epochs=0)
    final = base.load()
    for tag in ("short", "long"):
        e = ctx.params[tag]
        model, um_info = ctx.um(base, epochs=e)
        masks, umap_info = ctx.umap(base, epochs=e)
        for method, info, models in (("UM", um_info, lambda m=model: {"um": (m, None)}),
                                     ("UMAP", umap_info, lambda k=masks: {"umap": (final, k)})):
            res = ctx.evaluate_in(info["dir"], f"evaluate {method} after {e} epochs", models)
            for (_, s), r in mean_rows(res["records"]).items():
                rows.append({"method": method, "epochs": e, "score": s, **metric_row(r)})
    title = (f"UM/UMAP after {ctx.params['short']} vs {ctx.params['long']} fine-tuning epochs (Tables 14-15); "
             f"OOD sets: {', '.join(ctx.prep.ood)}")
    ctx.pngs.append(figures.finetune_epochs_figure(rows, title, ctx.out / "finetune_epochs.png"))
    write_table(ctx.out, "finetune_epochs", rows, "Short vs long fine-tuning (mean over OOD sets)")
    return {"rows": rows}
