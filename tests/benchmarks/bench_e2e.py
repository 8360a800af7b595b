"""Benchmark: ``python flows/countries.py`` end to end, against a trivial Prefect flow (the floor).

What is run, every time as a fresh ``python`` process, the way a user runs it:

* **ours**: ``python flows/countries.py --api v3.1 --base-url <fake> --db-block <unique>
  --local-db-dir <tmp>/pg --cache-minutes 0`` against the in-process fake REST
  Countries server (v3.1, the fixture data: Northern Europe = 16 countries, 20 rows).
  The database block does not exist on a cold run, so the run also initialises
  and starts the embedded PostgreSQL and saves the block.
* **floor**: a generated ``floor.py``: an async ``@flow`` with the same tasks as
  ours (one async fetch task per region -- here 1 -- then unnest, quality gate and
  an async load task: 4 task runs), each doing nothing.

Three situations:

* **cold, ephemeral server**: no ``PREFECT_API_URL``, a fresh ``PREFECT_HOME`` (the
  ephemeral server creates and migrates its SQLite database) and, for ours, a fresh
  PostgreSQL data directory. One run each.
* **warm, ephemeral server**: the same homes again (ours: block saved, PostgreSQL
  still running). Median of several runs, ours and floor interleaved.
* **warm, running server**: one ``prefect server start`` (fresh home) started here;
  ``PREFECT_API_URL`` points both at it. The first run of each is discarded; median
  of several interleaved runs. This is the way to avoid the ephemeral server.
  Here a second, informational baseline (no target) is the floor plus
  ``import pandas, sqlalchemy, psycopg2, prefect_sqlalchemy``: it splits the gap into
  what the product's libraries cost to import and what our own code costs.

Flow body: fetch + unnest/quality + load as the flow itself times them
(``RunSummary.step_seconds``), read back from the run's ``countries-load-report``
artifact on the running server, median over the warm running-server runs (every
one a fresh process, as a user's run is). Warm runs load the same content, so
``load`` finds the table unchanged and does not rewrite it.

Measurement: wall time is ``time.perf_counter`` around ``Popen`` .. ``wait``. Peak
memory is the peak over samples (every 20 ms, psutil) of the summed RSS of the
command's process tree: the python process and the ephemeral Prefect server it
starts. The embedded PostgreSQL (``postgres``, ``pg_ctl``, ``initdb``) is not
counted: it is a separate long-lived daemon that outlives the run; its RSS after
the cold run is given in the note. Summed RSS counts shared library pages once
per process, so it slightly overstates the tree's real footprint.

Smoke (``run(smoke=True)``): against ``$PREFECT_API_URL`` when set (the test suite's
session server) or a server started here, one run of ours (fresh embedded
PostgreSQL) and one of the floor; asserts the table holds exactly
``tests.expected.EXPECTED_NORTHERN_EUROPE``.

``python -m tests.benchmarks.bench_e2e [--smoke]`` prints the table.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
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

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "flows" / "countries.py"
TABLE = "northern_europe_countries"
ARTIFACT_KEY = "countries-load-report"
FLOW_BODY_TARGET_SECONDS = 0.5
RATIO_TARGET = 1.2
RUN_TIMEOUT = 300.0
SAMPLE_SECONDS = 0.02
NOT_COUNTED = frozenset({"postgres", "pg_ctl", "initdb"})  # the embedded PostgreSQL daemon and its tools
STEPS = ("fetch", "unnest + quality gate", "load")

FLOOR_SOURCE = '''\
"""The floor: the same Prefect shape as flows/countries.py, doing nothing."""
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
            if p.name() in NOT_COUNTED:
                continue
            total += p.memory_info().rss
        except psutil.Error:  # exited between listing and reading
            continue
    return total


def measure(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = RUN_TIMEOUT) -> Run:
    """Run ``cmd``; wall seconds and the peak summed RSS (MiB) of its process tree, sampled every 20 ms."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        done = threading.Event()
        peak = 0
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
        out.seek(0)
        err.seek(0)
        return Run(seconds, peak / 2**20, returncode, out.read().decode(errors="replace"),
                   err.read().decode(errors="replace"))


