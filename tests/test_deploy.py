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
from PIL import Image

import unleash_ood as uo
from unleash_ood.checkpoint import save_masks, save_model
from unleash_ood.cli import main
from unleash_ood.config import DemoConfig, validate
from unleash_ood.data import load_id_data
from unleash_ood.deploy import ExportRequest, OODDetector, calibrate_threshold, export_run
from unleash_ood.errors import UserError
from unleash_ood.masking import random_layer_masks
from unleash_ood.pipeline import eval_run
from unleash_ood.report import write_json

DATA = {"train_size": 1000, "val_size": 1000, "test_size": 1000, "ood": ["gaussian", "digits"],
        "ood_size": 200, "val_ood_size": 100}
SCORES = ["MSP", "Energy", "Mahalanobis", "ODIN"]


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
    for model, score in (("base", "Energy"), ("umap", "MSP"), ("umap", "Mahalanobis"), ("base", "ODIN")):
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


@pytest.mark.parametrize("key", ["base/Energy", "umap/MSP", "umap/Mahalanobis", "base/ODIN"])
def test_bundle_scores_equal_the_runs_scores(bundles, run_dir, id_data, key) -> None:
    det = uo.Detector.load(bundles[key])
    expected = np.load(run_dir / "scores.npz")[f"{key}/id"]
    np.testing.assert_allclose(det.score(id_data.test[0]), expected, rtol=1e-6, atol=1e-4)


def test_umap_class_from_the_unmasked_model_score_from_the_masked(bundles, run_dir, id_data,
                                                                  _trained_cnn_master) -> None:
    det = OODDetector.load(bundles["umap/MSP"])
    x = id_data.test[0][:300]
    pred = det.predict(x)
    with torch.no_grad():
        probs = torch.softmax(_trained_cnn_master(x).double(), 1)
    np.testing.assert_array_equal(pred.labels, probs.argmax(1).numpy())
    np.testing.assert_allclose(pred.probs, probs.amax(1).numpy(), atol=1e-5)
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
    assert isinstance(uo.Energy.load(bundles["base/Energy"]) if hasattr(uo, "Energy") else
                      uo.DETECTORS["Energy"].load(bundles["base/Energy"]), uo.OODDetector)
    with pytest.raises(UserError, match="holds a MSP detector"):
        uo.DETECTORS["Energy"].load(bundles["umap/MSP"])
    det = OODDetector.load(bundles["base/Energy"])
    assert det.to("cpu") is det
    u8 = (np.random.default_rng(0).random((3, 28, 28)) * 255).astype(np.uint8)  # converted like OOD sets
    assert det.score(u8).shape == (3,)


def test_export_refuses_a_missing_model_and_odin_onnx(run_dir, tmp_path) -> None:
    with pytest.raises(UserError, match="has no um model"):
        export_run(ExportRequest(run=run_dir, model="um", score="Energy", out=tmp_path / "b"))
    with pytest.raises(UserError, match="cannot be an ONNX graph"):
        export_run(ExportRequest(run=run_dir, model="base", score="ODIN", out=tmp_path / "b", format="onnx"))
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def onnx_bundles(run_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    for model, score in (("base", "Energy"), ("umap", "Mahalanobis")):
        out[f"{model}/{score}"] = root / f"{model}_{score}"
        export_run(ExportRequest(run=run_dir, model=model, score=score, out=out[f"{model}/{score}"], format="onnx"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("key,rtol", [("base/Energy", 1e-6), ("umap/Mahalanobis", 1e-4)])
def test_onnx_equals_torch(onnx_bundles, bundles, id_data, key, rtol) -> None:
    """Within 1e-4; Mahalanobis (float32, |score| ~ 100, a quadratic form with cancellation) to 1e-4 relative."""
    pytest.importorskip("onnxruntime")
    onnx_det, torch_det = OODDetector.load(onnx_bundles[key]), OODDetector.load(bundles[key])
    assert onnx_det.spec.format == "onnx" and set(onnx_det.spec.files) == {"model.onnx"}
    x = id_data.test[0]
    lo_onnx, sc_onnx = onnx_det.outputs(x)
    lo_torch, sc_torch = torch_det.outputs(x)
    np.testing.assert_allclose(lo_onnx, lo_torch, atol=1e-4)
    np.testing.assert_allclose(sc_onnx, sc_torch, rtol=rtol, atol=1e-4)
    assert onnx_det.threshold == pytest.approx(torch_det.threshold, rel=rtol, abs=1e-4)
    with pytest.raises(UserError, match="CPU"):
        onnx_det.to("cuda")
