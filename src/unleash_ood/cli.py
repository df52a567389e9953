"""``unleash-ood``: a thin shell over the library. A user's mistake prints one line and exits 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_deploy import add_deploy_parsers
from .cli_paper import add_paper_parsers
from .config import DemoConfig, apply_overrides, quick, validate
from .errors import UserError

EPILOG = ("Settings: any config key as key=value, e.g. base.epochs=20 um.keep_ratio=0.97 "
          "umap.prune_rate=0.8 data.ood='[digits, npz:/data/svhn.npz]'. See README.")


def _config(args: argparse.Namespace) -> DemoConfig:
    data: dict = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        import yaml

        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"cannot parse config {path}: {e}") from None
        if not isinstance(data, dict):
            raise UserError(f"config {path} must be a mapping of keys to values")
    data = apply_overrides(data, list(args.overrides))
    if args.data_root:
        data.setdefault("data", {})["data_root"] = args.data_root
    cfg = validate(DemoConfig, data)
    return quick(cfg) if getattr(args, "quick", False) else cfg  # type: ignore[return-value]


def _print_table(out: Path) -> None:
    from .runtime import is_primary

    if not is_primary():  # under torchrun only rank 0 writes and prints
        return
    text = (out / "results.md").read_text()
    section = text.split("## Mean over", 1)[1].split("\n## ", 1)[0]
    print("\n## Mean over" + section.rstrip())
    print(f"\nAll results: {out}/results.md (per-set tables), results.json/.csv, scores.npz, plots/")


def cmd_demo(args: argparse.Namespace) -> None:
    from .outlier_pipeline import demo_with_outliers
    from .pipeline import run_demo

    if args.with_outliers:
        demo_with_outliers(_config(args), args.out)
    else:
        run_demo(_config(args), args.out, resume=args.resume)
    _print_table(Path(args.out))


def cmd_oe(args: argparse.Namespace) -> None:
    from .outlier_pipeline import run_outliers

    if args.recipe:  # a paper recipe (its `outliers` section) instead of --config
        from .recipes import load_recipe

        if args.config:
            raise UserError("give --recipe or --config, not both")
        root = [f"data.data_root={args.data_root}"] if args.data_root else []
        cfg = load_recipe(args.recipe, [*args.overrides, *root])
        cfg = quick(cfg) if args.quick else cfg
    else:
        cfg = _config(args)
    chosen = {k: v for k, v in (("methods", args.method), ("withs", args.with_)) if v}
    cfg = validate(DemoConfig, {**cfg.model_dump(), "outliers": {**cfg.outliers.model_dump(), **chosen}})
    run_outliers(cfg, args.out, args.checkpoint)  # type: ignore[arg-type]
    _print_table(Path(args.out))


def _stage_command(stages: tuple[str, ...]):
    def run(args: argparse.Namespace) -> None:
        from .pipeline import run_pipeline

        run_pipeline(_config(args), args.out, stages, init_checkpoint=getattr(args, "checkpoint", None),
                     resume=args.resume)
        _print_table(Path(args.out))
    return run


def cmd_eval(args: argparse.Namespace) -> None:
    from .pipeline import eval_run

    out = Path(args.out) if args.out else Path(args.run) / "eval"
    eval_run(args.run, args.ood, out)
    _print_table(out)


def cmd_config(args: argparse.Namespace) -> None:
    print(json.dumps(_config(args).model_dump(), indent=2))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unleash-ood", description="Unleashing Mask (UM/UMAP) for OOD detection.",
                                epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, out_default: str | None) -> None:
        sp.add_argument("--out", default=out_default, required=out_default is None, help="output directory")
        sp.add_argument("--config", help="YAML/JSON config file (keys as in `unleash-ood config`)")
        sp.add_argument("--data-root", help="folder with the Fashion-MNIST files (else Debian's, else download)")
        sp.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
        sp.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out from checkpoints/last_state.pt (same config)")

    d = sub.add_parser("demo", help="the whole pipeline on the embedded default", epilog=EPILOG)
    common(d, "runs/demo")
    d.add_argument("--quick", action="store_true", help="tiny smoke run (about a minute)")
    d.add_argument("--with-outliers", action="store_true",
                   help="also fine-tune with auxiliary outliers (OE, Energy, POEM; alone, +UM, +UMAP)")
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
                       help="base model (.safetensors from `train`, or pytorch-ood:NAME)")
        s.add_argument("--quick", action="store_true")
        s.set_defaults(func=_stage_command(stages))

    e = sub.add_parser("eval", help="evaluate a finished run's models on further OOD sets")
    e.add_argument("--run", required=True, help="run directory (from demo/train/um/umap)")
    e.add_argument("--ood", nargs="+", required=True, metavar="SPEC",
                   help="digits, textures, photos, gaussian, uniform, npz:PATH, folder:PATH")
    e.add_argument("--out", help="output directory (default RUN/eval)")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("config", help="print the effective config (defaults + file + overrides)")
    c.add_argument("--config")
    c.add_argument("--data-root")
    c.add_argument("--quick", action="store_true")
    c.add_argument("overrides", nargs="*", metavar="key=value")
    c.set_defaults(func=cmd_config)
    add_paper_parsers(sub)
    add_deploy_parsers(sub)
    from .reproduce import add_reproduce_parser  # matplotlib and the pipeline: imported only here

    add_reproduce_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"unleash-ood: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unleash-ood: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
