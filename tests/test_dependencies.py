"""Every library the product imports is declared: a user's ``pip install`` gets it, whatever Prefect depends on."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

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
                    for distribution in owners[top]:
                        found.setdefault(distribution.lower().replace("_", "-"), str(path.relative_to(REPO_ROOT)))
    return found


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r.strip(), maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def test_every_imported_library_is_a_declared_dependency_and_pinned():
    declared = names(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    pinned = names([line for line in lines if line.strip() and not line.startswith("#")])
    imported = imported_distributions()
    assert {"prefect", "pandas", "httpx"} <= imported.keys()  # the scan finds imports at all
    undeclared = {d: where for d, where in imported.items() if d not in declared}
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"
    unpinned = {d: where for d, where in imported.items() if d not in pinned}
    assert not unpinned, f"imported but not pinned in requirements.txt: {unpinned}"
