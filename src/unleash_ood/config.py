"""Validated, flat configuration objects (pydantic) and the one builder of a run's config
(:func:`build_config`). Unknown keys and bad values fail at load. Also the near/far/synthetic groups of OOD specs,
without torch (``unleash-ood config`` stays fast); ``tests/test_data_groups.py`` checks that these tables
agree with :data:`unleash_ood.data.builtin.BUILTIN` and :data:`unleash_ood.data.suite.SUITE`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from .detectors.params import all_detector_names, check_grids, check_names, detector_infos
from .errors import UserError

GROUPS: tuple[str, ...] = ("near", "far", "synthetic")
# the groups the ``mean`` aggregate averages over (OpenOOD v1.5): real images only, the synthetic
# sanity sets (noise) are reported apart
HEADLINE_GROUPS: tuple[str, ...] = ("near", "far")
MODEL_ORDER: tuple[str, ...] = ("base", "um", "ce_finetune", "umap")  # the demo's models, in table order


# the default suite: each of data.near, data.far, data.synthetic that is unset (and data.ood is not set)
DEFAULT_NEAR: tuple[str, ...] = ("glyphs", "digits")


DEFAULT_FAR: tuple[str, ...] = ("textures", "photos", "scenes")


DEFAULT_SYNTHETIC: tuple[str, ...] = ("gaussian", "uniform")


# each built-in set's own group (data.builtin.BUILTIN)
BUILTIN_GROUPS: dict[str, str] = {
    "digits": "near", "textures": "far", "photos": "far", "gaussian": "synthetic", "uniform": "synthetic",
    "glyphs": "near", "heldout-classes": "near", "mnist": "near", "kmnist": "near", "emnist-letters": "near",
    "scenes": "far"}


# the CIFAR suite's names (data.suite.SUITE) and the ID datasets that use them (data.suite.PAPER_SUITE)
SUITE_NAMES: tuple[str, ...] = ("cifar10", "cifar100", "svhn", "textures", "places365", "lsun", "lsun_resize",
                                "isun", "inaturalist", "sun", "tinyimagenet")


SUITE_DATASETS: tuple[str, ...] = ("cifar10", "cifar100")


DEFAULT_ROOT = Path.home() / ".cache" / "unleash-ood"
AUX_KINDS: tuple[str, ...] = ("builtin", "npz", "folder", "imagenet64", "tinyimages300k")
AUX_FORMS = ("builtin, npz:PATH, folder:PATH, imagenet64:DIR (train_data_batch_1..10) or "
             "tinyimages300k:PATH (a .npy file N×32×32×3 uint8)")


OWN_DATA_KINDS: tuple[str, ...] = ("folder", "npz")
NORMALIZE_NAMES: tuple[str, ...] = ("dataset", "imagenet")


def is_own_dataset(name) -> bool:
    """``folder:ROOT`` or ``npz:FILE``: ID data of one's own (:mod:`unleash_ood.data.own`)."""
    return isinstance(name, str) and name.partition(":")[0].strip().lower() in OWN_DATA_KINDS and ":" in name


def parse_normalize(v) -> str | dict[str, list[float]] | None:
    """``data.normalize`` as ``None``, ``dataset``, ``imagenet`` or ``{"mean": [...], "std": [...]}`` (from
    that mapping or ``[[mean...], [std...]]``); ``ValueError`` otherwise."""
    if v is None or (isinstance(v, str) and v.strip().lower() in NORMALIZE_NAMES):
        return v.strip().lower() if isinstance(v, str) else v
    if isinstance(v, (list, tuple)) and len(v) == 2:
        v = {"mean": v[0], "std": v[1]}
    if isinstance(v, dict) and set(v) == {"mean", "std"}:
        stats = {k: [v[k]] if isinstance(v[k], (int, float)) else v[k] for k in ("mean", "std")}
        if all(isinstance(x, (list, tuple)) and 1 <= len(x) <= 3 and all(
                isinstance(n, (int, float)) and not isinstance(n, bool) for n in x) for x in stats.values()):
            if len(stats["mean"]) != len(stats["std"]) or min(stats["std"]) <= 0:
                raise ValueError(f"mean and std need as many values, and every std > 0; got {v}")
            return {k: [float(n) for n in x] for k, x in stats.items()}
    raise ValueError(f"use dataset, imagenet, [[mean...], [std...]] or {{mean: [...], std: [...]}}; got {v!r}")


