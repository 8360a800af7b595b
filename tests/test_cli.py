"""The command line as a user runs it: ``python flows/countries.py`` (and ``countries``) in a subprocess.

Real parts only: the fake REST Countries API on 127.0.0.1 (tests/fake_api.py),
the embedded PostgreSQL, and a real Prefect server -- the local stack the
command starts itself (in a temporary PREFECT_HOME and ``.local`` directory,
stopped afterwards), the session's server (``prefect_server``), or Prefect's
temporary server.

What is promised (issue 12, ``--help``): a mistake that needs no network is
one ``error:`` line on stderr, nothing else, exit status 2, no server started
and no request sent; a missing API key is found before the database starts
and before any request; a mistyped ``--db-block`` is an error that lists the
blocks that exist; without ``--table`` the table is named after the regions;
the first local run starts a Prefect server and an embedded PostgreSQL and
later runs reuse both; the summary is the last line.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import REPO_ROOT, free_port, table_rows
from tests.countries_data import COUNTRIES
from tests.e2e_support import wait_for
from tests.expected import EXPECTED_NORTHERN_EUROPE
from tests.fake_api import FakeRestCountries, Fault
from tests.prefect_servers import clean_env

SCRIPT = REPO_ROOT / "flows" / "countries.py"
CONSOLE_SCRIPT = Path(sys.executable).parent / "countries"
OPTIONS = (
    "--regions",
    "--table",
    "--db-block",
    "--api",
    "--base-url",
    "--force",
    "--min-row-fraction",
    "--cache-minutes",
    "--strategy",
    "--local-db-dir",
)
CANARY_KEY = "canary-cli-key-5d1f"

# The tests of the module's local stack (fixture ``stack``, a Prefect server and an embedded PostgreSQL started by a
# first run) are on one pytest-xdist worker (group "cli"): the stack is then started once, not once on every worker
# that draws one of its tests. The other tests of the module go to any worker.
on_the_stack = pytest.mark.xdist_group("cli")


def run_cli(
    *args: str, env: dict[str, str], command: tuple[str, ...] = (sys.executable, str(SCRIPT)), timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=timeout)


def stderr_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def psql_url(stdout: str) -> str:
    """The database URL the run printed for psql, as a SQLAlchemy URL (psycopg2)."""
    url = re.search(r'psql "(postgresql://[^"]+)"', stdout).group(1)
    return url.replace("postgresql://", "postgresql+psycopg2://", 1)


def ui_url(stdout: str) -> str:
    return re.search(r"Prefect UI: (http://\S+)", stdout).group(1)


def block_names(api_url: str) -> list[str]:
    """The SqlAlchemyConnector blocks on a Prefect server, read through its REST API."""
    response = httpx.get(
        f"{api_url}/block_types/slug/sqlalchemy-connector/block_documents",
        params={"include_secrets": "false"},
        timeout=30,
    )
    if response.status_code == 404:  # the block type was never registered
        return []
    response.raise_for_status()
    return sorted(d["name"] for d in response.json())


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeRestCountries]:
    with FakeRestCountries() as api:
        yield api


@pytest.fixture
def fake_api(fake: FakeRestCountries) -> FakeRestCountries:
    fake.reset()
    return fake


@dataclass(frozen=True)
class Stack:
    """A local stack in temporary directories, and the output of the run that started it."""

    env: dict[str, str]
    local_dir: Path
    first: subprocess.CompletedProcess

    def server_pid(self) -> int:
        """The pid of this PREFECT_HOME's background Prefect server (``prefect server start --background``)."""
        return int((Path(self.env["PREFECT_HOME"]) / "server.pid").read_text())


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, fake: FakeRestCountries) -> Iterator[Stack]:
    """The first local run in a fresh PREFECT_HOME and .local directory: it starts both servers.

    Both are stopped afterwards with ``python -m flows.ops.local stop``.
    """
    root = tmp_path_factory.mktemp("stack")
    env = clean_env(
        PREFECT_HOME=root / "prefect-home", COUNTRIES_LOCAL_DIR=root / "local", COUNTRIES_LOCAL_PREFECT_SERVER="1"
    )
    try:
        first = run_cli("--api", "v3.1", "--base-url", fake.v31_base_url, "--cache-minutes", "0", env=env)
        yield Stack(env=env, local_dir=root / "local", first=first)
    finally:
        subprocess.run(
            [sys.executable, "-m", "flows.ops.local", "stop"], env=env, cwd=REPO_ROOT, timeout=120, capture_output=True
        )


