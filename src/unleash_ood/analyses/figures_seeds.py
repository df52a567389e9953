"""The figures of an analysis run over several seeds: mean ± std bands (curves) or error bars (bars),
near and far OOD side by side."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..eval.models import val_fpr95  # noqa: E402
from .common import group_metric  # noqa: E402
from .figures import savefig  # noqa: E402

PANELS = (("near_FPR95", "near OOD: FPR95 (%) ↓"), ("far_FPR95", "far OOD: FPR95 (%) ↓"))


def _band(ax, x, ys: np.ndarray, label: str, seeds: bool = False, **kw) -> None:
    """The mean over rows (seeds) with a ±1 sd band; ``seeds``: each seed as a thin line too."""
    m, s = ys.mean(0), ys.std(0, ddof=1) if len(ys) > 1 else np.zeros(ys.shape[1])
    line = ax.plot(x, m, label=f"{label} (n={len(ys)})", **kw)[0]
    ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.2)
    if seeds:
        for y in ys:
            ax.plot(x, y, color=line.get_color(), lw=0.6, alpha=0.5)


def _read_log(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def once_covered_bands(summaries: list[dict], score: str, path: Path) -> Path:
    """Per schedule (row): near and far FPR95, ID loss and accuracy along training, mean ± std over
    seeds; ticks at each seed's validation-selected epoch."""
    groups = summaries[0]["groups"] or {}
    scheds = list(summaries[0]["logs"])
    fig, axes = plt.subplots(len(scheds), 4, figsize=(20, 3.8 * len(scheds)), squeeze=False)
    for i, sched in enumerate(scheds):
        logs = [_read_log(s["logs"][sched]) for s in summaries if sched in s["logs"]]
        ep = [r["epoch"] for r in logs[0]]
        for ax, (g, title) in zip(axes[i][:2], [(c.split("_")[0], t) for c, t in PANELS]):
            ys = np.array([[group_metric(r, score, "fpr95", groups, g) for r in log] for log in logs])
            _band(ax, ep, ys, f"{score}, mean ± std over seeds (thin: each seed)", seeds=True, color="black")
            for log in logs:
                v = int(np.argmin([val_fpr95(r, score) for r in log]))
                ax.axvline(log[v]["epoch"], color="tab:green", ls=":", lw=1)
            ax.set(title=f"{sched}: {title}", xlabel="epoch (dotted: each seed's val-selected epoch)", ylabel="FPR95 (%)")
        for key, label in (("train_ce", "train CE"), ("test_ce", "test CE")):
            _band(axes[i][2], ep, np.array([[r[key] for r in log] for log in logs]), label)
        axes[i][2].set(yscale="log", title=f"{sched}: ID loss", xlabel="epoch", ylabel="cross-entropy (log)")
        _band(axes[i][3], ep, np.array([[r["id_acc"] for r in log] for log in logs]), "test accuracy")
        axes[i][3].set(title=f"{sched}: ID accuracy", xlabel="epoch", ylabel="accuracy (%)")
        for a in axes[i]:
            a.grid(alpha=0.3)
            a.legend(fontsize=7)
    fig.suptitle(f"Once-covered along training, {score} score: mean ± std over seeds (near and far OOD; ID positive)")
    return savefig(fig, path)


