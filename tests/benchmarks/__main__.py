"""``python -m tests.benchmarks``: run the benchmark modules and print one table of figures.

See ``python -m tests.benchmarks --help``. Each module (``bench_<name>.py``)
exposes ``run(smoke: bool = False) -> list[Figure]``; they run one after another
in this process (a module that needs isolation, e.g. for memory figures, starts
its own subprocesses). Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from tests.benchmarks._report import Figure, format_table, write_json

MODULES = {  # name -> module, in the order they run
    "unnest": "tests.benchmarks.bench_unnest",
    "load": "tests.benchmarks.bench_load",
    "fetch": "tests.benchmarks.bench_fetch",
    "e2e": "tests.benchmarks.bench_e2e",
    "scale": "tests.benchmarks.bench_scale",
}

EXIT_OK, EXIT_TARGET_MISSED, EXIT_MODULE_FAILED = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.benchmarks",
        description="Run the benchmarks (default: all of " + ", ".join(MODULES) + ") and print a table of "
        "figures: ours against a baseline, with the target and whether it is met.",
        epilog="Exit status: 0 when every figure that has a target meets it; 1 when any figure misses "
        "its target (met == False); 2 when a benchmark module could not be imported or raised. "
        "--no-fail always exits 0. Progress lines go to stderr; the table alone goes to stdout.",
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=list(MODULES),
        metavar="NAME",
        help="run only these benchmarks (" + ", ".join(MODULES) + ")",
    )
    p.add_argument("--smoke", action="store_true", help="tiny sizes: a quick check that every benchmark works")
    p.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="also write the figures and a description of the machine as JSON to PATH",
    )
    p.add_argument("--no-fail", action="store_true", help="exit 0 even when a target is missed or a module fails")
    return p


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],  # noqa: S607 - git from PATH, informational only
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parents[2],
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine(names: list[str], smoke: bool) -> dict:
    """What the figures were measured on."""
    memory = _memory_bytes()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_bytes": memory,
        "memory_gib": None if memory is None else round(memory / 2**30, 1),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "benchmarks": names,
        "smoke": smoke,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_all(names: list[str], smoke: bool) -> tuple[list[Figure], list[str]]:
    """The figures of every named benchmark, and the names of those that failed (import or run)."""
    figures: list[Figure] = []
    failed: list[str] = []
    for name in names:
        print(f"running {name}{' (smoke)' if smoke else ''} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            module = importlib.import_module(MODULES[name])
            got = module.run(smoke=smoke)
        except ModuleNotFoundError as exc:
            if exc.name == MODULES[name]:
                print(f"{name} FAILED: {MODULES[name]} does not exist (yet)", file=sys.stderr, flush=True)
            else:
                traceback.print_exc(file=sys.stderr)
                print(f"{name} FAILED after {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        except Exception:  # noqa: BLE001 - report it, run the others, exit non-zero
            traceback.print_exc(file=sys.stderr)
            print(f"{name} FAILED after {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
            failed.append(name)
            continue
        figures += got
        missed = sum(f.met is False for f in got)
        print(
            f"{name} done in {time.perf_counter() - start:.1f} s: {len(got)} figures"
            + (f", {missed} missed their target" if missed else ""),
            file=sys.stderr,
            flush=True,
        )
    return figures, failed


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = [n for n in MODULES if n in (args.only or MODULES)]
    figures, failed = run_all(names, args.smoke)
    if args.json:
        write_json(figures, args.json, machine(names, args.smoke))
        print(f"wrote {args.json}", file=sys.stderr)
    print(format_table(figures), flush=True)
    missed = [f for f in figures if f.met is False]
    if failed:
        print(f"failed benchmarks: {', '.join(failed)}", file=sys.stderr)
    if missed:
        print(f"{len(missed)} figure(s) missed their target", file=sys.stderr)
    if args.no_fail:
        return EXIT_OK
    if failed:
        return EXIT_MODULE_FAILED
    return EXIT_TARGET_MISSED if missed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
