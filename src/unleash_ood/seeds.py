"""Several seeds of one configuration: ``demo --seeds 0 1 2 --out D`` runs each seed into ``D/seed<N>/``
(seed N sets both ``seed`` and ``data.seed``), skips a seed whose directory already holds a finished run
(``results.json``) of the same configuration, and writes ``D/results.json|csv|md``: the mean over seeds of
every record, with ``<metric>_std`` and ``n_seeds`` (:func:`unleash_ood.aggregate.aggregate`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from .aggregate import write_report
from .config import DemoConfig
from .errors import UserError

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


def check_same_config(run_dir: Path, cfg: DemoConfig) -> None:
    """A finished run in ``run_dir`` must come from ``cfg`` (else reusing it would mix configurations)."""
    path = run_dir / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{run_dir} holds results.json but no readable config.json ({e}); remove it or use "
                        "another --out") from None
    want = _leaves(json.loads(json.dumps(cfg.model_dump(), default=float)))
    have = _leaves(saved)
    diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
    if diff:
        raise UserError(f"{run_dir} holds a finished run of another configuration (differs in "
                        f"{', '.join(diff)}); use another --out")


def run_seeds(cfg: DemoConfig, seeds: Sequence[int], out_dir: str | Path,
              run_one: Callable[[DemoConfig, Path], object]) -> list[dict]:
    """``run_one(seed_cfg, out/seed<N>)`` for each seed not yet finished, then the aggregate over all
    ``seeds`` into ``out/results.*``. Returns the aggregate records."""
    from .paper import seed_config
    from .pipeline import say

    seeds = check_seeds(seeds)
    out = Path(out_dir)
    for s in seeds:
        cfg_s, run_dir = seed_config(cfg, s), out / f"seed{s}"
        if (run_dir / "results.json").is_file():
            check_same_config(run_dir, cfg_s)
            say(f"seed {s}: finished run in {run_dir}, reused")
            continue
        say(f"seed {s} → {run_dir}")
        run_one(cfg_s, run_dir)
    return write_report([out / f"seed{s}" for s in seeds], out, stem="results",
                        title=f"unleash-ood: mean ± std over seeds {', '.join(map(str, seeds))}")