def _env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """The environment of a measured run: our process's, minus anything pointing Prefect or the API elsewhere."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PREFECT_API_URL", "PREFECT_API_KEY", "RESTCOUNTRIES_API_KEY", "RESTCOUNTRIES_BASE_URL"}}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",  # offline: no telemetry attempts
        DO_NOT_TRACK="1",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",  # a fresh home migrates first
        PYTHONUNBUFFERED="1",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _ours_cmd(base_url: str, block: str, pg_dir: Path) -> list[str]:
    return [sys.executable, str(SCRIPT), "--api", "v3.1", "--base-url", base_url, "--db-block", block,
            "--local-db-dir", str(pg_dir), "--cache-minutes", "0"]


def count_tasks() -> int:
    """How many ``@task`` functions flows/countries.py defines (the floor mirrors them; fetch runs once a region)."""
    return len(re.findall(r"^@task\b", SCRIPT.read_text(), flags=re.MULTILINE))


# --- a running Prefect server ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def prefect_server(home: Path, timeout: float = 120.0) -> Iterator[str]:
    """``prefect server start`` on a free port with a fresh ``home``; yields its API URL once healthy."""
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    home.mkdir(parents=True, exist_ok=True)
    env = _env(home)
    env["PREFECT_UI_ENABLED"] = "false"
    log = home / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=home, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server not healthy after {timeout:.0f}s:\n{log.read_text()[-3000:]}")
            try:  # the poll interval doubles as the check that it has not died
                proc.wait(timeout=0.25)
                raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            except subprocess.TimeoutExpired:
                pass
        yield api_url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def flow_body_seconds(api_url: str, run: Run) -> dict[str, float]:
    """The flow's own step timings for ``run``, from its report artifact on the server."""
    match = re.search(r"Beginning flow run '([^']+)' for flow 'countries'", run.stdout + run.stderr)
    if not match:
        raise RuntimeError(f"no flow run name in the output:\n{run.stderr[-2000:]}")
    response = httpx.post(
        f"{api_url}/artifacts/filter",
        json={"artifacts": {"key": {"any_": [ARTIFACT_KEY]}},
              "flow_runs": {"name": {"any_": [match.group(1)]}}, "limit": 1},
        timeout=30,
    )
    response.raise_for_status()
    artifacts = response.json()
    if not artifacts:
        raise RuntimeError(f"no {ARTIFACT_KEY} artifact for flow run {match.group(1)!r}")
    steps = dict(re.findall(r"^\| (.+?) \(s\) \| ([0-9.]+) \|$", artifacts[0]["data"], flags=re.MULTILINE))
    missing = set(STEPS) - set(steps)
    if missing:
        raise RuntimeError(f"artifact lacks step timings {sorted(missing)}:\n{artifacts[0]['data']}")
    return {k: float(v) for k, v in steps.items()}


# --- the embedded PostgreSQL -----------------------------------------------------------


