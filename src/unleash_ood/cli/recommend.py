"""``unleash-ood recommend --run DIR``: one (model × detector × params) of a finished run, chosen on
validation only (:mod:`unleash_ood.run.recommend`); ``unleash-ood evidence D``: the tables over the seeds
of ``demo --seeds … --out D`` (:mod:`unleash_ood.analyses.evidence`). Files only, no network pass."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError


def parse_weights(items: list[str] | None) -> dict[str, float] | None:
    """``["near=0.7", "far=0.3"]`` → ``{"near": 0.7, "far": 0.3}`` (None: the run's own weights)."""
    if not items:
        return None
    out = {}
    for item in items:
        group, sep, value = item.partition("=")
        try:
            out[group.strip()] = float(value) if sep else float("nan")
        except ValueError:
            raise UserError(f"--weights {item!r}: give GROUP=NUMBER, e.g. near=0.5 far=0.5") from None
        if not sep:
            raise UserError(f"--weights {item!r}: give GROUP=NUMBER, e.g. near=0.5 far=0.5")
    return out


def cmd_recommend(args: argparse.Namespace) -> None:
    from ..run.layout import RunLayout
    from ..run.recommend import pick_line, recommend, write_recommendation
    from ..run.rundir import RunDir

    run = RunLayout(Path(args.run))
    rec = recommend(run.root, parse_weights(args.weights))  # every check before anything is written
    names = tuple(run.recommendation(s).name for s in (".json", ".csv", ".md"))
    with RunDir(run.root, overwrite=True, owns=names):
        written = write_recommendation(run.root, rec)
    print(pick_line(rec))
    print(rec["statement"])
    print(f"Written: {', '.join(map(str, written))}")


def cmd_evidence(args: argparse.Namespace) -> None:
    from ..analyses.evidence import evidence

    out = Path(args.out) if args.out else Path(args.seeds_dir) / "evidence"
    tables = evidence(args.seeds_dir, out, title=args.title)
    print(f"{len(tables['seeds'])} seed(s): written {out}/evidence.md and its tables (groups, paired, "
          "recommendation, proxies, flooding, seeds)")


def add_recommend_parser(sub) -> None:
    r = sub.add_parser("recommend", help="pick one model + detector (+ params) of a finished run on validation only")
    r.add_argument("--run", required=True, help="run directory (from demo/train/um/umap)")
    r.add_argument("--weights", nargs="+", metavar="GROUP=W",
                   help="weights of the validation OOD groups (default: the run's, near=0.5 far=0.5)")
    r.set_defaults(func=cmd_recommend)
    e = sub.add_parser("evidence", help="per-group tables, paired differences, recommendation and proxy worth "
                       "over the seeds of `demo --seeds`")
    e.add_argument("seeds_dir", help="the --out of `demo --seeds` (holding seed<N>/)")
    e.add_argument("--out", help="output folder (default SEEDS_DIR/evidence)")
    e.add_argument("--title", help="the page's title (default: SEEDS_DIR)")
    e.set_defaults(func=cmd_evidence)
