"""The local stack (flows/local.py): a real ``prefect server start`` and a real embedded PostgreSQL.

Each test uses its own PREFECT_HOME and ``.local`` directory (``COUNTRIES_LOCAL_DIR``)
and stops what it started. Promised (issue 12 §5, the module's docstring): the
Prefect server listens on 127.0.0.1 only, serves the user's PREFECT_HOME, is
reused while its pid is alive and its port answers as that server, and is
replaced when the pid is dead or the port answers something else; only its pid
and port are kept; ``python -m flows.local status|url|psql|stop`` manages both
servers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import psycopg2
import pytest

from flows.ops import local
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PREFECT_HOME of this module's tests (its database is created once, by the first server)."""
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture
def stack_env(prefect_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """This process and its subprocesses use the module's PREFECT_HOME and a fresh .local directory.

    Both servers are stopped afterwards.
    """
    from prefect.settings import PREFECT_HOME, temporary_settings

    home, local_dir = prefect_home, tmp_path / "local"
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.setenv(local.LOCAL_DIR_ENV, str(local_dir))
    monkeypatch.setenv(local.PREFECT_SERVER_ENV, "1")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(updates={PREFECT_HOME: str(home)}):
        try:
            yield dict(os.environ)
        finally:
            local.stop_prefect_server()
            local.stop_database()


def manage(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.local", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
        input=stdin,
    )


def is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class _NotPrefect(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"hello": "not a Prefect server"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def other_service() -> Iterator[int]:
    """The port of an HTTP service on 127.0.0.1 that answers 200 to everything, but is no Prefect server."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotPrefect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_the_prefect_server_is_reused_and_replaced_when_its_pid_dies_or_its_port_answers_something_else(
    stack_env, other_service
):
    first, started = local.ensure_prefect_server()
    assert started
    state_file = Path(stack_env[local.LOCAL_DIR_ENV]) / "prefect-server.json"
    assert json.loads(state_file.read_text()) == {"pid": first.pid, "port": first.port}  # only pid and port

    assert local.ensure_prefect_server() == (first, False)  # alive and answering: reused

    # The port recorded answers, but as something else: a new server; ours at that pid is stopped.
    state_file.write_text(json.dumps({"pid": first.pid, "port": other_service}))
    second, started = local.ensure_prefect_server()
    assert started and second.port != other_service and second.pid != first.pid
    assert not is_running(first.pid)

    # The recorded pid is dead (killed, no clean-up): a new server.
    os.killpg(second.pid, signal.SIGKILL)
    psutil.Process(second.pid).wait(timeout=30)
    third, started = local.ensure_prefect_server()
    assert started and third.pid != second.pid
    assert local.prefect_server_status() == third


def test_the_prefect_server_listens_on_localhost_only_and_serves_this_prefect_home(stack_env):
    import httpx

    server, _ = local.ensure_prefect_server()
    listening = [
        c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port
    ]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)
    settings = httpx.get(f"{server.api_url}/admin/settings", timeout=30).json()
    assert Path(settings["home"]) == Path(stack_env["PREFECT_HOME"])
    assert settings["server"]["analytics_enabled"] is False  # offline: no telemetry
    assert settings["server"]["concurrency"]["lease_storage"].endswith("lease_storage.filesystem")
    ui = httpx.get(server.ui_url, timeout=30)
    assert ui.status_code == 200 and "text/html" in ui.headers["content-type"]
    assert httpx.get(f"{server.ui_url}/ui-settings", timeout=30).json()["api_url"] == server.api_url  # the UI's API


def test_the_embedded_postgresql_stops_and_restarts_in_the_same_process(stack_env, tmp_path):
    data_dir = tmp_path / "pg"
    db = local.ensure_database(data_dir)
    assert local.database_status(data_dir) == db
    first_pid = (data_dir / "postmaster.pid").read_text().split()[0]

    assert local.stop_database(data_dir)
    assert local.database_status(data_dir) is None
    assert not local.stop_database(data_dir)  # already stopped

    again = local.ensure_database(data_dir)  # the data directory is kept: the same database, a new server
    assert again == db
    assert (data_dir / "postmaster.pid").read_text().split()[0] != first_pid
    local.stop_database(data_dir)


def test_status_url_psql_and_stop_manage_both_servers(stack_env):
    server, _ = local.ensure_prefect_server()
    db = local.ensure_database()

    status = manage("status", env=stack_env)
    assert status.returncode == 0, status.stderr
    assert server.ui_url in status.stdout and db.psql_url in status.stdout

    url = manage("url", env=stack_env)
    assert url.returncode == 0 and url.stdout.strip() == db.psql_url
    conn = psycopg2.connect(url.stdout.strip())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            assert cur.fetchone() == ("countries",)
    finally:
        conn.close()

    psql = manage("psql", env=stack_env, stdin="SELECT current_database();\n")
    assert psql.returncode == 0, psql.stderr
    assert "countries" in psql.stdout

    stop = manage("stop", env=stack_env)
    assert stop.returncode == 0, stop.stderr
    assert not is_running(server.pid)
    assert local.database_status() is None
    after = manage("status", env=stack_env)
    assert after.returncode == 1 and after.stdout.count("not running") == 2
    missing = manage("url", env=stack_env)
    assert missing.returncode == 1 and missing.stdout == ""
    assert len(missing.stderr.strip().splitlines()) == 1 and missing.stderr.startswith("error: ")
