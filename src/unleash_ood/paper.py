"""Paper-scale runs: a recipe over several seeds (fail fast on missing data), and the automatic choice
of the UM keep ratio / ζ on the validation OOD set.

``run_recipe`` goes through :func:`unleash_ood.pipeline.run_pipeline` — the same code path as ``demo``.
Suite OOD names (``svhn``, ``places365``, …; see :mod:`unleash_ood.data.suite`) are turned, once, into
uint8 ``.npz`` files under ``OUT/ood_cache/`` and passed to the pipeline as ``npz:`` specs, so each
set keeps its name in every result table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import DataConfig, DemoConfig, UMConfig
from .data import suite
from .data.cifar import LAYOUT as CIFAR_LAYOUT
from .data.cifar import cifar_present, data_root, download_cifar, how_to_get
from .errors import UserError
from .report import write_json

DEFAULT_GRID = (0.95, 0.97, 0.975, 0.99)
OOD_SUBSET_SEED = 0  # the OOD test subsets are the same for every seed


def check_data(cfg: DataConfig) -> None:
    """Everything a run reads — the ID dataset and every OOD set — present (or downloadable), else ONE
    UserError listing each missing piece and its fix. Call before any training."""
    problems = []
    if cfg.dataset in CIFAR_LAYOUT and not cifar_present(cfg.dataset, cfg.data_root):
        if cfg.download:
            try:
                download_cifar(cfg.dataset, cfg.data_root)
            except UserError as e:
                problems.append(f"ID data: {e}")
        else:
            problems.append(f"ID data: {how_to_get(cfg.dataset, data_root(cfg.data_root))}")
    specs = cfg.ood_specs()
    names = [s for s in specs if suite.uses_suite(dataset=cfg.dataset) and suite.is_suite_name(s)]
    for s in specs:
        kind, _, path = s.partition(":")
        if kind in ("npz", "folder") and path and not Path(path).expanduser().exists():
            problems.append(f"OOD {s}: {path} does not exist")
    try:
        suite.check_available(names, cfg.data_root, id_dataset=cfg.dataset, download=cfg.download)
    except UserError as e:
        problems.append(str(e))
    if problems:
        raise UserError("data missing, nothing was trained: " + " | ".join(problems))


def seed_config(cfg: DemoConfig, seed: int) -> DemoConfig:
    """The recipe for one seed: model init, data split/order and masks all follow ``seed``."""
    d = cfg.model_dump()
    d["seed"] = seed
    d["data"]["seed"] = seed
    return DemoConfig.model_validate(d)


def run_recipe(recipe: str | Path | DemoConfig, seeds: Sequence[int] = (0,), out_root: str | Path = "runs/paper",
               overrides: Sequence[str] = (), data_root_: str | None = None,
               select_grid: Sequence[float] | None = None, select_epochs: int = 5,
               init: str | Path | None = None) -> dict[int, list[dict]]:
    """Run a recipe for each seed into ``out_root/seed_<s>/``, then aggregate into ``out_root/report.*``.

    All data is checked (and the suite sets cached) before the first epoch of the first seed. With
    ``select_grid``, each seed trains the base model, chooses the UM keep ratio and ζ on validation data
    (:func:`select_keep_ratio`, ``select_epochs`` short UM epochs per candidate; written to
    ``seed_<s>/keep_selection.json``), then runs UM / control / UMAP with them. With ``outliers.enabled``,
    OE / Energy / POEM (× none, +UM, +UMAP, per the ``outliers`` section) are then fine-tuned from each
    seed's base into ``seed_<s>/outliers/`` (the auxiliary pool is checked up front too) and their
    records join the report; the returned records include them (without the duplicate base).
    With ``init`` (a checkpoint, or ``pytorch-ood:NAME``), the ``train`` stage is skipped: every seed starts
    from that base model (resolved, and downloaded if needed, before any seed runs).
    """
    from .aggregate import write_report
    from .pipeline import run_pipeline
    from .recipes import load_recipe

    if isinstance(recipe, DemoConfig):
        from .config import apply_overrides, validate

        cfg = validate(DemoConfig, apply_overrides(recipe.model_dump(), list(overrides)))
    else:
        cfg = load_recipe(recipe, list(overrides))
    if data_root_:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_root": data_root_})})
    if not seeds:
        raise UserError("give at least one seed")
    out = Path(out_root)
    check_data(cfg.data)
    if init is not None:  # fail (or download) before any seed runs
        from .pretrained import resolve_checkpoint

        if not resolve_checkpoint(init).is_file():
            raise UserError(f"--init checkpoint not found: {init}")
    if cfg.outliers.enabled:  # the auxiliary pool: present, and no overlap with the OOD test sets
        from .data.auxiliary import check_aux_overlap, check_aux_source

        check_aux_overlap(cfg.outliers.aux, cfg.data.ood_specs(), cfg.data.data_root, cfg.data.dataset)
        check_aux_source(cfg.outliers.aux, cfg.data.data_root)
    specs = {key: suite.resolve_specs(getattr(cfg.data, key), cfg.data.dataset, cfg.data.data_root,
                                      out / "ood_cache", n=cfg.data.ood_size, seed=OOD_SUBSET_SEED)
             for key in ("near", "far", "ood") if getattr(cfg.data, key)}  # each list keeps its group
    write_json(out / "recipe.json", {"recipe": str(recipe) if not isinstance(recipe, DemoConfig) else "(config)",
                                     "overrides": list(overrides), "seeds": list(seeds), "config": cfg.model_dump()})
    results = {}
    for s in seeds:
        cfg_s = seed_config(cfg, s)
        cfg_s = cfg_s.model_copy(update={"data": cfg_s.data.model_copy(update=specs)})
        if select_grid:
            results[s] = _run_with_selection(cfg_s, out / f"seed_{s}", select_grid, select_epochs, init)
        else:
            from .pipeline import STAGES

            stages = tuple(x for x in STAGES if (x != "train" or init is None) and (x != "control" or cfg_s.control))
            results[s] = run_pipeline(cfg_s, out / f"seed_{s}", stages,
                                      init_checkpoint=str(init) if init is not None else None)
        if cfg_s.outliers.enabled:
            from .outlier_pipeline import run_outliers

            results[s] = results[s] + [r for r in run_outliers(
                cfg_s, out / f"seed_{s}" / "outliers", out / f"seed_{s}" / "checkpoints" / "base.safetensors")
                if r["model"] != "base"]
    runs = [out / f"seed_{s}" for s in seeds]
    write_report(runs + [r / "outliers" for r in runs if (r / "outliers" / "results.json").is_file()], out)
    return results


def _run_with_selection(cfg: DemoConfig, out: Path, grid: Sequence[float], epochs: int,
                        init: str | Path | None = None) -> list[dict]:
    """train (or the ``init`` base) → select keep ratio / ζ on validation data → UM, control, UMAP."""
    from .pipeline import STAGES, load_checkpoint, prepare_data, run_stages

    if init is None:
        train_summary = run_stages(cfg, out, ("train",)).summary
        base_path: str | Path = out / "checkpoints" / "base.safetensors"
    else:
        train_summary, base_path = {}, str(init)
    prep = prepare_data(cfg.data, ood_specs=["uniform"])  # ID splits + validation OOD; no test OOD set
    prep.ood = {}
    model, _ = load_checkpoint(base_path, prep.id.num_classes, cfg.model)
    sel = select_keep_ratio(model, prep, cfg.um, validation_ood(cfg.data, prep.val_ood, prep.id.image_shape),
                            SelectionSettings(grid=tuple(grid), epochs=epochs, seed=cfg.seed,
                                              augment=cfg.data.augment),
                            out_path=out / "keep_selection.json")
    del model, prep
    um = cfg.um.model_copy(update={"keep_ratio": sel["keep_ratio"], "zeta": sel["zeta"]})
    cfg = cfg.model_copy(update={"um": um})
    stages = tuple(s for s in STAGES if s != "train" and (cfg.control or s != "control"))
    extra = {"best_epochs": train_summary.get("best_epochs"), "train_timings_s": train_summary.get("timings_s"),
             "keep_selection": {k: sel[k] for k in ("keep_ratio", "zeta", "criterion", "val_ood")}}
    return run_stages(cfg, out, stages, init_checkpoint=base_path, extra_summary=extra).records


# --------------------------------------------------------------------------- keep-ratio selection


@dataclass(frozen=True)
class SelectionSettings:
    """How :func:`select_keep_ratio` searches: the grid, short UM epochs per candidate (None: the UM
    setting), the accuracy guard (points below the base's validation accuracy), the seed, augmentation."""

    grid: Sequence[float] = DEFAULT_GRID
    epochs: int | None = None
    max_acc_drop: float | None = None
    seed: int = 0
    augment: bool = False


def validation_ood(data_cfg: DataConfig, fallback: torch.Tensor, image_shape: tuple[int, int, int]
                   ) -> dict[str, tuple[str, torch.Tensor]]:
    """The validation OOD sets by group, ``{group: (name, images)}``; never an OOD test set.

    far: the pipeline's patch-shuffled ID-validation images (``fallback``). near: for Fashion-MNIST
    (1-channel ID), letters rendered from the fonts held out of ``glyphs`` (:func:`load_glyphs`,
    ``split="val"``); for CIFAR, ``tinyimagenet`` (OpenOOD's near-OOD validation set) when present.
    """
    from .data.glyphs import load_glyphs

    sets = {"far": ("patch-shuffled ID validation", fallback)}
    if suite.uses_suite(dataset=data_cfg.dataset):
        if suite.present("tinyimagenet", data_cfg.data_root):
            sets["near"] = ("tinyimagenet", suite.load_suite_set(
                "tinyimagenet", data_cfg.data_root, image_shape, n=data_cfg.val_ood_size, seed=data_cfg.seed,
                id_dataset=data_cfg.dataset, allow_validation=True))
    else:
        sets["near"] = ("glyphs (validation fonts)",
                        load_glyphs(data_cfg.val_ood_size, data_cfg.seed, image_shape, split="val"))
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
    from .evaluation import evaluate_models
    from .methods.um import estimate_zeta
    from .pipeline import run_um
    from .prepare import EvalSets

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