# --- fail fast: one line, nothing started, nothing sent --------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--table", "my-table"], "--table"),
        (["--min-row-fraction", "5"], "--min-row-fraction"),
        (["--cache-minutes", "-1"], "--cache-minutes"),
        (["--cache-minutes", "inf"], "--cache-minutes inf: input should be a finite number"),
        (["--base-url", "not a url"], "--base-url"),
        (["--regions", " "], "region"),
        (["--api", "v4"], "--api"),
        (["--regions"], "--regions must name regions"),
        (["--tabel", "t"], "--tabel"),
        (["Europe"], "unexpected 'europe': a value follows its option"),
        (["--force", "false"], "unexpected 'false': a value follows its option, a flag takes none"),
    ],
    ids=[
        "table-name",
        "min-row-fraction",
        "cache-minutes",
        "cache-minutes-inf",
        "base-url",
        "blank-region",
        "api",
        "no-region",
        "unknown-option",
        "positional",
        "flag-value",
    ],
)
def test_a_mistake_is_one_error_line_before_any_server_or_request(fake_api, tmp_path, args, option):
    local_dir = tmp_path / "local"
    env = clean_env(
        PREFECT_HOME=tmp_path / "prefect-home",
        COUNTRIES_LOCAL_DIR=local_dir,
        COUNTRIES_LOCAL_PREFECT_SERVER="1",
        RESTCOUNTRIES_API_KEY=CANARY_KEY,
    )
    to_fake = [] if "--base-url" in args else ["--base-url", fake_api.v5_base_url]  # a request would reach the fake
    result = run_cli(*args, *to_fake, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert option in lines[0].lower()
    assert result.stdout == ""
    assert fake_api.requests == []
    assert not (tmp_path / "prefect-home" / "server.pid").exists()  # no Prefect server started
    assert not (local_dir / "postgres").exists()  # no PostgreSQL started
    assert CANARY_KEY not in result.stdout + result.stderr


@on_the_stack
def test_a_missing_api_key_is_found_before_the_database_and_any_request(stack, fake_api):
    # A block name that does not exist: had the database been looked at first, that would be the error.
    result = run_cli("--api", "v5", "--base-url", fake_api.v5_base_url, "--db-block", "no-such-block", env=stack.env)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "RESTCOUNTRIES_API_KEY" in lines[0] and "no-such-block" not in lines[0]
    assert fake_api.requests == []


@pytest.mark.parametrize("key", [None, "rc_live_demo", "two words"], ids=["no-key", "demo-key", "unsendable-key"])
def test_on_a_fresh_machine_a_key_problem_is_one_line_before_any_server_starts(fake_api, tmp_path, key):
    """The newcomer's first run without a key (or with the docs' demo key): nothing to start, nothing to ask."""
    local_dir, home = tmp_path / "local", tmp_path / "prefect-home"
    env = clean_env(PREFECT_HOME=home, COUNTRIES_LOCAL_DIR=local_dir, COUNTRIES_LOCAL_PREFECT_SERVER="1")
    if key:
        env["RESTCOUNTRIES_API_KEY"] = key
    result = run_cli("--base-url", fake_api.v5_base_url, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    expected = {None: "no REST Countries API key", "rc_live_demo": "demo key", "two words": "contains spaces"}
    assert expected[key] in lines[0]
    assert "RESTCOUNTRIES_API_KEY" in lines[0]
    assert result.stdout == ""
    assert fake_api.requests == []
    assert not (home / "server.pid").exists()  # no Prefect server started
    assert not (local_dir / "postgres").exists()  # no PostgreSQL started
    assert not (home / "prefect.db").exists()  # nor Prefect's temporary server


@on_the_stack
def test_a_mistyped_block_lists_the_blocks_that_exist_and_creates_none(stack, fake_api):
    assert stack.first.returncode == 0, stack.first.stderr
    api_url = ui_url(stack.first.stdout) + "/api"
    before = block_names(api_url)
    assert "countries-db" in before  # the first run saved the default block for the embedded PostgreSQL

    result = run_cli("--api", "v3.1", "--base-url", fake_api.v31_base_url, "--db-block", "countries-dbb", env=stack.env)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "'countries-dbb'" in lines[0]
    listed = lines[0].split("'countries-dbb'", 1)[1]
    assert all(name in listed for name in before)
    assert block_names(api_url) == before  # nothing saved on the server
    assert fake_api.requests == []  # and nothing fetched


@on_the_stack
def test_a_local_db_dir_the_run_would_not_use_is_an_error_not_ignored(stack, fake_api, tmp_path):
    """The default block already points at the first run's embedded PostgreSQL: another directory is refused."""
    assert stack.first.returncode == 0, stack.first.stderr
    other = tmp_path / "other-pg"
    result = run_cli("--api", "v3.1", "--base-url", fake_api.v31_base_url, "--local-db-dir", str(other), env=stack.env)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith(f"error: --local-db-dir {other} is not used"), result.stderr
    assert not other.exists()  # no PostgreSQL started there
    assert fake_api.requests == []


# --- the local stack -------------------------------------------------------------------------


@on_the_stack
def test_the_first_local_run_starts_both_servers_and_loads_the_table(stack):
    result = stack.first
    assert result.returncode == 0, result.stderr
    assert "starting a local Prefect server" in result.stdout
    assert last_line(result.stdout).startswith("loaded public.northern_europe_countries at ")
    assert ": 0 rows deleted, 20 inserted (+16 countries), 20 rows in the table; 1 API request" in last_line(
        result.stdout
    )
    assert "Faroese króna" in result.stdout  # the table is printed before the summary
    assert table_rows(psql_url(result.stdout), "northern_europe_countries") == EXPECTED_NORTHERN_EUROPE

    # The Prefect server: on 127.0.0.1 only, with the UI, serving this PREFECT_HOME.
    ui = ui_url(result.stdout)
    port = int(ui.rsplit(":", 1)[1])
    assert ui.startswith("http://127.0.0.1:")
    listening = [
        c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)
    assert {c.pid for c in listening} == {stack.server_pid()}
    page = httpx.get(ui, timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    served = httpx.get(f"{ui}/api/admin/settings", timeout=30).json()
    assert Path(served["home"]) == Path(stack.env["PREFECT_HOME"])


@on_the_stack
def test_a_warm_run_reuses_the_local_servers(stack, fake_api):
    assert stack.first.returncode == 0, stack.first.stderr
    server_pid = stack.server_pid()
    pg_pid = (stack.local_dir / "postgres" / "postmaster.pid").read_text().split()[0]

    again = run_cli("--api", "v3.1", "--base-url", fake_api.v31_base_url, "--cache-minutes", "0", env=stack.env)
    assert again.returncode == 0, again.stderr
    assert "starting" not in again.stdout
    assert ui_url(again.stdout) == ui_url(stack.first.stdout)
    assert psql_url(again.stdout) == psql_url(stack.first.stdout)
    assert stack.server_pid() == server_pid
    assert (stack.local_dir / "postgres" / "postmaster.pid").read_text().split()[0] == pg_pid
    assert last_line(again.stdout).startswith("unchanged: 20 rows")
    assert fake_api.count("/v3.1/subregion/*") == 1

    # --force loads again and writes nothing: the table is printed only when the run changed it (--help).
    forced = run_cli("--api", "v3.1", "--base-url", fake_api.v31_base_url, "--force", env=stack.env)
    assert forced.returncode == 0, forced.stderr
    assert last_line(forced.stdout).startswith("unchanged: 20 rows") and "Faroese króna" not in forced.stdout


@on_the_stack
def test_without_table_the_table_is_named_after_the_regions(stack, fake_api):
    assert stack.first.returncode == 0, stack.first.stderr
    result = run_cli(
        "--regions",
        "Europe",
        "Asia",
        "--api",
        "v3.1",
        "--base-url",
        fake_api.v31_base_url,
        "--cache-minutes",
        "0",
        env=stack.env,
    )
    assert result.returncode == 0, result.stderr
    assert last_line(result.stdout).startswith("loaded public.europe_asia_countries at ")
    url = psql_url(result.stdout)
    names = {row[0] for row in table_rows(url, "europe_asia_countries")}
    assert names == {c["name"]["official"] for c in COUNTRIES if c.get("region") in ("Europe", "Asia")}
    assert table_rows(url, "northern_europe_countries") == EXPECTED_NORTHERN_EUROPE  # untouched


# --- other Prefect servers ------------------------------------------------------------------


def test_prefect_api_url_wins_over_the_local_server(prefect_server, db_block, fake_api, tmp_path):
    name, database_url = db_block
    local_dir = tmp_path / "local"
    env = clean_env(
        PREFECT_API_URL=prefect_server.api_url,
        COUNTRIES_LOCAL_DIR=local_dir,
        COUNTRIES_LOCAL_PREFECT_SERVER="1",
        RESTCOUNTRIES_BASE_URL=fake_api.v5_base_url,
        RESTCOUNTRIES_API_KEY=fake_api.api_key,
    )
    result = run_cli("--db-block", name, "--cache-minutes", "0", env=env)
    assert result.returncode == 0, result.stderr
    assert not local_dir.exists()  # neither local server started
    assert ui_url(result.stdout) == prefect_server.api_url.removesuffix("/api")
    assert "embedded PostgreSQL" not in result.stdout  # a named, existing block: nothing started
    assert table_rows(database_url, "northern_europe_countries") == EXPECTED_NORTHERN_EUROPE
    assert fake_api.count("/countries/v5/subregion/*") == 1
    assert fake_api.api_key not in result.stdout + result.stderr


def test_a_prefect_api_url_that_does_not_answer_is_one_error_line(fake_api, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}/api"
    env = clean_env(PREFECT_API_URL=closed, COUNTRIES_LOCAL_DIR=tmp_path / "local", COUNTRIES_LOCAL_PREFECT_SERVER="1")
    result = run_cli("--api", "v3.1", "--base-url", fake_api.v31_base_url, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: ") and closed in lines[0], result.stderr
    assert fake_api.requests == []
    assert not (tmp_path / "local").exists()  # neither local server started


def test_with_prefects_temporary_server_the_error_is_still_the_last_line(tmp_path):
    """Local server turned off, no PREFECT_API_URL: Prefect's temporary server, stopped before the last line."""
    with FakeRestCountries(legacy_v31=True) as legacy:
        env = clean_env(
            PREFECT_HOME=tmp_path / "prefect-home",
            COUNTRIES_LOCAL_DIR=tmp_path / "local",
            COUNTRIES_LOCAL_PREFECT_SERVER="0",
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        )
        result = run_cli(
            "--api", "v3.1", "--base-url", legacy.v31_base_url, "--local-db-dir", str(tmp_path / "pg"), env=env
        )
    try:
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Stopping temporary server" in result.stderr  # Prefect's own last words came first
        last = last_line(result.stderr)
        assert last.startswith("error: ") and "--api v5" in last
        assert result.stderr.count(last) == 1
        assert not (tmp_path / "prefect-home" / "server.pid").exists()
    finally:
        subprocess.run(
            [sys.executable, "-m", "flows.ops.local", "stop", "--data-dir", str(tmp_path / "pg")],
            env=env,
            cwd=REPO_ROOT,
            timeout=120,
            capture_output=True,
        )


# --- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [(sys.executable, str(SCRIPT)), (str(CONSOLE_SCRIPT),)], ids=["python flows/countries.py", "countries"]
)
def test_help_documents_every_option_with_its_range_and_default(command):
    result = run_cli("--help", env=clean_env(), command=command, timeout=120)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.replace("│", " ").split())  # the help is wrapped in a panel
    for option in OPTIONS:
        assert option in text
    assert "--regions STR..." in text  # several values after one flag
    assert "[choices: v5, v3.1]" in text
    assert "from 0 to 1 (0.5 = refuse to lose more than half; 0 = never refuse). [default: 0.5]" in text
    assert "0 or more (0 = always fetch)" in text and "[default: 4.0]" in text  # --cache-minutes
    assert "[default: countries-db]" in text
    assert "[default: ['Northern Europe']]" in text
    assert "Exit status" in text


# --- interrupts (issue 16 §6) -----------------------------------------------------------------

KEPT_ROWS = [("Kept Republic", "Kept crown", 7)]


def kept_table(database_url: str, table: str) -> None:
    """A table of the flow's columns holding ``KEPT_ROWS``: a load would change it."""
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"CREATE TABLE {table} (nation_official_name text, currency_name text, population bigint)")
        )
        conn.execute(sa.text(f"INSERT INTO {table} VALUES ('Kept Republic', 'Kept crown', 7)"))
    engine.dispose()


