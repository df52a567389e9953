"""Deploy a finished run: a self-contained bundle (``export``), ``detect`` on new images, ``OODDetector``.

A bundle is a directory: ``detector.json`` (architecture, classes, input spec, score, threshold, versions,
SHA-256 of every file) plus safetensors weights / UMAP mask / score statistics, or one ONNX graph.
"""

from .bundle import BundleSpec, read_spec
from .detector import OODDetector, Predictions
from .export import ExportRequest, calibrate_threshold, export_run
from .inputs import detect, load_inputs

__all__ = ["BundleSpec", "ExportRequest", "OODDetector", "Predictions", "calibrate_threshold", "detect",
           "export_run", "load_inputs", "read_spec"]
