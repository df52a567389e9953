"""Deploy: export a finished run to a bundle, `detect` on new images, `OODDetector`, ONNX, bad inputs.

The run is built once per module from the conftest's trained CNN and a random UMAP-style mask, and
evaluated by the pipeline's own `eval_run` (so `scores.npz` is exactly what a finished run holds).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_within, energy_tol, linear_tol, net_rel_tol
from PIL import Image

import unleash_ood as uo
from unleash_ood.cli import main
from unleash_ood.config import DemoConfig, validate
from unleash_ood.data import load_id_data
from unleash_ood.data.batches import TensorBatches
from unleash_ood.deploy.detector import OODDetector
from unleash_ood.deploy.export import ExportRequest, calibrate_threshold, export_run
from unleash_ood.errors import UserError
from unleash_ood.eval.forward import classifier_layer, collect_outputs
from unleash_ood.masking import random_layer_masks
from unleash_ood.models.checkpoint import save_masks, save_model
from unleash_ood.run.pipeline import eval_run
from unleash_ood.utils.files import write_json

DATA = {"train_size": 1000, "val_size": 1000, "test_size": 1000, "ood": ["gaussian", "digits"],
        "ood_size": 200, "val_ood_size": 100}
SCORES = ["MSP", "Energy", "Mahalanobis", "ODIN"]
CSV_RTOL = 5e-12  # the CSV writes scores with 12 significant digits: half a unit in the 12th


def head_pass(module: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, torch.nn.Linear]:
    """The penultimate features (float64) of ``module`` on ``x``, in the run's batches, and its classifier."""
    feats = collect_outputs(module, TensorBatches(x, batch_size=512)).features.double().numpy()
    return feats, classifier_layer(module)


def logits_tol(module: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """N × C: how far another float32 evaluation of ``module`` (other kernels or batches) may move its logits."""
    h, fc = head_pass(module, x)
    return linear_tol(h, fc.weight.detach().double(), fc.bias.detach().double(), net_rel_tol(module))


def score_tol(det: OODDetector, x: torch.Tensor, scores: np.ndarray) -> np.ndarray:
    """Per image, how far another float32 evaluation of a torch bundle's scoring network (onnxruntime, other
    batches) may move its ``scores``: the features move by net_rel_tol·‖h‖, propagated through the score."""
    net = det.engine
    if det.spec.score.name == "Energy":
        return energy_tol(logits_tol(net.scorer, x), scores)
    if det.spec.score.name == "MSP":  # log p_max, in float64: Σ_j |∂/∂z_j| = 2 (1 − p_max) ≤ 2
        return 2 * logits_tol(net.scorer, x).max(1)
    assert det.spec.score.name == "Mahalanobis"
    h, _ = head_pass(net.scorer, x)
    dh = net_rel_tol(net.scorer) * np.linalg.norm(h, axis=1)
    lam = float(torch.linalg.eigvalsh(net.detector.stats["precision"]).max())
    # s = −min_c (h−μ_c)ᵀP(h−μ_c): |δs| ≤ 2·‖P½(h−μ)‖·‖P½δh‖ + λ_max‖δh‖² with ‖P½(h−μ)‖ = √|s| (the float64
    # rounding of the quadratic form itself, ~1e-16·cond, is negligible next to it)
    return 2 * np.sqrt(lam * np.abs(scores)) * dh + lam * dh**2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, _trained_cnn_master) -> Path:
    """A finished run: config.json, base + UMAP-mask checkpoints, and the pipeline's scores.npz."""
    run = tmp_path_factory.mktemp("run")
    cfg = validate(DemoConfig, {"data": DATA, "model": {"arch": "small_cnn", "kwargs": {"width": 8}},
                                "scores": SCORES, "runtime": {"device": "cpu"}})
    write_json(run / "config.json", cfg.model_dump())
    meta = {"arch": "small_cnn", "model_kwargs": {"width": 8}, "num_classes": 10, "dataset": "fashion_mnist"}
    save_model(run / "checkpoints" / "base.safetensors", _trained_cnn_master, {**meta, "kind": "base"})
    masks = random_layer_masks(_trained_cnn_master, 0.9, seed=1)
    save_masks(run / "checkpoints" / "umap_mask.safetensors", masks, {**meta, "kind": "umap_mask"})
    eval_run(run, None, out_dir=run)
    return run


