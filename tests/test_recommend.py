"""``demo --quick scores.tune=true`` → tuning.json, validation.json, the tuned rows; ``recommend`` picks one
(model, detector, params) on validation only; ``export --recommended`` exports it; bad input exits 2."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from unleash_ood.cli import main
from unleash_ood.deploy.detector import OODDetector
from unleash_ood.detectors.params import PERCENTILE_GRID, TUNING_GRIDS

# test_cli.py's SMALL, ζ given (no estimate on a 2-epoch model): the smallest demo that still trains
SMALL = ["data.train_size=600", "data.test_size=300", "data.val_size=300", "data.ood_size=150",
         "data.val_ood_size=150", "data.ood=[digits, uniform]", "base.epochs=2", "um.optim.epochs=1",
         "umap.optim.epochs=1", "um.zeta=0.2", "model.kwargs={width: 8}", "save_features=false"]
MODELS = ("base", "um", "ce_finetune", "umap")


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory) -> tuple[Path, str]:
    """A tuned demo run and what it printed."""
    out = tmp_path_factory.mktemp("tuned") / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["demo", "--quick", "--out", str(out), *SMALL, "scores.tune=true"]) == 0
    return out, buf.getvalue()


def _fails(capsys, argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    full = capsys.readouterr().err
    lines = full.strip().split("\r")[-1].splitlines()
    assert len(lines) == 1 and lines[0].startswith("unleash-ood: error:") and "Traceback" not in full, full
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _rank_by_hand(candidates: list[dict], w_near: float = 0.5, w_far: float = 0.5) -> list[dict]:
    """The rule by hand; a tuned row that kept the default value is the default row, listed once."""
    key = [((w_near * c["near_fpr95"] + w_far * c["far_fpr95"]) / (w_near + w_far),
            -(w_near * c["near_auroc"] + w_far * c["far_auroc"]) / (w_near + w_far), c["model"] != "base", i)
           for i, c in enumerate(candidates) if not c.get("same_as_default")]
    return [candidates[k[-1]] for k in sorted(key)]


def test_tuned_demo_writes_tuning_validation_and_tuned_rows(tuned_run) -> None:
    run, _ = tuned_run
    tuning = json.loads((run / "tuning.json").read_text())
    assert set(tuning["models"]) == set(MODELS) and tuning["weights"] == {"near": 0.5, "far": 0.5}
    # the probes (group synthetic) are scored beside the proxies, never chosen on
    assert {n: d["group"] for n, d in tuning["sets"].items()} == {
        "val_near": "near", "val_ood": "far", "probe_strokes": "synthetic", "probe_distorted": "synthetic"}
    for model in MODELS:
        by_det = tuning["models"][model]
        assert set(by_det) == set(TUNING_GRIDS)  # every tunable detector of the default scores.use
        ash = by_det["ASH-S"]
        assert [r["value"] for r in ash["grid"]] == list(PERCENTILE_GRID)  # the whole grid, each value's FPR95s
        assert all(set(r["fpr95"]) == set(tuning["sets"]) for r in ash["grid"])
        assert all(np.isclose(r["val_fpr95"], (r["fpr95"]["val_near"] + r["fpr95"]["val_ood"]) / 2) for r in ash["grid"])
        assert ash["val_fpr95"] == min(r["val_fpr95"] for r in ash["grid"])
    assert "| base | ASH-S | percentile |" in (run / "tuning.md").read_text()
    records = json.loads((run / "results.json").read_text())
    order = list(dict.fromkeys(r["score"] for r in records if r["model"] == "umap"))
    assert order[order.index("ASH-S") + 1] == "ASH-S (tuned)" and "ODIN (tuned)" not in order
    assert {r["model"] for r in records if r["score"] == "KNN (tuned)"} == set(MODELS)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["timings_s"]["tune"] > 0 and summary["timings_s"]["validate"] > 0
    assert set(summary["validation"]) == set(MODELS)  # Energy / MSP on val_ood, as before
    val = json.loads((run / "validation.json").read_text())
    scores = {c["score"] for c in val["candidates"]}
    assert {"ODIN", "Mahalanobis", "ASH-S (tuned)", "ViM (tuned)"} <= scores
    assert len(val["candidates"]) == len(MODELS) * (14 + len(TUNING_GRIDS))
    tuning = json.loads((run / "tuning.json").read_text())["models"]
    for c in val["candidates"]:
        if c["score"].endswith(" (tuned)"):
            t = tuning[c["model"]][c["detector"]]
            assert c["params"] == t["params"] and c["same_as_default"] == (t["chosen"] == t["default"])
    assert (run / "validation.md").is_file() and (run / "validation.csv").is_file()


def test_demo_recommends_on_validation_and_reports_test_numbers(tuned_run, capsys) -> None:
    run, stdout = tuned_run
    rec = json.loads((run / "recommendation.json").read_text())
    val = json.loads((run / "validation.json").read_text())
    ranked = _rank_by_hand(val["candidates"])
    pick, base = ranked[0], next(c for c in ranked if c["model"] == "base")
    assert (rec["pick"]["model"], rec["pick"]["score"], rec["pick"]["params"]) == (pick["model"], pick["score"],
                                                                                   pick["params"])
    assert (rec["base_best"]["model"], rec["base_best"]["score"]) == ("base", base["score"])
    assert [(c["model"], c["score"]) for c in rec["runners_up"]] == [(c["model"], c["score"]) for c in ranked[1:6]]
    assert rec["beats_base"] == (pick["model"] != "base") and "0.5" in rec["rule"]
    # the test numbers are results.json's rows of the pick and of the base's best
    records = json.loads((run / "results.json").read_text())
    for key, c in (("pick", pick), ("base_best", base)):
        mean = next(r for r in records if (r["model"], r["score"], r["ood"]) == (c["model"], c["score"], "mean"))
        got = next(r for r in rec["test"][key] if r["ood"] == "mean")
        assert got["fpr95"] == mean["fpr95"] and {"digits", "uniform"} <= {r["ood"] for r in rec["test"][key]}
    md = (run / "recommendation.md").read_text()
    assert f"**{pick['model']} + {pick['score']}" in md and "runners-up" in md and "| digits (near) |" in md
    assert f"recommended (chosen on validation only): {pick['model']} + {pick['score']}" in stdout
    assert f"exported to {run / 'recommended'}" in stdout
    # the command gives the same pick from the files; other weights, another ranking
    assert main(["recommend", "--run", str(run)]) == 0
    assert json.loads((run / "recommendation.json").read_text())["pick"] == rec["pick"]
    assert main(["recommend", "--run", str(run), "--weights", "near=1", "far=0"]) == 0
    near_pick = json.loads((run / "recommendation.json").read_text())["pick"]
    assert near_pick["near_fpr95"] == min(c["near_fpr95"] for c in val["candidates"])
    assert "recommended" in capsys.readouterr().out
    assert main(["recommend", "--run", str(run)]) == 0  # back to the demo's pick for the tests below


def _copy(run: Path, dest: Path, files: tuple[str, ...]) -> Path:
    dest.mkdir(parents=True)
    for f in files:
        shutil.copy(run / f, dest / f)
    return dest


def test_recommend_falls_back_to_the_base_model(tuned_run, tmp_path) -> None:
    run, _ = tuned_run
    other = _copy(run, tmp_path / "run", ("results.json", "validation.json"))
    val = json.loads((other / "validation.json").read_text())
    for c in val["candidates"]:  # every variant worse than any base row on validation
        if c["model"] != "base":
            c.update(near_fpr95=100.0, far_fpr95=100.0)
    (other / "validation.json").write_text(json.dumps(val))
    assert main(["recommend", "--run", str(other)]) == 0
    rec = json.loads((other / "recommendation.json").read_text())
    base = _rank_by_hand([c for c in val["candidates"] if c["model"] == "base"])[0]
    assert rec["pick"]["model"] == "base" and rec["pick"]["score"] == base["score"] and not rec["beats_base"]
    assert rec["pick"] == rec["base_best"]
    assert rec["statement"].startswith("No other model (ce_finetune, um, umap) beats the base model on validation")
    assert "No other model" in (other / "recommendation.md").read_text()


def test_export_recommended_exports_the_pick(tuned_run, tmp_path) -> None:
    run, _ = tuned_run
    pick = json.loads((run / "recommendation.json").read_text())["pick"]
    bundle = tmp_path / "bundle"
    assert main(["export", "--run", str(run), "--recommended", "--out", str(bundle), "--device", "cpu"]) == 0
    spec = json.loads((bundle / "detector.json").read_text())
    assert spec["model"]["kind"] == pick["model"] and spec["run"]["model"] == pick["model"]
    assert spec["score"]["name"] == pick["detector"] and spec["score"]["params"] == pick["params"]
    det = OODDetector.load(bundle)  # the bundle rebuilds the detector with those params and scores images
    assert det.spec.score.params == pick["params"]
    assert np.isfinite(det.score(torch.rand(4, 1, 28, 28))).all()
    # the demo's last step exported the same pick into the run, calibrated on the same split
    demo_spec = json.loads((run / "recommended" / "detector.json").read_text())
    assert demo_spec["model"] == spec["model"] and demo_spec["score"] == spec["score"]
    assert {k: demo_spec["calibration"][k] for k in ("tpr", "size")} == {k: spec["calibration"][k] for k in ("tpr", "size")}


def test_bad_input_exits_2_and_writes_nothing(tuned_run, tmp_path, capsys) -> None:
    run, _ = tuned_run
    bare = _copy(run, tmp_path / "bare", ("results.json",))  # a finished run without validation results
    _fails(capsys, ["recommend", "--run", str(bare)], "no validation results", "validation.json")
    assert sorted(p.name for p in bare.iterdir()) == ["results.json"]
    noval = _copy(run, tmp_path / "noval", ("results.json", "validation.json"))
    _fails(capsys, ["recommend", "--run", str(noval), "--weights", "near=0.5", "middle=0.5"],
           "unknown validation group 'middle'")
    _fails(capsys, ["recommend", "--run", str(noval), "--weights", "near"], "GROUP=NUMBER")
    assert sorted(p.name for p in noval.iterdir()) == ["results.json", "validation.json"]
    _fails(capsys, ["export", "--run", str(noval), "--recommended", "--out", str(tmp_path / "b")],
           "no recommendation", "unleash-ood recommend")
    _fails(capsys, ["export", "--run", str(run), "--out", str(tmp_path / "b")], "--recommended")
    _fails(capsys, ["export", "--run", str(run), "--recommended", "--model", "um", "--out", str(tmp_path / "b")],
           "without --model/--score")
    assert not (tmp_path / "b").exists()
    for grid, needle in (("scores.grid.KNN.k=[0, 5]", "KNN.k=0"),
                         ("scores.grid.ASH-S.percentile=[10, 100]", "ASH-S.percentile=100"),
                         ("scores.grid.ViM.dim=[8, 64]", "scores.grid.ViM.dim=64: must be below the feature size")):
        out = tmp_path / "demo"
        _fails(capsys, ["demo", "--quick", "--out", str(out), *SMALL, "scores.tune=true", grid], needle)
        assert not out.exists()


def test_eval_run_keeps_the_tuned_rows(tuned_run, tmp_path) -> None:
    run, _ = tuned_run
    out = tmp_path / "ev"
    assert main(["eval", "--run", str(run), "--ood", "digits", "--out", str(out)]) == 0
    records = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in records if r["score"] == "ASH-S (tuned)"} == set(MODELS)
    # the values chosen at run time, on the same digits images: the run's scores, bit for bit
    mine, theirs = np.load(out / "scores.npz"), np.load(run / "scores.npz")
    for key in ("umap/ASH-S (tuned)/digits", "base/KNN (tuned)/id"):
        np.testing.assert_array_equal(mine[key], theirs[key])


def test_a_run_without_a_near_proxy_is_ranked_on_far_alone(tuned_run, tmp_path) -> None:
    """E.g. CIFAR-shaped data (no held-out glyph fonts): the run's weights drop the group it lacks."""
    run, _ = tuned_run
    other = _copy(run, tmp_path / "far_only", ("results.json", "validation.json"))
    val = json.loads((other / "validation.json").read_text())
    val["sets"] = {k: v for k, v in val["sets"].items() if v["group"] != "near"}
    (other / "validation.json").write_text(json.dumps(val))
    assert main(["recommend", "--run", str(other)]) == 0
    rec = json.loads((other / "recommendation.json").read_text())
    assert rec["weights"] == {"far": 0.5}
    assert rec["pick"]["far_fpr95"] == min(c["far_fpr95"] for c in val["candidates"])
    assert main(["recommend", "--run", str(other), "--weights", "near=1"]) == 2  # asked for: still an error


