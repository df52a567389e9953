"""``unleash-ood reproduce NAME``: the parser and the command. Importing this module is light (no torch,
no matplotlib): the analyses are imported when the command runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from .presets import ANALYSES, check_name


def cmd_reproduce(args: argparse.Namespace) -> None:
    names = list(ANALYSES) if args.name == "all" else [check_name(args.name)]
    from .cache import PrepCache
    from .runner import run_analysis

    prep_cache = PrepCache()  # ``all``: the data is prepared once
    for n in names:
        out = args.out if args.out and len(names) == 1 else (Path(args.out) / n if args.out else None)
        run_analysis(n, out, args.overrides, args.quick, args.data_root, args.docs, args.recipe, prep_cache)


class _IntermixedParser(argparse.ArgumentParser):
    """Lets key=value overrides follow options (``reproduce NAME --quick a=1``): plain argparse binds
    both positionals (NAME and the overrides) to the first positional chunk."""

    def parse_known_args(self, args=None, namespace=None):
        if getattr(self, "_inner", False):
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def add_reproduce_parser(subparsers) -> None:
    """Add ``reproduce NAME`` to the CLI's subparsers."""
    r = subparsers.add_parser(
        "reproduce", help="the paper's analyses at embedded scale",
        description="Analyses: " + ", ".join(ANALYSES) + " (or 'all'). Sub-runs are cached and skipped when re-run; "
                    "base trainings are shared in OUT/../_base_<hash>. Analysis parameters: analysis.KEY=VALUE.")
    r.__class__ = _IntermixedParser
    r.add_argument("name", metavar="NAME", help=", ".join(ANALYSES) + ", or all")
    r.add_argument("--out", help="output directory (default runs/reproduce/NAME; with 'all': OUT/NAME)")
    r.add_argument("--quick", action="store_true", help="tiny smoke variant (seconds)")
    r.add_argument("--overwrite", action="store_true", help="empty --out first (else finished sub-runs are reused)")
    r.add_argument("--data-root", help="folder with the Fashion-MNIST files")
    r.add_argument("--docs", help="also copy the PNGs into this folder (e.g. docs/gallery)")
    r.add_argument("--recipe", help="paper scale: start from a recipe's config (e.g. cifar10_densenet100) "
                                    "instead of the embedded default")
    r.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides (as for demo) and analysis.KEY=VALUE parameters")
    r.set_defaults(func=cmd_reproduce)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone ``reproduce`` entry point with the CLI's error convention (one line, exit 2)."""
    import sys

    p = argparse.ArgumentParser(prog="unleash-ood")
    add_reproduce_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"unleash-ood: error: {e}", file=sys.stderr)
        return 2
    return 0