@pytest.fixture(scope="module")
def id_data():
    return load_id_data("fashion_mnist", None, DATA["val_size"], DATA["train_size"], DATA["test_size"], 0)


@pytest.fixture(scope="module")
def bundles(run_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for model, score in (("base", "Energy"), ("umap", "MSP"), ("umap", "Mahalanobis"), ("base", "ODIN"),
                         ("base", "Mahalanobis")):
        out[f"{model}/{score}"] = root / f"{model}_{score}"
        export_run(ExportRequest(run=run_dir, model=model, score=score, out=out[f"{model}/{score}"]))
    return out


def test_calibrate_threshold_accepts_the_tpr_fraction() -> None:
    scores = np.random.default_rng(0).normal(size=1000)
    t = calibrate_threshold(scores, 0.95)
    assert (scores >= t).sum() == 950
    assert (scores >= calibrate_threshold(scores, 0.9)).mean() == 0.9
    with pytest.raises(UserError):
        calibrate_threshold(np.array([1.0, np.nan]), 0.95)


@pytest.mark.parametrize("key", ["base/Energy", "umap/MSP", "umap/Mahalanobis", "base/ODIN", "base/Mahalanobis"])
def test_bundle_scores_equal_the_runs_scores(bundles, run_dir, id_data, key) -> None:
    det = uo.OODDetector.load(bundles[key])
    expected = np.load(run_dir / "scores.npz")[f"{key}/id"]
    # the same network (the mask materialized as the evaluation's own FixedMask product, strides included),
    # the same batches, the same float64 statistics: the same numbers, bit for bit
    np.testing.assert_array_equal(det.score(id_data.test[0]), expected)


def test_umap_class_from_the_unmasked_model_score_from_the_masked(bundles, run_dir, id_data,
                                                                  _trained_cnn_master) -> None:
    det = OODDetector.load(bundles["umap/MSP"])
    x = id_data.test[0][:300]
    pred = det.predict(x)
    with torch.no_grad():
        logits = _trained_cnn_master(x).double()
    probs = torch.softmax(logits, 1)
    # the bundle runs the classifier in channels_last, the conftest's model contiguous: other kernels
    dz = logits_tol(det.engine.classifier, x).max(1)
    top2 = logits.topk(2, 1).values.numpy()
    clear = top2[:, 0] - top2[:, 1] > 2 * dz  # no near-tie the rounding could flip
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(pred.labels[clear], probs.argmax(1).numpy()[clear])
    # Σ_j |∂p_k/∂z_j| = 2 p_k (1 − p_k) ≤ ½
    assert_within(pred.probs, probs.amax(1).numpy(), dz / 2)
    scores = np.load(run_dir / "scores.npz")
    assert not np.allclose(pred.scores, scores["base/MSP/id"][:300], atol=1e-3)  # the mask changes the score
    np.testing.assert_array_equal(pred.is_ood, pred.scores < det.threshold)


def test_threshold_flags_about_one_minus_tpr_of_held_out_id(bundles, id_data) -> None:
    det = OODDetector.load(bundles["base/Energy"])
    cal = det.spec.calibration
    assert cal.size == DATA["val_size"] and cal.tpr == 0.95 and cal.flag_rate == pytest.approx(0.05, abs=1e-3)
    flagged = det.predict(id_data.test[0]).is_ood.mean()  # held-out ID test images, never calibrated on
    assert abs(flagged - 0.05) < 0.025, flagged


def test_detector_json_records_everything_needed(bundles, run_dir) -> None:
    root = bundles["umap/Mahalanobis"]
    spec = json.loads((root / "detector.json").read_text())
    assert spec["model"] == {**spec["model"], "arch": "small_cnn", "kwargs": {"width": 8}, "num_classes": 10,
                             "kind": "umap", "masked_score": True}
    assert spec["model"]["normalization"]["mean"] == pytest.approx([0.2860])
    assert spec["classes"][0] == "T-shirt/top" and len(spec["classes"]) == 10
    assert spec["input"] == {"channels": 1, "height": 28, "width": 28, "range": [0.0, 1.0], "layout": "NCHW"}
    assert spec["score"]["name"] == "Mahalanobis" and spec["score"]["stats_shapes"]["means"] == [10, 32]
    assert spec["run"]["dir"] == str(run_dir.resolve()) and spec["versions"]["torch"] == torch.__version__
    assert set(spec["files"]) == {"model.safetensors", "mask.safetensors", "detector.safetensors"}
    assert sorted(p.name for p in root.iterdir()) == sorted([*spec["files"], "detector.json"])


def test_detector_load_checks_the_score_and_moves(bundles) -> None:
    assert isinstance(uo.OODDetector.load(bundles["base/Energy"], score="Energy"), uo.OODDetector)
    with pytest.raises(UserError, match="holds a MSP detector"):
        uo.OODDetector.load(bundles["umap/MSP"], score="Energy")
    det = OODDetector.load(bundles["base/Energy"])
    assert det.to("cpu") is det
    u8 = (np.random.default_rng(0).random((3, 28, 28)) * 255).astype(np.uint8)  # converted like OOD sets
    assert det.score(u8).shape == (3,)


def test_export_refuses_a_missing_model_and_odin_onnx(run_dir, tmp_path) -> None:
    with pytest.raises(UserError, match="has no model 'um'; it holds base, umap"):
        export_run(ExportRequest(run=run_dir, model="um", score="Energy", out=tmp_path / "b"))
    with pytest.raises(UserError, match="cannot be an ONNX graph"):
        export_run(ExportRequest(run=run_dir, model="base", score="ODIN", out=tmp_path / "b", format="onnx"))
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def onnx_bundles(run_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    # umap/Mahalanobis is not among them: the random mask leaves near-dead units (precision condition ~1e8),
    # where float32 rounding of the features may move the score by as much as the score itself. The masked
    # network is checked through MSP, ONNX's float64 Mahalanobis on the base (condition ~1e4).
    for model, score in (("base", "Energy"), ("umap", "MSP"), ("base", "Mahalanobis")):
        out[f"{model}/{score}"] = root / f"{model}_{score}"
        export_run(ExportRequest(run=run_dir, model=model, score=score, out=out[f"{model}/{score}"], format="onnx"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("key", ["base/Energy", "umap/MSP", "base/Mahalanobis"])
def test_onnx_equals_torch(onnx_bundles, bundles, id_data, key) -> None:
    """onnxruntime's kernels round otherwise: logits, scores and threshold agree to the float32 bounds of
    :func:`logits_tol` / :func:`score_tol` (Mahalanobis amplifies feature rounding by √(λ_max |s|))."""
    pytest.importorskip("onnxruntime")
    onnx_det, torch_det = OODDetector.load(onnx_bundles[key]), OODDetector.load(bundles[key])
    assert onnx_det.spec.format == "onnx" and set(onnx_det.spec.files) == {"model.onnx"}
    assert {"onnx", "onnxruntime", "torch"} <= set(onnx_det.spec.versions)
    assert onnx_det.spec.calibration.engine == "onnxruntime"
    x = id_data.test[0]
    lo_onnx, sc_onnx = onnx_det.outputs(x)
    lo_torch, sc_torch = torch_det.outputs(x)
    assert_within(lo_onnx, lo_torch, logits_tol(torch_det.engine.classifier, x))
    assert_within(sc_onnx, sc_torch, score_tol(torch_det, x, sc_torch))
    # an order statistic of the validation scores moves at most as far as the farthest-moving score
    val = id_data.val[0]
    assert abs(onnx_det.threshold - torch_det.threshold) <= score_tol(torch_det, val, torch_det.score(val)).max()
    with pytest.raises(UserError, match="CPU"):
        onnx_det.to("cuda")


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_cli_export_and_detect_npz_folder_and_files(run_dir, id_data, tmp_path, capsys) -> None:
    bundle = tmp_path / "bundle"
    assert main(["export", "--run", str(run_dir), "--model", "umap", "--score", "Energy", "--out", str(bundle),
                 "--device", "cpu"]) == 0
    x = id_data.test[0]
    npz = tmp_path / "test.npz"
    np.savez(npz, images=(x[:, 0].numpy() * 255).round().astype(np.uint8))
    np.savez(tmp_path / "exact.npz", images=x[:, 0].numpy())  # float [0, 1]: exactly the run's test images
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        Image.fromarray((x[i, 0].numpy() * 255).round().astype(np.uint8)).save(folder / "sub" / f"{i}.png")
    single = tmp_path / "one.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(single)  # RGB, other size: converted like OOD sets
    out = tmp_path / "preds.csv"
    assert main(["detect", str(bundle), f"npz:{tmp_path / 'exact.npz'}", f"folder:{folder}", str(single),
                 f"npz:{npz}", "--out", str(out)]) == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["source", "pred", "prob", "score", "is_ood"]
    n = len(x)
    assert len(rows) == 2 * n + 4
    assert rows[0]["source"] == f"{tmp_path / 'exact.npz'}[0]" and rows[n]["source"] == str(folder / "sub" / "0.png")
    assert rows[n + 3]["source"] == str(single) and rows[-1]["source"] == f"{npz}[{n - 1}]"
    expected = np.load(run_dir / "scores.npz")["umap/Energy/id"]
    # the last batch also holds the folder's images, unlike the run's: float32 bounds, plus the CSV's digits
    tol = score_tol(OODDetector.load(bundle), x, expected)
    assert_within([float(r["score"]) for r in rows[:n]], expected, tol, rtol=CSV_RTOL)
    threshold = json.loads((bundle / "detector.json").read_text())["calibration"]["threshold"]
    assert all(int(r["is_ood"]) == (float(r["score"]) < threshold) for r in rows)
    assert all(0 <= int(r["pred"]) < 10 and 0.1 <= float(r["prob"]) <= 1 for r in rows)
    # uint8 PNGs of the same images: same scores up to the 8-bit rounding of the pixels
    np.testing.assert_allclose([float(r["score"]) for r in rows[n:n + 3]], expected[:3], atol=0.1)
    assert "flagged OOD" in capsys.readouterr().out


def corrupt(bundles: dict[str, Path], key: str, tmp_path: Path, edit) -> Path:
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(bundles[key], root)
    edit(root)
    return root


def edit_json(change):
    def edit(root: Path) -> None:
        spec = json.loads((root / "detector.json").read_text())
        change(spec)
        (root / "detector.json").write_text(json.dumps(spec))
    return edit


def flip_byte(name: str):
    def edit(root: Path) -> None:
        data = bytearray((root / name).read_bytes())
        data[-5] ^= 0xFF
        (root / name).write_bytes(bytes(data))
    return edit


BAD_BUNDLES = {
    "missing": lambda root: __import__("shutil").rmtree(root),
    "not json": lambda root: (root / "detector.json").write_text("{not json"),
    "hash": flip_byte("model.safetensors"),
    "stats hash": flip_byte("detector.safetensors"),
    "lost file": lambda root: (root / "mask.safetensors").unlink(),
    "width": edit_json(lambda s: s["model"]["kwargs"].update(width=16)),
    "classes": edit_json(lambda s: s["model"].update(num_classes=11)),
    "channels": edit_json(lambda s: s["input"].update(channels=3)),
    "stats shape": edit_json(lambda s: s["score"]["stats_shapes"].update(means=[10, 64])),
    "unknown key": edit_json(lambda s: s.update(code="import os")),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_bad_bundle_exits_2_without_csv(bundles, id_data, tmp_path, capsys, case) -> None:
    root = corrupt(bundles, "umap/Mahalanobis", tmp_path, BAD_BUNDLES[case])
    np.savez(tmp_path / "x.npz", images=id_data.test[0][:4, 0].numpy())
    out = tmp_path / "preds.csv"
    assert main(["detect", str(root), f"npz:{tmp_path / 'x.npz'}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unleash-ood: error:") and len(err.splitlines()) == 1, err
    assert not out.exists()


BAD_INPUTS = {
    "missing file": lambda d: str(d / "nope.png"),
    "not an image": lambda d: (d / "a.png").write_text("hello") and str(d / "a.png"),
    "npz without images": lambda d: np.savez(d / "b.npz", pixels=np.zeros((2, 28, 28))) or f"npz:{d / 'b.npz'}",
    "npz out of range": lambda d: np.savez(d / "c.npz", images=np.full((2, 28, 28), 7.0)) or f"npz:{d / 'c.npz'}",
    "empty folder": lambda d: (d / "empty").mkdir() or f"folder:{d / 'empty'}",
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_without_csv(bundles, tmp_path, capsys, case) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(good)
    out = tmp_path / "preds.csv"
    assert main(["detect", str(bundles["base/Energy"]), str(good), BAD_INPUTS[case](tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("unleash-ood: error:") and len(err.splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob(".preds.csv*"))


@pytest.mark.slow
def test_cli_export_refusals_exit_2(run_dir, tmp_path, capsys) -> None:
    for args in (["--model", "um", "--score", "Energy"], ["--model", "base", "--score", "ODIN", "--format", "onnx"],
                 ["--model", "base", "--score", "Nope"], ["--model", "base", "--score", "MSP", "--tpr", "1.5"]):
        assert main(["export", "--run", str(run_dir), *args, "--out", str(tmp_path / "b")]) == 2, args
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["export", "--run", str(tmp_path), "--model", "base", "--score", "MSP", "--out",
                 str(tmp_path / "b")]) == 2
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_cli_detect_runs_onnx_bundles_and_refuses_a_broken_graph(onnx_bundles, bundles, run_dir, id_data,
                                                                 tmp_path, capsys) -> None:
    np.savez(tmp_path / "x.npz", images=id_data.test[0][:, 0].numpy())
    out = tmp_path / "preds.csv"
    assert main(["detect", str(onnx_bundles["base/Energy"]), f"npz:{tmp_path / 'x.npz'}", "--out", str(out)]) == 0
    expected = np.load(run_dir / "scores.npz")["base/Energy/id"]  # = the torch bundle's, bit for bit
    tol = score_tol(OODDetector.load(bundles["base/Energy"]), id_data.test[0], expected)  # onnxruntime's kernels
    assert_within([float(r["score"]) for r in read_csv(out)], expected, tol, rtol=CSV_RTOL)

    def truncate_and_rehash(root: Path) -> None:  # a damaged graph whose hash was "fixed" too
        from unleash_ood.deploy.bundle import sha256

        graph = root / "model.onnx"
        graph.write_bytes(graph.read_bytes()[:1000])
        edit_json(lambda s: s["files"]["model.onnx"].update(sha256=sha256(graph), bytes=1000))(root)

    root = corrupt(onnx_bundles, "base/Energy", tmp_path, truncate_and_rehash)
    out.unlink()
    assert main(["detect", str(root), f"npz:{tmp_path / 'x.npz'}", "--out", str(out)]) == 2
    assert "cannot load ONNX graph" in capsys.readouterr().err and not out.exists()
