"""unleash-ood: Unleashing Mask (UM) and UMAP for out-of-distribution detection.

The Python API, one call per step (see README):

>>> zeta = estimate_zeta(model, train_loader, keep_ratio=0.95)          # ζ of a random mask m_δ
>>> unleash(model, train_loader, zeta.mean, OptimConfig(epochs=10, lr=0.05))   # UM, in place
>>> masks, _ = learn_umap_mask(model, train_loader, zeta.mean, 0.8, OptimConfig(epochs=10))  # UMAP
>>> result = evaluate(model, test_loader, {"svhn": svhn_loader}, train=train_loader, num_classes=10)
"""

from .checkpoint import load_masks, save_masks
from .deploy import OODDetector
from .detectors import DETECTORS, Detector, FitData, build_detector
from .errors import UserError
from .evaluate import Evaluation, TensorBatches, collect_outputs, evaluate
from .masking import apply_masks, masked, random_layer_masks, remove_masks
from .methods.um import estimate_zeta, flooding_loss, unleash
from .methods.umap import learn_umap_mask
from .metrics import aupr_in, aupr_out, auroc, fpr_at_95_tpr, ood_metrics
from .scores import energy_score, max_logit_score, msp_score, odin_score
from .train import OptimConfig, train

__version__ = "0.1.0"
__all__ = [
    "DETECTORS", "Detector", "Evaluation", "OODDetector", "FitData", "build_detector", "OptimConfig", "TensorBatches", "UserError", "apply_masks", "aupr_in", "aupr_out", "auroc",
    "collect_outputs", "energy_score", "estimate_zeta", "evaluate", "flooding_loss", "fpr_at_95_tpr",
    "learn_umap_mask", "load_masks", "masked", "max_logit_score", "msp_score", "odin_score", "ood_metrics",
    "random_layer_masks", "remove_masks", "save_masks", "train", "unleash",
]
