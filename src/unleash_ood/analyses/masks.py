"""Analyses of the masks: the masked training loss and which samples a mask turns into errors
(Fig. 3b/3c/4c/12), and which weights UMAP keeps compared with plain pruning (Fig. 11).

"Masking scores" ranks weights by the |scores| of an edge-popup mask briefly learned with plain CE
on the frozen model (:func:`~unleash_ood.methods.umap.learn_mask`); "masking weights" ranks them by
|weight| (magnitude). Layer-wise keeps the top fraction of each layer, model-wise the top fraction
over all layers pooled."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..masking import maskable_layers, masked, original_weight, random_layer_masks, topk_mask
from ..methods.train import ce_step
from ..methods.umap import MaskHooks, learn_mask
from ..run.stages import resolve_zeta
from ..utils.files import write_json
from . import figures
from .cache import Context
from .common import per_sample, write_table


def _ranked_masks(ranking: dict[str, torch.Tensor], keep: float, global_: bool) -> dict:
    if not global_:
        return {n: topk_mask(r.abs(), keep).bool() for n, r in ranking.items()}
    flat = torch.cat([r.abs().flatten() for r in ranking.values()])
    thr = flat.kthvalue(max(1, len(flat) - round(keep * len(flat)) + 1)).values if keep < 1 else flat.min() - 1
    return {n: (r.abs() >= thr) for n, r in ranking.items()}


def _popup_scores(ctx: Context, model: nn.Module, keep: float) -> dict[str, torch.Tensor]:
    """Edge-popup scores briefly learned with plain CE on a frozen copy of ``model``."""
    p, cfg = ctx.params, ctx.cfg
    learned = learn_mask(copy.deepcopy(model), ctx.prep.train_batches(cfg.umap.optim.batch_size, cfg.seed + 3, False),
                         ce_step, keep, cfg.umap.optim.model_copy(update={"epochs": p["popup_epochs"]}),
                         init="kaiming", seed=cfg.seed, hooks=MaskHooks(desc="popup scores (plain CE)"))
    return learned.scores


def _flip_grid(ctx: Context, model: nn.Module) -> dict:
    """Training samples correct without a mask and wrong with it, for five kinds of mask."""
    p, prep = ctx.params, ctx.prep
    x, y = prep.id.train
    k = p["grid_keep"]
    weights = {nme: original_weight(m).detach().clone() for nme, m in maskable_layers(model).items()}
    pop_scores = _popup_scores(ctx, model, k)
    kinds = {"random layer-wise (UM's m_δ)": random_layer_masks(model, k, ctx.cfg.seed),
             "weights, layer-wise": _ranked_masks(weights, k, False),
             "weights, model-wise": _ranked_masks(weights, k, True),
             "popup scores, layer-wise": _ranked_masks(pop_scores, k, False),
             "popup scores, model-wise": _ranked_masks(pop_scores, k, True)}
    base_loss, base_pred = per_sample(model, x, y, prep)
    ranks = base_loss.argsort().argsort() / max(len(base_loss) - 1, 1)
    out, flips = {}, {}
    for kind, m in kinds.items():
        with masked(model, m):
            loss, pred = per_sample(model, x, y, prep)
        idx = np.where((base_pred == y.numpy()) & (pred != y.numpy()))[0]
        idx = idx[np.argsort(-(loss[idx] - base_loss[idx]))]
        flips[kind] = {"idx": idx[: p["grid_n"]].tolist(), "pred": pred[idx[: p["grid_n"]]].tolist()}
        out[kind] = {"n_flipped": int(len(idx)), "kept_fraction": float(
            sum(v.sum().item() for v in m.values()) / sum(v.numel() for v in m.values())),
            "masked_train_acc": float(100 * (pred == y.numpy()).mean()), "mean_masked_CE": float(loss.mean()),
            "median_original_loss_percentile_of_flipped": float(np.median(ranks[idx]) * 100) if len(idx) else None}
    return {"rows": [{"mask": kd, **v} for kd, v in out.items()], "flips": flips,
            "train_acc": float(100 * (base_pred == y.numpy()).mean())}


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
    ctx.pngs.append(figures.loss_vs_keep_figure(sw, ctx.out / "mask_loss_vs_keep_ratio.png"))
    write_table(ctx.out, "mask_loss_vs_keep_ratio", sw, "Masked training CE vs keep ratio")

    # (4c) per-sample loss with and without a random mask on one training batch
    n = min(p["batch"], len(x))
    xb, yb = x[:n], y[:n]
    l0, _ = per_sample(model, xb, yb, prep)
    with masked(model, random_layer_masks(model, p["batch_keep"], ctx.cfg.seed)):
        l1, _ = per_sample(model, xb, yb, prep)
    ctx.pngs.append(figures.per_sample_loss_figure(l0, l1, p["batch_keep"], ctx.out / "per_sample_loss.png"))
    rho = float(np.corrcoef(np.log(l0 + 1e-12), np.log(l1 + 1e-12))[0, 1])
    top = np.argsort(l0)[-max(1, n // 10):]
    batch_stats = {"keep_ratio": p["batch_keep"], "mean_CE_original": float(l0.mean()), "mean_CE_masked": float(l1.mean()),
                   "log_corr": rho, "share_of_increase_from_top10pct_original_loss":
                   float((l1[top] - l0[top]).sum() / max((l1 - l0).sum(), 1e-12))}

    # (3c / 12) training samples the mask turns into errors: layer-wise vs model-wise, weights vs scores
    g = ctx.subrun(ctx.out / "grid", f"samples turned into errors by masks (keep {p['grid_keep']})",
                   lambda d: _flip_grid(ctx, model))
    ctx.pngs.append(figures.masked_errors_figure(g, (x, y), prep.id.classes, p["grid_keep"], p["grid_n"],
                                                 ctx.out / "masked_errors_grid.png"))
    write_table(ctx.out, "masked_errors", g["rows"], "Samples the mask turns into errors")
    write_json(ctx.out / "per_sample_batch.json", batch_stats)
    return {"loss_vs_keep": sw, "batch": batch_stats, "grid": g["rows"], "train_acc": g["train_acc"]}


def weights(ctx: Context) -> dict:
    base = ctx.base()
    k = ctx.params["keep_ratio"]
    umap_masks, _ = ctx.umap(base, keep_ratio=k)
    prune_masks, _ = ctx.umap(base, keep_ratio=k, zeta=0.0)
    model = base.load()
    layers = list(maskable_layers(model))
    pick = {"first conv": layers[0], "middle conv": layers[len(layers) // 2], "classifier": layers[-1]}
    rows, panels = [], {}
    for what, name in pick.items():
        w = original_weight(maskable_layers(model)[name]).detach().flatten().numpy()
        overlap = float((prune_masks[name] & umap_masks[name]).sum() / max(int(umap_masks[name].sum()), 1))
        kept_by = {}
        for label, m in (("kept by plain pruning", prune_masks), ("kept by UMAP", umap_masks)):
            kept = kept_by[label] = w[m[name].flatten().numpy()]
            rows.append({"layer": f"{what} ({name})", "method": label, "kept": int(len(kept)), "of": int(len(w)),
                         "mean_abs_kept": float(np.abs(kept).mean()), "mean_abs_all": float(np.abs(w).mean()),
                         "share_kept_by_both": overlap})
        panels[f"{what} ({name})"] = (w, kept_by)
    title = f"Weights kept by plain pruning vs UMAP, keep ratio {k} (Fig. 11)"
    ctx.pngs.append(figures.weights_figure(panels, title, ctx.out / "weights.png"))
    write_table(ctx.out, "weights", rows, "Kept weights: mean |w| of kept vs all")
    return {"rows": rows}

