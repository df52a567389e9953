"""The OOD data API in one import (kept for the modules and users that import ``data.ood``).

The code lives in :mod:`.specs` (specs, loading, near/far groups), :mod:`.builtin` (the registry of
named sets), :mod:`.images` (conversion to the ID format), :mod:`.glyphs`, :mod:`.mnistlike` and
:mod:`.auxpool` (the auxiliary-outlier pool).
"""

from __future__ import annotations

from .auxpool import AUX_MIX, AUX_PICTURES, load_auxiliary_pool
from .builtin import (BUILTIN, CROP_SIZE_RANGE, GROUPS, OFFLINE_SETS, PHOTO_PICTURES, TEXTURE_PICTURES, Sources,
                      builtin_group)
from .images import IMAGE_EXTENSIONS, to_image_format
from .specs import (DEFAULT_FAR, DEFAULT_NEAR, SPEC_FORMS, config_groups, group_specs, load_ood, load_ood_suite,
                    ood_name, parse_spec)

# the built-in sets that load anywhere (no data root, no open-set protocol needed)
BUILTIN_OOD: tuple[str, ...] = OFFLINE_SETS

__all__ = [
    "AUX_MIX", "AUX_PICTURES", "BUILTIN", "BUILTIN_OOD", "CROP_SIZE_RANGE", "DEFAULT_FAR", "DEFAULT_NEAR", "GROUPS",
    "IMAGE_EXTENSIONS", "OFFLINE_SETS", "PHOTO_PICTURES", "SPEC_FORMS", "TEXTURE_PICTURES", "Sources",
    "builtin_group", "config_groups", "group_specs", "load_auxiliary_pool", "load_ood", "load_ood_suite",
    "ood_name", "parse_spec", "to_image_format",
]
