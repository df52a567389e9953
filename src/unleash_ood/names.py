"""Names the config and the CLI choose from, importable without torch (so that ``--help`` and
``unleash-ood config`` answer at once). The modules that implement them re-export them."""

from __future__ import annotations

ALL_SCORES: tuple[str, ...] = ("MSP", "ODIN", "Mahalanobis", "Energy", "MaxLogit")
"""Every OOD score :mod:`unleash_ood.scores` computes (higher = more in-distribution)."""

BUILTIN_OOD: tuple[str, ...] = ("digits", "textures", "photos", "gaussian", "uniform")
"""The built-in OOD test sets of :mod:`unleash_ood.data.ood`."""
