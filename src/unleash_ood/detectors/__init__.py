"""OOD detectors behind one protocol (see :mod:`.base`).

Importing the package is light (no torch): the hyperparameters and flags live in :mod:`.params`, and the
torch-backed registry and detector classes load on first use of a name such as ``DETECTORS``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .params import DEFAULT_SCORES, TABLE_ORDER, Params, all_detector_names, check_names

_FROM_BASE = ("DETECTORS", "Detector", "FitData", "build_detector", "register", "load_builtins")
_MODULES = ("activation", "base", "distance", "feature", "logit", "subspace")


def __getattr__(name: str) -> Any:
    """Load the torch-backed registry (all built-in detectors registered) on first use."""
    if name in _FROM_BASE:
        base = importlib.import_module(f"{__name__}.base")
        base.load_builtins()
        return getattr(base, name)
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_SCORES", "DETECTORS", "TABLE_ORDER", "Detector", "FitData", "Params", "all_detector_names",
           "build_detector", "check_names", "load_builtins", "register"]