def _seeds_dir(run: Path, root: Path, shift: dict[int, float]) -> Path:
    """``root/seed<N>/`` copies of ``run``'s files; seed N's UMAP rows have FPR95 + ``shift[N]``."""
    files = ("results.json", "validation.json", "summary.json", "finetune_log.json", "config.json")
    for seed, d in shift.items():
        dest = _copy(run, root / f"seed{seed}", files)
        records = json.loads((dest / "results.json").read_text())
        for r in records:
            if r["model"] == "umap":
                r["fpr95"] = min(100.0, max(0.0, r["fpr95"] + d))
        (dest / "results.json").write_text(json.dumps(records))
    return root


def test_evidence_tables_follow_the_seed_files(tuned_run, tmp_path) -> None:
    from unleash_ood.analyses.evidence import evidence

    run, _ = tuned_run
    root = _seeds_dir(run, tmp_path / "seeds", {0: -5.0, 1: -7.0})
    assert main(["evidence", str(root)]) == 0
    t = {name: json.loads((root / "evidence" / f"{name}.json").read_text())
         for name in ("groups", "paired", "recommendation", "proxies", "flooding", "seeds", "proxies_summary")}
    records = json.loads((run / "results.json").read_text())
    by_key = {(r["model"], r["score"], r["ood"]): r for r in records}
    # per group and per set: the seeds' mean and sd (seed 0 and 1 differ only in UMAP's rows)
    g = next(r for r in t["groups"] if (r["model"], r["score"], r["ood"]) == ("umap", "Energy", "digits"))
    a, b = (min(100.0, max(0.0, by_key[("umap", "Energy", "digits")]["fpr95"] + d)) for d in (-5.0, -7.0))
    assert g["group"] == "near" and g["n_seeds"] == 2 and np.isclose(g["fpr95"], (a + b) / 2)
    assert np.isclose(g["fpr95_std"], abs(a - b) / np.sqrt(2))
    base = next(r for r in t["groups"] if (r["model"], r["score"], r["ood"]) == ("base", "MSP", "near"))
    assert base["fpr95_std"] == 0.0 and base["fpr95"] == by_key[("base", "MSP", "near")]["fpr95"]
    assert {r["ood"] for r in t["groups"]} == {"near", "synthetic", "mean", "digits", "uniform"}  # SMALL: no far set
    # paired: variant − base per seed; the same difference in both seeds has no spread
    p = next(r for r in t["paired"] if (r["variant"], r["score"], r["ood"]) == ("um", "KNN", "mean"))
    d = by_key[("um", "KNN", "mean")]["fpr95"] - by_key[("base", "KNN", "mean")]["fpr95"]
    assert np.allclose(p["per_seed"], [round(d, 2)] * 2) and p["ci95_half"] == 0.0
    assert p["verdict"] == ("held" if d < 0 else "did not hold" if d > 0 else "within noise")
    # the recommendation row is the run's own pick, with its test numbers
    rec = json.loads((run / "recommendation.json").read_text())
    row = t["recommendation"][0]
    assert row["pick"] == f"{rec['pick']['model']} + {rec['pick']['score']}"
    assert row["base_tuned"] == f"base + {rec['base_best']['score']}" and "(tuned)" not in row["base_default"]
    # a proxy's regret: its pick's test FPR95 minus the best test FPR95 over the same pairs
    for r in (x for x in t["proxies"] if x["seed"] == 0 and x["test"] == "near"):
        fprs = [v["fpr95"] for (m, s, o), v in by_key.items() if o == "near" and m != "umap"]
        assert r["regret"] >= 0 and r["best_test_fpr95"] <= min(fprs) and r["group"] == "aggregate"
        assert -1.0 <= r["spearman"] <= 1.0
    assert {r["proxy"].split(" ")[0] for r in t["proxies_summary"]} == {"near", "far", "rule", "probe", "every"}
    assert {r["model"] for r in t["flooding"]} == {"um", "umap"} and all(0 <= r["ce_below_zeta"] <= 1 for r in t["flooding"])
    assert [r["seed"] for r in t["seeds"]] == [0, 1] and t["seeds"][0]["cores"] and t["seeds"][0]["total_s"] > 0
    md = (root / "evidence" / "evidence.md").read_text()
    assert "### near" in md and "### synthetic" in md and "regret" in md and "| 1 |" in md
    with pytest.raises(Exception, match="no finished seed runs"):
        evidence(tmp_path / "empty")
