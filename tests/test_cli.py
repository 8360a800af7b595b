"""`python flows/countries.py` as a user runs it: a subprocess, the fake API, real PostgreSQL.

The subprocesses use the session's Prefect server (PREFECT_API_URL is set by
the ``prefect_server`` fixture), so each run costs seconds, not the ephemeral
server's start-up.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from flows import local_db
from tests.conftest import REPO_ROOT, table_rows
from tests.conftest import run_script as run_script_at
from tests.expected import EXPECTED_NORTHERN_EUROPE
from tests.fake_api import FakeRestCountries

SCRIPT = REPO_ROOT / "flows" / "countries.py"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_script_at(SCRIPT, *args, env=env)


def rows_at(url: str, table: str = "northern_europe_countries") -> list[tuple]:
    return table_rows(url, table)


@pytest.fixture
def fake_api():
    with FakeRestCountries() as fake:
        yield fake


@pytest.fixture
def local_dir(tmp_path: Path):
    """A data directory for the embedded server a run may start; stopped afterwards."""
    data_dir = tmp_path / "pg"
    yield data_dir
    local_db.stop(data_dir)


def test_help_documents_every_option():
    result = run_cli("--help")
    assert result.returncode == 0
    for option in ("--regions", "--table", "--db-block", "--api", "--base-url", "--force",
                   "--min-row-fraction", "--cache-minutes", "--local-db-dir"):
        assert option in result.stdout


def test_missing_block_starts_embedded_postgres_and_loads_the_v31_table(prefect_server, fake_api, local_dir):
    block = f"cli-db-{uuid.uuid4().hex[:8]}"
    args = ("--api", "v3.1", "--base-url", fake_api.v31_base_url, "--db-block", block,
            "--local-db-dir", str(local_dir))
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr

    psql_url = re.search(r'psql "(postgresql://[^"]+)"', first.stdout).group(1)
    assert psql_url == local_db.status(local_dir).psql_url  # still running for psql after the run
    assert rows_at(psql_url.replace("postgresql://", "postgresql+psycopg2://")) == EXPECTED_NORTHERN_EUROPE
    assert "Faroese króna" in first.stdout  # the DataFrame is printed
    assert first.stdout.strip().splitlines()[-1].startswith(
        "loaded 20 rows (16 countries, 10 currencies) into public.northern_europe_countries"
    )

    again = run_cli(*args)  # the block now exists and points at the embedded server: reused
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1].startswith("unchanged: 20 rows")


def test_v5_from_environment_variables_loads_the_same_table(prefect_server, fake_api, database_url):
    from prefect.utilities.asyncutils import run_coro_as_sync

    from blocks.create_blocks import connection_from_url, save_db_block

    block = f"cli-db-{uuid.uuid4().hex[:8]}"
    run_coro_as_sync(save_db_block(block, connection_from_url(database_url)))
    result = run_cli(
        "--db-block", block,
        env={"RESTCOUNTRIES_BASE_URL": fake_api.v5_base_url, "RESTCOUNTRIES_API_KEY": fake_api.api_key},
    )
    assert result.returncode == 0, result.stderr
    assert "embedded PostgreSQL" not in result.stdout  # a real block: nothing started
    assert rows_at(database_url) == EXPECTED_NORTHERN_EUROPE
    assert fake_api.count("/countries/v5/subregion/*") == 1


def test_with_prefects_temporary_server_the_error_is_still_the_last_line(fake_api, local_dir, tmp_path):
    """No PREFECT_API_URL: Prefect starts (and at exit stops, logging) a temporary server."""
    with FakeRestCountries(legacy_v31=True) as legacy:
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--api", "v3.1", "--base-url", legacy.v31_base_url,
             "--local-db-dir", str(local_dir)],
            capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=180,
        )
    assert result.returncode == 1
    assert "Stopping temporary server" in result.stderr  # Prefect's own last words came first
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "deprecated" in last and "--api v5" in last


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--regions", "Narnia", "--api", "v3.1"], {}, "Narnia"),
        (["--table", "bad name;"], {}, "invalid table name"),
        (["--api", "v5"], {"RESTCOUNTRIES_API_KEY": "canary-cli-key-0b6e"}, "RESTCOUNTRIES_API_KEY"),
    ],
    ids=["unknown-region", "bad-table", "401"],
)
def test_failure_exits_non_zero_with_the_clear_error_last(prefect_server, fake_api, local_dir, args, env, needle):
    base = fake_api.v5_base_url if "v5" in args else fake_api.v31_base_url
    args = [*args, "--base-url", base, "--db-block", f"cli-db-{uuid.uuid4().hex[:8]}",
            "--local-db-dir", str(local_dir), "--cache-minutes", "0"]
    if "--api" not in args:
        args += ["--api", "v3.1"]
    result = run_cli(*args, env=env)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and needle in last
    assert "canary-cli-key-0b6e" not in result.stdout + result.stderr
