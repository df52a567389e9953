"""Result tables (near/far side by side, both FPR95 conventions), the aggregation over seeds, and the
seed runner's bookkeeping (duplicates, reuse of finished seeds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unleash_ood.config import DemoConfig, load_preset, validate
from unleash_ood.errors import UserError
from unleash_ood.eval.evaluate import Evaluation
from unleash_ood.report.tables import CONVENTION, markdown_report, records_csv
from unleash_ood.run.aggregate import aggregate, write_report
from unleash_ood.run.seeds import check_seeds, run_seeds

NEAR = {"glyphs": "near", "digits": "near"}


def _records(seed: int, groups: dict[str, str] | None = NEAR) -> list[dict]:
    """Real metric records from synthetic scores: near sets overlap ID more than far ones."""
    rng = np.random.default_rng(seed)
    recs = []
    for model, shift in (("base", 0.0), ("um", 0.5)):
        scores = {"id": {"Energy": rng.normal(2.0 + shift, 1.0, 300)}}
        for ds, mu in (("glyphs", 1.5), ("digits", 1.2), ("noise", -1.0), ("textures", 0.0)):
            scores[ds] = {"Energy": rng.normal(mu, 1.0, 200)}
        recs += Evaluation(scores, 90.0 + seed).records(model, groups)
    return recs


def _write_run(path: Path, records: list[dict], cfg: DemoConfig | None = None) -> None:
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(records))
    (path / "config.json").write_text(json.dumps((cfg or DemoConfig()).model_dump()))


def test_markdown_shows_near_and_far_and_both_conventions() -> None:
    recs = _records(0)
    md = markdown_report(recs)
    assert CONVENTION in md and "OpenOOD v1.5" in CONVENTION and "the paper's" in CONVENTION
    assert "Groups (near: glyphs, digits; far: noise, textures)." in md
    assert "| Method | near AUROC ↑ | near FPR95 ↓ | far AUROC ↑ | far FPR95 ↓ | ID-ACC ↑ |" in md
    by = {(r["model"], r["ood"]): r for r in recs}
    near, far = by[("um", "near")], by[("um", "far")]
    row = (f"| Energy+UM | {near['auroc']:.2f} | {near['fpr95']:.2f} | {far['auroc']:.2f} | {far['fpr95']:.2f} "
           f"| {near['id_acc']:.2f} |")
    assert row in md
    assert "| Method | AUROC ↑ | AUPR ↑ | FPR95 ↓ | FPR95 (OOD+) ↓ | ID-ACC ↑ |" in md
    assert f"{by[('base', 'mean')]['fpr95_ood_positive']:.2f}" in md
    assert "| Method | glyphs (near) | digits (near) | noise (far) | textures (far) | near | far | mean |" in md
    assert "## FPR95 (OOD+) ↓ per OOD set" in md
    # every set far (no groups): only far columns, still the mean table
    far_md = markdown_report(_records(0, None))
    assert "| Method | far AUROC ↑ | far FPR95 ↓ | ID-ACC ↑ |" in far_md and "near AUROC" not in far_md


def test_csv_carries_group_and_both_conventions() -> None:
    lines = records_csv(_records(0)).splitlines()
    assert lines[0] == "model,score,ood,group,fpr95,fpr95_ood_positive,auroc,aupr_in,aupr_out,id_acc"
    assert lines[1].startswith("base,Energy,glyphs,near,") and any(",near,aggregate," in x for x in lines)


def test_aggregate_over_seeds_has_means_stds_and_groups(tmp_path: Path) -> None:
    runs = [_records(s) for s in range(3)]
    for s, recs in enumerate(runs):
        _write_run(tmp_path / f"seed{s}", recs)
    agg = aggregate([tmp_path])
    assert len(agg) == len(runs[0])
    get = {(r["model"], r["ood"]): r for r in agg}
    for model, ood in (("um", "near"), ("base", "far"), ("um", "mean"), ("base", "glyphs")):
        vals = [next(r for r in recs if (r["model"], r["ood"]) == (model, ood)) for recs in runs]
        rec = get[(model, ood)]
        assert rec["n_seeds"] == 3 and rec["group"] == vals[0]["group"]
        for k in ("fpr95", "fpr95_ood_positive", "auroc", "aupr_in", "aupr_out", "id_acc"):
            assert rec[k] == pytest.approx(np.mean([v[k] for v in vals]))
            assert rec[f"{k}_std"] == pytest.approx(np.std([v[k] for v in vals], ddof=1))
    assert get[("um", "mean")]["id_acc_std"] == pytest.approx(1.0)  # 90, 91, 92
    write_report([tmp_path], tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    near = get[("um", "near")]
    assert f"{near['fpr95']:.2f} ± {near['fpr95_std']:.2f}" in md and "| Method | seeds | near AUROC ↑" in md
    # the same set in different groups across seeds cannot be averaged
    _write_run(tmp_path / "other" / "seed0", _records(0, {"glyphs": "near"}))
    _write_run(tmp_path / "other" / "seed1", _records(1, {"glyphs": "near", "digits": "near"}))
    with pytest.raises(UserError, match="'digits' is in different groups"):
        aggregate([tmp_path / "other"])


def test_aggregate_does_not_import_the_pipeline() -> None:
    code = "import sys, unleash_ood.run.aggregate; print('unleash_ood.run.pipeline' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "False"


def test_check_seeds() -> None:
    assert check_seeds([2, 0, 1]) == [2, 0, 1]
    with pytest.raises(UserError, match=r"repeated seed\(s\) \[1\]"):
        check_seeds([0, 1, 1])
    with pytest.raises(UserError, match="at least one"):
        check_seeds([])
    with pytest.raises(UserError, match="≥ 0"):
        check_seeds([-1])


def test_run_seeds_runs_each_seed_once_and_reuses_finished(tmp_path: Path) -> None:
    cfg = validate(DemoConfig, load_preset("quick"))
    calls: list[tuple[int, int, Path]] = []

    def run_one(c: DemoConfig, out: Path) -> None:
        calls.append((c.seed, c.data.seed, out))
        _write_run(out, _records(c.seed), c)

    agg = run_seeds(cfg, [0, 1], tmp_path, run_one)
    assert calls == [(0, 0, tmp_path / "seed0"), (1, 1, tmp_path / "seed1")]
    assert all(r["n_seeds"] == 2 and "fpr95_std" in r for r in agg)
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(agg))
    assert "n_seeds" in (tmp_path / "results.csv").read_text() and " ± " in (tmp_path / "results.md").read_text()
    calls.clear()
    agg = run_seeds(cfg, [0, 1, 2], tmp_path, run_one)  # seeds 0 and 1 are finished: only 2 runs
    assert calls == [(2, 2, tmp_path / "seed2")] and {r["n_seeds"] for r in agg} == {3}
    # a finished seed of another configuration is not silently reused
    other = cfg.model_copy(update={"um": cfg.um.model_copy(update={"keep_ratio": 0.9})})
    with pytest.raises(UserError, match="another configuration.*um.keep_ratio"):
        run_seeds(other, [0], tmp_path, run_one)
    # a setting added since a seed ran, wanted at its default, is what that seed did: reused
    saved = json.loads((tmp_path / "seed0" / "config.json").read_text())
    del saved["data"]["val_probes"]
    (tmp_path / "seed0" / "config.json").write_text(json.dumps(saved))
    calls.clear()
    run_seeds(cfg, [0], tmp_path, run_one)
    assert calls == []
    changed = cfg.model_copy(update={"data": cfg.data.model_copy(update={"val_probes": ["strokes"]})})
    with pytest.raises(UserError, match="another configuration.*data.val_probes"):
        run_seeds(changed, [0], tmp_path, run_one)


def test_training_curve_with_near_and_far(tmp_path: Path) -> None:
    from unleash_ood.report.plots import plot_training_curve

    log = [{"epoch": e, "id_acc": 80.0 + e, "train_ce": 1.0 / e,
            "ood": {ds: {"Energy": {"fpr95": v - e}, "MSP": {"fpr95": v + e}}
                    for ds, v in (("glyphs", 60.0), ("noise", 20.0), ("textures", 30.0))}} for e in (1, 2, 3)]
    path = plot_training_curve(log, tmp_path / "curve.png", groups={"glyphs": "near"})
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UserError, match="unknown OOD group"):
        plot_training_curve(log, tmp_path / "bad.png", groups={"glyphs": "close"})
