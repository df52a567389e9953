"""Every built-in detector's hyperparameters and flags, without torch: what config validation needs.

The detector classes (``logit``, ``feature``, ``distance``, ``subspace``, ``activation``) take their
``Params`` from here; ``tests/test_detectors.py`` checks that the registry and :data:`PARAMS_TABLE` agree.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field


class Params(BaseModel):
    """A detector's hyperparameters (none by default). Subclasses add validated fields."""

    model_config = ConfigDict(extra="forbid")


class PercentileParams(Params):
    """A percentile p in (0, 100) (exclusive)."""

    percentile: float = Field(90.0, gt=0, lt=100)


class EnergyParams(Params):
    temperature: float = Field(1.0, gt=0)


class ODINParams(Params):
    temperature: float = Field(1000.0, gt=0)
    epsilon: float = Field(0.0014, ge=0)


class GENParams(Params):
    gamma: float = Field(0.1, gt=0)
    M: int = Field(100, ge=1, description="number of top probabilities (capped at the number of classes)")


class KNNParams(Params):
    k: int = Field(50, ge=1)


class ViMParams(Params):
    dim: int | None = Field(None, ge=1, description="principal subspace dimension D (default from the feature size)")


class ScaleParams(Params):
    percentile: float = Field(85.0, gt=0, lt=100)


@dataclass(frozen=True)
class DetectorInfo:
    """A detector's hyperparameter model and the flags of :class:`~unleash_ood.detectors.base.Detector`."""

    Params: type[Params] = Params
    needs_fit: bool = False
    needs_inputs: bool = False
    needs_classifier: bool = False

    @classmethod
    def of(cls, detector: type) -> DetectorInfo:
        """The info of a detector class."""
        return cls(detector.Params, detector.needs_fit, detector.needs_inputs, detector.needs_classifier)


# Every built-in detector in table order: logit scores, feature scores, activation shaping.
PARAMS_TABLE: dict[str, DetectorInfo] = {
    "MSP": DetectorInfo(),
    "ODIN": DetectorInfo(ODINParams, needs_inputs=True),
    "Energy": DetectorInfo(EnergyParams),
    "MaxLogit": DetectorInfo(),
    "GEN": DetectorInfo(GENParams),
    "Mahalanobis": DetectorInfo(needs_fit=True),
    "KNN": DetectorInfo(KNNParams, needs_fit=True),
    "ViM": DetectorInfo(ViMParams, needs_fit=True),
    "ReAct": DetectorInfo(PercentileParams, needs_fit=True),
    "ASH-S": DetectorInfo(PercentileParams, needs_classifier=True),
    "ASH-B": DetectorInfo(PercentileParams, needs_classifier=True),
    "Scale": DetectorInfo(ScaleParams, needs_classifier=True),
    "DICE": DetectorInfo(PercentileParams, needs_fit=True),
    "fDBD": DetectorInfo(needs_fit=True),
}
TABLE_ORDER = tuple(PARAMS_TABLE)
DEFAULT_SCORES = TABLE_ORDER


def detector_infos() -> dict[str, DetectorInfo]:
    """The built-ins in table order, then any detector registered since (``register``), without importing
    torch: a custom detector can only have been registered once the registry module is loaded."""
    base = sys.modules.get(f"{__package__}.base")
    registered = {} if base is None else base.DETECTORS
    return {**PARAMS_TABLE, **{n: DetectorInfo.of(c) for n, c in registered.items() if n not in PARAMS_TABLE}}


def all_detector_names() -> list[str]:
    """Every known detector: the built-ins in table order, then any registered later."""
    return list(detector_infos())


def check_names(names: list[str]) -> list[str]:
    """Validate score names against the known detectors (config validators raise ValueError)."""
    known = detector_infos()
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"unknown score(s) {bad}; choose from {list(known)}")
    return names
