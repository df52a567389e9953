"""Every built-in detector's hyperparameters and flags, without torch: what config validation needs.

The detector classes (``logit``, ``feature``, ``distance``, ``subspace``, ``activation``) take their
``Params`` from here; ``tests/test_detectors.py`` checks that the registry and :data:`PARAMS_TABLE` agree.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError


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


# ------------------------------------------------------------------------------------ tuning grids
# ``scores.tune=true`` picks each tunable detector's value per model on validation OOD only
# (``unleash_ood.eval.tuning``); ``scores.grid.NAME.PARAM=[...]`` replaces a grid. One parameter per
# detector; the configured (default) value is always a candidate too, and wins ties. ODIN (its own
# gradient pass), MSP, MaxLogit, GEN, Mahalanobis and fDBD are not tuned.
PERCENTILE_GRID: tuple[float, ...] = (10.0, 30.0, 50.0, 70.0, 85.0, 90.0, 95.0)
TUNING_GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "Energy": {"temperature": (0.5, 1.0, 2.0, 5.0, 10.0)},
    "KNN": {"k": (1, 5, 10, 20, 50, 100)},  # capped at the training size
    "ViM": {"dim_fraction": (0.1, 0.25, 0.5, 0.75, 0.9)},  # of the feature size N; dim = round(f·N), < N
    "ReAct": {"percentile": PERCENTILE_GRID},
    "ASH-S": {"percentile": PERCENTILE_GRID},
    "ASH-B": {"percentile": PERCENTILE_GRID},
    "Scale": {"percentile": PERCENTILE_GRID},
    "DICE": {"percentile": PERCENTILE_GRID},
}
# the parameters a grid may name: its own, and for ViM also absolute dims (``scores.grid.ViM.dim=[8, 16]``)
GRID_KEYS: dict[str, tuple[str, ...]] = {**{n: tuple(g) for n, g in TUNING_GRIDS.items()},
                                         "ViM": ("dim_fraction", "dim")}


def check_grids(grids: dict) -> dict[str, dict[str, list]]:
    """Validate ``scores.grid`` overrides: ``{detector: {param: [values]}}``, one parameter each, every
    value inside its parameter's range (the detector's ``Params``; ``dim_fraction`` in (0, 1)).
    Raises ValueError naming the first bad key and value."""
    out: dict[str, dict[str, list]] = {}
    for name, grid in grids.items():
        if name not in GRID_KEYS:
            raise ValueError(f"{name} has no tuning grid; tunable: {', '.join(GRID_KEYS)}")
        if not isinstance(grid, dict) or len(grid) != 1:
            raise ValueError(f"{name}: give one parameter with a list of values, e.g. "
                             f"scores.grid.{name}.{GRID_KEYS[name][0]}=[...]")
        (param, values), = grid.items()
        if param not in GRID_KEYS[name]:
            raise ValueError(f"{name}.{param}: not a tuned parameter; choose {' or '.join(GRID_KEYS[name])}")
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise ValueError(f"{name}.{param}: the grid is empty")
        checked = []
        for v in values:
            if param == "dim_fraction":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                    raise ValueError(f"{name}.{param}={v}: must lie strictly between 0 and 1")
                checked.append(float(v))
                continue
            try:
                checked.append(PARAMS_TABLE[name].Params.model_validate({param: v}).model_dump()[param])
            except ValidationError as e:
                raise ValueError(f"{name}.{param}={v}: {e.errors()[0]['msg']}") from None
            if checked[-1] is None:  # ViM's dim=None (the default) is always a candidate anyway
                raise ValueError(f"{name}.{param}={v}: give a number")
        out[name] = {param: checked}
    return out


def tuning_grid(name: str, overrides: dict[str, dict[str, list]] | None = None) -> tuple[str, list]:
    """The grid of detector ``name``: ``(param, values)``, an override replacing the default."""
    grid = (overrides or {}).get(name) or TUNING_GRIDS[name]
    (param, values), = grid.items()
    return param, list(values)
