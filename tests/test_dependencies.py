"""Packaging: every third-party module imported anywhere in src/unleash_ood is declared in pyproject.toml."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "unleash_ood"

# import name -> distribution name, where they differ
DISTRIBUTION = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn", "skimage": "scikit-image",
                "pytorch_ood": "pytorch-ood",
                "pydantic_core": "pydantic"}  # pydantic's own (pinned) dependency, its error types
# optional modules that may stay undeclared: each must be imported only behind this guard in its file
GUARDED = {"faiss": 'find_spec("faiss")'}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *(r for extra in project.get("optional-dependencies", {}).values()
                                        for r in extra)]
    return {normalize(re.match(r"[A-Za-z0-9._-]+", r.strip()).group()) for r in reqs}


def third_party_imports() -> dict[str, set[Path]]:
    """Top-level module -> the files importing it (absolute imports only; stdlib and unleash_ood excluded)."""
    found: dict[str, set[Path]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "unleash_ood":
                    found.setdefault(top, set()).add(path)
    return found


def test_the_import_scan_sees_the_source() -> None:
    found = third_party_imports()
    # not vacuous: the heavy dependencies and the lazily imported ones (inside functions) are seen
    assert {"torch", "numpy", "PIL", "yaml", "scipy", "onnxruntime"} <= set(found), sorted(found)
    assert "os" not in found and "unleash_ood" not in found


def test_every_third_party_import_is_declared() -> None:
    have = declared()
    missing = {}
    for module, files in third_party_imports().items():
        if normalize(DISTRIBUTION.get(module, module)) in have:
            continue
        if module in GUARDED and all(GUARDED[module] in f.read_text(encoding="utf-8") for f in files):
            continue
        missing[module] = sorted(str(f.relative_to(ROOT)) for f in files)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_guarded_optional_modules_stay_optional() -> None:
    """An allowed-undeclared module is only reached through its guard (else it must be declared)."""
    for module, guard in GUARDED.items():
        for f in third_party_imports().get(module, ()):
            assert guard in f.read_text(encoding="utf-8"), f"{f} imports {module} without {guard}"