def start_cli(*args: str, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)


def flow_run_state(api_url: str, run_name: str) -> str:
    """The state name of the flow run called ``run_name`` on the Prefect server at ``api_url``."""
    response = httpx.post(
        f"{api_url}/flow_runs/filter", json={"flow_runs": {"name": {"any_": [run_name]}}, "limit": 1}, timeout=30
    )
    response.raise_for_status()
    (run,) = response.json()
    return run["state"]["name"]


def assert_interrupted(proc: subprocess.Popen, stdout: str, stderr: str, status: int) -> None:
    """Exit status ``status``, the one line last, no traceback."""
    output = stdout + stderr
    assert proc.returncode == status, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output and "TerminationSignal" not in output
    assert last_line(stderr) == "interrupted: the table was not changed", output
    assert output.count("interrupted") == 1


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_is_one_line_and_leaves_the_table_as_it_was(prefect_server, db_block, fake_api, signum, status):
    """Ctrl-C (or a SIGTERM) while a region is being fetched: one line, exit 128+signal, the run Crashed."""
    name, database_url = db_block
    table = f"kept_{signum}"
    kept_table(database_url, table)
    fake_api.inject("/v3.1/subregion/*", Fault.hang())
    env = clean_env(PREFECT_API_URL=prefect_server.api_url, COUNTRIES_LOCAL_PREFECT_SERVER="1")
    args = ("--api", "v3.1", "--base-url", fake_api.v31_base_url, "--db-block", name, "--table", table)
    proc = start_cli(*args, "--cache-minutes", "0", env=env)
    try:
        wait_for("the fetch to reach the API", lambda: fake_api.count("/v3.1/subregion/*"), time.monotonic() + 120)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert_interrupted(proc, stdout, stderr, status)
    assert table_rows(database_url, table) == KEPT_ROWS
    assert flow_run_state(prefect_server.api_url, f"{table} ← Northern Europe") in ("Crashed", "Cancelled")


