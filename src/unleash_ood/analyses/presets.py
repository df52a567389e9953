"""The analyses' presets (``presets/gallery.yaml``, ``presets/gallery_quick.yaml``) and the effective
config of one analysis: preset (or a paper recipe) < ``--quick`` < ``key=value`` overrides.

Light on purpose (no torch): the CLI parser imports :data:`ANALYSES` from here."""

from __future__ import annotations

from ..config import apply_overrides, build_config, load_preset, merge
from ..errors import UserError

ANALYSES = ("once-covered", "score-hist", "mask-loss", "keep-ratio", "prune-rate", "finetune-epochs",
            "typical-atypical", "overfitting", "weights")
SCHEDULES = ("cosine", "linear", "multi_decay", "multi_step")


def check_name(name: str) -> str:
    if name not in ANALYSES:
        raise UserError(f"unknown analysis {name!r}; choose from: {', '.join(ANALYSES)} (or 'all')")
    return name


def seeded() -> tuple[str, ...]:
    """The analyses that run every seed of ``--seeds`` (their verdicts hinge on noise)."""
    return tuple(load_preset("gallery").get("seeded", ()))


def analysis_config(name: str, overrides: list[str] = (), quick: bool = False,
                    data_root: str | None = None, recipe: str | None = None, seed: int | None = None):
    """The effective DemoConfig and analysis parameters (the gallery preset — or a paper-scale
    ``recipe`` — < the quick preset < overrides); returns ``(cfg, params)``. ``seed`` sets both the
    run's and the data split's seed (as ``demo --seeds`` does)."""
    check_name(name)
    gallery = load_preset("gallery")
    layers = [load_preset("gallery_quick")] if quick else []
    params = gallery["analyses"][name]
    for layer in layers:
        params = merge(params, layer.get("analyses", {}).get(name, {}))
    demo_over = [o for o in overrides if not o.startswith("analysis.")]
    param_over = [o for o in overrides if o.startswith("analysis.")]
    cfg = build_config(recipe if recipe is not None else gallery["config"],
                       [layer.get("config", {}) for layer in layers], demo_over, data_root=data_root or None,
                       seed=seed)
    pdict = apply_overrides({"analysis": {}}, param_over)["analysis"]
    unknown = sorted(set(pdict) - set(params))
    if unknown:
        raise UserError(f"unknown parameter(s) {unknown} for {name}; available: {sorted(params)}")
    params.update(pdict)
    return cfg, params
