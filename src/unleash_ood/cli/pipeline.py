"""``demo``, ``train``, ``um``, ``umap``, ``oe``, ``eval`` and ``config``: the pipeline's commands.

Each handler builds the config (:func:`unleash_ood.config.build_config`), runs one library call inside
the run directory's :class:`~unleash_ood.run.rundir.RunDir`, and prints the group table. Imports of the
library are inside the handlers, on purpose: ``--help`` and ``config`` load no torch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    from ..config import DemoConfig

EPILOG = ("Settings: any config key as key=value, e.g. base.epochs=20 um.keep_ratio=0.97 "
          "umap.prune_rate=0.8 data.near='[glyphs, npz:/data/notmnist.npz]' data.far='[textures, uniform]'. "
          "See README.")


FORCE_HELP = ("fine-tune even where ζ ≥ ½·ln(classes), which would push the model toward chance (an undertrained "
              "model, or too small a keep ratio); stopped otherwise")


def _config(args: argparse.Namespace) -> DemoConfig:
    """The run's config: defaults < ``--quick`` < ``--config FILE`` < ``key=value`` < ``--data-root``."""
    from ..config import build_config, read_config_file

    user = [read_config_file(args.config)] if args.config else []
    return build_config(None, ["quick"] if getattr(args, "quick", False) else [], [*user, *args.overrides],
                        data_root=args.data_root or None)


def _print_table(records: list[dict], out: Path) -> None:
    from ..report.tables import group_table, mean_count, mean_table, ood_sets
    from ..utils.runtime import is_primary

    if not is_primary():  # under torchrun only rank 0 writes and prints
        return
    print(f"\n## Near and far OOD\n\n{group_table(records)}")
    print(f"\n## Mean over {mean_count(ood_sets(records))}\n\n{mean_table(records)}")
    print(f"\nAll results: {out}/results.md (per-set tables), results.json/.csv, scores.npz, plots/")


def cmd_demo(args: argparse.Namespace) -> None:
    from ..deploy.export import ExportRequest, export_run
    from ..run.layout import RunLayout
    from ..run.outliers import demo_with_outliers
    from ..run.pipeline import run_demo
    from ..run.recommend import pick_line, recommend_run
    from ..run.rundir import RunDir

    picks: list[str] = []

    def run(cfg: DemoConfig, out: str | Path) -> list[dict]:
        with RunDir.for_command(out, args) as run_dir:
            records = (demo_with_outliers(cfg, run_dir, checkpoint=args.checkpoint, force=args.force)
                       if args.with_outliers else
                       run_demo(cfg, run_dir, resume=args.resume, checkpoint=args.checkpoint, force=args.force))
            rec = recommend_run(run_dir)  # the last step: one pick, chosen on validation only, and its bundle
            if rec:
                p = rec["pick"]
                bundle = RunLayout(Path(run_dir)).recommended
                export_run(ExportRequest(run=Path(run_dir), model=p["model"], score=p["detector"], out=bundle,
                                         params=p["params"], device=cfg.runtime.device))
                picks.append(f"{out}: {pick_line(rec)}; exported to {bundle}")
            else:
                picks.append(f"{out}: no recommendation (no ID validation split)")
            return records

    if args.seeds is not None:
        from ..run.seeds import run_seeds
        from .paper import _seeds_and_overrides

        seeds, args.overrides = _seeds_and_overrides(args)  # key=value after --seeds are overrides
        records = run_seeds(_config(args), seeds, args.out, run)
    else:
        records = run(_config(args), args.out)
    _print_table(records, Path(args.out))
    for line in picks:
        print(line)


def cmd_oe(args: argparse.Namespace) -> None:
    from ..config import build_config
    from ..run.outliers import run_outliers
    from ..run.rundir import RunDir

    if args.recipe and args.config:  # a paper recipe (its `outliers` section) instead of --config
        raise UserError("give --recipe or --config, not both")
    chosen = {k: v for k, v in (("methods", args.method), ("withs", args.with_)) if v}
    if args.recipe:
        cfg = build_config(args.recipe, ["quick"] if args.quick else [], [*args.overrides, {"outliers": chosen}],
                           data_root=args.data_root or None)
    else:
        cfg = build_config(_config(args), overrides=[{"outliers": chosen}])
    with RunDir.for_command(args.out, args) as out:
        records = run_outliers(cfg, out, args.checkpoint)  # type: ignore[arg-type]
    _print_table(records, Path(args.out))


def _stage_command(stages: tuple[str, ...]):
    def run(args: argparse.Namespace) -> None:
        from ..run.pipeline import run_pipeline
        from ..run.rundir import RunDir

        cfg = _config(args)
        with RunDir.for_command(args.out, args) as out:
            records = run_pipeline(cfg, out, stages, init_checkpoint=getattr(args, "checkpoint", None),
                                   resume=args.resume, guard=not getattr(args, "force", True))
        _print_table(records, Path(args.out))
    return run


