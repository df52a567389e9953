"""OOD detectors behind one protocol (see :mod:`.base`); importing this package registers them all."""

from . import feature, logit  # noqa: F401  (registration)
from .base import DETECTORS, Detector, FitData, Params, build_detector, check_names, register

DEFAULT_SCORES = ("MSP", "ODIN", "Mahalanobis", "Energy", "MaxLogit")

__all__ = ["DEFAULT_SCORES", "DETECTORS", "Detector", "FitData", "Params", "build_detector", "check_names",
           "register"]
