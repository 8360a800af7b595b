"""The local stack (flows/ops/local.py): a real ``prefect server start --background`` and a real embedded PostgreSQL.

The module's tests share one PREFECT_HOME and ``.local`` directory (``COUNTRIES_LOCAL_DIR``)
and one Prefect server where they can. Promised (issue 12 §5, issue 17 §2, the module's
docstring): one background Prefect server per PREFECT_HOME, on 127.0.0.1 only, with a UI
that calls its own port, reused by later runs (two runs at once start one), replaced
when its pid file is stale; ``python -m flows.ops.local status|url|psql|stop`` manages
both servers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg2
import pytest

from flows.ops import local
from tests.conftest import REPO_ROOT


# Starts servers of its own: on one pytest-xdist worker with test_deployment_e2e (group "servers").
pytestmark = pytest.mark.xdist_group("servers")


def test_the_xdist_group_takes_effect(request: pytest.FixtureRequest) -> None:
    """Under ``--dist loadgroup`` (pyproject.toml) this test's id carries its group, by which xdist keeps the group
    on one worker. pytest 9.2 with pytest-xdist 3.8 dropped it silently: the groups were split across workers,
    and each worker that drew a test of test_operations_e2e set up that whole module again."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not run by a pytest-xdist worker with --dist loadgroup")
    assert request.node.nodeid.endswith("@servers"), request.node.nodeid


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """This process and its subprocesses use the module's PREFECT_HOME and .local directory.

    One Prefect server serves the module's tests where they only need one (a test that starts its own
    stops the one before); both servers are stopped at the end.
    """
    from prefect.settings import PREFECT_HOME, temporary_settings

    root = tmp_path_factory.mktemp("stack")
    home, local_dir = root / "prefect-home", root / "local"
    with pytest.MonkeyPatch.context() as patch, temporary_settings(updates={PREFECT_HOME: str(home)}):
        patch.setenv("PREFECT_HOME", str(home))
        patch.setenv(local.LOCAL_DIR_ENV, str(local_dir))
        patch.setenv(local.PREFECT_SERVER_ENV, "1")
        patch.delenv("PREFECT_API_URL", raising=False)
        try:
            yield dict(os.environ)
        finally:
            local.stop_prefect_server()
            local.stop_database()


def manage(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.ops.local", *args],
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


def ensure_in_a_subprocess(env: dict[str, str]) -> subprocess.Popen:
    code = "from flows.ops import local; s, started = local.ensure_prefect_server(); print(s.pid, s.port, started)"
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)


def test_one_background_server_per_prefect_home_reused_and_replaced_when_its_pid_is_stale(stack_env):
    local.stop_prefect_server()
    # Two runs at once: one starts the server, the other waits for it; both get the same one.
    runs = [ensure_in_a_subprocess(stack_env) for _ in range(2)]
    outputs = [run.communicate(timeout=300)[0].split() for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    assert outputs[0][:2] == outputs[1][:2] and sorted(o[2] for o in outputs) == ["False", "True"], outputs
    first = local.LocalPrefectServer(pid=int(outputs[0][0]), port=int(outputs[0][1]))
    pid_file = Path(stack_env["PREFECT_HOME"]) / local.PID_FILE  # Prefect's own record of its background server
    assert int(pid_file.read_text()) == first.pid

    assert local.ensure_prefect_server() == (first, False)  # alive and answering: reused
    assert local.prefect_server_status() == first

    # The pid file names a live process that is no Prefect server: it is left alone, and a new server started.
    pid_file.write_text(str(os.getpid()))
    second, started = local.ensure_prefect_server()
    assert started and second.pid not in (first.pid, os.getpid())
    assert is_running(first.pid)  # not ours any more: the pid file no longer names it
    os.kill(first.pid, signal.SIGTERM)

    # The recorded server was killed without clean-up: a new server.
    os.kill(second.pid, signal.SIGKILL)
    psutil.Process(second.pid).wait(timeout=30)
    third, started = local.ensure_prefect_server()
    assert started and third.pid != second.pid
    assert local.prefect_server_status() == third


def test_the_prefect_server_listens_on_localhost_only_its_ui_calls_its_own_port_and_it_survives_ctrl_c(stack_env):
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
    # Not the default port 4200: the UI must be told where its API is, or it comes up blank (issue 16 §8).
    assert httpx.get(f"{server.ui_url}/ui-settings", timeout=30).json()["api_url"] == server.api_url
    # A Ctrl-C in the terminal of the run that started it does not reach it: it is in a session of its own.
    assert os.getsid(server.pid) != os.getsid(0)


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