def data_root(root: str | Path | None) -> Path:
    """The data root: ``root``, else ``~/.cache/unleash-ood``."""
    return Path(root).expanduser() if root else DEFAULT_ROOT


def parse_aux_spec(spec: str, root: str | Path | None = None) -> tuple[str, Path | None]:
    """``(kind, path)``; ``path`` is None for ``builtin``. ``{data_root}`` in a path is expanded."""
    text = str(spec).strip()
    if text.lower() == "builtin":
        return "builtin", None
    kind, sep, value = text.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in AUX_KINDS[1:]:
        raise UserError(f"unknown auxiliary-outlier spec {spec!r}: use {AUX_FORMS}")
    value = value.strip()
    if not value:
        raise UserError(f"auxiliary-outlier spec {spec!r}: missing path after '{kind}:'")
    if "{data_root}" in value:
        value = value.replace("{data_root}", str(data_root(root)))
    return kind, Path(value).expanduser()


def check_group(group: str, where: str) -> str:
    """``group`` if it is one of :data:`GROUPS`; otherwise one :class:`UserError` naming ``where``."""
    if group not in GROUPS:
        raise UserError(f"{where}: unknown OOD group {group!r}; use one of {', '.join(GROUPS)}")
    return group


def group_specs(by_group: Mapping[str, Sequence[str]], suite_names: bool = False) -> list[tuple[str, str]]:
    """``(spec, group)`` pairs from specs listed per group (``{"near": [...], "far": [...], …}``), in order.

    A built-in keeps its own group wherever it is listed; other specs take the group they are listed
    under (with ``suite_names``, the CIFAR suite's names count as such specs, not as built-ins). A spec
    listed twice counts once, at its first place. An unknown group raises :class:`UserError`.
    """
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for group, specs in by_group.items():
        check_group(group, "OOD specs")
        for spec in specs:
            key = spec.strip().lower() if ":" not in spec else spec.strip()
            if key in seen:
                continue
            seen.add(key)
            own = None if suite_names and key in SUITE_NAMES else BUILTIN_GROUPS.get(spec.strip().lower())
            out.append((spec, own or group))
    return out


