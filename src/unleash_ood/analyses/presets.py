"""The analyses' presets (``presets/gallery.yaml``, ``presets/gallery_quick.yaml``) and the effective
config of one analysis: preset (or a paper recipe) < ``--quick`` < ``key=value`` overrides.

Light on purpose: the CLI parser imports :data:`ANALYSES` from here; the config classes (and torch
with them) are imported inside :func:`build_config`."""

from __future__ import annotations

from importlib import resources

from ..errors import UserError

ANALYSES = ("once-covered", "score-hist", "mask-loss", "keep-ratio", "prune-rate", "finetune-epochs",
            "typical-atypical", "overfitting", "weights")
SCHEDULES = ("cosine", "linear", "multi_decay", "multi_step")


def load_preset(name: str) -> dict:
    """A preset YAML file of the package (``gallery`` or ``gallery_quick``) as a dict."""
    import yaml

    text = (resources.files("unleash_ood") / "presets" / f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text) or {}


def check_name(name: str) -> str:
    if name not in ANALYSES:
        raise UserError(f"unknown analysis {name!r}; choose from: {', '.join(ANALYSES)} (or 'all')")
    return name


def seeded() -> tuple[str, ...]:
    """The analyses that run every seed of ``--seeds`` (their verdicts hinge on noise)."""
    return tuple(load_preset("gallery").get("seeded", ()))


def build_config(name: str, overrides: list[str] = (), quick: bool = False,
                 data_root: str | None = None, recipe: str | None = None, seed: int | None = None):
    """The effective DemoConfig and analysis parameters (the gallery preset — or a paper-scale
    ``recipe`` — < the quick preset < overrides); returns ``(cfg, params)``. ``seed`` sets both the
    run's and the data split's seed (as ``demo --seeds`` does)."""
    from ..config import DemoConfig, apply_overrides, merge, validate

    check_name(name)
    gallery = load_preset("gallery")
    layers = [load_preset("gallery_quick")] if quick else []
    if recipe is not None:
        from ..recipes import load_recipe

        data = load_recipe(recipe, []).model_dump()
    else:
        data = gallery["config"]
    params = gallery["analyses"][name]
    for layer in layers:
        data = merge(data, layer.get("config", {}))
        params = merge(params, layer.get("analyses", {}).get(name, {}))
    demo_over, param_over = [], []
    for o in overrides:
        (param_over if o.startswith("analysis.") else demo_over).append(o)
    data = apply_overrides(data, demo_over)
    if seed is not None:
        data["seed"] = seed
        data.setdefault("data", {})["seed"] = seed
    if data_root:
        data.setdefault("data", {})["data_root"] = data_root
    pdict = apply_overrides({"analysis": {}}, param_over)["analysis"]
    unknown = sorted(set(pdict) - set(params))
    if unknown:
        raise UserError(f"unknown parameter(s) {unknown} for {name}; available: {sorted(params)}")
    params.update(pdict)
    return validate(DemoConfig, data), params
