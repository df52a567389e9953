"""Paper-scale recipes: DemoConfig-shaped YAML files, one per (ID dataset × architecture).

``load_recipe("cifar10_densenet100", ["base.epochs=20"])`` → a validated :class:`DemoConfig`; a path to
any YAML file works too. Unknown keys and bad values fail at load, naming the key.
"""

from __future__ import annotations

from pathlib import Path

from ..config import DemoConfig, apply_overrides, load_preset, merge, validate
from ..errors import UserError

RECIPE_DIR = Path(__file__).parent


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    if text in recipe_names():
        return RECIPE_DIR / f"{text}.yaml"
    path = Path(text).expanduser()
    if path.is_file():
        return path
    raise UserError(f"unknown recipe {text!r}: not a file, and not one of {', '.join(recipe_names())}")


def recipe_description(name_or_path: str | Path) -> str:
    """The recipe file's first comment line."""
    for line in recipe_path(name_or_path).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None,
                presets: list[str] | None = None) -> DemoConfig:
    """The recipe, then ``presets`` (e.g. ``["quick"]``) over it, then the ``overrides`` (which win)."""
    import yaml

    path = recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"cannot parse recipe {path}: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"recipe {path} must be a mapping of keys to values")
    for name in presets or []:
        data = merge(data, load_preset(name))
    return validate(DemoConfig, apply_overrides(data, list(overrides or [])))  # type: ignore[return-value]
