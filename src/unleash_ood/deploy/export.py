"""From a finished run to a bundle: rebuild its data, fit the score as the evaluation did, calibrate the
threshold on the held-out ID validation split, write weights + mask + statistics + ``detector.json``."""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..config import ModelConfig
from ..data import IDData
from ..data.batches import TensorBatches
from ..data.own import load_data
from ..detectors.base import Detector, build_detector
from ..errors import UserError
from ..eval.evaluate import fit_detectors
from ..models.checkpoint import load_masks, load_tensors, save_masks, save_model, save_tensors
from ..models.loading import load_checkpoint
from ..run.layout import RunLayout
from ..utils.runtime import select_device
from .bundle import (
    MASK_FILE,
    ONNX_FILE,
    STATS_FILE,
    WEIGHTS_FILE,
    BundleSpec,
    Calibration,
    InputSpec,
    ModelSpec,
    ScoreSpec,
    sha256,
    write_bundle,
)
from .detector import Engine, OnnxEngine, OODDetector
from .net import ScoringNet, materialize_masks, normalization_of
from .onnx_export import export_onnx, require_deploy_extra

FORMATS = ("torch", "onnx")


@dataclass
class ExportRequest:
    """What ``unleash-ood export`` asks for."""

    run: Path
    model: str = "base"
    score: str = "Energy"
    out: Path = Path("bundle")
    tpr: float = 0.95
    format: str = "torch"
    device: str = "cpu"
    params: dict | None = None  # the score's hyperparameters (None: its defaults), e.g. a recommendation's

    def check(self) -> None:
        if self.format not in FORMATS:
            raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not 0.0 < self.tpr < 1.0:
            raise UserError(f"--tpr must lie strictly between 0 and 1, got {self.tpr}")


def calibrate_threshold(scores: np.ndarray, tpr: float) -> float:
    """The score value that accepts (``score >= threshold``) ``ceil(tpr · n)`` of the ``n`` ID scores."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if len(s) == 0 or not np.isfinite(s).all():
        raise UserError("cannot calibrate a threshold: no scores, or scores that are not finite")
    accepted = math.ceil(tpr * len(s) - 1e-9)
    return float(s[len(s) - accepted])


@dataclass
class LoadedModel:
    """One model of a finished run, with the ID data its config rebuilds (same seed, same splits)."""

    run: Path
    data: IDData
    model: nn.Module
    model_cfg: ModelConfig
    weights: Path
    mask_path: Path | None
    masks: dict[str, torch.Tensor] | None
    data_seed: int
    batch_size: int  # the run's data.eval_batch_size, as evaluate_models


def load_run_model(req: ExportRequest) -> LoadedModel:
    """The model ``req.model`` of run ``req.run`` (any model the run holds) and the ID data of its config."""
    run = RunLayout(Path(req.run))
    cfg = run.load_config()
    found = run.model(req.model)
    d = cfg.data
    data = load_data(d)  # the run's splits and input, its own data included
    if not len(data.val[0]):
        raise UserError(f"run {run.root} has no ID validation split (data.val_size=0): nothing to calibrate on")
    model, model_cfg = load_checkpoint(found.weights, data.num_classes, cfg.model)
    masks = load_masks(found.mask)[0] if found.mask else None
    return LoadedModel(run.root, data, model, model_cfg, found.weights, found.mask, masks, d.seed, d.eval_batch_size)


def bundle_spec(req: ExportRequest, src: LoadedModel, detector: Detector) -> BundleSpec:
    """``detector.json`` before calibration (threshold 0) and before the file hashes."""
    data, run = src.data, src.run
    versions = {"unleash_ood": __version__, "torch": torch.__version__}
    if req.format == "onnx":
        import onnx
        import onnxruntime

        versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return BundleSpec(
        format=req.format,  # type: ignore[arg-type]
        model=ModelSpec(arch=src.model_cfg.arch, kwargs=src.model_cfg.kwargs, num_classes=data.num_classes,
                        kind=req.model, masked_score=src.masks is not None,  # type: ignore[arg-type]
                        normalization=normalization_of(src.model)),
        classes=list(data.classes), dataset=data.name,
        input=InputSpec(channels=data.image_shape[0], height=data.image_shape[1], width=data.image_shape[2]),
        score=ScoreSpec(name=detector.name, params=detector.config(),
                        stats_shapes={k: list(v.shape) for k, v in detector.state_dict().items()}),
        calibration=Calibration(threshold=0.0, tpr=req.tpr, size=len(data.val[0]), flag_rate=0.0),
        run={"dir": str(run.resolve()), "model": req.model, "config_sha256": sha256(RunLayout(run).config),
             "weights_sha256": sha256(src.weights),
             **({"mask_sha256": sha256(src.mask_path)} if src.mask_path else {}),
             "split_seed": src.data_seed, "fit": f"{len(data.train[0])} ID training images"},
        versions=versions)


def export_run(req: ExportRequest) -> BundleSpec:
    """Write the bundle ``req.out`` for model ``req.model`` and score ``req.score`` of run ``req.run``."""
    req.check()
    detector = build_detector(req.score, req.params)
    if req.format == "onnx" and detector.needs_inputs:
        raise UserError(f"{req.score} needs its own gradient pass over the inputs, not one forward pass; "
                        "it cannot be an ONNX graph: export it with --format torch")
    if req.format == "onnx":  # before loading anything: without the extra the export cannot finish

        require_deploy_extra()
    src = load_run_model(req)
    scorer = materialize_masks(src.model, src.masks) if src.masks else src.model
    net = ScoringNet(src.model, scorer, detector).to(select_device(req.device))
    fit_detectors(scorer, [detector], TensorBatches(*src.data.train, batch_size=src.batch_size))  # as evaluate_models
    net.to(select_device(req.device))  # statistics fitted on the CPU follow the network
    stats = {k: v.detach().cpu().contiguous() for k, v in detector.state_dict().items()}
    spec = bundle_spec(req, src, detector)
    val = src.data.val[0]

    with tempfile.TemporaryDirectory(prefix="unleash-ood-export-") as scratch:
        engine: Engine = net
        onnx_path = Path(scratch) / ONNX_FILE
        if req.format == "onnx":
            export_onnx(net.to("cpu"), onnx_path, val[:2])
            engine = OnnxEngine(onnx_path, spec)
        val_scores = OODDetector(spec, engine).score(val)  # calibrated with the bundle's own engine
        threshold = calibrate_threshold(val_scores, req.tpr)
        spec.calibration = Calibration(threshold=threshold, tpr=req.tpr, size=len(val_scores),
                                       flag_rate=float(np.mean(val_scores < threshold)),
                                       engine="onnxruntime" if req.format == "onnx" else "torch")

        def write_files(tmp: Path) -> None:
            if req.format == "onnx":
                shutil.copyfile(onnx_path, tmp / ONNX_FILE)
                return
            m = spec.model
            meta = {"arch": m.arch, "model_kwargs": m.kwargs, "num_classes": m.num_classes}
            save_model(tmp / WEIGHTS_FILE, src.model, {**meta, "kind": "base" if src.masks else req.model})
            if src.masks and src.mask_path:
                save_masks(tmp / MASK_FILE, src.masks, {**load_tensors(src.mask_path)[1], "kind": "umap_mask"})
            save_tensors(tmp / STATS_FILE, stats, {"score": detector.name, "params": detector.config()})

        write_bundle(req.out, spec, write_files)
    return spec