def config_groups(near: Sequence[str] | None, far: Sequence[str] | None, ood: Sequence[str] = (),
                  dataset: str = "fashion_mnist", synthetic: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """The ``(spec, group)`` pairs a data config evaluates on, near first, then far, then synthetic.

    ``near``/``far`` None means the default (``DEFAULT_NEAR``/``DEFAULT_FAR``) unless ``ood`` is given;
    ``synthetic`` None means ``DEFAULT_SYNTHETIC`` where ``far`` is None too (the noise sets were part of
    the default far suite), none otherwise, so a suite that names its far sets gets no extra set.
    ``ood`` alone (the pre-groups key) is exactly the suite, as before, each spec in the far group
    except built-ins, which keep theirs; ``ood`` next to ``near``/``far``/``synthetic`` adds far specs.
    """
    if ood and near is None and far is None and synthetic is None:
        near, far, synthetic = (), (), ()
    if synthetic is None:
        synthetic = DEFAULT_SYNTHETIC if far is None else ()
    near = DEFAULT_NEAR if near is None else near
    far = DEFAULT_FAR if far is None else far
    pairs = group_specs({"near": near, "far": [*far, *ood], "synthetic": synthetic},
                        suite_names=dataset in SUITE_DATASETS)
    pairs.sort(key=lambda pair: GROUPS.index(pair[1]))  # near, far, synthetic; stable otherwise
    if not pairs:
        raise UserError("no OOD sets: list at least one under data.near, data.far, data.synthetic or data.ood")
    return pairs


if TYPE_CHECKING:
    pass


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
    """ID data, its splits, and the OOD test suite in three groups, ``near``, ``far`` and ``synthetic``.

    ``near``/``far``/``synthetic``: OOD specs per group; unset (null) = the default (near: glyphs,
    digits; far: textures, photos, scenes; synthetic: gaussian, uniform — when ``far`` is unset too, see
    :func:`config_groups`). ``synthetic`` holds generated sanity sets, reported apart and left out of
    the ``far`` and ``mean`` aggregates (OpenOOD v1.5). A
    built-in set keeps its own group wherever it is listed; ``npz:``/``folder:`` specs take the group
    they are listed under. ``ood`` (the key from before groups): alone, it is exactly the suite, as it
    always was (specs far, built-ins in their own group); next to ``near``/``far``/``synthetic`` it adds
    far specs. ``id_classes``: the open-set protocol (train on these
    classes; the others' test images are the near set ``heldout-classes``). See ``data.specs``.

    Your own ID data (``dataset``: ``folder:ROOT``, ``npz:FILE``; :mod:`unleash_ood.data.own`, whose
    defaults are ``val_size=0.1`` and every training image): ``image_size`` (H W) and ``channels`` of
    the model input (None: inferred from the training images), ``normalize`` (``dataset``, the default
    for own data: mean/std per channel of the training split; ``imagenet``; or ``[[mean…], [std…]]`` /
    ``{mean: […], std: […]}``), ``storage`` (where the decoded splits live, N×C×H×W×4 bytes: ``memory``;
    ``disk``, a memory-mapped file in ``cache_dir`` (default ``DATA_ROOT/decoded``) read batch by batch;
    ``auto``, memory up to ``max_memory_gb``, else disk), ``workers`` (decoding processes; None: automatic).
    ``eval_batch_size``: the batch of every evaluation pass (its activations set the peak memory at large
    image sizes). ``val_size``: a count or a fraction in (0, 1).
    ``val_near``/``val_far``: your known outliers, added to the validation OOD of that group.
    ``val_probes``: generated validation sets (:mod:`unleash_ood.data.probes`, ``val_ood_size // 2``
    images each) scored and reported beside the proxies, never chosen on.
    """

    dataset: str = "fashion_mnist"
    data_root: str | None = None
    download: bool = True
    val_size: int | float = Field(5000, ge=0)
    train_size: int | None = Field(12000, gt=0)
    test_size: int | None = Field(None, gt=0)
    near: list[str] | None = None
    far: list[str] | None = None
    synthetic: list[str] | None = None
    ood: list[str] = Field(default_factory=list)
    id_classes: list[int] | None = None
    ood_size: int = Field(2000, ge=1)
    val_ood_size: int = Field(2000, ge=1)
    augment: bool = False
    seed: int = Field(0, ge=0)
    image_size: list[int] | None = None
    channels: Literal[1, 3] | None = None
    normalize: str | dict[str, list[float]] | None = None
    val_near: list[str] = Field(default_factory=list)
    val_far: list[str] = Field(default_factory=list)
    val_probes: list[Literal["strokes", "distorted"]] = Field(default_factory=lambda: ["strokes", "distorted"])
    max_memory_gb: float = Field(16.0, gt=0)
    storage: Literal["auto", "memory", "disk"] = "auto"
    eval_batch_size: int = Field(512, ge=1)
    cache_dir: str | None = None
    workers: int | None = Field(None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _own_defaults(cls, data):
        if isinstance(data, dict) and is_own_dataset(data.get("dataset")):
            data = {"val_size": 0.1, "train_size": None, **data}
        return data

    @field_validator("val_size")
    @classmethod
    def _val_size(cls, v: int | float) -> int | float:
        if isinstance(v, float) and not 0 < v < 1:
            raise ValueError(f"a count of images (an integer) or a fraction in (0, 1); got {v}")
        return v

    @field_validator("image_size", mode="before")
    @classmethod
    def _image_size(cls, v):
        v = [v, v] if isinstance(v, int) and not isinstance(v, bool) else v
        if v is not None and (not isinstance(v, (list, tuple)) or len(v) != 2
                              or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in v)):
            raise ValueError(f"the model input's height and width, [H, W] (or one number for a square); got {v!r}")
        return v

    @field_validator("normalize", mode="before")
    @classmethod
    def _normalize(cls, v):
        return parse_normalize(v)

    @model_validator(mode="after")
    def _some_ood(self) -> DataConfig:
        try:
            self.ood_groups()
        except UserError as e:
            raise ValueError(str(e)) from None
        return self

    def ood_groups(self) -> list[tuple[str, str]]:
        """The ``(spec, group)`` pairs evaluated on, in order (see :func:`unleash_ood.data.specs.config_groups`)."""
        return config_groups(self.near, self.far, self.ood, self.dataset, self.synthetic)

    def ood_specs(self) -> list[str]:
        """Every OOD test spec, near ones first."""
        return [spec for spec, _ in self.ood_groups()]


class ModelConfig(_Strict):
    arch: str = "small_cnn"
    kwargs: dict = Field(default_factory=lambda: {"width": 16})


class UMConfig(_Strict):
    """UM: ζ from random masks keeping ``keep_ratio`` of each layer (aliases: ``mask_ratio``): the
    ``zeta_estimator`` (mean, median, trimmed_mean; see ``methods.um.robust_zeta``) over ``zeta_draws``
    mask draws, unless ``zeta`` is given."""

    keep_ratio: float = Field(0.99, gt=0, le=1, validation_alias=AliasChoices("keep_ratio", "mask_ratio"))
    zeta: float | None = Field(None, ge=0)
    zeta_draws: int = Field(5, ge=1)
    zeta_estimator: Literal["mean", "median", "trimmed_mean"] = "median"
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
    ``compile``: ``torch.compile`` the training forward/backward. See :mod:`unleash_ood.utils.runtime`."""

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
    also fine-tunes with outliers after the pipeline, into ``seed<N>/outliers/``. ``aux_batch_size``:
    auxiliary images per ID batch; None (default) is the ID batch size, as in the authors' code, so
    BatchNorm sees half ID, half auxiliary images. A larger value (the paper states 2,000 per 64) works,
    but ID and auxiliary images share one train-mode forward pass, so the BatchNorm statistics are then
    dominated by auxiliary images."""

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

    @field_validator("scores")
    @classmethod
    def _scores(cls, v: list[str]) -> list[str]:
        return check_names(v)

    @field_validator("aux")
    @classmethod
    def _aux(cls, v: str) -> str:
        if v == "builtin":
            return v
        try:
            parse_aux_spec(v)
        except UserError as e:
            raise ValueError(str(e)) from None
        return v


class ScoresConfig(BaseModel):
    """The detectors to evaluate (``use``, in table order) and their hyperparameters, one section per
    detector: ``scores.KNN.k=10``. Each section is validated by that detector's ``Params`` and holds the
    effective values of every used detector. A plain list (``scores=[MSP, Energy]``) means ``use``.
    ``tune`` (default on wherever there is an ID validation split; ``--quick`` turns it off): also pick
    each tunable detector's hyperparameter per model on validation OOD only, from the
    grids of :data:`~unleash_ood.detectors.params.TUNING_GRIDS`; ``grid`` replaces one
    (``scores.grid.KNN.k=[5, 10]``; see docs/detectors.md)."""

    model_config = ConfigDict(extra="allow")

    use: list[str] = Field(default_factory=all_detector_names, min_length=1)
    tune: bool = True
    grid: dict[str, dict[str, list]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, data):
        return {"use": data} if isinstance(data, (list, tuple)) else data

    @field_validator("use")
    @classmethod
    def _use(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"a score is listed twice: {v}")
        return check_names(v)

    @field_validator("grid", mode="before")
    @classmethod
    def _grid(cls, v: dict) -> dict:
        if not isinstance(v, dict):
            raise ValueError("give a grid per detector, e.g. scores.grid.KNN.k=[5, 10]")
        return check_grids(v)

    @model_validator(mode="after")
    def _params(self) -> ScoresConfig:
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        errors: list[InitErrorDetails] = []
        infos = detector_infos()
        for name in [*extra, *(n for n in self.use if n not in extra)]:
            if name not in infos:
                errors.append(InitErrorDetails(type="value_error", loc=(name,), input=extra[name],
                                               ctx={"error": f"unknown score {name!r}; choose from {all_detector_names()}"}))
                continue
            try:
                extra[name] = infos[name].Params.model_validate(extra.get(name) or {}).model_dump()
            except ValidationError as e:
                errors += [InitErrorDetails(type=err["type"], loc=(name, *err["loc"]), input=err["input"],
                                            ctx=err.get("ctx", {})) for err in e.errors()]
        if errors:
            raise ValidationError.from_exception_data("ScoresConfig", errors)
        self.__pydantic_extra__ = {n: extra[n] for n in [*self.use, *(n for n in extra if n not in self.use)]}
        return self

    def params(self, name: str) -> dict:
        """The effective hyperparameters of detector ``name``."""
        return dict((self.__pydantic_extra__ or {}).get(name) or {})

    def subset(self, names: list[str]) -> ScoresConfig:
        """The same hyperparameters, another ``use`` list."""
        return ScoresConfig.model_validate({**self.model_dump(), "use": names})


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
    scores: ScoresConfig = Field(default_factory=ScoresConfig)
    save_features: bool = True  # features.npz: penultimate features + effective classifier per model (≈33 MB here)
    seed: int = Field(0, ge=0)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @field_validator("track_scores")
    @classmethod
    def _scores(cls, v: list[str]) -> list[str]:
        infos = detector_infos()
        fitted = [n for n in check_names(v) if infos[n].needs_fit or infos[n].needs_classifier
                  or infos[n].needs_inputs]
        if fitted:  # tracking scores the logits of each checkpoint, with no fit and no extra pass
            raise ValueError(f"{fitted} cannot be tracked along training; use logit scores (MSP, Energy, MaxLogit, GEN)")
        return v

    @model_validator(mode="after")
    def _tune_on_validation(self) -> DemoConfig:
        if self.scores.tune and self.data.val_size == 0:
            if "tune" in self.scores.model_fields_set:
                raise ValueError("scores.tune=true picks hyperparameters on the ID validation split: data.val_size > 0")
            self.scores.tune = False  # by default: no validation split, so nothing to tune on (nor to recommend)
        return self


PRESET_DIR = Path(__file__).parent / "presets"
RECIPE_DIR = Path(__file__).parent / "recipes"


def _read_yaml(path: Path, what: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"cannot parse {what} {path}: {e}") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must be a mapping of keys to values")
    return data


def load_preset(name: str) -> dict:
    """A named preset (``presets/NAME.yaml``) as a dict."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise UserError(f"unknown preset {name!r}; choose from {names}")
    return _read_yaml(path, "preset")


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str | Path) -> Path:
    """A paper recipe by name (``recipes/NAME.yaml``) or any YAML file."""
    text = str(name_or_path)
    if text in recipe_names():
        return RECIPE_DIR / f"{text}.yaml"
    path = Path(text).expanduser()
    if path.is_file():
        return path
    raise UserError(f"unknown recipe {text!r}: not a file, and not one of {', '.join(recipe_names())}")


def read_config_file(path: str | Path) -> dict:
    """A user's ``--config`` file (YAML or JSON) as a dict."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    return _read_yaml(path, "config")


def build_config(source: DemoConfig | Mapping | str | Path | None = None, presets: Sequence[str | Mapping] = (),
                 overrides: Sequence[str | Mapping] = (), data_root: str | Path | None = None,
                 seed: int | None = None) -> DemoConfig:
    """The one way a run's config is made: ``source`` < ``presets`` < ``overrides`` < ``data_root``, ``seed``.

    ``source``: None (the defaults), a config, a dict (e.g. a finished run's config.json), or a recipe
    name / YAML path. ``presets``: preset names or dicts, merged over it in order. ``overrides``:
    ``key.sub=value`` strings or dicts (e.g. a user's ``--config`` file), applied in order: a value the
    user gives wins over every preset. ``seed`` sets both ``seed`` and ``data.seed`` (model init, data
    split and order, masks)."""
    if source is None:
        data: dict = {}
    elif isinstance(source, BaseModel):
        data = source.model_dump()
    elif isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
    else:
        data = _read_yaml(recipe_path(source), "recipe")
    for preset in presets:
        data = merge(data, load_preset(preset) if isinstance(preset, str) else dict(preset))
    for item in overrides:
        data = apply_overrides(data, [item]) if isinstance(item, str) else merge(data, dict(item))
    if data_root is not None:
        data = merge(data, {"data": {"data_root": str(data_root)}})
    if seed is not None:
        data = merge(data, {"seed": seed, "data": {"seed": seed}})
    return validate(DemoConfig, data)  # type: ignore[return-value]


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
