"""Paper-scale subcommands: ``data list``, ``run RECIPE``, ``report RUN_DIR…``, ``select-keep``.

Wired into the main parser with one line in ``cli.parser()``: ``add_paper_parsers(sub)``. Handlers raise
:class:`UserError` for a user's mistake (the main CLI prints it and exits 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserError


def cmd_data_list(args: argparse.Namespace) -> None:
    from ..config import DataConfig, data_root
    from ..data.fingerprint import write_reference
    from ..data.listing import fashion_listing, format_listing
    from ..data.suite import data_status, format_status

    if args.id == "fashion_mnist":
        cfg = DataConfig(data_root=args.data_root, download=False, seed=args.seed, ood_size=args.ood_size)
        rows, records = fashion_listing(cfg)
        if args.save_hashes:
            write_reference(args.save_hashes, cfg, records)
    elif args.save_hashes:
        raise UserError("--save-hashes needs --id fashion_mnist (the built-in sets' hashes)")
    else:
        rows = data_status(args.data_root, args.id)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    roles = ("near / far / synthetic = the OOD group" if args.id == "fashion_mnist" else
             "ID, test = the paper's suite, validation = for choosing zeta / keep ratio only")
    print(f"Data root: {data_root(args.data_root)}   (ID dataset: {args.id}; roles: {roles})")
    print(format_listing(rows, cfg) if args.id == "fashion_mnist" else format_status(rows))
    if args.save_hashes:
        print(f"hashes written to {args.save_hashes}")


def _seeds_and_overrides(args: argparse.Namespace) -> tuple[list[int], list[str]]:
    seeds, overrides = [], list(args.overrides)
    for tok in args.seeds:
        if "=" in tok:
            overrides.append(tok)
            continue
        for part in tok.split(","):
            try:
                seeds.append(int(part))
            except ValueError:
                raise UserError(f"--seeds takes integers, got {part!r}") from None
    return seeds, overrides


def cmd_run(args: argparse.Namespace) -> None:
    from ..config import recipe_names
    from ..run.layout import RunLayout
    from ..run.recipes import recipe_description, run_recipe
    from ..run.rundir import RunDir

    if args.list or not args.recipe:
        for name in recipe_names():
            print(f"{name:22s} {recipe_description(name)}")
        return
    seeds, overrides = _seeds_and_overrides(args)
    out = Path(args.out or Path("runs") / Path(args.recipe).stem)
    with RunDir.for_command(out, args) as run_dir:
        run_recipe(args.recipe, seeds, run_dir, overrides, data_root_=args.data_root, select_grid=args.select_keep,
                   select_epochs=args.select_epochs, init=args.init)
    report = RunLayout(out).result_files("report")
    print(report[-1].read_text())
    print(f"Per-seed runs: {out}/seed<N>/ ; aggregate: {', '.join(map(str, report))}")


def cmd_report(args: argparse.Namespace) -> None:
    from ..run.aggregate import write_report
    from ..run.layout import RunLayout
    from ..run.rundir import RunDir

    out = Path(args.out) if args.out else (Path(args.run_dirs[0]) if len(args.run_dirs) == 1 else Path("report"))
    files = RunLayout(out).result_files("report")
    with RunDir.for_command(out, args, owns=tuple(f.name for f in files)):
        write_report(args.run_dirs, out)
    print(files[-1].read_text())
    print(f"Written: {', '.join(map(str, files))}")


def cmd_select_keep(args: argparse.Namespace) -> None:
    from ..run.rundir import RunDir

    out = Path(args.out)
    with RunDir.for_command(out.parent, args, owns=(out.name,)):
        res, name = _select_keep(args, out)
    groups = list(res["val_ood"])

    def line(label: str, c: dict) -> str:
        per = "  ".join(f"{g} {c[f'{g}_fpr95']:.2f}" for g in groups)
        return (f"{label}  val Energy FPR95: {per}  (mean {c['val_fpr95']:.2f}, AUROC {c['val_auroc']:.2f})  "
                f"val acc {c['val_acc']:.2f}")

    print(line("base (no UM)         ", res["base"]))
    for c in res["candidates"]:
        print(line(f"keep {c['keep_ratio']:.3f} zeta {c['zeta']:.4f}", c))
    print(f"chosen on {name}: um.keep_ratio={res['keep_ratio']} um.zeta={res['zeta']:.4f}   (written to {out})")


def _select_keep(args: argparse.Namespace, out: Path) -> tuple[dict, str]:
    from ..config import build_config
    from ..data.prepared import prepare_data
    from ..models.loading import load_checkpoint
    from ..run.select_keep import SelectionSettings, select_keep_ratio, validation_ood

    cfg = build_config(args.recipe, overrides=list(args.overrides), data_root=args.data_root or None)
    # only the ID data is needed: the OOD test sets are never loaded
    prep = prepare_data(cfg.data, ood_specs=["uniform"])
    prep.ood = {}
    model, _ = load_checkpoint(args.checkpoint, prep.id.num_classes, cfg.model)
    val_sets = validation_ood(cfg.data, prep.val_ood, prep.id.image_shape, prep.val_user)
    settings = SelectionSettings(grid=tuple(args.grid), epochs=args.epochs, max_acc_drop=args.max_acc_drop,
                                 seed=cfg.seed, augment=cfg.data.augment)
    res = select_keep_ratio(model, prep, cfg.um, val_sets, settings, out_path=out)
    return res, " + ".join(f"{name} ({g})" for g, (name, _) in val_sets.items())


def cmd_import_weights(args: argparse.Namespace) -> None:
    from ..models.checkpoint import load_tensors
    from ..models.pretrained import import_state_dict, is_pretrained_spec, resolve_init

    try:
        kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    except json.JSONDecodeError as e:
        raise UserError(f"--model-kwargs is not valid JSON ({e})") from None
    if not isinstance(kwargs, dict):
        raise UserError("--model-kwargs takes a JSON object, e.g. '{\"mean\": [0.5, 0.5, 0.5], "
                        "\"std\": [0.5, 0.5, 0.5]}'")
    if is_pretrained_spec(args.src):
        import shutil

        path = resolve_init(args.src, args.cache_dir, download=False if args.offline else None)
        if args.out:
            shutil.copyfile(path, args.out)
            path = Path(args.out)
    else:
        if not (args.arch and args.num_classes):
            raise UserError("importing a state_dict file needs --arch and --num-classes")
        path = import_state_dict(args.src, args.arch, args.num_classes, kwargs, args.out,
                                 strip_prefix="" if args.keep_prefix else "module.")
    meta = load_tensors(path)[1]
    print(f"wrote {path}  (arch {meta['arch']}, {meta['num_classes']} classes, kwargs {meta.get('model_kwargs')}, "
          f"source {meta.get('source')})")
    print(f"use it with --checkpoint {path} (um / umap / oe / select-keep) or `unleash-ood run RECIPE --init {path}`")


def add_paper_parsers(sub) -> None:
    """Add ``data``, ``run``, ``report``, ``select-keep`` and ``import-weights`` to the main CLI's subparsers."""
    d = sub.add_parser("data", help="paper-scale datasets: where they go and which are present")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser("list", help="table of the OOD suite (+ CIFAR): expected path, present?, how to get it")
    dl.add_argument("--data-root", help="data root (default ~/.cache/unleash-ood)")
    dl.add_argument("--id", default="cifar10", choices=["cifar10", "cifar100", "fashion_mnist"],
                    help="ID dataset (sets roles; fashion_mnist: the named sets with their group, source counts "
                         "and SHA-256)")
    dl.add_argument("--json", action="store_true", help="print JSON instead of a table")
    dl.add_argument("--seed", type=int, default=0, help="fashion_mnist: the data seed of the hashes (default 0)")
    dl.add_argument("--ood-size", type=int, default=2000,
                    help="fashion_mnist: data.ood_size of the hashes (default 2000, the default of data.ood_size)")
    dl.add_argument("--save-hashes", metavar="FILE",
                    help="fashion_mnist: also write the hashes (the layout of docs/set_hashes.json)")
    dl.set_defaults(func=cmd_data_list)

    r = sub.add_parser("run", help="run a paper recipe over seeds, then aggregate (mean ± std)",
                       epilog="Recipes: `unleash-ood run --list`. Overrides as key=value, e.g. base.epochs=20.")
    r.add_argument("recipe", nargs="?", help="recipe name (see --list) or a YAML file")
    r.add_argument("--seeds", nargs="+", default=["0"], metavar="S", help="seeds (default 0), e.g. --seeds 0 1 2")
    r.add_argument("--out", help="output root (default runs/RECIPE); runs go to OUT/seed<N>/")
    r.add_argument("--data-root", help="data root with CIFAR and the OOD suite (see `unleash-ood data list`)")
    r.add_argument("--list", action="store_true", help="list the recipes")
    r.add_argument("--overwrite", action="store_true", help="empty a non-empty --out first")
    r.add_argument("--select-keep", nargs="+", type=float, metavar="KEEP",
                   help="choose um.keep_ratio (and its zeta) per seed from these values on validation OOD "
                        "(TinyImageNet if present, else patch-shuffled validation images) after base training")
    r.add_argument("--select-epochs", type=int, default=5, help="short UM epochs per --select-keep candidate")
    r.add_argument("--init", metavar="SPEC",
                   help="skip base training and start every seed from this checkpoint (.safetensors) or "
                        "pytorch-ood:NAME (e.g. pytorch-ood:cifar10-pt, pytorch-ood:wrn-40-2/cifar10/oe)")
    r.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    r.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="mean ± std over seeds of finished runs (Table 1 and Table 2 shapes)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="runs, or folders of seed<N> runs")
    p.add_argument("--out", help="where report.md/.csv/.json go (default: the RUN_DIR if one, else ./report)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report.md/.csv/.json in --out")
    p.set_defaults(func=cmd_report)

    s = sub.add_parser("select-keep", help="choose the UM keep ratio / zeta on validation OOD (never test OOD)")
    s.add_argument("recipe", help="recipe name or YAML file (for data, UM settings); `demo` = the demo's defaults")
    s.add_argument("--checkpoint", required=True, help="the trained base model (.safetensors)")
    s.add_argument("--grid", nargs="+", type=float, default=[0.95, 0.97, 0.975, 0.99], help="keep ratios to try")
    s.add_argument("--epochs", type=int, default=5, help="short UM epochs per candidate (default 5)")
    s.add_argument("--max-acc-drop", type=float, default=None,
                   help="skip candidates losing more validation accuracy (points) than this")
    s.add_argument("--out", default="keep_selection.json", help="JSON with every candidate and the choice")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    s.add_argument("--data-root")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s.set_defaults(func=cmd_select_keep)

    w = sub.add_parser("import-weights", help="convert a .pt/.pth state_dict or pytorch-ood:NAME to a checkpoint",
                       epilog="pytorch-ood names: cifar10-pt, cifar100-pt, cifar10-oe-tune, cifar10-energy-tune, "
                              "… or any wrn-40-2 key of pytorch-ood 0.4.0's registry (wrn-40-2/cifar10/oe, …).")
    w.add_argument("src", help="a state_dict file (loaded weights-only) or pytorch-ood:NAME")
    w.add_argument("--arch", help="registered architecture, e.g. wrn40_2 (required for a file)")
    w.add_argument("--num-classes", type=int, help="number of classes (required for a file)")
    w.add_argument("--model-kwargs", help="JSON model kwargs, e.g. the mean/std the weights were trained with")
    w.add_argument("--out", help="output .safetensors (default: SRC with suffix .safetensors; for "
                                 "pytorch-ood:NAME the converted file stays in the cache)")
    w.add_argument("--keep-prefix", action="store_true", help="do not strip a 'module.' key prefix")
    w.add_argument("--cache-dir", help="pretrained cache (default ~/.cache/unleash-ood/pretrained)")
    w.add_argument("--offline", action="store_true", help="never download; use the cache only")
    w.set_defaults(func=cmd_import_weights)
