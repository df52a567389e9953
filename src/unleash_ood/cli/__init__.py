"""The command line: ``unleash-ood COMMAND …`` (:func:`main`; commands by family in this package)."""

from .main import main, parser

__all__ = ["main", "parser"]
