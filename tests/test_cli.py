"""End-to-end CLI tests: `demo --quick`, `eval --run`, `um`/`umap` on a checkpoint, and error paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_within, knn_tol

from unleash_ood.cli import main
from unleash_ood.data import fashion
from unleash_ood.metrics import ood_metrics
from unleash_ood.models import build_model
from unleash_ood.models.checkpoint import load_masks, load_tensors, save_model

SMALL = ["data.train_size=600", "data.test_size=300", "data.val_size=300", "data.ood_size=150",
         "data.val_ood_size=150", "data.ood=[digits, uniform]", "base.epochs=2", "um.optim.epochs=1",
         "umap.optim.epochs=1", "um.zeta_draws=2", "model.kwargs={width: 8}"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out


def test_demo_quick_writes_every_result(demo_run: Path) -> None:
    records = json.loads((demo_run / "results.json").read_text())
    assert {r["model"] for r in records} == {"base", "um", "ce_finetune", "umap"}
    assert {"MSP", "ODIN", "Mahalanobis", "Energy", "MaxLogit"} <= {r["score"] for r in records}
    keys = {"model", "score", "ood", "fpr95", "auroc", "aupr_in", "aupr_out", "id_acc"}
    assert all(keys <= set(r) for r in records)
    assert any(r["ood"] == "mean" for r in records)
    # anyone can recompute the metrics from the per-sample scores
    scores = np.load(demo_run / "scores.npz")
    row = next(r for r in records if r["model"] == "um" and r["score"] == "Energy" and r["ood"] == "digits")
    again = ood_metrics(scores["um/Energy/id"], scores["um/Energy/digits"])
    assert again["fpr95"] == pytest.approx(row["fpr95"]) and again["auroc"] == pytest.approx(row["auroc"])
    # UMAP's deployed classifier is the base model: identical ID accuracy
    acc = {r["model"]: r["id_acc"] for r in records}
    assert acc["umap"] == acc["base"]
    for name in ("results.csv", "results.md", "train_log.jsonl", "summary.json", "zeta.json",
                 "plots/fpr95_along_training.png", "plots/score_hist_energy.png", "plots/score_hist_msp.png",
                 "checkpoints/base.safetensors", "checkpoints/um.safetensors", "checkpoints/umap_mask.safetensors"):
        assert (demo_run / name).is_file(), name
    assert (demo_run / "plots/fpr95_along_training.png").read_bytes()[:4] == b"\x89PNG"
    log = [json.loads(line) for line in (demo_run / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3] and "digits" in log[0]["ood"] and "val_ood" in log[0]
    zeta = json.loads((demo_run / "zeta.json").read_text())
    assert len(zeta["values"]) == 3 and zeta["mean"] == pytest.approx(np.mean(zeta["values"]))
    assert zeta["estimator"] == "median" and zeta["value"] == zeta["median"] == pytest.approx(np.median(zeta["values"]))
    assert load_tensors(demo_run / "checkpoints/um.safetensors")[1]["zeta"] == pytest.approx(zeta["value"])
    assert all({"group", "fpr95_ood_positive"} <= set(r) for r in records)
    assert {r["ood"] for r in records if r["group"] == "aggregate"} == {"near", "far", "synthetic", "mean"}
    masks, meta = load_masks(demo_run / "checkpoints/umap_mask.safetensors")
    assert meta["keep_ratio"] == 0.8
    assert all(abs(m.float().mean().item() - 0.8) < 0.01 for m in masks.values())
    # near: glyphs, digits; far: textures, photos, scenes; synthetic (apart): gaussian, uniform
    assert "Mean over 5 OOD sets (near and far)" in (demo_run / "results.md").read_text()
    # gaussian and uniform are synthetic: apart from far and from the mean (recomputed by hand)
    per_set = {r["ood"]: r for r in records if (r["model"], r["score"]) == ("umap", "Energy")}
    assert {per_set[n]["group"] for n in ("gaussian", "uniform")} == {"synthetic"}
    for agg, sets in (("far", ("textures", "photos", "scenes")), ("synthetic", ("gaussian", "uniform")),
                      ("mean", ("glyphs", "digits", "textures", "photos", "scenes"))):
        assert per_set[agg]["fpr95"] == pytest.approx(np.mean([per_set[n]["fpr95"] for n in sets]))
    # summary.json: what exactly each OOD set and the validation proxy was
    sets = json.loads((demo_run / "summary.json").read_text())["sets"]
    assert set(sets) == {"glyphs", "digits", "textures", "photos", "scenes", "gaussian", "uniform", "val_ood",
                         "val_near", "probe_strokes", "probe_distorted"}
    assert all(len(r["sha256"]) == 64 and r["shape"][0] == r["n"] for r in sets.values())
    # the near validation proxy: letters of the held-out font families, none of the test set's fonts
    assert sets["val_near"]["distinct_sources"] == len(sets["val_near"]["sources"]) > 0
    assert not set(sets["val_near"]["sources"]) & set(sets["glyphs"]["sources"])
    assert sets["scenes"]["distinct_sources"] == 31 and sets["scenes"]["n"] == 300  # --quick: ood_size 300
    validation = json.loads((demo_run / "summary.json").read_text())["validation"]
    assert set(validation) == {"base", "um", "ce_finetune", "umap"}
    assert 0 <= validation["umap"]["Energy"]["fpr95"] <= 100 and validation["umap"]["val_acc"] > 0


@pytest.mark.slow
def test_demo_quick_over_two_seeds(tmp_path: Path, capsys) -> None:
    out = tmp_path / "seeds"
    tiny = [*SMALL, "scores=[MSP, Energy, Mahalanobis]", "save_features=false"]
    # --force: two epochs on 600 images do not memorize them (ζ ≥ ½·ln 10); the guard would stop the run
    assert main(["demo", "--quick", "--force", "--seeds", "0", "1", "--out", str(out), *tiny]) == 0
    for s in (0, 1):
        cfg = json.loads((out / f"seed{s}" / "config.json").read_text())
        assert cfg["seed"] == s and cfg["data"]["seed"] == s
    agg = json.loads((out / "results.json").read_text())
    one = json.loads((out / "seed0" / "results.json").read_text())
    assert {(r["model"], r["score"], r["ood"]) for r in agg} == {(r["model"], r["score"], r["ood"]) for r in one}
    metrics = ("fpr95", "fpr95_ood_positive", "auroc", "aupr_in", "aupr_out", "id_acc")
    assert all(r["n_seeds"] == 2 and all(f"{k}_std" in r for k in metrics) for r in agg)
    two = json.loads((out / "seed1" / "results.json").read_text())
    row = next(r for r in agg if (r["model"], r["score"], r["ood"]) == ("um", "Energy", "mean"))
    pair = [next(r for r in rs if (r["model"], r["score"], r["ood"]) == ("um", "Energy", "mean")) for rs in (one, two)]
    assert row["fpr95"] == pytest.approx(np.mean([p["fpr95"] for p in pair]))
    assert row["fpr95_std"] == pytest.approx(np.std([p["fpr95"] for p in pair], ddof=1))
    assert " ± " in (out / "results.md").read_text() and "fpr95_std" in (out / "results.csv").read_text()
    assert "Near and far OOD" in capsys.readouterr().out
    # a re-run reuses both finished seeds; a repeated seed is refused
    stamp = (out / "seed0" / "results.json").stat().st_mtime_ns
    assert main(["demo", "--quick", "--force", "--seeds", "0", "1", "--out", str(out), *tiny]) == 0
    assert (out / "seed0" / "results.json").stat().st_mtime_ns == stamp
    assert main(["demo", "--quick", "--seeds", "1", "1", "--out", str(out)]) == 2
    assert "repeated seed" in capsys.readouterr().err


def test_eval_run_on_a_user_npz(demo_run: Path, tmp_path: Path) -> None:
    npz = tmp_path / "blobs.npz"
    np.savez(npz, images=np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
    out = tmp_path / "ev"
    assert main(["eval", "--run", str(demo_run), "--ood", f"npz:{npz}", "digits", "--out", str(out)]) == 0
    records = json.loads((out / "results.json").read_text())
    assert {r["ood"] for r in records} == {"blobs", "digits", "near", "far", "mean"}  # digits keeps its group
    assert {r["model"] for r in records} == {"base", "um", "ce_finetune", "umap"}
    assert np.load(out / "scores.npz")["umap/Energy/blobs"].shape == (64,)


def test_um_and_umap_commands_on_a_checkpoint(demo_run: Path, tmp_path: Path) -> None:
    ckpt = demo_run / "checkpoints/base.safetensors"
    out = tmp_path / "um"
    assert main(["um", "--checkpoint", str(ckpt), "--out", str(out), *SMALL[:6], "um.zeta=0.2",
                 "um.optim.epochs=1"]) == 0
    models = {r["model"] for r in json.loads((out / "results.json").read_text())}
    assert models == {"base", "um", "ce_finetune"}
    assert json.loads((out / "zeta.json").read_text())["values"] == [0.2]
    out2 = tmp_path / "umap"
    assert main(["umap", "--checkpoint", str(ckpt), "--out", str(out2), *SMALL[:6], "umap.prune_rate=0.9",
                 "umap.optim.epochs=1", "um.zeta_draws=1"]) == 0
    masks, _ = load_masks(out2 / "checkpoints/umap_mask.safetensors")
    assert all(abs(m.float().mean().item() - 0.9) < 0.01 for m in masks.values())
    # the copied base is the given checkpoint, bit for bit
    a, _ = load_tensors(ckpt)
    b, _ = load_tensors(out2 / "checkpoints/base.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _fails(capsys, argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    full = capsys.readouterr().err
    err = full.strip().split("\r")[-1].splitlines()[-1]  # the last line, after any progress bar
    assert err.startswith("unleash-ood: error:") and "Traceback" not in full
    for needle in needles:
        assert needle in err, err
    return err


def test_invalid_config_values(capsys, tmp_path: Path) -> None:
    _fails(capsys, ["demo", "--out", str(tmp_path / "a"), "um.keep_ratio=1.5"], "um.keep_ratio")
    _fails(capsys, ["demo", "--out", str(tmp_path / "b"), "umap.keep_ratio=0"], "umap.keep_ratio")
    _fails(capsys, ["demo", "--out", str(tmp_path / "c"), "bogus.key=1"], "bogus")
    _fails(capsys, ["demo", "--out", str(tmp_path / "d"), "noequals"], "key=value")
    _fails(capsys, ["demo", "--out", str(tmp_path / "e"), "scores=[MSP, Foo]"], "Foo")
    assert not (tmp_path / "a" / "results.json").exists()


def test_missing_dataset(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fashion, "DEBIAN_DIR", tmp_path / "nowhere")
    _fails(capsys, ["demo", "--quick", "--out", str(tmp_path / "o"), "--data-root", str(tmp_path / "empty"),
                    "data.download=false"], "apt-get install dataset-fashion-mnist", "--data-root")


def test_bad_checkpoints(capsys, tmp_path: Path) -> None:
    _fails(capsys, ["um", "--checkpoint", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "o")],
           "not found")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 50)
    _fails(capsys, ["umap", "--checkpoint", str(corrupt), "--out", str(tmp_path / "o")], str(corrupt))
    five = tmp_path / "five.safetensors"
    save_model(five, build_model("small_cnn", 5, width=8), {"arch": "small_cnn", "model_kwargs": {"width": 8},
                                                            "num_classes": 5})
    _fails(capsys, ["um", "--checkpoint", str(five), "--out", str(tmp_path / "o"), *SMALL], "5 classes")
    other = tmp_path / "other.safetensors"
    save_model(other, build_model("small_cnn", 10, width=8), {})  # bare state_dict, claimed to be width 16
    _fails(capsys, ["um", "--checkpoint", str(other), "--out", str(tmp_path / "o"), *SMALL[:6]],
           "does not fit this model")
    assert not (tmp_path / "o").exists()  # bad input leaves nothing behind


def test_bad_ood_sets(capsys, tmp_path: Path, demo_run: Path) -> None:
    empty = tmp_path / "empty.npz"
    np.savez(empty, images=np.zeros((0, 28, 28), dtype=np.uint8))
    _fails(capsys, ["eval", "--run", str(demo_run), "--ood", f"npz:{empty}", "--out", str(tmp_path / "x")],
           str(empty))
    _fails(capsys, ["eval", "--run", str(tmp_path), "--ood", "digits"], "not a finished run")
    _fails(capsys, ["eval", "--run", str(demo_run), "--ood", "cifar99", "--out", str(tmp_path / "x")], "cifar99")
    assert not (tmp_path / "x").exists() and not (tmp_path / "eval").exists()  # nothing left behind


def test_nan_loss_stops_with_a_clear_message(capsys, tmp_path: Path) -> None:
    out = tmp_path / "nan"
    err = _fails(capsys, ["train", "--out", str(out), *SMALL, "base.lr=1e30", "base.epochs=3", "eval_every=1"],
                 "loss became")
    assert "checkpoint" in err
    assert not (out / "results.json").exists()


def test_oe_command_and_eval_of_an_outlier_run(demo_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "oe"
    assert main(["oe", "--checkpoint", str(demo_run / "checkpoints/base.safetensors"), "--out", str(out),
                 *SMALL[:6], "outliers.epochs=1", "outliers.aux_size=300", "um.zeta_draws=1",
                 "--method", "oe", "energy", "--with", "none", "umap"]) == 0
    records = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in records} == {"base", "oe", "oe_umap", "energy", "energy_umap"}
    assert all(r["aux"] == (r["model"] != "base") for r in records)
    table = (out / "results.md").read_text()
    assert "OE+UMAP (Energy)" in table and "Energy (w. D_aux) (MSP)" in table and "w. D_aux" in table
    assert "aux" in (out / "results.csv").read_text().splitlines()[0]
    ev = main(["eval", "--run", str(out), "--ood", "uniform", "--out", str(tmp_path / "ev")])
    assert ev == 0
    again = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert {r["model"] for r in again} == {"base", "oe", "oe_umap", "energy", "energy_umap"}


def test_demo_with_outliers_merges_the_tables(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo_oe"
    assert main(["demo", "--quick", "--with-outliers", "--force", "--out", str(out), *SMALL, "outliers.methods=[oe]",
                 "outliers.withs=[none, um]", "outliers.aux_size=300"]) == 0
    # the printed table comes from the records, and is the file's mean table
    md = (out / "results.md").read_text()
    section = "## Mean over" + md.split("## Mean over", 1)[1].split("\n## ", 1)[0].rstrip()
    assert section in capsys.readouterr().out and "OE+UM (Energy)" in section
    notes = md.split("## Run", 1)[1]
    assert "Outlier fine-tuning: see outliers/results.md" in notes and "UM: keep ratio" in notes
    records = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in records} == {"base", "um", "ce_finetune", "umap", "oe", "oe_um"}
    assert {r["model"] for r in records if r["aux"]} == {"oe", "oe_um"}
    assert "OE+UM (Energy)" in (out / "results.md").read_text() and "Energy+UMAP" in (out / "results.md").read_text()
    assert "oe_um/Energy/digits" in np.load(out / "scores.npz") and "um/Energy/id" in np.load(out / "scores.npz")
    # the run says which models it holds (its outlier sub-run's included); export takes any of them
    from unleash_ood.run.layout import RunLayout

    held = RunLayout(out).models()
    assert list(held)[:4] == ["base", "um", "ce_finetune", "umap"] and {"oe", "oe_um"} <= set(held)
    assert held["oe"].weights == out / "outliers" / "checkpoints" / "oe.safetensors" and held["oe"].mask is None
    bundle = tmp_path / "oe_bundle"
    assert main(["export", "--run", str(out), "--model", "oe_um", "--score", "Energy", "--out", str(bundle),
                 "--device", "cpu"]) == 0
    spec = json.loads((bundle / "detector.json").read_text())
    assert spec["model"]["kind"] == "oe_um" and spec["run"]["model"] == "oe_um"


def test_demo_features_npz_recomputes_knn_and_eval_saves_features(demo_run: Path, tmp_path: Path) -> None:
    """Every detector × model in results.json; features.npz (on by default) lets numpy recompute KNN."""
    from unleash_ood.detectors.params import TABLE_ORDER

    records = json.loads((demo_run / "results.json").read_text())
    for model in ("base", "um", "ce_finetune", "umap"):
        assert {r["score"] for r in records if r["model"] == model} == set(TABLE_ORDER), model
    feats, scores = np.load(demo_run / "features.npz"), np.load(demo_run / "scores.npz")
    for model in ("base", "um", "ce_finetune", "umap"):
        assert {f"{model}/{k}" for k in ("id", "train", "weight", "bias", "digits", "uniform")} <= set(feats.files)
    assert (feats["umap/weight"] == 0).mean() > 0.15 and not np.array_equal(feats["umap/weight"], feats["base/weight"])
    bank = feats["umap/train"].astype(np.float64)
    bank /= np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
    q = feats["umap/digits"].astype(np.float64)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    d2 = (q**2).sum(1)[:, None] + (bank**2).sum(1)[None, :] - 2 * q @ bank.T
    kth = np.sort(np.sqrt(np.maximum(d2, 0)), axis=1)[:, 49]
    assert_within(scores["umap/KNN/digits"], -kth, knn_tol(kth, q.shape[1]))  # float32 distances vs float64
    config = json.loads((demo_run / "config.json").read_text())
    assert config["scores"]["KNN"] == {"k": 50} and config["save_features"] is True

    out = tmp_path / "ev"
    assert main(["eval", "--run", str(demo_run), "--ood", "uniform", "--out", str(out), "--save-features"]) == 0
    again = np.load(out / "features.npz")
    np.testing.assert_allclose(again["umap/uniform"], feats["umap/uniform"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(again["umap/weight"], feats["umap/weight"])


def test_help_and_config_import_no_torch() -> None:
    """`--help` and `config` answer without loading torch, matplotlib or pydantic-heavy modules."""
    import os
    import subprocess
    import sys

    code = ("import sys, contextlib, io\n"
            "from unleash_ood import cli\n"
            "cli.parser()\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert cli.main(['config', '--quick', 'base.epochs=40']) == 0\n"
            "heavy = sorted(m for m in ('torch', 'matplotlib', 'numpy', 'unleash_ood.run.pipeline', 'unleash_ood.reproduce')"
            " if m in sys.modules)\n"
            "print(heavy)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
    listed = subprocess.run([sys.executable, "-m", "unleash_ood", "--help"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert listed.returncode == 0 and "reproduce" in listed.stdout and "select-keep" in listed.stdout
