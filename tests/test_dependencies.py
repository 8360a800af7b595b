"""Every library the product imports is declared: a user's ``pip install`` gets it, whatever Prefect depends on."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

REPO_ROOT = Path(__file__).resolve().parents[1]


def imported_distributions() -> dict[str, str]:
    """{distribution: a module of flows/ or blocks/ importing it} for every third-party import."""
    owners = packages_distributions()
    found: dict[str, str] = {}
    for path in sorted([*(REPO_ROOT / "flows").rglob("*.py"), *(REPO_ROOT / "blocks").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.partition(".")[0] for name in names} - {"flows", "blocks"}:
                if top not in sys.stdlib_module_names:
                    where = str(path.relative_to(REPO_ROOT))
                    assert top in owners, f"{where} imports {top!r}, which no installed distribution provides"
                    for distribution in owners[top]:
                        found.setdefault(distribution.lower().replace("_", "-"), where)
    return found


def requirements(lines: list[str]) -> dict[str, Requirement]:
    parsed = [Requirement(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return {r.name.lower().replace("_", "-"): r for r in parsed}


DECLARED = requirements(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
PINNED = requirements((REPO_ROOT / "requirements.txt").read_text().splitlines())


def test_every_imported_library_is_a_declared_dependency_and_pinned():
    declared, pinned = DECLARED, PINNED
    imported = imported_distributions()
    assert {"prefect", "pandas", "httpx"} <= imported.keys()  # the scan finds imports at all
    undeclared = {d: where for d, where in imported.items() if d not in declared}
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"
    unpinned = {d: where for d, where in imported.items() if d not in pinned}
    assert not unpinned, f"imported but not pinned in requirements.txt: {unpinned}"


def test_each_pin_lies_in_its_declared_range():
    """requirements.txt is one tested set that pyproject.toml's ranges allow."""
    for name, declared in DECLARED.items():
        assert name in PINNED, f"{name} is declared in pyproject.toml but not pinned in requirements.txt"
        (pin,) = PINNED[name].specifier
        assert declared.specifier.contains(pin.version), f"{name}=={pin.version} is outside {declared.specifier}"
