"""The analyses' PNG figures. Each function draws from the rows/objects an analysis computed and
returns the path written (atomically, like every result file)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..utils.files import atomic_write  # noqa: E402
from .common import mean_fpr, mean_metric  # noqa: E402


def savefig(fig, path: Path) -> Path:
    """Write ``fig`` as PNG (suptitle above the panel titles) and close it."""
    fig.tight_layout()
    if fig._suptitle is not None:  # above the panel titles (bbox_inches="tight" makes room)
        fig._suptitle.set_y(1.0)
        fig._suptitle.set_va("bottom")
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- training dynamics

def once_covered_figure(runs: dict[str, list[dict]], val_epochs: dict[str, int], score: str, path: Path,
                        groups: dict[str, str] | None = None) -> Path:
    """Per schedule (row): FPR95 per OOD set, AUROC/AUPR, ID loss and accuracy along training (means:
    over the near and far sets by ``groups``)."""
    fig, axes = plt.subplots(len(runs), 4, figsize=(20, 3.6 * len(runs)), squeeze=False)
    for i, (sched, log) in enumerate(runs.items()):
        ep = [r["epoch"] for r in log]
        test = [mean_fpr(r, score, groups) for r in log]
        bi = int(np.argmin(test))
        vi = ep.index(val_epochs[sched])
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
            ax.plot(ep, [mean_metric(r, score, metric, groups) for r in log], marker=".", label=f"mean {name}")
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
    fig.suptitle(f"Once-covered OOD detection along training ({score} score, OOD test sets: "
                 f"{', '.join(next(iter(runs.values()))[0]['ood'])}; ID positive)")
    return savefig(fig, path)


def score_hist_figure(flat, rm: dict, score: str, path: Path) -> Path:
    """Per model (column): ID vs OOD ``score`` histograms from the flat ``MODEL/SCORE/DATASET`` scores."""
    names = list(dict.fromkeys(k.split("/")[0] for k in flat.files))
    sets = list(dict.fromkeys(k.split("/")[2] for k in flat.files))
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), squeeze=False)
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
    return savefig(fig, path)


def finetune_epochs_figure(rows: list[dict], title: str, path: Path) -> Path:
    """Bars of mean FPR95 and AUROC per method / fine-tuning length, one colour per score."""
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
    fig.suptitle(title)
    return savefig(fig, path)


def typical_atypical_figure(rows: list[dict], ep: int, title: str, path: Path) -> Path:
    """Per subset size: FPR95 after fine-tuning on typical vs atypical samples, and before."""
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
    fig.suptitle(title)
    return savefig(fig, path)


def overfitting_figure(rows: list[dict], labels: list[str], scores: list[str], title: str, path: Path) -> Path:
    """Per score: horizontal bars of mean FPR95 per remedy (UM and UMAP highlighted), ID accuracy in brackets."""
    fig, axes = plt.subplots(1, len(scores), figsize=(7 * len(scores), 4.5), squeeze=False)
    for ax, s in zip(axes[0], scores):
        rs = [r for r in rows if r["score"] == s]
        ax.barh(np.arange(len(rs)), [r["FPR95"] for r in rs], color=["tab:grey"] * (len(rs) - 2) + ["tab:red", "tab:orange"])
        for j, r in enumerate(rs):
            ax.text(r["FPR95"], j, f" {r['FPR95']:.1f} (acc {r['ID-ACC']:.1f})", va="center", fontsize=7)
        ax.set_yticks(np.arange(len(rs)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set(title=f"{s}: mean FPR95 over OOD sets (ID acc in brackets)", xlabel="FPR95 (%) ↓", ylabel="method")
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title)
    return savefig(fig, path)


# ----------------------------------------------------------------------------- masks

def loss_vs_keep_figure(rows: list[dict], path: Path) -> Path:
    """Training CE of the randomly masked model vs keep ratio (Fig. 3b)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar([r["keep_ratio"] for r in rows], [r["train_CE_mean"] for r in rows],
                yerr=[r["train_CE_sd"] for r in rows],
                marker="o", capsize=3, label="random layer-wise mask m_δ (mean ± sd over draws)")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set(title="Training CE of the randomly masked final model (Fig. 3b)", xlabel="keep ratio (fraction of weights kept)",
           ylabel="mean training CE (log)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return savefig(fig, path)


def per_sample_loss_figure(l0: np.ndarray, l1: np.ndarray, keep: float, path: Path) -> Path:
    """Per-sample CE without (``l0``) and with (``l1``) a random mask, sorted by ``l0`` (Fig. 4c)."""
    n, order = len(l0), np.argsort(l0)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(np.arange(n), l0[order], marker=".", ls="", label="original model")
    ax.plot(np.arange(n), l1[order], marker=".", ls="", label=f"randomly masked (keep {keep})")
    ax.set_yscale("log")
    ax.set(title=f"Per-sample training CE on a batch of {n}, sorted by the original loss (Fig. 4c)",
           xlabel="sample (sorted by original CE)", ylabel="cross-entropy (log)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return savefig(fig, path)


def masked_errors_figure(grid: dict, images: tuple[torch.Tensor, torch.Tensor], classes: list[str], keep: float,
                         cols: int, path: Path) -> Path:
    """One row per mask kind: the training images it turns into errors (true→masked prediction)."""
    x, y = images
    kinds = list(grid["flips"])
    fig, axes = plt.subplots(len(kinds), cols, figsize=(1.1 * cols, 1.45 * len(kinds) + 0.6), squeeze=False)
    for i, kind in enumerate(kinds):
        f = grid["flips"][kind]
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(f["idx"]):
                ax.imshow(x[f["idx"][j], 0].numpy(), cmap="gray")
                ax.set_title(f"{classes[int(y[f['idx'][j]])][:7]}→{classes[f['pred'][j]][:7]}", fontsize=5)
            if j == 0:
                ax.set_ylabel(f"{kind}\n({grid['rows'][i]['n_flipped']} flips)", fontsize=6)
    fig.suptitle(f"Training samples correct without the mask, wrong with it (keep {keep}; "
                 "true→masked prediction; largest loss increase first)", fontsize=8)
    return savefig(fig, path)


def keep_ratio_figure(rows: list[dict], title: str, path: Path) -> Path:
    """UM vs keep ratio: mean FPR95, mean AUROC, ID accuracy and ζ (base as dashed lines)."""
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
    fig.suptitle(title)
    return savefig(fig, path)


def prune_rate_figure(rows: list[dict], hists: dict[tuple[str, float], list[dict]], zeta: float, title: str,
                      path: Path) -> Path:
    """UMAP vs plain pruning: mean FPR95 and masked ID accuracy per keep ratio, training CE per epoch."""
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
    fig.suptitle(title)
    return savefig(fig, path)


def weights_figure(panels: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]], title: str, path: Path) -> Path:
    """Per layer (``title → (all weights, {label: kept weights})``): histograms of the weights kept."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for ax, (what, (w, kept_by)) in zip(axes, panels.items()):
        bins = np.linspace(w.min(), w.max(), 50)
        ax.hist(w, bins=bins, alpha=0.35, color="grey", label="original (all weights)")
        for (label, kept), c in zip(kept_by.items(), ("tab:blue", "tab:red")):
            ax.hist(kept, bins=bins, histtype="step", lw=1.5, color=c, label=label)
        ax.set(title=what, xlabel="weight value", ylabel="count")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return savefig(fig, path)
