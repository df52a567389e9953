"""Paper-scale runs of a recipe (``src/unleash_ood/recipes/NAME.yaml``, DemoConfig-shaped, one per ID
dataset × architecture; ``build_config("cifar10_densenet100", overrides=["base.epochs=20"])`` reads one)
over several seeds: all data checked first (fail fast), suite sets cached as npz, and optionally the
UM keep ratio / ζ chosen per seed on validation OOD (:mod:`.select_keep`).

Suite OOD names (``svhn``, ``places365``, …; see :mod:`unleash_ood.data.suite`) are turned, once, into
uint8 ``.npz`` files under ``OUT/ood_cache/`` and passed to the pipeline as ``npz:`` specs, so each
set keeps its name in every result table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..config import DataConfig, DemoConfig, build_config, data_root, recipe_path
from ..data import suite
from ..data.auxiliary import check_aux_overlap, check_aux_source
from ..data.cifar import LAYOUT as CIFAR_LAYOUT
from ..data.cifar import cifar_present, download_cifar, how_to_get
from ..data.prepared import prepare_data
from ..errors import UserError
from ..models.loading import load_checkpoint
from ..models.pretrained import resolve_checkpoint
from ..utils.files import write_json
from .layout import RunLayout
from .outliers import run_outliers
from .pipeline import STAGES, run_pipeline, run_stages
from .seeds import check_seeds, run_seeds
from .select_keep import SelectionSettings, select_keep_ratio, validation_ood


def recipe_description(name_or_path: str | Path) -> str:
    """The recipe file's first comment line."""
    for line in recipe_path(name_or_path).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


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


def run_recipe(recipe: str | Path | DemoConfig, seeds: Sequence[int] = (0,), out_root: str | Path = "runs/paper",
               overrides: Sequence[str] = (), data_root_: str | None = None,
               select_grid: Sequence[float] | None = None, select_epochs: int = 5,
               init: str | Path | None = None) -> list[dict]:
    """Run a recipe for each seed into ``out_root/seed<N>/`` (:func:`.seeds.run_seeds`: finished seeds are
    reused), then aggregate into ``out_root/report.*``; returns the aggregate records.

    All data is checked (and the suite sets cached) before the first epoch of the first seed. With
    ``select_grid``, each seed trains the base model, chooses the UM keep ratio and ζ on validation data
    (:func:`select_keep_ratio`, ``select_epochs`` short UM epochs per candidate; written to
    ``seed<N>/keep_selection.json``), then runs UM / control / UMAP with them. With ``outliers.enabled``,
    OE / Energy / POEM (× none, +UM, +UMAP, per the ``outliers`` section) are then fine-tuned from each
    seed's base into ``seed<N>/outliers/`` (the auxiliary pool is checked up front too) and their
    records join the report. With ``init`` (a checkpoint, or ``pytorch-ood:NAME``), the ``train`` stage is
    skipped: every seed starts from that base model (resolved, and downloaded if needed, before any seed runs).
    """
    cfg = build_config(recipe, overrides=list(overrides), data_root=data_root_)
    check_seeds(seeds)
    out = RunLayout(Path(out_root))
    check_data(cfg.data)
    if init is not None:  # fail (or download) before any seed runs
        if not resolve_checkpoint(init).is_file():
            raise UserError(f"--init checkpoint not found: {init}")
    if cfg.outliers.enabled:  # the auxiliary pool: present, and no overlap with the OOD test sets
        check_aux_overlap(cfg.outliers.aux, cfg.data.ood_specs(), cfg.data.data_root, cfg.data.dataset)
        check_aux_source(cfg.outliers.aux, cfg.data.data_root)
    specs = {key: suite.resolve_specs(getattr(cfg.data, key), cfg.data.dataset, cfg.data.data_root,
                                      out.ood_cache, n=cfg.data.ood_size, seed=OOD_SUBSET_SEED)
             for key in ("near", "far", "synthetic", "ood") if getattr(cfg.data, key)}  # each list keeps its group
    write_json(out.recipe, {"recipe": str(recipe) if not isinstance(recipe, DemoConfig) else "(config)",
                            "overrides": list(overrides), "seeds": list(seeds), "config": cfg.model_dump()})
    cfg = build_config(cfg, overrides=[{"data": specs}])

    def run_one(cfg_s: DemoConfig, run_dir: Path) -> None:
        run = RunLayout(run_dir)
        if select_grid:
            _run_with_selection(cfg_s, run, select_grid, select_epochs, init)
        else:
            stages = tuple(x for x in STAGES if (x != "train" or init is None) and (x != "control" or cfg_s.control))
            run_pipeline(cfg_s, run.root, stages, init_checkpoint=str(init) if init is not None else None)
        if cfg_s.outliers.enabled:
            run_outliers(cfg_s, run.outliers.root, run.checkpoint("base"))

    return run_seeds(cfg, seeds, out.root, run_one, stem="report")


def _run_with_selection(cfg: DemoConfig, out: RunLayout, grid: Sequence[float], epochs: int,
                        init: str | Path | None = None) -> list[dict]:
    """train (or the ``init`` base) → select keep ratio / ζ on validation data → UM, control, UMAP."""
    if init is None:
        train_summary = run_stages(cfg, out.root, ("train",)).summary
        base_path: str | Path = out.checkpoint("base")
    else:
        train_summary, base_path = {}, str(init)
    prep = prepare_data(cfg.data, ood_specs=["uniform"])  # ID splits + validation OOD; no test OOD set
    prep.ood = {}
    model, _ = load_checkpoint(base_path, prep.id.num_classes, cfg.model)
    sel = select_keep_ratio(model, prep, cfg.um, validation_ood(cfg.data, prep.val_ood, prep.id.image_shape,
                                                                prep.val_user),
                            SelectionSettings(grid=tuple(grid), epochs=epochs, seed=cfg.seed,
                                              augment=cfg.data.augment),
                            out_path=out.keep_selection)
    del model, prep
    cfg = build_config(cfg, overrides=[{"um": {"keep_ratio": sel["keep_ratio"], "zeta": sel["zeta"]}}])
    stages = tuple(s for s in STAGES if s != "train" and (cfg.control or s != "control"))
    extra = {"best_epochs": train_summary.get("best_epochs"), "train_timings_s": train_summary.get("timings_s"),
             "keep_selection": {k: sel[k] for k in ("keep_ratio", "zeta", "criterion", "val_ood")}}
    return run_stages(cfg, out.root, stages, init_checkpoint=base_path, extra_summary=extra).records
