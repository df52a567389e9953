"""OOD detectors behind one protocol (see :mod:`.base`); importing this package registers them all."""

from . import activation, distance, feature, logit, subspace  # noqa: F401  (registration)
from .base import DETECTORS, Detector, FitData, Params, build_detector, check_names, register

# Every built-in detector in table order: logit scores, feature scores, activation shaping.
TABLE_ORDER = ("MSP", "ODIN", "Energy", "MaxLogit", "GEN", "Mahalanobis", "KNN", "ViM", "ReAct", "ASH-S",
               "ASH-B", "Scale", "DICE", "fDBD")
DEFAULT_SCORES = TABLE_ORDER


def all_detector_names() -> list[str]:
    """Every registered detector: the built-ins in table order, then any registered later."""
    return [n for n in TABLE_ORDER if n in DETECTORS] + [n for n in DETECTORS if n not in TABLE_ORDER]


__all__ = ["DEFAULT_SCORES", "DETECTORS", "TABLE_ORDER", "Detector", "FitData", "Params", "all_detector_names",
           "build_detector", "check_names", "register"]