def keep_ratio_bands(rows: list[dict], path: Path) -> Path:
    """UM's near and far FPR95 vs keep ratio (mean ± std band), base as a dashed line with its band."""
    scores = list(dict.fromkeys(r["score"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.2))
    for ax, (col, title) in zip(axes, PANELS):
        for s in scores:
            um = sorted((r for r in rows if r["method"] == "UM" and r["score"] == s), key=lambda r: r["keep_ratio"])
            b = next(r for r in rows if r["method"] == "base" and r["score"] == s)
            x = [r["keep_ratio"] for r in um]
            m, sd = np.array([r[col] for r in um]), np.array([r[f"{col}_std"] for r in um])
            line = ax.plot(x, m, marker="o", label=f"UM, {s}")[0]
            ax.fill_between(x, m - sd, m + sd, color=line.get_color(), alpha=0.15)
            ax.axhline(b[col], color=line.get_color(), ls="--", lw=1)
        ax.set(title=f"UM vs keep ratio — {title} (dashed: base)", xlabel="keep ratio of the random mask", ylabel="FPR95 (%)")
    um = sorted((r for r in rows if r["method"] == "UM" and r["score"] == scores[0]), key=lambda r: r["keep_ratio"])
    axes[2].errorbar([r["keep_ratio"] for r in um], [r["ID-ACC"] for r in um], yerr=[r["ID-ACC_std"] for r in um],
                     marker="o", capsize=3, label="UM")
    b = next(r for r in rows if r["method"] == "base")
    axes[2].axhline(b["ID-ACC"], color="grey", ls="--", label="base")
    axes[2].set(title="ID test accuracy", xlabel="keep ratio of the random mask", ylabel="accuracy (%)")
    for ax in axes:
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"UM vs the mask's keep ratio: mean ± std over {rows[0]['n_seeds']} seeds")
    return savefig(fig, path)


def bars_with_errors(rows: list[dict], label_of, title: str, path: Path) -> Path:
    """Per score (colour) and row label (x): near and far FPR95 as mean ± std bars."""
    scores = list(dict.fromkeys(r["score"] for r in rows))
    labels = list(dict.fromkeys(label_of(r) for r in rows))
    fig, axes = plt.subplots(2, 1, figsize=(max(10.0, 0.28 * len(labels) * len(scores) + 3), 8))
    w = 0.8 / len(scores)
    xs = np.arange(len(labels))
    colors = plt.get_cmap("tab20" if len(scores) > 10 else "tab10").colors
    for ax, (col, name) in zip(axes, PANELS):
        for i, s in enumerate(scores):
            rs = {label_of(r): r for r in rows if r["score"] == s}
            ax.bar(xs + (i - (len(scores) - 1) / 2) * w, [rs[lb][col] if lb in rs else np.nan for lb in labels], w,
                   yerr=[rs[lb][f"{col}_std"] if lb in rs else 0 for lb in labels], capsize=2, label=s,
                   color=colors[i % len(colors)])
        ax.set_xticks(xs, labels, fontsize=8)
        ax.set(title=name, ylabel="FPR95 (%)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, ncol=2 if len(scores) > 7 else 1, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title)
    return savefig(fig, path)


def seed_figures(name: str, summaries: list[dict], rows: list[dict], out: Path) -> list[Path]:
    """The band/bar figures of a seeded analysis, plus the first seed's own figures (copied as
    ``seed<N>_<png>``)."""
    n = len(summaries)
    pngs: list[Path] = []
    if name == "once-covered":
        scores = list(dict.fromkeys(r["score"] for r in rows))
        pngs += [once_covered_bands(summaries, s, out / f"once_covered_bands_{s.lower()}.png") for s in scores]
    elif name == "keep-ratio":
        pngs.append(keep_ratio_bands(rows, out / "keep_ratio_bands.png"))
    elif name == "finetune-epochs":
        pngs.append(bars_with_errors(rows, lambda r: "base" if r["method"] == "base" else f"{r['method']} {r['epochs']}ep",
                                     f"Short vs long fine-tuning: mean ± std over {n} seeds", out / "finetune_epochs_bars.png"))
    elif name == "score-hist":
        pngs.append(bars_with_errors(rows, lambda r: r["model"], f"Val-selected epoch, final epoch, UM and UMAP: "
                                     f"mean ± std over {n} seeds", out / "score_hist_bars.png"))
    first = summaries[0]
    for p in first.get("pngs") or []:
        src = out / f"seed{first['seed']}" / p
        if src.is_file():
            pngs.append(Path(shutil.copyfile(src, out / f"seed{first['seed']}_{p}")))
    return pngs
