"""The near/far groups of OOD specs, without torch: what config validation needs (``unleash-ood config``
stays fast). The loaders live in :mod:`unleash_ood.data`; ``tests/test_data_groups.py`` checks that the
tables here agree with :data:`unleash_ood.data.builtin.BUILTIN` and :data:`unleash_ood.data.suite.SUITE`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .errors import UserError

GROUPS: tuple[str, ...] = ("near", "far")
# the default suite when neither data.near, data.far nor data.ood is set
DEFAULT_NEAR: tuple[str, ...] = ("glyphs", "digits")
DEFAULT_FAR: tuple[str, ...] = ("textures", "photos", "gaussian", "uniform")
# each built-in set's own group (data.builtin.BUILTIN)
BUILTIN_GROUPS: dict[str, str] = {
    "digits": "near", "textures": "far", "photos": "far", "gaussian": "far", "uniform": "far", "glyphs": "near",
    "heldout-classes": "near", "mnist": "near", "kmnist": "near", "emnist-letters": "near"}
# the CIFAR suite's names (data.suite.SUITE) and the ID datasets that use them (data.suite.PAPER_SUITE)
SUITE_NAMES: tuple[str, ...] = ("cifar10", "cifar100", "svhn", "textures", "places365", "lsun", "lsun_resize",
                                "isun", "inaturalist", "sun", "tinyimagenet")
SUITE_DATASETS: tuple[str, ...] = ("cifar10", "cifar100")


def check_group(group: str, where: str) -> str:
    """``group`` if it is ``near`` or ``far``; otherwise one :class:`UserError` naming ``where``."""
    if group not in GROUPS:
        raise UserError(f"{where}: unknown OOD group {group!r}; use one of {', '.join(GROUPS)}")
    return group


def group_specs(by_group: Mapping[str, Sequence[str]], suite_names: bool = False) -> list[tuple[str, str]]:
    """``(spec, group)`` pairs from specs listed per group (``{"near": [...], "far": [...]}``), in order.

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
                  dataset: str = "fashion_mnist") -> list[tuple[str, str]]:
    """The ``(spec, group)`` pairs a data config evaluates on.

    ``near``/``far`` None means the default (``DEFAULT_NEAR``/``DEFAULT_FAR``) unless ``ood`` is given:
    ``ood`` alone (the pre-groups key) is exactly the suite, as before, each spec in the far group
    except built-ins, which keep theirs; ``ood`` next to ``near``/``far`` adds far specs.
    """
    if ood and near is None and far is None:
        near, far = (), ()
    near = DEFAULT_NEAR if near is None else near
    far = DEFAULT_FAR if far is None else far
    pairs = group_specs({"near": near, "far": [*far, *ood]}, suite_names=dataset in SUITE_DATASETS)
    pairs.sort(key=lambda pair: GROUPS.index(pair[1]))  # near first; stable otherwise
    if not pairs:
        raise UserError("no OOD sets: list at least one under data.near, data.far or data.ood")
    return pairs
