"""Validated, flat configuration objects (pydantic). Unknown keys and bad values fail at load."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import UserError
from .names import ALL_SCORES, BUILTIN_OOD


class OptimConfig(BaseModel):
    """SGD with Nesterov momentum and a per-step learning-rate schedule."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(30, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(128, ge=1)
    schedule: Literal["cosine", "linear", "multi_decay", "multi_step", "constant"] = "cosine"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DataConfig(_Strict):
    """ID data, its splits, and the OOD test suite."""

    dataset: str = "fashion_mnist"
    data_root: str | None = None
    download: bool = True
    val_size: int = Field(5000, ge=0)
    train_size: int | None = Field(12000, gt=0)
    test_size: int | None = Field(None, gt=0)
    ood: list[str] = Field(default_factory=lambda: list(BUILTIN_OOD), min_length=1)
    ood_size: int = Field(2000, ge=1)
    val_ood_size: int = Field(2000, ge=1)
    augment: bool = False
    seed: int = Field(0, ge=0)


class ModelConfig(_Strict):
    arch: str = "small_cnn"
    kwargs: dict = Field(default_factory=lambda: {"width": 16})


class UMConfig(_Strict):
    """UM: ζ from a random mask keeping ``keep_ratio`` of each layer (aliases: ``mask_ratio``)."""

    keep_ratio: float = Field(0.97, gt=0, le=1, validation_alias=AliasChoices("keep_ratio", "mask_ratio"))
    zeta: float | None = Field(None, ge=0)
    zeta_draws: int = Field(3, ge=1)
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(epochs=10, lr=0.05, weight_decay=5e-4))


class UMAPConfig(_Strict):
    """UMAP: learned mask keeping ``keep_ratio`` of each layer (aliases: ``prune_rate``, as in the authors' configs)."""

    keep_ratio: float = Field(0.8, gt=0, le=1, validation_alias=AliasChoices("keep_ratio", "prune_rate"))
    zeta: float | None = Field(None, ge=0)
    init: str = "kaiming"
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(epochs=10, lr=0.1, weight_decay=0.0))

    @field_validator("init")
    @classmethod
    def _init(cls, v: str) -> str:
        if v not in ("kaiming", "magnitude"):
            raise ValueError("must be 'kaiming' or 'magnitude'")
        return v


class RuntimeConfig(_Strict):
    """Where and how to compute (never what): device ``auto`` (CUDA if available) / ``cpu`` / ``cuda``;
    ``amp`` ``auto`` (bf16 autocast on a CUDA GPU that supports it, off on CPU) / ``bf16`` / ``off``;
    ``compile``: ``torch.compile`` the training forward/backward. See :mod:`unleash_ood.runtime`."""

    device: str = "auto"
    amp: str = "auto"
    compile: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda"):
            raise ValueError("must be 'auto', 'cpu' or 'cuda'")
        return v

    @field_validator("amp")
    @classmethod
    def _amp(cls, v: str) -> str:
        if v not in ("auto", "bf16", "off"):
            raise ValueError("must be 'auto', 'bf16' or 'off'")
        return v


class OutlierConfig(_Strict):
    """Fine-tuning with auxiliary outliers (OE, Energy w. D_aux, POEM), alone and +UM/+UMAP.

    ``aux``: the auxiliary pool spec (``builtin``, ``npz:PATH``, ``folder:PATH``, ``imagenet64:DIR``,
    ``tinyimages300k:PATH``; see :mod:`unleash_ood.data.auxiliary`). ``enabled``: ``run`` (recipes)
    also fine-tunes with outliers after the pipeline, into ``seed_<s>/outliers/``."""

    enabled: bool = False
    aux: str = "builtin"
    methods: list[Literal["oe", "energy", "poem"]] = Field(default_factory=lambda: ["oe", "energy", "poem"],
                                                           min_length=1)
    withs: list[Literal["none", "um", "umap"]] = Field(default_factory=lambda: ["none", "um", "umap"], min_length=1)
    aux_size: int = Field(5000, ge=1)
    aux_batch_size: int | None = Field(None, ge=1)
    epochs: int = Field(10, ge=1)
    lr: float = Field(0.01, gt=0)
    umap_lr: float | None = Field(None, gt=0)
    lam: float = Field(0.5, ge=0)
    energy_weight: float = Field(0.1, ge=0)
    m_in: float = -25.0
    m_out: float = -7.0
    poem: dict = Field(default_factory=dict)
    scores: list[str] = Field(default_factory=lambda: ["MSP", "Energy"], min_length=1)

    @field_validator("aux")
    @classmethod
    def _aux(cls, v: str) -> str:
        if v == "builtin":  # the default needs no parsing (and no torch import: `config` stays fast)
            return v
        from .data.auxiliary import parse_aux_spec

        try:
            parse_aux_spec(v)
        except UserError as e:
            raise ValueError(str(e)) from None
        return v

    def run_kwargs(self) -> dict:
        """The keyword arguments of :func:`unleash_ood.outlier_pipeline.run_outlier_methods`."""
        return self.model_dump(exclude={"scores", "enabled"})


class DemoConfig(_Strict):
    """The whole embedded-default pipeline: base training with tracking, UM, control, UMAP, evaluation."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    base: OptimConfig = Field(default_factory=lambda: OptimConfig(epochs=30, lr=0.1, weight_decay=5e-4))
    eval_every: int = Field(2, ge=1)
    track_scores: list[str] = Field(default_factory=lambda: ["Energy", "MSP", "MaxLogit"])
    um: UMConfig = Field(default_factory=UMConfig)
    umap: UMAPConfig = Field(default_factory=UMAPConfig)
    control: bool = True
    outliers: OutlierConfig = Field(default_factory=OutlierConfig)
    scores: list[str] = Field(default_factory=lambda: list(ALL_SCORES))
    seed: int = Field(0, ge=0)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator("scores", "track_scores")
    @classmethod
    def _scores(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in ALL_SCORES]
        if bad:
            raise ValueError(f"unknown score(s) {bad}; choose from {list(ALL_SCORES)}")
        return v


PRESET_DIR = Path(__file__).parent / "presets"


def load_preset(name: str) -> dict:
    """A named preset (``presets/NAME.yaml``) as a config dict, to be merged under the user's values."""
    import yaml

    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise UserError(f"unknown preset {name!r}; choose from {names}")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def merge(base: dict, over: dict) -> dict:
    """``base`` updated by ``over``, section by section (``over`` wins; neither is modified)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def validate(model: type[BaseModel], data: dict) -> BaseModel:
    """Validate ``data`` as ``model``; errors become one :class:`UserError` naming the offending keys."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors())
        raise UserError(f"invalid config: {problems}") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML scalars/lists) to a nested dict."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key=value (e.g. um.keep_ratio=0.9)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise UserError(f"override {item!r}: cannot parse value ({e})") from None
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return data
