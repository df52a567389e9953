"""``unleash-ood``: one parser, one ``main``. A user's mistake prints one line and exits 2.

Startup stays fast: the parsers import no torch, pydantic or matplotlib; each command imports what it
uses when it runs. The commands live by family: :mod:`.pipeline` (demo, train, um, umap, oe, eval,
config), :mod:`.paper` (data, run, report, select-keep, import-weights), :mod:`.deploy` (export,
detect) and :mod:`.reproduce` (the paper's analyses; its parser is built only when that command is given).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError, os_error_reason
from .deploy import add_deploy_parsers
from .paper import add_paper_parsers
from .pipeline import EPILOG, add_pipeline_parsers
from .recommend import add_recommend_parser


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unleash-ood", description="Unleashing Mask (UM/UMAP) for OOD detection.",
                                epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True)
    add_pipeline_parsers(sub)
    add_paper_parsers(sub)
    add_deploy_parsers(sub)
    add_recommend_parser(sub)
    # listed here; parsed by reproduce's own parser (see main), which imports the pipeline
    sub.add_parser("reproduce", help="the paper's analyses at embedded scale (`reproduce --help`)", add_help=False)
    return p


def _reproduce_args(argv: list[str]) -> argparse.Namespace:
    """``reproduce …``: its parser lives in :mod:`unleash_ood.cli.reproduce`."""
    from .reproduce import add_reproduce_parser

    p = argparse.ArgumentParser(prog="unleash-ood")
    add_reproduce_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    args.func = _in_reproduce_dir(args.func)
    return args


def _in_reproduce_dir(func):
    """Run ``reproduce`` holding its output folder: cached sub-runs are reused (never refused) unless
    ``--overwrite`` empties it first."""

    def run(args: argparse.Namespace) -> None:
        from ..run.rundir import RunDir

        root = Path("runs/reproduce")
        out = Path(args.out) if args.out else (root if args.name == "all" else root / args.name)
        with RunDir(out, resume=not args.overwrite, overwrite=args.overwrite):
            func(args)
    return run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _reproduce_args(argv) if argv[:1] == ["reproduce"] else parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"unleash-ood: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an environment problem outside a run directory (a full disk, a read-only folder)
        where = f"{e.filename}: " if e.filename else ""
        print(f"unleash-ood: error: {where}{os_error_reason(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unleash-ood: interrupted", file=sys.stderr)
        return 130
    return 0


