"""`python -m tests.benchmarks`: selection, exit status, JSON with the machine description, clean stdout."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

from tests.benchmarks import __main__ as runner
from tests.benchmarks._report import Figure
from tests.conftest import REPO_ROOT


def _figure(met: bool | None) -> Figure:
    return Figure("fake", "seconds", "base", 2.0, 1.0, "ours/baseline <= 1.2" if met is not None else "", met)


@pytest.fixture
def fake_modules(monkeypatch):
    """Replace the real benchmark modules with instant ones whose outcome each test chooses."""
    outcomes: dict[str, object] = {}

    def fake_import(name: str):
        short = next(k for k, v in runner.MODULES.items() if v == name)
        outcome = outcomes.get(short, [_figure(True)])
        if isinstance(outcome, Exception):
            def run(smoke: bool = False):
                raise outcome
        else:
            def run(smoke: bool = False, _o=outcome):
                return list(_o)
        return types.SimpleNamespace(run=run)

    monkeypatch.setattr(runner.importlib, "import_module", fake_import)
    return outcomes


def test_all_met_exits_0_and_prints_the_table(fake_modules, capsys):
    assert runner.main([]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("benchmark")
    assert len(out.strip().splitlines()) == 2 + len(runner.MODULES)  # header, rule, one figure each
    assert "running unnest ..." in err and "running e2e ..." in err
    assert "running" not in out


def test_a_missed_target_exits_1_unless_no_fail(fake_modules, capsys):
    fake_modules["load"] = [_figure(False), _figure(None)]
    assert runner.main(["--only", "load", "fetch"]) == 1
    assert runner.main(["--only", "load", "--no-fail"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[-1] == "NO" for line in out.splitlines()[2:])


def test_a_failing_module_is_reported_and_the_others_still_run(fake_modules, capsys):
    fake_modules["unnest"] = RuntimeError("boom")
    assert runner.main([]) == 2
    out, err = capsys.readouterr()
    assert "boom" in err and "unnest FAILED" in err
    assert len(out.strip().splitlines()) == 2 + len(runner.MODULES) - 1


def test_json_has_the_figures_and_the_machine(fake_modules, tmp_path, capsys):
    path = tmp_path / "figures.json"
    assert runner.main(["--only", "fetch", "--smoke", "--json", str(path)]) == 0
    payload = json.loads(path.read_text())
    assert payload["figures"][0]["ratio"] == 0.5
    m = payload["machine"]
    assert m["cpu_count"] >= 1 and m["cpu_model"] and m["memory_bytes"] > 0
    assert m["python"] and m["platform"] and m["benchmarks"] == ["fetch"] and m["smoke"] is True


def test_help_documents_the_exit_status():
    result = subprocess.run([sys.executable, "-m", "tests.benchmarks", "--help"], capture_output=True,
                            text=True, cwd=REPO_ROOT, timeout=60)
    assert result.returncode == 0
    for needle in ("--only", "--smoke", "--json", "--no-fail", "Exit status", "met == False"):
        assert needle in result.stdout


def test_a_missing_module_is_named_and_fails_the_run(monkeypatch, capsys):
    monkeypatch.setitem(runner.MODULES, "ghost", "tests.benchmarks.bench_ghost_does_not_exist")
    assert runner.main(["--only", "ghost"]) == 2
    assert "bench_ghost_does_not_exist does not exist" in capsys.readouterr().err
