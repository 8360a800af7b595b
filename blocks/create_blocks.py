"""Create or update the Prefect blocks and limits the countries pipeline needs.

Idempotent: run it as often as you like; it overwrites the blocks it manages.

- ``countries-db`` (``--db-block``): a prefect-sqlalchemy ``SqlAlchemyConnector``
  for the target PostgreSQL, from a SQLAlchemy URL (``--db-url``) or from
  ``--host/--port/--user/--database`` with the password read from an
  environment variable (``--password-env``, default ``COUNTRIES_DB_PASSWORD``).
- ``restcountries-api-key``: a ``Secret`` block with the API key, saved when
  the environment variable named by ``--api-key-env`` (default
  ``RESTCOUNTRIES_API_KEY``) is set.
- ``restcountries-api``: the global rate limit every API request takes a slot of.

It talks to the Prefect server in ``PREFECT_API_URL`` (or the local ephemeral
one) and never prints or logs a secret: passwords are stored as secret fields
and shown as ``***``.

Usage::

    python blocks/create_blocks.py --db-url 'postgresql+psycopg2://etl@db.internal:5432/analytics'
    COUNTRIES_DB_PASSWORD=... python blocks/create_blocks.py --host db.internal --user etl --database analytics
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # run as a script from a clone
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect.blocks.system import Secret
from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector, SyncDriver
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from flows import budget
from flows.errors import ConfigurationError, CountriesError

DEFAULT_DB_BLOCK = "countries-db"
API_KEY_BLOCK = "restcountries-api-key"


def connection_from_url(url: str, password: str | None = None) -> ConnectionComponents:
    """Split a SQLAlchemy URL into connection components, the password kept as a secret.

    ``password`` (e.g. from an environment variable) overrides one in the URL.
    Only PostgreSQL with a synchronous driver is accepted; raises
    ``ConfigurationError`` otherwise or when the URL cannot be parsed.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError(
            "--db-url is not a SQLAlchemy URL: expected postgresql+psycopg2://USER@HOST:PORT/DATABASE"
        ) from None
    if parsed.get_backend_name() != "postgresql":
        raise ConfigurationError(
            f"--db-url must point at PostgreSQL (got {parsed.get_backend_name()!r}): "
            "expected postgresql+psycopg2://USER@HOST:PORT/DATABASE"
        )
    driver = SyncDriver.POSTGRESQL_PSYCOPG2
    if parsed.drivername not in ("postgresql", driver.value):
        raise ConfigurationError(
            f"--db-url uses the driver {parsed.drivername!r}; use postgresql+psycopg2:// "
            "(the load bulk-copies through psycopg2)"
        )
    return ConnectionComponents(
        driver=driver,
        username=parsed.username,
        password=password if password is not None else parsed.password,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query={k: v for k, v in parsed.query.items() if isinstance(v, str)} or None,
    )


async def save_db_block(name: str, connection: ConnectionComponents) -> SqlAlchemyConnector:
    """Create or overwrite the ``SqlAlchemyConnector`` block ``name``."""
    block = SqlAlchemyConnector(connection_info=connection)
    await block.asave(name, overwrite=True)
    return block


async def save_api_key_block(api_key: str) -> None:
    """Create or overwrite the ``restcountries-api-key`` Secret block."""
    await Secret(value=api_key).asave(API_KEY_BLOCK, overwrite=True)


def describe(connection: ConnectionComponents) -> str:
    """Where a connection points, without its password."""
    return connection.create_url().render_as_string(hide_password=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python blocks/create_blocks.py",
        description=(
            "Create or update the Prefect blocks of the countries pipeline: the database "
            "connector, the API key secret, and the API rate limit. Safe to re-run."
        ),
    )
    db = p.add_argument_group("database block")
    db.add_argument("--db-block", default=DEFAULT_DB_BLOCK, help="name of the block (default: %(default)s)")
    db.add_argument(
        "--db-url",
        help="SQLAlchemy URL, e.g. postgresql+psycopg2://etl@db.internal:5432/analytics "
        "(a password in it is stored as a secret; prefer --password-env)",
    )
    db.add_argument("--host", help="database host (instead of --db-url)")
    db.add_argument("--port", type=int, default=5432, help="database port (default: %(default)s)")
    db.add_argument("--user", help="database user")
    db.add_argument("--database", help="database name")
    db.add_argument(
        "--password-env",
        default="COUNTRIES_DB_PASSWORD",
        help="environment variable holding the database password (default: %(default)s)",
    )
    api = p.add_argument_group("API key and rate limit")
    api.add_argument(
        "--api-key-env",
        default="RESTCOUNTRIES_API_KEY",
        help="environment variable holding the REST Countries API key; when set, the "
        f"'{API_KEY_BLOCK}' Secret block is saved (default: %(default)s)",
    )
    api.add_argument(
        "--rate-burst",
        type=int,
        default=budget.DEFAULT_BURST,
        help="API requests allowed at once across all runs (default: %(default)s)",
    )
    api.add_argument(
        "--rate-per-second",
        type=float,
        default=budget.DEFAULT_PER_SECOND,
        help="sustained API requests per second across all runs (default: %(default)s)",
    )
    return p


def _connection_from_args(args: argparse.Namespace) -> ConnectionComponents | None:
    password = os.environ.get(args.password_env) or None
    if args.db_url:
        if args.host or args.user or args.database:
            raise ConfigurationError("give either --db-url or --host/--user/--database, not both")
        return connection_from_url(args.db_url, password)
    if args.host or args.user or args.database:
        missing = [f"--{n}" for n in ("host", "user", "database") if not getattr(args, n)]
        if missing:
            raise ConfigurationError(f"missing {', '.join(missing)}: give all of --host, --user and --database")
        return ConnectionComponents(
            driver=SyncDriver.POSTGRESQL_PSYCOPG2,
            username=args.user,
            password=password,
            host=args.host,
            port=args.port,
            database=args.database,
        )
    return None


async def _run(args: argparse.Namespace) -> list[str]:
    done: list[str] = []
    connection = _connection_from_args(args)
    if connection is not None:
        await save_db_block(args.db_block, connection)
        done.append(f"saved block '{args.db_block}' -> {describe(connection)}")
    api_key = os.environ.get(args.api_key_env)
    if api_key:
        await save_api_key_block(api_key)
        done.append(f"saved block '{API_KEY_BLOCK}' from ${args.api_key_env}")
    changed = await budget.ensure_rate_limit(
        burst=args.rate_burst, per_second=args.rate_per_second, update=True
    )
    done.append(
        f"rate limit '{budget.RATE_LIMIT_NAME}': burst {args.rate_burst}, {args.rate_per_second:g}/s"
        + ("" if changed else " (unchanged)")
    )
    return done


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        for line in asyncio.run(_run(args)):
            print(line)
    except CountriesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
