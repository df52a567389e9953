"""The optional `[deploy]` extra (onnx, onnxscript, onnxruntime) missing: one line with the install hint, exit 2.

`sys.modules[name] = None` makes `import name` raise ImportError, as on an install without the extra.
No ONNX export runs here: the refusal must come before any data, model or export work.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from unleash_ood.cli import main
from unleash_ood.config import DemoConfig, validate
from unleash_ood.deploy import export
from unleash_ood.deploy.bundle import ONNX_FILE, BundleSpec, write_bundle
from unleash_ood.models import build_model
from unleash_ood.models.checkpoint import save_model
from unleash_ood.utils.files import write_json

HINT = "pip install 'unleash-ood[deploy]'"


def tiny_run(root: Path) -> Path:
    """A run directory `export` accepts: config.json and an (untrained) base checkpoint."""
    run = root / "run"
    cfg = validate(DemoConfig, {"data": {"train_size": 200, "val_size": 100, "test_size": 100},
                                "model": {"arch": "small_cnn", "kwargs": {"width": 8}}, "runtime": {"device": "cpu"}})
    write_json(run / "config.json", cfg.model_dump())
    save_model(run / "checkpoints" / "base.safetensors", build_model("small_cnn", 10, width=8),
               {"arch": "small_cnn", "model_kwargs": {"width": 8}, "num_classes": 10, "kind": "base"})
    return run


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unleash-ood: error: "), err
    return lines[0]


@pytest.mark.parametrize("missing", ["onnx", "onnxscript", "onnxruntime"])
def test_export_onnx_without_the_deploy_extra_exits_2_with_the_hint(tmp_path, capsys, monkeypatch, missing) -> None:
    run = tiny_run(tmp_path)
    for name in ("onnx", "onnxscript", "onnxruntime"):  # whole before one is hidden: nothing half-imported stays
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    monkeypatch.setitem(sys.modules, missing, None)
    loaded = []
    real = export.load_run_model
    monkeypatch.setattr(export, "load_run_model", lambda req: loaded.append(req) or real(req))
    out = tmp_path / "bundle"
    assert main(["export", "--run", str(run), "--model", "base", "--score", "Energy", "--out", str(out),
                 "--format", "onnx", "--device", "cpu"]) == 2
    line = one_error_line(capsys)
    assert HINT in line and missing in line and "--format onnx" in line, line
    assert not loaded, "refused only after loading the run's data and model"
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def fake_onnx_bundle(root: Path) -> Path:
    """An ONNX bundle whose detector.json is valid and whose graph file is not a graph."""
    spec = BundleSpec.model_validate({
        "format": "onnx", "model": {"arch": "small_cnn", "kwargs": {"width": 8}, "num_classes": 2, "kind": "base"},
        "classes": ["a", "b"], "dataset": "fashion_mnist", "input": {"channels": 1, "height": 28, "width": 28},
        "score": {"name": "Energy"}, "calibration": {"threshold": 0.0, "tpr": 0.95, "size": 10, "flag_rate": 0.05}})
    return write_bundle(root / "bundle", spec, lambda tmp: (tmp / ONNX_FILE).write_bytes(b"not an onnx graph"))


def test_detect_on_an_onnx_bundle_without_onnxruntime_exits_2_with_the_hint(tmp_path, capsys,
                                                                             monkeypatch) -> None:
    bundle = fake_onnx_bundle(tmp_path)
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 28, 28), np.uint8))
    out = tmp_path / "preds.csv"
    argv = ["detect", str(bundle), f"npz:{tmp_path / 'x.npz'}", "--out", str(out)]
    pytest.importorskip("onnxruntime")  # the control below needs it: with onnxruntime the graph itself is refused
    assert main(argv) == 2
    assert "cannot load ONNX graph" in one_error_line(capsys)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert "onnxruntime" in line and HINT in line, line
    assert not out.exists() and not list(tmp_path.glob(".preds.csv*"))