def test_ctrl_c_while_the_load_waits_for_a_lock_rolls_the_load_back(prefect_server, db_block, fake_api):
    """Issue 16 §6: the load waits for a lock a user's open transaction holds; Ctrl-C; then the lock is freed.
    The load must not commit after the interrupt (before: the CLI exited and the load went on and committed)."""
    import sqlalchemy as sa

    name, database_url = db_block
    kept_table(database_url, "kept_locked")
    engine = sa.create_engine(database_url)
    user, watcher = engine.connect(), engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    user_transaction = user.begin()
    user.execute(sa.text("INSERT INTO kept_locked VALUES ('Row of a user', NULL, 1)"))  # holds ROW EXCLUSIVE
    waiting = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND query LIKE 'LOCK TABLE%'"
    )

    def load_waits() -> bool:
        return watcher.execute(waiting).scalar() > 0

    env = clean_env(PREFECT_API_URL=prefect_server.api_url, COUNTRIES_LOCAL_PREFECT_SERVER="1")
    args = ("--api", "v3.1", "--base-url", fake_api.v31_base_url, "--db-block", name, "--table", "kept_locked")
    proc = start_cli(*args, "--cache-minutes", "0", env=env)
    try:
        wait_for("the load to wait for the lock", load_waits, time.monotonic() + 120)
        proc.send_signal(signal.SIGINT)
        wait_for("the load to stop waiting", lambda: not load_waits(), time.monotonic() + 60)
        user_transaction.rollback()  # the lock is free: a load still going on would now commit
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        user.close()
        watcher.close()
        engine.dispose()
    assert_interrupted(proc, stdout, stderr, 130)
    assert table_rows(database_url, "kept_locked") == KEPT_ROWS
