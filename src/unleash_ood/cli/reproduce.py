"""``unleash-ood reproduce NAME``: the parser and the command. Importing this module is light (no torch,
no matplotlib): the analyses are imported when the command runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..analyses.presets import ANALYSES, check_name


def cmd_reproduce(args: argparse.Namespace) -> None:
    names = list(ANALYSES) if args.name == "all" else [check_name(args.name)]
    seeds = _check_seeds(args.seeds)
    import time

    from ..analyses.cache import PrepCache
    from ..analyses.presets import seeded
    from ..analyses.runner import Request, run_analysis, run_seeded
    from ..utils.files import write_json

    root = Path(args.out or "runs/reproduce")
    outs = {n: root / n for n in names} if args.name == "all" else {names[0]: Path(args.out or root / names[0])}
    req = Request(tuple(args.overrides), args.quick, args.data_root, args.recipe, Path(args.docs) if args.docs else None)
    prep_cache = PrepCache()  # the data of each seed is prepared once
    started, t = time.strftime("%Y-%m-%d %H:%M:%S"), time.perf_counter()
    walls, subruns = {}, {"computed": 0, "reused": 0}
    for n, out in outs.items():
        shared = root if args.name == "all" else out.parent
        if seeds and n in seeded():
            s = run_seeded(n, out, seeds, req, prep_cache, shared)
        else:
            s = run_analysis(n, out, req, prep_cache, seeds[0] if seeds else None, shared)
        walls[n] = s["wall_s"]
        subruns = {k: subruns[k] + s["subruns"][k] for k in subruns}
    if args.name == "all":
        run = {"seeds": seeds, "started": started, "wall_s": round(time.perf_counter() - t, 1), "analyses": walls,
               "subruns": subruns}
        write_json(root / "timing.json", {"runs": [*_previous_runs(root / "timing.json"), run]})
        if seeds:
            from ..analyses.gallery import write_gallery

            docs = Path(args.docs) if args.docs else None
            write_gallery(root, docs, docs.parent / f"{docs.name}_small_model.md" if docs else None)


def _previous_runs(path: Path) -> list[dict]:
    """The runs recorded in an earlier ``timing.json`` (the first one computed every sub-run)."""
    import json

    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    return old.get("runs", [old])


def _check_seeds(seeds: list[int] | None) -> list[int]:
    if seeds is None:
        return []
    from ..run.seeds import check_seeds

    return check_seeds(seeds)


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
    r.add_argument("--seeds", type=int, nargs="+", metavar="N",
                   help="run the noise-sensitive analyses (once-covered, score-hist, keep-ratio, finetune-epochs) "
                        "for each seed and report mean ± std; the others run the first seed")
    r.add_argument("--overwrite", action="store_true", help="empty --out first (else finished sub-runs are reused); for one analysis, the base "
                        "trainings shared in OUT/.. are kept")
    r.add_argument("--data-root", help="folder with the Fashion-MNIST files")
    r.add_argument("--docs", help="also copy the PNGs into this folder (e.g. docs/gallery)")
    r.add_argument("--recipe", help="paper scale: start from a recipe's config (e.g. cifar10_densenet100) "
                                    "instead of the embedded default")
    r.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides (as for demo) and analysis.KEY=VALUE parameters")
    r.set_defaults(func=cmd_reproduce)
