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
