"""PNG figures: OOD metrics along training (the once-covered curve) and score histograms."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..metrics import group_means, set_groups  # noqa: E402
from ..utils.files import atomic_write  # noqa: E402

matplotlib.use("Agg")


def _save(fig, path: str | Path) -> Path:
    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)


GROUP_STYLE = {"near": {"color": "darkred", "ls": "--"}, "far": {"color": "navy", "ls": "--"},
               "synthetic": {"color": "darkgreen", "ls": ":"}, "mean": {"color": "black", "ls": "-"}}
GROUP_CMAP = {"near": "Reds", "far": "Blues", "synthetic": "Greens"}  # one set's thin curve, by its group


def plot_training_curve(log: Sequence[dict], path: str | Path, scores: Sequence[str] = ("Energy", "MSP"),
                        metric: str = "fpr95", groups: Mapping[str, str] | None = None) -> Path:
    """One panel per score: ``metric`` per OOD set (thin) along training epochs, the near, far and
    synthetic group means (when ``groups`` puts sets in two groups or more; a set it leaves out is far)
    and the mean over the near and far sets (thick), plus ID accuracy."""
    epochs = [r["epoch"] for r in log]
    sets = list(log[0]["ood"])
    group_of = set_groups(sets, groups)  # checked before a figure exists
    several_groups = len(set(group_of.values())) >= 2
    fig, axes = plt.subplots(1, len(scores) + 1, figsize=(5 * (len(scores) + 1), 4))
    for ax, score in zip(axes, scores):
        for ds in sets:  # with two groups or more: reds for near, blues for far, greens for synthetic
            same = [d for d in sets if group_of[d] == group_of[ds]]
            shade = 0.45 + 0.4 * same.index(ds) / max(1, len(same) - 1)
            color = plt.get_cmap(GROUP_CMAP[group_of[ds]])(shade) if several_groups else None
            ax.plot(epochs, [r["ood"][ds][score][metric] for r in log], marker=".", lw=0.8, color=color,
                    label=f"{ds} ({group_of[ds]})" if several_groups else ds)
        curves = {}
        for r in log:
            for agg, m in group_means({ds: r["ood"][ds][score] for ds in sets}, group_of).items():
                curves.setdefault(agg, []).append(m[metric])
        if not several_groups:  # one group only: its mean is the overall mean
            curves = {"mean": curves["mean"]}
        for agg, values in curves.items():
            ax.plot(epochs, values, lw=2.5 if agg == "mean" else 2, label=f"{agg} mean" if agg != "mean" else "mean",
                    **GROUP_STYLE[agg])
        mean = curves["mean"]
        best = int(np.argmin(mean) if metric.startswith("fpr95") else np.argmax(mean))
        ax.axvline(epochs[best], color="grey", ls="--", lw=1)
        ax.annotate(f"best mean: epoch {epochs[best]}", (epochs[best], mean[best]), textcoords="offset points",
                    xytext=(5, 8), fontsize=8)
        ax.set(title=f"{score} score: {metric.upper()} on OOD test sets", xlabel="epoch",
               ylabel=f"{metric.upper()} (%)" + (" ↓" if metric.startswith("fpr95") else " ↑"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[-1]
    ax.plot(epochs, [r["id_acc"] for r in log], label="ID test accuracy", color="tab:blue")
    ax.set(title="ID accuracy and training loss", xlabel="epoch", ylabel="accuracy (%)")
    ax2 = ax.twinx()
    ax2.plot(epochs, [r["train_ce"] for r in log], color="tab:red", label="train CE")
    ax2.set_yscale("log")
    ax2.set_ylabel("train CE (log)")
    ax.legend(loc="center right", fontsize=7)
    ax2.legend(loc="upper right", fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle("Once-covered OOD detection along training (ID = positive class)")
    return _save(fig, path)


def plot_score_histograms(scores: dict[str, dict[str, np.ndarray]], score: str, path: str | Path,
                          models: Sequence[str]) -> Path:
    """Per model (column): the ID test scores vs each OOD set's scores, same bins per column."""
    models = [m for m in models if m in scores]
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        by_ds = scores[model]
        allv = np.concatenate(list(by_ds.values()))
        lo, hi = np.percentile(allv, [0.5, 99.5])
        bins = np.linspace(lo, hi, 60)
        ax.hist(by_ds["id"], bins=bins, density=True, alpha=0.45, color="tab:blue", label="ID test")
        for ds, arr in by_ds.items():
            if ds != "id":
                ax.hist(arr, bins=bins, density=True, histtype="step", lw=1.2, label=ds)
        ax.set(title=f"{model}: {score} score", xlabel=f"{score} (higher = more ID)", ylabel="density")
        ax.legend(fontsize=7)
    fig.suptitle(f"ID vs OOD {score} score distributions")
    return _save(fig, path)
