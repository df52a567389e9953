"""``ScoringNet`` → one ONNX graph ``images → (logits, score)`` (torch.onnx's torch.export-based exporter).

The legacy TorchScript exporter still works with torch 2.14 but is deprecated; the default (dynamo)
exporter needs ``onnx`` and ``onnxscript`` (the ``deploy`` extra).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import warnings
from pathlib import Path

import torch

from ..errors import UserError
from .net import ScoringNet

OPSET = 18
DEPLOY_MODULES = ("onnx", "onnxscript", "onnxruntime")  # the `deploy` extra: export, then calibrate on onnxruntime


def require_deploy_extra() -> None:
    """A UserError naming the missing modules when ``--format onnx`` cannot run; called before any work."""
    missing = []
    for name in DEPLOY_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"--format onnx needs onnx, onnxscript and onnxruntime ({', '.join(missing)} "
                        "not installed): pip install 'unleash-ood[deploy]'")


def export_onnx(net: ScoringNet, path: Path, example: torch.Tensor) -> Path:
    """Write ``net`` (on the CPU, eval mode) as an ONNX graph with a dynamic batch dimension."""
    if net.detector.needs_inputs:
        raise UserError(f"{net.detector.name} needs its own gradient pass; it cannot be an ONNX graph")
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise UserError("--format onnx needs onnx and onnxscript: pip install 'unleash-ood[deploy]'") from None
    example = example.detach().cpu().float()
    if len(example) < 2:  # a batch of 1 would be specialized into the graph
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch")
    try:
        # the exporter prints its progress on stdout and warns about its internals
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net.eval(), (example,), str(path), input_names=["images"],
                              output_names=["logits", "score"], dynamic_shapes=({0: batch},),
                              opset_version=OPSET, dynamo=True, external_data=False)
    except UserError:
        raise
    except Exception as e:  # the exporter's own error types vary by torch version
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"score {net.detector.name} cannot be exported to ONNX: {first[:300]}") from None
    return path
