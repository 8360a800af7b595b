"""Benchmark: ``python flows/countries.py`` end to end, against a trivial Prefect flow (the floor).

Every command is a fresh ``python`` process, the way a user runs it:

* **ours**: ``python flows/countries.py --api v3.1 --base-url <fake> --cache-minutes 0``
  against the in-process fake REST Countries server (v3.1, the fixture data:
  Northern Europe = 16 countries, 20 rows).
* **floor**: a generated ``floor.py``: a trivial async ``@flow`` with 4 tasks (an async
  fetch task, then unnest, quality gate and an async load task), each doing nothing.

The two targets of issue 12 §5, each printed as a ratio ours/floor:

1. **warm local run vs Prefect's default path**: ours with nothing configured (no
   ``PREFECT_API_URL``), so it uses the local stack: the local Prefect server and
   the embedded PostgreSQL, started by a first (cold) run and reused; the floor on
   Prefect's default path, a temporary server per run. Target: ours <= 0.5 x floor.
2. **against a running server**: one ``prefect server start`` started here,
   ``PREFECT_API_URL`` pointing both at it; ours loads through a database block
   on that server (the embedded PostgreSQL). Target: ours <= 1.3 x floor. An
   informational baseline beside it: the floor plus ``import pandas, sqlalchemy,
   psycopg2, prefect_sqlalchemy`` (what the product's libraries cost to import).

Situation 1 is preceded by one cold run of each (fresh homes: ours starts both local
servers, the floor's temporary server migrates a new database); reported, no target.
Warm runs: the first of each is discarded, then medians of ``repeats`` runs, ours and
the floor interleaved.

Flow body: the flow's own step timings (the "Steps" table of the run's report
artifact, read back from the running server), median over the warm running-server
runs. Warm runs fetch the same data, so the flow finds the table already loaded
from it and skips unnest, quality gate and load (their steps are then absent).

Measurement: wall time is ``time.perf_counter`` around ``Popen`` .. ``wait``. CPU
time (informational; steadier than wall time on a shared machine) is the user +
system time of the command and the descendants it waited for
(``getrusage(RUSAGE_CHILDREN)`` before and after; full mode only). Peak memory
(informational) is the peak over samples (every 20 ms, psutil) of the summed RSS of
the command's process tree. Not counted: the embedded PostgreSQL and the local
Prefect server once they run on their own (warm runs), just as a server behind
``PREFECT_API_URL`` is not; the floor's temporary server is its child and counted.

Smoke (``run(smoke=True)``): against ``$PREFECT_API_URL`` when set (the test suite's
session server) or a server started here, one run of ours and one of the floor;
asserts the table holds exactly ``tests.expected.EXPECTED_NORTHERN_EUROPE``.

``python -m tests.benchmarks.bench_e2e [--smoke] [--repeats N]`` prints the table.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from tests.benchmarks._report import Figure, format_table
from tests.expected import EXPECTED_NORTHERN_EUROPE
from tests.fake_api import FakeRestCountries
from tests.prefect_servers import PrefectServer, clean_env

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "flows" / "countries.py"
TABLE = "northern_europe_countries"
LOCAL_RATIO_TARGET = 0.5  # warm local run / floor on Prefect's default path
SERVER_RATIO_TARGET = 1.3  # ours / floor, both against the same running server
FLOW_BODY_TARGET_SECONDS = 0.5
RUN_TIMEOUT = 300.0
SAMPLE_SECONDS = 0.02
FLOOR = "trivial async Prefect flow, 4 tasks"

FLOOR_SOURCE = '''\
"""The floor: a trivial async Prefect flow with 4 tasks, doing nothing."""
import asyncio

from prefect import flow, task


@task
async def fetch_region(region):
    return []


@task
def to_countries_frame(records):
    return records


@task
def check_quality(frame):
    return frame


@task
async def replace_table(frame):
    return len(frame)


@flow(name="floor")
async def floor_flow(regions=("Northern Europe",)):
    batches = await asyncio.gather(*(fetch_region(r) for r in regions))
    frame = check_quality(to_countries_frame([r for b in batches for r in b]))
    return await replace_table(frame)


if __name__ == "__main__":
    print("floor loaded", asyncio.run(floor_flow()), "rows")
'''

# The floor plus the libraries the product cannot do without (the frame, the database driver and block):
# separates what importing them costs from what our own code costs.
PRODUCT_IMPORTS = "pandas, sqlalchemy, psycopg2, prefect_sqlalchemy"
FLOOR_IMPORTS_SOURCE = FLOOR_SOURCE.replace("import asyncio\n", f"import asyncio\nimport {PRODUCT_IMPORTS}\n", 1)


# --- running and measuring one command -------------------------------------------------


@dataclass(frozen=True)
class Run:
    seconds: float
    peak_mib: float
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float = 0.0

    def check(self, what: str) -> Run:
        if self.returncode != 0:
            raise RuntimeError(f"{what} exited with {self.returncode}:\n{self.stdout[-3000:]}\n{self.stderr[-3000:]}")
        return self


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in members:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # exited between listing and reading
            continue
    return total


def measure(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = RUN_TIMEOUT) -> Run:
    """Run ``cmd``; wall seconds, CPU seconds and the peak summed RSS (MiB) of its process tree (sampled every 20 ms).

    CPU: user + system time of the children this process reaped meanwhile, i.e. the
    command and the descendants it waited for (call it from one thread at a time).
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        done = threading.Event()
        peak = 0
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)

        def sample() -> None:
            nonlocal peak
            try:
                ps = psutil.Process(proc.pid)
            except psutil.Error:
                return
            while not done.is_set():
                peak = max(peak, _tree_rss(ps))
                done.wait(SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        sampler.start()
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        finally:
            seconds = time.perf_counter() - start
            done.set()
            sampler.join()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
        out.seek(0)
        err.seek(0)
        return Run(
            seconds,
            peak / 2**20,
            returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            cpu,
        )


def _env(home: Path, local_dir: Path, api_url: str | None = None) -> dict[str, str]:
    """A measured run's environment: ours, minus anything pointing Prefect, the API or the local stack elsewhere."""
    env = clean_env(
        PREFECT_HOME=home,
        COUNTRIES_LOCAL_DIR=local_dir,
        COUNTRIES_LOCAL_PREFECT_SERVER="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",  # offline: no telemetry attempts
        DO_NOT_TRACK="1",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",  # a fresh home migrates first
        PYTHONUNBUFFERED="1",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _ours_cmd(base_url: str, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--api", "v3.1", "--base-url", base_url, "--cache-minutes", "0", *extra]


# --- a running Prefect server and the database ---------------------------------------------


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """``prefect server start`` on a free port with a fresh ``home``; yields its API URL once healthy."""
    env = dict(_env(home, home / "unused-local"), PREFECT_UI_ENABLED="false")
    with PrefectServer(home, home / "server.log", env) as server:
        yield server.api_url


def _db_block_on(api_url: str, pg_dir: Path) -> str:
    """A new database block on the server at ``api_url`` for the embedded PostgreSQL in ``pg_dir`` (started)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.utilities.asyncutils import run_coro_as_sync

    from flows.ops import local
    from flows.ops.settings import connection_from_url, save_db_block

    db = local.ensure_database(pg_dir)
    name = f"bench-e2e-{uuid.uuid4().hex[:8]}"
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        run_coro_as_sync(save_db_block(name, connection_from_url(db.psql_url)))
    return name


def _table_rows(pg_dir: Path) -> list[tuple]:
    import psycopg2

    from flows.ops import local

    db = local.database_status(pg_dir)
    if db is None:
        raise AssertionError(f"the embedded PostgreSQL in {pg_dir} is not running after the run")
    conn = psycopg2.connect(db.psql_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f'SELECT nation_official_name, currency_name, population FROM "{TABLE}"')
            rows = [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()
    return sorted(rows, key=lambda r: (r[0], r[1] or ""))


def flow_body_seconds(api_url: str, run: Run) -> dict[str, float]:
    """The flow's own step timings for ``run``: the "Steps" table of its report artifact on the server."""
    # By id: every run of the same regions has the same name, and a name would find the loading run's artifact too.
    match = re.search(r"/runs/flow-run/([0-9a-f-]{36})", run.stdout + run.stderr)
    if not match:
        raise RuntimeError(f"no flow run id in the output:\n{run.stderr[-2000:]}")
    response = httpx.post(
        f"{api_url}/artifacts/filter", json={"flow_runs": {"id": {"any_": [match.group(1)]}}, "limit": 50}, timeout=30
    )
    response.raise_for_status()
    for artifact in response.json():
        data = artifact.get("data") or ""
        steps_part = data.split("## Steps", 1)[1] if "## Steps" in data else data
        steps = re.findall(r"^\| ([^|]+?)(?: \(s\))? \| ([0-9]+\.[0-9]+) \|$", steps_part, flags=re.MULTILINE)
        if steps:
            return {name: float(seconds) for name, seconds in steps}
    raise RuntimeError(f"no artifact with step timings for flow run {match.group(1)!r}")


def _stop_local(env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flows.ops.local", "stop"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        print(f"bench_e2e: could not stop the local stack: {result.stderr}", file=sys.stderr)


# --- figures ---------------------------------------------------------------------------------


_METRICS = (("seconds", "seconds"), ("peak MiB", "peak_mib"))
_METRICS_WITH_CPU = (("seconds", "seconds"), ("CPU seconds", "cpu_seconds"), ("peak MiB", "peak_mib"))


def _pair(
    name: str,
    floor: list[Run],
    ours: list[Run],
    note: str,
    target: float | None,
    baseline_name: str = FLOOR,
    metrics: tuple[tuple[str, str], ...] = _METRICS,
) -> list[Figure]:
    """Seconds (with the ratio target, if any) and the other ``metrics`` (informational), medians, ours against a
    baseline."""
    out = []
    for metric, attr in metrics:
        base = statistics.median(getattr(r, attr) for r in floor)
        mine = statistics.median(getattr(r, attr) for r in ours)
        has_target = target is not None and metric == "seconds"
        out.append(
            Figure(
                benchmark=name,
                metric=metric,
                baseline_name=baseline_name,
                baseline=base,
                ours=mine,
                target=f"ours/baseline <= {target}" if has_target else "",
                met=mine <= target * base if has_target else None,
                note=note,
            )
        )
    return out


def _flow_body_figure(bodies: list[dict[str, float]], note: str) -> Figure:
    """The flow's steps as it timed them, summed per run; median over ``bodies``."""
    totals = [sum(b.values()) for b in bodies]
    med = statistics.median(totals)
    steps = list(dict.fromkeys(step for b in bodies for step in b))
    parts = " ".join(f"{s}={statistics.median(b.get(s, 0.0) for b in bodies):.3f}" for s in steps)
    return Figure(
        benchmark="e2e flow body, Northern Europe",
        metric="seconds",
        baseline_name="",
        baseline=None,
        ours=med,
        target=f"ours <= {FLOW_BODY_TARGET_SECONDS} s",
        met=med <= FLOW_BODY_TARGET_SECONDS,
        note=f"{note}; median of {len(totals)}: {parts}",
    )


def run(smoke: bool = False, repeats: int = 5) -> list[Figure]:
    """Measure (see the module docstring); ``smoke`` does one run of each against a running server."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    floor = tmp / "floor.py"
    floor.write_text(FLOOR_SOURCE)
    (tmp / "floor_imports.py").write_text(FLOOR_IMPORTS_SOURCE)
    envs: list[dict[str, str]] = []  # the local stacks to stop
    try:
        with FakeRestCountries() as fake:
            if smoke:
                return _smoke(fake, tmp, envs)
            return _full(fake, tmp, envs, repeats)
    finally:
        for env in envs:
            _stop_local(env)
        shutil.rmtree(tmp, ignore_errors=True)


def _smoke(fake: FakeRestCountries, tmp: Path, envs: list[dict[str, str]]) -> list[Figure]:
    def measured(api_url: str) -> list[Figure]:
        env = _env(tmp / "client-home", tmp / "local", api_url)
        envs.append(env)
        block = _db_block_on(api_url, tmp / "local" / "postgres")
        ours = measure(_ours_cmd(fake.v31_base_url, "--db-block", block), env, REPO_ROOT).check("ours")
        rows = _table_rows(tmp / "local" / "postgres")
        assert rows == EXPECTED_NORTHERN_EUROPE, f"the loaded table differs from the expected 20 rows: {rows}"
        body = flow_body_seconds(api_url, ours)
        base = measure([sys.executable, str(tmp / "floor.py")], env, tmp).check("floor")
        figures = _pair("e2e smoke, running server", [base], [ours], "smoke: 1 run each", SERVER_RATIO_TARGET)
        return [*figures, _flow_body_figure([body], "smoke: 1 run")]

    if api_url := os.environ.get("PREFECT_API_URL"):
        return measured(api_url)
    with prefect_server(tmp / "server-home") as api_url:
        return measured(api_url)


def _interleaved(repeats: int, *commands: tuple[list[str], dict[str, str], Path, str]) -> list[list[Run]]:
    """Each command once (discarded), then ``repeats`` rounds of all of them in turn."""
    for cmd, env, cwd, what in commands:
        measure(cmd, env, cwd).check(f"{what}, first warm run")
    runs: list[list[Run]] = [[] for _ in commands]
    for _ in range(repeats):
        for got, (cmd, env, cwd, what) in zip(runs, commands, strict=True):
            got.append(measure(cmd, env, cwd).check(what))
    return runs


def _full(fake: FakeRestCountries, tmp: Path, envs: list[dict[str, str]], repeats: int) -> list[Figure]:
    figures: list[Figure] = []
    floor_cmd = [sys.executable, str(tmp / "floor.py")]

    # 1. Nothing configured: ours on the local stack, the floor on Prefect's default path (a temporary server).
    ours_env = _env(tmp / "ours-home", tmp / "local")
    envs.append(ours_env)
    floor_env = _env(tmp / "floor-home", tmp / "floor-local")
    ours_cmd = _ours_cmd(fake.v31_base_url)
    ours_cold = measure(ours_cmd, ours_env, REPO_ROOT).check("ours, cold")
    rows = _table_rows(tmp / "local" / "postgres")
    floor_cold = measure(floor_cmd, floor_env, tmp).check("floor, cold")
    ok = "" if rows == EXPECTED_NORTHERN_EUROPE else "; TABLE DIFFERS FROM EXPECTED"
    figures += _pair(
        "e2e cold: local stack vs Prefect's default path",
        [floor_cold],
        [ours_cold],
        f"1 run each, fresh homes; ours starts the local Prefect server and the embedded PG{ok}",
        None,
    )
    ours_warm, floor_warm = _interleaved(
        repeats, (ours_cmd, ours_env, REPO_ROOT, "ours, warm local"), (floor_cmd, floor_env, tmp, "floor, default path")
    )
    figures += _pair(
        "e2e warm: local stack vs Prefect's default path",
        floor_warm,
        ours_warm,
        f"median of {repeats}; ours reuses the local servers (not counted), the floor starts "
        "a temporary server (counted)",
        LOCAL_RATIO_TARGET,
        metrics=_METRICS_WITH_CPU,
    )

    # 2. A running server for both (PREFECT_API_URL).
    with prefect_server(tmp / "server-home") as api_url:
        env = _env(tmp / "client-home", tmp / "local", api_url)
        block = _db_block_on(api_url, tmp / "local" / "postgres")
        ours_cmd = _ours_cmd(fake.v31_base_url, "--db-block", block)
        imports_cmd = [sys.executable, str(tmp / "floor_imports.py")]
        ours_runs, floor_runs, imports_runs = _interleaved(
            repeats,
            (ours_cmd, env, REPO_ROOT, "ours, running server"),
            (floor_cmd, env, tmp, "floor, running server"),
            (imports_cmd, env, tmp, "floor + imports, running server"),
        )
        bodies = [flow_body_seconds(api_url, r) for r in ours_runs]
    note = f"median of {repeats}; first run of each discarded; embedded PG not counted"
    figures += _pair(
        "e2e warm, running server (PREFECT_API_URL)",
        floor_runs,
        ours_runs,
        note,
        SERVER_RATIO_TARGET,
        metrics=_METRICS_WITH_CPU,
    )
    figures += _pair(
        "e2e warm, running server (PREFECT_API_URL)",
        imports_runs,
        ours_runs,
        note + "; baseline = what importing the product's libraries alone costs",
        None,
        baseline_name=f"floor + import {PRODUCT_IMPORTS}",
        metrics=_METRICS_WITH_CPU,
    )
    figures.append(_flow_body_figure(bodies, "warm, running server, data unchanged: transform and load skipped"))
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--repeats", type=int, default=5, help="warm runs per situation (default: 5)")
    ns = parser.parse_args()
    print(format_table(run(smoke=ns.smoke, repeats=ns.repeats)))