def _table_rows(pg_dir: Path) -> list[tuple]:
    import psycopg2

    from flows import local_db

    db = local_db.status(pg_dir)
    if db is None:
        raise AssertionError(f"the embedded PostgreSQL in {pg_dir} is not running after the run")
    conn = psycopg2.connect(host=db.socket_dir, user=db.user, dbname=db.database)
    try:
        with conn.cursor() as cur:
            cur.execute(f'SELECT nation_official_name, currency_name, population FROM "{TABLE}"')
            rows = [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()
    return sorted(rows, key=lambda r: (r[0], r[1] or ""))


def _pg_rss_mib(pg_dir: Path) -> float | None:
    """RSS of the embedded PostgreSQL's postmaster and its children (not counted in the runs' figures)."""
    try:
        pid = int((pg_dir / "postmaster.pid").read_text().split()[0])
        p = psutil.Process(pid)
        return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


def _stop_pg(pg_dir: Path) -> None:
    from flows import local_db

    try:
        local_db.stop(pg_dir)
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the measurement
        print(f"bench_e2e: could not stop the embedded PostgreSQL in {pg_dir}: {exc}", file=sys.stderr)


# --- figures ---------------------------------------------------------------------------------


def _pair(name: str, floor: list[Run], ours: list[Run], note: str,
          baseline_name: str = "trivial async Prefect flow, same tasks", target: bool = True) -> list[Figure]:
    """Seconds and peak MiB, medians, ours against the floor, both with the 1.2x target (unless ``target`` is off)."""
    out = []
    for metric, attr in (("seconds", "seconds"), ("peak MiB", "peak_mib")):
        base = statistics.median(getattr(r, attr) for r in floor)
        mine = statistics.median(getattr(r, attr) for r in ours)
        out.append(Figure(
            benchmark=name, metric=metric, baseline_name=baseline_name, baseline=base, ours=mine,
            target=f"ours/baseline <= {RATIO_TARGET}" if target else "",
            met=mine <= RATIO_TARGET * base if target else None, note=note,
        ))
    return out


def _flow_body_figure(bodies: list[dict[str, float]], note: str, name: str = "e2e flow body, Northern Europe",
                      target: bool = True) -> Figure:
    """fetch + unnest/quality + load as the flow timed them, median over ``bodies``."""
    totals = [sum(b[s] for s in STEPS) for b in bodies]
    med = statistics.median(totals)
    parts = " ".join(f"{s}={statistics.median(b[s] for b in bodies):.3f}" for s in STEPS)
    return Figure(
        benchmark=name, metric="seconds", baseline_name="", baseline=None, ours=med,
        target=f"ours <= {FLOW_BODY_TARGET_SECONDS} s" if target else "",
        met=med <= FLOW_BODY_TARGET_SECONDS if target else None,
        note=f"{note}; median of {len(totals)}: {parts}",
    )


def run(smoke: bool = False, warm_repeats: int = 3) -> list[Figure]:
    """Measure (see the module docstring); ``smoke`` does one run of each against a running server."""
    tasks = count_tasks()
    if tasks != 4:
        raise RuntimeError(f"flows/countries.py now defines {tasks} tasks; update FLOOR_SOURCE to match")
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    floor = tmp / "floor.py"
    floor.write_text(FLOOR_SOURCE)
    floor_cmd = [sys.executable, str(floor)]
    (tmp / "floor_imports.py").write_text(FLOOR_IMPORTS_SOURCE)
    pg_dirs: list[Path] = []
    try:
        with FakeRestCountries() as fake:
            if smoke:
                return _smoke(fake, tmp, floor_cmd, pg_dirs)
            return _full(fake, tmp, floor_cmd, pg_dirs, warm_repeats)
    finally:
        for pg_dir in pg_dirs:
            _stop_pg(pg_dir)
        shutil.rmtree(tmp, ignore_errors=True)


def _smoke(fake: FakeRestCountries, tmp: Path, floor_cmd: list[str], pg_dirs: list[Path]) -> list[Figure]:
    pg_dir = tmp / "pg"
    pg_dirs.append(pg_dir)
    block = f"bench-e2e-{uuid.uuid4().hex[:8]}"

    def measured(api_url: str) -> list[Figure]:
        env = _env(tmp / "client-home", api_url)
        ours = measure(_ours_cmd(fake.v31_base_url, block, pg_dir), env, REPO_ROOT).check("ours")
        rows = _table_rows(pg_dir)
        assert rows == EXPECTED_NORTHERN_EUROPE, f"the loaded table differs from the expected 20 rows: {rows}"
        body = flow_body_seconds(api_url, ours)
        base = measure(floor_cmd, env, tmp).check("floor")
        note = "smoke: 1 run each, running server, ours creates the embedded PostgreSQL"
        figures = _pair("e2e smoke, running server", [base], [ours], note)
        return figures + [_flow_body_figure([body], "smoke: 1 run")]

    if api_url := os.environ.get("PREFECT_API_URL"):
        return measured(api_url)
    with prefect_server(tmp / "server-home") as api_url:
        return measured(api_url)


def _full(fake: FakeRestCountries, tmp: Path, floor_cmd: list[str], pg_dirs: list[Path],
          repeats: int) -> list[Figure]:
    figures: list[Figure] = []
    base_url = fake.v31_base_url

    # Ephemeral server: cold, then warm in the same homes.
    ours_home, floor_home, pg_dir = tmp / "ours-home", tmp / "floor-home", tmp / "pg-ephemeral"
    pg_dirs.append(pg_dir)
    ours_cmd = _ours_cmd(base_url, f"bench-e2e-{uuid.uuid4().hex[:8]}", pg_dir)
    ours_cold = measure(ours_cmd, _env(ours_home), REPO_ROOT).check("ours, cold")
    pg_mib = _pg_rss_mib(pg_dir)
    rows = _table_rows(pg_dir)
    floor_cold = measure(floor_cmd, _env(floor_home), tmp).check("floor, cold")
    ours_warm, floor_warm = [], []
    for _ in range(repeats):
        ours_warm.append(measure(ours_cmd, _env(ours_home), REPO_ROOT).check("ours, warm"))
        floor_warm.append(measure(floor_cmd, _env(floor_home), tmp).check("floor, warm"))
    pg_note = "embedded PG not counted" + (f" ({pg_mib:.0f} MiB RSS after the run)" if pg_mib else "")
    ok = "" if rows == EXPECTED_NORTHERN_EUROPE else "; TABLE DIFFERS FROM EXPECTED"
    figures += _pair("e2e cold, ephemeral server", [floor_cold], [ours_cold],
                     f"1 run; fresh PREFECT_HOME, ours: fresh PG data dir (initdb); {pg_note}{ok}")
    figures += _pair("e2e warm, ephemeral server", floor_warm, ours_warm,
                     f"median of {repeats}; same homes, PG running; {pg_note}")
    _stop_pg(pg_dir)

    # A running server: the way to avoid the ephemeral server's start-up.
    with prefect_server(tmp / "server-home") as api_url:
        env = _env(tmp / "client-home", api_url)
        pg_dir = tmp / "pg-server"
        pg_dirs.append(pg_dir)
        ours_cmd = _ours_cmd(base_url, f"bench-e2e-{uuid.uuid4().hex[:8]}", pg_dir)
        first = measure(ours_cmd, env, REPO_ROOT).check("ours, first run on the server")  # creates block + PG
        imports_cmd = [sys.executable, str(tmp / "floor_imports.py")]
        measure(floor_cmd, env, tmp).check("floor, first run on the server")
        measure(imports_cmd, env, tmp).check("floor + imports, first run on the server")
        ours_runs, floor_runs, imports_runs, bodies = [], [], [], [flow_body_seconds(api_url, first)]
        for _ in range(max(repeats, 5)):
            ours_runs.append(measure(ours_cmd, env, REPO_ROOT).check("ours, running server"))
            bodies.append(flow_body_seconds(api_url, ours_runs[-1]))
            floor_runs.append(measure(floor_cmd, env, tmp).check("floor, running server"))
            imports_runs.append(measure(imports_cmd, env, tmp).check("floor + imports, running server"))
        note = f"median of {len(ours_runs)}; first run of each discarded; embedded PG not counted"
        figures += _pair("e2e warm, running server (PREFECT_API_URL)", floor_runs, ours_runs, note)
        figures += _pair("e2e warm, running server (PREFECT_API_URL)", imports_runs, ours_runs,
                         note + "; baseline = what importing the product's libraries alone costs",
                         baseline_name=f"same flow + import {PRODUCT_IMPORTS}", target=False)
        figures.append(_flow_body_figure(bodies[1:], "warm, running server, table unchanged"))
        figures.append(_flow_body_figure(bodies[:1], "first run: creates the table", target=False,
                                         name="e2e flow body, first load"))
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per situation (default: 3)")
    ns = parser.parse_args()
    print(format_table(run(smoke=ns.smoke, warm_repeats=ns.repeats)))
