"""Several seeds of one configuration: ``demo --seeds 0 1 2 --out D`` runs each seed into ``D/seed<N>/``
(seed N sets both ``seed`` and ``data.seed``), skips a seed whose directory already holds a finished run
(``results.json``) of the same configuration, and writes ``D/results.json|csv|md``: the mean over seeds of
every record, with ``<metric>_std`` and ``n_seeds`` (:func:`unleash_ood.run.aggregate.aggregate`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from ..config import DemoConfig, build_config
from ..errors import UserError
from ..utils.log import say
from .aggregate import write_report
from .layout import RunLayout

# what a run computes does not depend on these: a finished seed is reused across them
NOT_COMPARED = ("runtime", "data.data_root", "data.download")


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """At least one seed, none negative, none repeated."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise UserError("give at least one seed")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise UserError(f"repeated seed(s) {repeated}: give each seed once")
    if any(s < 0 for s in seeds):
        raise UserError(f"seeds must be ≥ 0, got {seeds}")
    return seeds


def _leaves(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if any(key == n or key.startswith(n + ".") for n in NOT_COMPARED):
            continue
        out.update(_leaves(v, key + ".") if isinstance(v, dict) and v else {key: v})
    return out


def check_same_config(run: RunLayout, cfg: DemoConfig) -> None:
    """A finished run in ``run`` must come from ``cfg`` (else reusing it would mix configurations)."""
    try:
        saved = json.loads(run.config.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{run.root} holds results but no readable {run.config.name} ({e}); remove it or use "
                        "another --out") from None
    want = _leaves(json.loads(json.dumps(cfg.model_dump(), default=float)))
    have = _leaves(saved)
    default = _leaves(json.loads(json.dumps(DemoConfig().model_dump(), default=float)))
    # a setting added since that run, wanted at its default, is what that run did
    diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k)
                  and not (k not in have and k in default and want.get(k) == default[k]))
    if diff:
        raise UserError(f"{run.root} holds a finished run of another configuration (differs in "
                        f"{', '.join(diff)}); use another --out")


def run_seeds(cfg: DemoConfig, seeds: Sequence[int], out_dir: str | Path,
              run_one: Callable[[DemoConfig, Path], object], stem: str = "results") -> list[dict]:
    """The one seed runner: ``run_one(seed_cfg, OUT/seed<N>)`` for each seed not yet finished, then the
    aggregate over all ``seeds`` (their outlier sub-runs included) into ``OUT/<stem>.json|csv|md``.
    Returns the aggregate records."""
    seeds = check_seeds(seeds)
    out = RunLayout(Path(out_dir))
    for s in seeds:
        cfg_s, run = build_config(cfg, seed=s), out.seed(s)
        if run.finished:
            check_same_config(run, cfg_s)
            say(f"seed {s}: finished run in {run.root}, reused")
            continue
        say(f"seed {s} → {run.root}")
        run_one(cfg_s, run.root)
    return write_report([out.seed(s).root for s in seeds], out.root, stem=stem,
                        title=f"unleash-ood: mean ± std over seeds {', '.join(map(str, seeds))}")