def cmd_eval(args: argparse.Namespace) -> None:
    from ..run.layout import RunLayout
    from ..run.pipeline import eval_run
    from ..run.rundir import RunDir

    out = Path(args.out) if args.out else RunLayout(Path(args.run)).eval
    with RunDir.for_command(out, args) as run_dir:
        records = eval_run(args.run, args.ood, run_dir, near_specs=args.near, far_specs=args.far,
                           save_features=args.save_features)
    _print_table(records, out)


def cmd_config(args: argparse.Namespace) -> None:
    print(json.dumps(_config(args).model_dump(), indent=2))


def add_pipeline_parsers(sub) -> None:
    """Register the pipeline's commands on the main parser's subcommands."""
    def common(sp: argparse.ArgumentParser, out_default: str | None) -> None:
        sp.add_argument("--out", default=out_default, required=out_default is None, help="output directory")
        sp.add_argument("--config", help="YAML/JSON config file (keys as in `unleash-ood config`)")
        sp.add_argument("--data-root", help="folder with the Fashion-MNIST files (else Debian's, else download)")
        sp.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        sp.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out from checkpoints/last_state.pt (same config)")
        sp.add_argument("--overwrite", action="store_true", help="empty a non-empty --out first")

    d = sub.add_parser("demo", help="the whole pipeline on the embedded default", epilog=EPILOG)
    common(d, "runs/demo")
    d.add_argument("--quick", action="store_true", help="tiny smoke run (about a minute)")
    d.add_argument("--with-outliers", action="store_true",
                   help="also fine-tune with auxiliary outliers (OE, Energy, POEM; alone, +UM, +UMAP)")
    d.add_argument("--checkpoint", help="skip base training: run ζ, UM, the control, UMAP and every detector on "
                   "this model (.safetensors, with or without our metadata, or a .pt/.pth state_dict; without "
                   "metadata model.arch says the architecture), or pytorch-ood:NAME")
    d.add_argument("--force", action="store_true", help=FORCE_HELP)
    d.add_argument("--seeds", nargs="+", metavar="N",
                   help="one run per seed into OUT/seed<N>/ (finished ones reused), then OUT/results.* = "
                        "mean ± std over the seeds")
    d.set_defaults(func=cmd_demo)

    o = sub.add_parser("oe", help="fine-tune a checkpoint with auxiliary outliers (OE, Energy, POEM)",
                       epilog=EPILOG)
    common(o, None)
    o.add_argument("--checkpoint", required=True, help="base model (.safetensors, or pytorch-ood:NAME)")
    o.add_argument("--method", nargs="+", choices=["oe", "energy", "poem"], help="default: all three")
    o.add_argument("--with", dest="with_", nargs="+", choices=["none", "um", "umap"],
                   help="combine with UM's flooding or UMAP's mask (default: none um umap)")
    o.add_argument("--quick", action="store_true")
    o.add_argument("--recipe", help="a paper recipe (name or YAML) instead of --config, e.g. cifar10_densenet100")
    o.set_defaults(func=cmd_oe)

    t = sub.add_parser("train", help="train a base model with once-covered tracking", epilog=EPILOG)
    common(t, None)
    t.add_argument("--quick", action="store_true")
    t.set_defaults(func=_stage_command(("train",)))
    for name, stages, what in (("um", ("um", "control"), "UM (and the CE control) on a checkpoint"),
                               ("umap", ("umap",), "learn a UMAP mask on a checkpoint")):
        s = sub.add_parser(name, help=what, epilog=EPILOG)
        common(s, None)
        s.add_argument("--checkpoint", required=True,
                       help="base model (.safetensors from `train` or without metadata, a .pt/.pth state_dict "
                       "with model.arch, or pytorch-ood:NAME)")
        s.add_argument("--quick", action="store_true")
        s.add_argument("--force", action="store_true", help=FORCE_HELP)
        s.set_defaults(func=_stage_command(stages))

    e = sub.add_parser("eval", help="evaluate a finished run's models on further OOD sets")
    e.add_argument("--run", required=True, help="run directory (from demo/train/um/umap)")
    e.add_argument("--near", nargs="+", metavar="SPEC", help="near-OOD sets: glyphs, digits, mnist, kmnist, "
                   "emnist-letters, heldout-classes, npz:PATH, folder:PATH (built-ins keep their own group)")
    e.add_argument("--far", nargs="+", metavar="SPEC",
                   help="far-OOD sets: textures, photos, gaussian, uniform, npz:PATH, folder:PATH")
    e.add_argument("--ood", nargs="+", metavar="SPEC", help="as --far (kept for old scripts); with none of "
                   "--near/--far/--ood the run's own suite")
    e.add_argument("--out", help="output directory (default RUN/eval)")
    e.add_argument("--save-features", action="store_true",
                   help="also write features.npz (penultimate features + effective classifier per model)")
    e.add_argument("--overwrite", action="store_true", help="empty a non-empty output directory first")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("config", help="print the effective config (defaults + file + overrides)")
    c.add_argument("--config")
    c.add_argument("--data-root")
    c.add_argument("--quick", action="store_true")
    c.add_argument("overrides", nargs="*", metavar="key=value")
    c.set_defaults(func=cmd_config)
