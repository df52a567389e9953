"""`unleash-ood reproduce NAME --quick`: every analysis writes its figures and tables, re-runs skip
finished sub-runs, and mistakes exit 2 with one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unleash_ood.analyses.cache import add_fc_dropout
from unleash_ood.analyses.presets import ANALYSES, SCHEDULES, analysis_config
from unleash_ood.models import build_model


def run_cli(argv: list[str]) -> int:
    """Through the real CLI (the one entry point: it holds the run lock)."""
    from unleash_ood import cli

    return cli.main(argv)


EXPECTED = {
    "once-covered": ["once_covered_energy.png", "once_covered_msp.png", "once_covered.md"],
    "score-hist": ["score_hist_energy.png", "score_hist_msp.png", "score_hist.md"],
    "mask-loss": ["mask_loss_vs_keep_ratio.png", "per_sample_loss.png", "masked_errors_grid.png",
                  "mask_loss_vs_keep_ratio.md", "masked_errors.md"],
    "keep-ratio": ["keep_ratio.png", "keep_ratio.md"],
    "prune-rate": ["prune_rate.png", "prune_rate.md"],
    "finetune-epochs": ["finetune_epochs.png", "finetune_epochs.md"],
    "typical-atypical": ["typical_atypical.png", "typical_atypical.md"],
    "overfitting": ["overfitting.png", "overfitting.md"],
    "weights": ["weights.png", "weights.md"],
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """One folder for all analyses, so the quick base training is shared (as in runs/reproduce/)."""
    return tmp_path_factory.mktemp("reproduce")


def table(out: Path, name: str) -> list[dict]:
    return json.loads((out / f"{name}.json").read_text())


@pytest.mark.parametrize("name", ANALYSES)
def test_quick_analysis_writes_figures_and_tables(name: str, root: Path) -> None:
    out, docs = root / name, root / "gallery"
    assert run_cli(["reproduce", name, "--quick", "--out", str(out), "--docs", str(docs)]) == 0
    for f in EXPECTED[name]:
        assert (out / f).is_file(), f
        if f.endswith(".png"):
            assert (out / f).read_bytes()[:4] == b"\x89PNG"
            assert (docs / f"{name}_{f}").is_file()
        else:
            stem = f[:-3]
            assert (out / f"{stem}.csv").is_file() and (out / f"{stem}.json").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["analysis"] == name and cfg["quick"] and cfg["config"]["data"]["train_size"] == 600
    summary = json.loads((out / "summary.json").read_text())
    assert summary["analysis"] == name and summary["wall_s"] >= 0

    if name == "once-covered":
        rows = table(out, "once_covered")
        assert {r["schedule"] for r in rows} == set(cfg["params"]["schedules"])
        assert len(rows) == len(cfg["params"]["schedules"]) * 2 * 3  # Energy, MSP × final / val-selected / test-best
        for sched in cfg["params"]["schedules"]:
            for score in ("Energy", "MSP"):
                kind = {r["epoch_kind"]: r for r in rows if r["schedule"] == sched and r["score"] == score}
                final = kind["final"]
                assert kind["val-selected"]["epoch"] <= final["epoch"] and kind["test-best (upper bound)"]["epoch"] <= final["epoch"]
                assert kind["test-best (upper bound)"]["FPR95"] <= final["FPR95"]
                assert final["near_FPR95"] is not None and final["far_FPR95"] is not None
    elif name == "keep-ratio":
        rows = table(out, "keep_ratio")
        assert sorted({r["keep_ratio"] for r in rows if r["method"] == "UM"}) == sorted(cfg["params"]["keep_ratios"])
        assert any(r["method"] == "base" for r in rows)
        assert all(r["zeta"] > 0 for r in rows if r["method"] == "UM")
    elif name == "prune-rate":
        rows = table(out, "prune_rate")
        for k in cfg["params"]["keep_ratios"]:
            assert {r["method"] for r in rows if r["keep_ratio"] == k} == {"UMAP", "pruning (ζ=0)"}
        assert all(r["zeta"] == 0 for r in rows if r["method"] != "UMAP")
    elif name == "overfitting":
        methods = list(dict.fromkeys(r["method"] for r in table(out, "overfitting")))
        assert methods[0] == "baseline" and methods[-2:] == ["UM", "UMAP"]
        assert sum(m.startswith("weight decay") for m in methods) == len(cfg["params"]["weight_decays"])
        assert sum(m.startswith("dropout") for m in methods) == len(cfg["params"]["dropouts"])
        assert any("early stopping w. ACC" in m for m in methods) and any("val OOD" in m for m in methods)
    elif name == "typical-atypical":
        rows = [r for r in table(out, "typical_atypical") if r["size"]]
        for n in cfg["params"]["sizes"]:
            assert {r["subset"] for r in rows if r["size"] == n} == {"typical", "atypical"}
        for n in cfg["params"]["sizes"]:  # the selected checkpoint fits typical samples better
            acc = {r["subset"]: r["subset_ACC"] for r in rows if r["size"] == n}
            assert acc["typical"] >= acc["atypical"]
    elif name == "finetune-epochs":
        rows = table(out, "finetune_epochs")
        assert {(r["method"], r["epochs"]) for r in rows} >= {("UM", 1), ("UM", 2), ("UMAP", 1), ("UMAP", 2)}
    elif name == "mask-loss":
        rows = table(out, "mask_loss_vs_keep_ratio")
        assert [r["keep_ratio"] for r in rows] == cfg["params"]["keep_ratios"]
        assert len(table(out, "masked_errors")) == 5
    elif name == "weights":
        layers = {r["layer"].split(" (")[0] for r in table(out, "weights")}
        assert layers == {"first conv", "middle conv", "classifier"}
    elif name == "score-hist":
        rows = table(out, "score_hist")
        assert {r["model"] for r in rows} == {"val-selected epoch", "final epoch", "UM", "UMAP"}
        assert all(r["near_FPR95"] is not None and r["far_FPR95"] is not None for r in rows)


def test_rerun_skips_finished_subruns(root: Path, capsys) -> None:
    out = root / "keep-ratio"
    if not (out / "summary.json").is_file():  # run alone
        assert run_cli(["reproduce", "keep-ratio", "--quick", "--out", str(out)]) == 0
    markers = {p: p.stat().st_mtime_ns for p in root.rglob("result.json")}
    capsys.readouterr()
    assert run_cli(["reproduce", "keep-ratio", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr()
    log = text.out + text.err
    assert "skipped" in log and "finished in" not in log
    assert {p: p.stat().st_mtime_ns for p in root.rglob("result.json")} == markers


def test_overwrite_empties_out_and_keeps_the_shared_bases(tmp_path: Path, capsys) -> None:
    out = tmp_path / "weights"
    assert run_cli(["reproduce", "weights", "--quick", "--out", str(out)]) == 0
    (out / "stale.txt").write_text("old")
    capsys.readouterr()
    assert run_cli(["reproduce", "weights", "--quick", "--out", str(out), "--overwrite"]) == 0
    log = capsys.readouterr()
    assert not (out / "stale.txt").exists() and (out / "summary.json").is_file()
    assert "UMAP" in log.out + log.err and "skipped" in log.out + log.err  # the shared base in OUT/.. was kept


def test_unknown_name_exits_2(tmp_path: Path, capsys) -> None:
    assert run_cli(["reproduce", "no-such-analysis", "--quick", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown analysis 'no-such-analysis'" in err and "once-covered" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_unknown_parameter_exits_2(tmp_path: Path, capsys) -> None:
    assert run_cli(["reproduce", "keep-ratio", "--quick", "--out", str(tmp_path), "analysis.nope=1"]) == 2
    assert "unknown parameter" in capsys.readouterr().err


def test_overrides_and_quick_in_config() -> None:
    cfg, params = analysis_config("keep-ratio", ["base.epochs=3", "analysis.keep_ratios=[0.9]"], quick=True)
    assert cfg.base.epochs == 3 and params["keep_ratios"] == [0.9] and cfg.data.train_size == 600
    cfg, _ = analysis_config("keep-ratio")  # the gallery runs at the demo's own scale
    from unleash_ood.config import DemoConfig

    assert cfg == DemoConfig()
    cfg, _ = analysis_config("keep-ratio", seed=2)
    assert cfg.seed == 2 and cfg.data.seed == 2


def test_fc_dropout_hook_keeps_the_architecture() -> None:
    torch.manual_seed(0)
    plain = build_model("small_cnn", 10, width=8)
    model = add_fc_dropout(build_model("small_cnn", 10, width=8), 0.5)
    model.load_state_dict(plain.state_dict())
    assert set(model.state_dict()) == set(plain.state_dict())
    x = torch.rand(16, 1, 28, 28)
    model.eval(), plain.eval()
    assert torch.equal(model(x), plain(x))  # no dropout at inference
    model.train()
    torch.manual_seed(1)
    feats = model.features(model.normalize(x))
    assert not torch.allclose(model.fc(feats), plain.fc(feats))  # dropped features while training


def test_analysis_config_from_a_paper_recipe() -> None:
    cfg, _ = analysis_config("keep-ratio", ["base.epochs=2"], recipe="cifar10_densenet100")
    assert cfg.data.dataset == "cifar10" and cfg.model.arch == "densenet100" and cfg.base.epochs == 2
    assert cfg.um.keep_ratio == 0.975


def test_presets_runners_and_names_agree() -> None:
    from unleash_ood.analyses.runner import RUNNERS
    from unleash_ood.config import load_preset

    gallery, quick = load_preset("gallery"), load_preset("gallery_quick")
    assert tuple(RUNNERS) == ANALYSES == tuple(gallery["analyses"])
    assert set(quick["analyses"]) <= set(ANALYSES)
    for name, params in quick["analyses"].items():  # the quick preset only overrides known parameters
        assert set(params) <= set(gallery["analyses"][name]), name
    oc = gallery["analyses"]["once-covered"]
    assert set(oc["schedules"] + oc["extra_schedules"]) <= set(SCHEDULES)
    assert set(gallery["seeded"]) == {"once-covered", "score-hist", "keep-ratio", "finetune-epochs"}


def test_parser_module_imports_neither_matplotlib_nor_the_analyses() -> None:
    import subprocess
    import sys

    code = ("import sys, unleash_ood.cli.reproduce; "
            "print(sorted(m for m in ('matplotlib', 'unleash_ood.analyses.runner', 'unleash_ood.analyses.figures') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_verdicts_follow_the_interval_of_paired_differences() -> None:
    from unleash_ood.analyses.claims import verdict

    assert verdict([-5.0, -6.0, -5.5])[0] == "held"  # consistently lower: the paper's direction
    assert verdict([5.0, 6.0, 5.5])[0] == "did not hold"
    assert verdict([-20.0, 1.0, -3.0])[0] == "within noise"
    v, half = verdict([-1.0, -3.0])
    assert v == "within noise" and half == pytest.approx(12.706, rel=1e-3)  # t(0.975, 1) · sd / √2, sd = √2
    assert verdict([-4.0])[0] == "one seed"


def test_aggregate_rows_over_seeds() -> None:
    from unleash_ood.analyses.claims import aggregate_rows

    seed0 = [{"method": "UM", "keep_ratio": 0.9, "FPR95": 10.0, "epoch": 3}, {"method": "base", "keep_ratio": 1.0, "FPR95": 20.0, "epoch": 0}]
    seed1 = [{"method": "UM", "keep_ratio": 0.9, "FPR95": 14.0, "epoch": 5}]
    rows = aggregate_rows([seed0, seed1], ("method", "keep_ratio"))
    um, base = rows
    assert um["FPR95"] == 12.0 and um["FPR95_std"] == pytest.approx(2 ** 0.5 * 2) and um["n_seeds"] == 2
    assert um["epoch"] == 4.0 and base["n_seeds"] == 1 and base["FPR95_std"] == 0.0


def test_seeds_give_mean_std_tables_claims_bands_and_a_gallery(tmp_path: Path) -> None:
    from unleash_ood.analyses.gallery import write_gallery

    for name, extra in (("once-covered", ["analysis.extra_schedules=[linear]"]), ("keep-ratio", [])):
        assert run_cli(["reproduce", name, "--quick", "--seeds", "0", "1", "--out", str(tmp_path / name), *extra]) == 0
    oc = json.loads((tmp_path / "once-covered" / "summary.json").read_text())
    assert oc["seeds"] == [0, 1] and {p for p in oc["pngs"]} >= {"once_covered_bands_energy.png", "once_covered_bands_msp.png"}
    seed_rows = [json.loads((tmp_path / "once-covered" / f"seed{s}" / "once_covered.json").read_text()) for s in (0, 1)]
    assert {r["schedule"] for r in seed_rows[0]} == {"cosine", "linear"}  # the extra schedule: first seed only
    assert {r["schedule"] for r in seed_rows[1]} == {"cosine"}
    n = {(r["schedule"], r["score"], r["epoch_kind"]): r["n_seeds"] for r in oc["rows"]}
    assert n[("cosine", "Energy", "final")] == 2 and n[("linear", "Energy", "final")] == 1
    final = {s: next(r for r in seed_rows[s] if (r["schedule"], r["score"], r["epoch_kind"]) == ("cosine", "Energy", "final"))
             for s in (0, 1)}
    agg = next(r for r in oc["rows"] if (r["schedule"], r["score"], r["epoch_kind"]) == ("cosine", "Energy", "final"))
    assert agg["near_FPR95"] == pytest.approx((final[0]["near_FPR95"] + final[1]["near_FPR95"]) / 2)
    claim = next(c for c in oc["claims"] if c["claim"] == "cosine, Energy: val-selected epoch vs final" and c["metric"] == "far_FPR95")
    vs = {s: next(r for r in seed_rows[s] if (r["schedule"], r["score"], r["epoch_kind"]) == ("cosine", "Energy", "val-selected"))
          for s in (0, 1)}
    assert claim["per_seed"] == [round(vs[s]["far_FPR95"] - final[s]["far_FPR95"], 2) for s in (0, 1)]
    assert claim["verdict"] in ("held", "did not hold", "within noise") and claim["seeds"] == [0, 1]
    assert next(c for c in oc["claims"] if c["claim"].startswith("linear"))["verdict"] == "one seed"

    kr = json.loads((tmp_path / "keep-ratio" / "summary.json").read_text())
    assert (tmp_path / "keep-ratio" / "keep_ratio_bands.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "keep-ratio" / "keep_ratio_claims.md").is_file()
    assert {c["claim"] for c in kr["claims"]} >= {"Energy: UM keep 0.95 vs base", "MSP: UM keep 0.8 vs base"}

    docs = tmp_path / "docs" / "gallery"
    docs.mkdir(parents=True)
    write_gallery(tmp_path, docs, appendix=Path(__file__).parents[1] / "docs" / "gallery_small_model.md")
    text = (tmp_path / "docs" / "gallery.md").read_text()
    assert "## once-covered" in text and "## keep-ratio" in text and "## Verdicts at a glance" in text
    assert "val-selected epoch vs final" in text and "upper bound" in text
    assert "](gallery/once-covered_once_covered_bands_energy.png)" in text
    assert "## A model that does not memorize" in text  # the small-model gallery, one heading level down
