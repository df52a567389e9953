"""The automatic choice of the UM keep ratio / ζ on validation OOD (never on test OOD): short UM runs
per candidate, scored on held-out glyph fonts (near) and patch-shuffled images (far)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import DataConfig, UMConfig
from ..data import suite
from ..data.glyphs import load_glyphs
from ..data.prepared import EvalSets
from ..errors import UserError
from ..eval.models import evaluate_models
from ..methods.um import estimate_zeta
from ..utils.files import write_json
from .stages import run_um

DEFAULT_GRID = (0.95, 0.97, 0.975, 0.99)


@dataclass(frozen=True)
class SelectionSettings:
    """How :func:`select_keep_ratio` searches: the grid, short UM epochs per candidate (None: the UM
    setting), the accuracy guard (points below the base's validation accuracy), the seed, augmentation."""

    grid: Sequence[float] = DEFAULT_GRID
    epochs: int | None = None
    max_acc_drop: float | None = None
    seed: int = 0
    augment: bool = False


def validation_ood(data_cfg: DataConfig, fallback: torch.Tensor, image_shape: tuple[int, int, int],
                   user: dict[str, tuple[str, torch.Tensor]] | None = None) -> dict[str, tuple[str, torch.Tensor]]:
    """The validation OOD sets by group, ``{group: (name, images)}``; never an OOD test set.

    far: the pipeline's patch-shuffled ID-validation images (``fallback``). near: for Fashion-MNIST
    (1-channel ID), letters rendered from the fonts held out of ``glyphs`` (:func:`load_glyphs`,
    ``split="val"``); for CIFAR, ``tinyimagenet`` (OpenOOD's near-OOD validation set) when present.
    ``user``: the user's known outliers by group (``Prepared.val_user``, from ``data.val_near``/``val_far``),
    added to that group's images.
    """
    sets = {"far": ("patch-shuffled ID validation", fallback)}
    if suite.uses_suite(dataset=data_cfg.dataset):
        if suite.present("tinyimagenet", data_cfg.data_root):
            sets["near"] = ("tinyimagenet", suite.load_suite_set(
                "tinyimagenet", data_cfg.data_root, image_shape, n=data_cfg.val_ood_size, seed=data_cfg.seed,
                id_dataset=data_cfg.dataset, allow_validation=True))
    else:
        sets["near"] = ("glyphs (validation fonts)",
                        load_glyphs(data_cfg.val_ood_size, data_cfg.seed, image_shape, split="val"))
    for group, (name, images) in (user or {}).items():
        if group in sets:
            name, images = f"{sets[group][0]} + {name}", torch.cat([sets[group][1], images])
        sets[group] = (name, images)
    return sets


def select_keep_ratio(base: nn.Module, prep, um: UMConfig, val_sets: dict[str, tuple[str, torch.Tensor]],
                      settings: SelectionSettings = SelectionSettings(),
                      out_path: str | Path | None = None) -> dict:
    """Grid search over UM keep ratios on validation data only.

    For each keep ratio δ: estimate ζ(δ) with ``um.zeta_draws`` random masks on the training set (combined
    by ``um.zeta_estimator``), run a short UM from a copy of ``base``, and measure Energy FPR95 (ID
    positive) between the held-out ID **validation** images and each validation OOD set of ``val_sets``
    (:func:`validation_ood`: a near-OOD proxy and a far one). The chosen δ minimizes the mean of those
    FPR95s over the groups (ties: higher mean AUROC); candidates losing more than
    ``settings.max_acc_drop`` validation-accuracy points are skipped. The base model (no UM) is measured
    alongside and reported, so a reader sees when no δ beats it. OOD **test** sets are never looked at;
    ``base`` is not modified.

    Returns ``{"keep_ratio", "zeta", "criterion", "val_ood", "base": {...}, "candidates": [...]}``.
    """
    if not len(prep.id.val[0]):
        raise UserError("keep-ratio selection needs held-out ID validation images (data.val_size > 0)")
    if not settings.grid:
        raise UserError("the keep-ratio grid is empty")
    sets = EvalSets(prep.id.val, {name: x for name, x in val_sets.values()},
                    {name: group for group, (name, _) in val_sets.items()})

    def measure(model: nn.Module) -> dict:
        ev = evaluate_models({"m": (model, None)}, prep, ["Energy"], sets, progress=False)
        row = {"val_acc": ev.id_acc["m"]}
        for group in val_sets:
            m = ev.aggregate("m", "Energy", group)
            row[f"{group}_fpr95"], row[f"{group}_auroc"] = m["fpr95"], m["auroc"]
        row["val_fpr95"] = float(np.mean([row[f"{g}_fpr95"] for g in val_sets]))
        row["val_auroc"] = float(np.mean([row[f"{g}_auroc"] for g in val_sets]))
        return row

    base_m = measure(base)
    cand = []
    for i, keep in enumerate(settings.grid):
        z = estimate_zeta(base, prep.batches(*prep.id.train), keep, um.zeta_draws, settings.seed,
                          um.zeta_estimator)
        short = um.model_copy(update={"keep_ratio": keep, "optim": um.optim.model_copy(
            update={"epochs": settings.epochs or um.optim.epochs})})
        tuned, _ = run_um(base, prep, short, z.value, settings.seed + 10 * i, settings.augment)
        cand.append({"keep_ratio": float(keep), "zeta": z.value, "zeta_draws": z.values, "zeta_sd": z.sd,
                     **measure(tuned)})
        del tuned
    guard = settings.max_acc_drop
    eligible = [c for c in cand if guard is None or c["val_acc"] >= base_m["val_acc"] - guard] or cand
    best = min(eligible, key=lambda c: (c["val_fpr95"], -c["val_auroc"]))
    result = {"keep_ratio": best["keep_ratio"], "zeta": best["zeta"],
              "criterion": "min mean Energy FPR95 over the validation OOD groups (ID validation vs each), "
                           "ties by mean AUROC",
              "val_ood": {g: name for g, (name, _) in val_sets.items()}, "max_acc_drop": guard,
              "base": base_m, "candidates": cand}
    if out_path is not None:
        write_json(out_path, result)
    return result
