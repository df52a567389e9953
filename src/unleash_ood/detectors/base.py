"""The detector protocol: every OOD score is a small object with a name and its hyperparameters.

- ``fit(FitData)`` gets the logits and penultimate features of ONE pass over the ID training set and the
  classifier's *effective* weight and bias (with a UMAP mask applied, the masked ones). Detectors that need
  no statistics still receive it (some keep the classifier weights).
- ``score(logits, features)`` maps one shared forward pass to "higher = more in-distribution".
- ``state_dict()`` / ``load_state_dict()`` carry every fitted statistic as tensors (saved as safetensors).

ODIN is the one detector with its own gradient pass over the inputs (``needs_inputs``).
One registry (``DETECTORS``) serves the CLI, the reports and the Python API; config validation reads the
torch-free table of :mod:`.params` (the same Params classes and flags).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import ValidationError

from ..errors import UserError
from .params import Params, PercentileParams, check_names  # noqa: F401  (re-exported)


@dataclass
class FitData:
    """What ``fit`` sees: one eval-mode pass over the ID training set, and the effective classifier layer."""

    logits: torch.Tensor | None  # N × C (None when no detector needs the training pass)
    features: torch.Tensor | None  # N × D (the classifier's input)
    labels: torch.Tensor | None  # N
    weight: torch.Tensor  # C × D (masked, where a mask is applied)
    bias: torch.Tensor | None  # C

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]


class Detector:
    """Base class: a name, validated hyperparameters, optional fitted statistics."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]] = Params
    needs_fit: ClassVar[bool] = False  # needs training statistics (else fit only keeps the classifier)
    needs_inputs: ClassVar[bool] = False  # scores from inputs with its own pass (ODIN)
    needs_classifier: ClassVar[bool] = False  # keeps the effective classifier weight/bias from fit

    def __init__(self, **params: Any) -> None:
        try:
            self.params = self.Params(**params)
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise UserError(f"invalid config: scores.{self.name}.{key}: {err['msg']}") from None
        self.stats: dict[str, torch.Tensor] = {}
        self.fitted = False

    def fit(self, data: FitData) -> Detector:
        """Compute the statistics this detector needs; the default keeps nothing."""
        self.fitted = True
        return self

    def score(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score_bulk(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``score`` for a whole dataset at once (evaluation); may use optional accelerated libraries."""
        return self.score(logits, features)

    def check_fitted(self) -> None:
        if (self.needs_fit or self.needs_classifier) and not self.fitted:
            raise UserError(f"{self.name} must be fitted (training set / classifier) before scoring")

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.stats)

    def load_state_dict(self, stats: dict[str, torch.Tensor]) -> Detector:
        self.stats = {k: v.clone() for k, v in stats.items()}
        self.fitted = True
        return self

    def config(self) -> dict[str, Any]:
        return self.params.model_dump()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def classifier_stats(data: FitData) -> dict[str, torch.Tensor]:
    """The effective classifier layer as stats (a zero bias where the layer has none)."""
    bias = data.bias if data.bias is not None else torch.zeros(data.weight.shape[0])
    return {"weight": data.weight.detach().float().clone(), "bias": bias.detach().float().clone()}


def linear(features: torch.Tensor, stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits ``h Wᵀ + b`` of the stored classifier (on the features' device and dtype)."""
    w, b = stats["weight"].to(features), stats["bias"].to(features)
    return features @ w.T + b


def fit_error(name: str, key: str, value: Any, why: str) -> UserError:
    """One line naming the config key of a hyperparameter that does not fit the data."""
    return UserError(f"invalid config: scores.{name}.{key}={value}: {why}")


DETECTORS: dict[str, type[Detector]] = {}
BUILTIN_MODULES = ("logit", "feature", "distance", "subspace", "activation")


def load_builtins() -> dict[str, type[Detector]]:
    """Import the built-in detector modules (they register themselves); the package imports them lazily."""
    for module in BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    return DETECTORS


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: add a detector to the one registry under its ``name``."""
    DETECTORS[cls.name] = cls
    return cls


def build_detector(name: str, params: dict[str, Any] | None = None) -> Detector:
    """A fresh (unfitted) detector by registry name."""
    load_builtins()
    if name not in DETECTORS:
        raise UserError(f"unknown score {name!r}; choose from {', '.join(DETECTORS)}")
    return DETECTORS[name](**(params or {}))


ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
