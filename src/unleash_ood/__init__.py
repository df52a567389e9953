"""unleash-ood: Unleashing Mask (UM) and UMAP for out-of-distribution detection.

The Python API, one call per step (see README):

>>> zeta = estimate_zeta(model, train_loader, keep_ratio=0.95)          # ζ of a random mask m_δ
>>> unleash(model, train_loader, zeta.value, OptimConfig(epochs=10, lr=0.05))   # UM, in place
>>> masks, _ = learn_umap_mask(model, train_loader, zeta.value, 0.8, OptimConfig(epochs=10))  # UMAP
>>> result = evaluate(model, test_loader, {"svhn": svhn_loader}, train=train_loader, num_classes=10)
"""

import importlib

from .errors import UserError

__version__ = "0.1.0"
_EXPORTS = {
    "load_masks": "models.checkpoint", "save_masks": "models.checkpoint",
    "TensorBatches": "data.batches", "collect_outputs": "eval.forward",
    "Evaluation": "eval.evaluate", "evaluate": "eval.evaluate",
    "apply_masks": "masking", "masked": "masking", "random_layer_masks": "masking", "remove_masks": "masking",
    "estimate_zeta": "methods.um", "flooding_loss": "methods.um", "unleash": "methods.um",
    "learn_umap_mask": "methods.umap", "train": "methods.train",
    "aupr_in": "metrics", "aupr_out": "metrics", "auroc": "metrics", "fpr_at_95_tpr": "metrics",
    "ood_metrics": "metrics",
    "energy_score": "detectors.logit", "max_logit_score": "detectors.logit", "msp_score": "detectors.logit",
    "odin_score": "detectors.logit",
    "OptimConfig": "config",
    "DETECTORS": "detectors", "Detector": "detectors", "FitData": "detectors", "build_detector": "detectors",
    "register": "detectors", "OODDetector": "deploy",
}
__all__ = sorted([*_EXPORTS, "UserError"])


def __getattr__(name: str):
    """The API is imported on first use: ``import unleash_ood`` (and the CLI's ``--help``) load no torch."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

