"""The blocks the flow and ``blocks/create_blocks.py`` share, read and saved (never logging a secret): the
database's ``SqlAlchemyConnector``, the API key's ``Secret``, the operator's :class:`CountriesSettings`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefect.blocks.core import Block
from pydantic import Field

from flows.errors import ConfigurationError, setting
from flows.load.database import PSYCOPG2_DRIVERS, Database, TableName, resolve_table
from flows.source.dialects import API_KEY_BLOCK, API_KEY_ENV

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient

DEFAULT_DB_BLOCK = "countries-db"
DB_BLOCK_TYPE = "sqlalchemy-connector"  # prefect-sqlalchemy's SqlAlchemyConnector
SETTINGS_BLOCK = "countries-settings"

# What the operations automations use for a setting not saved.
OPERATIONS_DEFAULTS = {"stale_after_intervals": 2.0, "crash_after_seconds": 90.0, "rerun_window_minutes": 60.0}

BASE_URL_ENV = "RESTCOUNTRIES_BASE_URL"


class CountriesSettings(Block):
    """Operator settings, saved by ``python blocks/create_blocks.py``; an empty field means the default."""

    _block_type_name = "Countries Pipeline Settings"
    _block_type_slug = "countries-pipeline-settings"
    _description = (
        "Operator settings of the countries pipeline: the REST Countries base URL trusted with the "
        "API key, and the operations alerts (set with python blocks/create_blocks.py)."
    )

    base_url: str | None = Field(
        default=None,
        description="REST Countries base URL that runs use when their base_url is empty and that is trusted with "
        "the API key (a self-hosted server or a proxy).",
    )
    notify_block: str | None = Field(
        default=None,
        description="Notification block (NAME or TYPE-SLUG/NAME: Slack, webhook, e-mail...) told when a "
        "deployment's table goes stale (default: no alerts).",
    )
    stale_after_intervals: float | None = Field(
        default=None,
        description="A table is stale after this many schedule intervals without a completed run, more than 1 "
        f"(default {OPERATIONS_DEFAULTS['stale_after_intervals']:g}).",
    )
    crash_after_seconds: float | None = Field(
        default=None,
        description="A deployment run is marked Crashed after this many seconds without a heartbeat, at least 60 "
        f"(default {OPERATIONS_DEFAULTS['crash_after_seconds']:g}: 3 heartbeats of 30 s).",
    )
    rerun_window_minutes: float | None = Field(
        default=None,
        description="A crashed deployment run is rerun at once, at most once per deployment in this many minutes "
        f"(default {OPERATIONS_DEFAULTS['rerun_window_minutes']:g}).",
    )


def prefect_api_unreachable(exc: BaseException, advice: str) -> ConfigurationError:
    """The one-line error for a Prefect API that does not answer (``exc``), with ``advice``."""
    from prefect.settings import get_current_settings

    return ConfigurationError(
        f"the Prefect API at {get_current_settings().api.url} does not answer ({exc or type(exc).__name__}): {advice}"
    )


def connection_from_url(url: str, password: str | None = None):
    """A psycopg2 URL as ``ConnectionComponents`` with ``password`` or the URL's; else ``ConfigurationError``."""
    from prefect_sqlalchemy import ConnectionComponents, SyncDriver
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    option = setting("db_url")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigurationError(
            f"{option} is not a SQLAlchemy URL: expected postgresql+psycopg2://USER@HOST:PORT/DATABASE"
        ) from None
    if parsed.drivername not in PSYCOPG2_DRIVERS:
        raise ConfigurationError(
            f"{option} must point at PostgreSQL through psycopg2, the driver the load bulk-copies with (got "
            f"{parsed.drivername!r}): use postgresql+psycopg2://USER@HOST:PORT/DATABASE"
        )
    repeated = sorted(k for k, v in parsed.query.items() if not isinstance(v, str))
    if repeated:
        raise ConfigurationError(
            f"{option} names {', '.join(map(repr, repeated))} more than once in its query, which the database "
            "block cannot hold: write several hosts as ?host=h1,h2&port=p1,p2"
        )
    query = dict(parsed.query)
    in_query = query.pop("password", None)  # libpq reads one there too: kept as the secret
    if password is None:
        password = parsed.password if parsed.password is not None else in_query
    parts = {k: getattr(parsed, k) for k in ("username", "host", "port", "database")}
    return ConnectionComponents(driver=SyncDriver.POSTGRESQL_PSYCOPG2, password=password, query=query or None, **parts)


async def save_db_block(name: str, connection) -> None:
    """Create or overwrite the ``SqlAlchemyConnector`` block ``name``."""
    from prefect_sqlalchemy import SqlAlchemyConnector

    await SqlAlchemyConnector(connection_info=connection).asave(name, overwrite=True)


async def db_block_names(client: PrefectClient) -> list[str]:
    """The names of the ``SqlAlchemyConnector`` blocks on the Prefect server of ``client``, sorted."""
    from prefect.exceptions import ObjectNotFound

    try:
        documents = await client.read_block_documents_by_type(DB_BLOCK_TYPE, include_secrets=False)
    except ObjectNotFound:  # the block type was never registered: there are none
        return []
    return sorted(d.name for d in documents if d.name and not d.is_anonymous)


async def no_db_block_error(name: str, client: PrefectClient) -> ConfigurationError:
    """The error for a database block ``name`` that does not exist: it lists the blocks that do."""
    names = await db_block_names(client)
    listing = f"the SqlAlchemyConnector blocks are: {', '.join(names)}" if names else "there are none"
    return ConfigurationError(
        f"no database block named '{name}' on the Prefect server ({listing}): check {setting('db_block')}, "
        f"or create it with `python blocks/create_blocks.py --db-block {name} "
        "--db-url postgresql+psycopg2://USER@HOST:PORT/DATABASE`"
    )


def block_database(
    connection_info: Any, connect_args: Mapping[str, Any] | None = None, block: str | None = None
) -> Database:
    """The database of a ``SqlAlchemyConnector`` document's fields (as prefect-sqlalchemy reads them), or
    ``ConfigurationError`` (never quoting the password)."""
    problem = "must be a SQLAlchemy URL or connection components with a driver"
    try:
        if isinstance(connection_info, str):
            return Database.from_url(connection_info, connect_args, block=block)
        if isinstance(connection_info, Mapping) and (driver := connection_info.get("driver")):
            parts = {k: connection_info.get(k) for k in ("username", "host", "port", "database")}
            port = parts["port"]
            if not (port is None or isinstance(port, int) or str(port).isdigit()):
                raise TypeError("port")
            parts.update(password=connection_info.get("password") or None, query=connection_info.get("query") or {})
            driver = str(getattr(driver, "value", driver))
            return Database(driver, connect_args=connect_args or {}, block=block, **parts)
    except TypeError:
        problem = "has a component of the wrong type (port must be a number, query text values)"
    except ValueError as exc:  # its messages never hold the password
        problem = str(exc)
    raise ConfigurationError(
        f"the database block's connection_info {problem}: save the block again with "
        "`python blocks/create_blocks.py --db-url postgresql+psycopg2://USER@HOST:PORT/DATABASE`"
    )


async def db_block_database(name: str) -> Database:
    """The database of the block ``name``; ``ConfigurationError`` naming the blocks that exist when it does not."""
    # Not SqlAlchemyConnector.load: importing SQLAlchemy and prefect-sqlalchemy adds 0.7-1.1 s to a warm run.
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            document = await client.read_block_document_by_name(name, DB_BLOCK_TYPE, include_secrets=True)
        except ObjectNotFound:
            raise await no_db_block_error(name, client) from None
    data = document.data
    return block_database(data.get("connection_info"), data.get("connect_args"), block=name)


async def load_api_key() -> str | None:
    """The REST Countries API key: ``$RESTCOUNTRIES_API_KEY``, else the Secret block, else None."""
    if key := os.environ.get(API_KEY_ENV, "").strip():
        return key
    from prefect.blocks.system import Secret

    try:
        secret = await Secret.aload(API_KEY_BLOCK)
    except ValueError:  # Prefect's "Unable to find block document named ..."
        return None
    return str(secret.get()) or None


async def load_settings() -> CountriesSettings:
    """The saved operator settings, or empty ones (every field None) when none were saved."""
    try:
        return await CountriesSettings.aload(SETTINGS_BLOCK)
    except ValueError:  # not saved yet
        return CountriesSettings()


def _clean(url: str | None) -> str | None:
    url = (url or "").strip().rstrip("/")
    return url or None


def trusted_base_urls(saved: CountriesSettings) -> list[str]:
    """The base URLs trusted with the key: ``$RESTCOUNTRIES_BASE_URL``, unless the flow run's ``env`` job variables
    set it, and ``saved.base_url``; never the run's parameter."""
    from prefect.runtime import flow_run

    job_variables = flow_run.job_variables
    env = job_variables.get("env") if isinstance(job_variables, Mapping) else None
    overridden = isinstance(env, Mapping) and BASE_URL_ENV in env
    urls = [None if overridden else _clean(os.environ.get(BASE_URL_ENV)), _clean(saved.base_url)]
    return list(dict.fromkeys(u for u in urls if u))


def resolve_base_url(base_url: str | None, public_url: str, saved: CountriesSettings) -> str:
    """The first set of ``base_url`` (the run's), ``$RESTCOUNTRIES_BASE_URL``, ``saved.base_url``, ``public_url``."""
    return _clean(base_url) or _clean(os.environ.get(BASE_URL_ENV)) or _clean(saved.base_url) or public_url


@dataclass(frozen=True)
class Target:
    """The table a run replaces: the block's database and the schema-qualified table name."""

    db: Database
    table: TableName


async def open_target(db_block: str, table: str) -> Target:
    """The database of the block ``db_block`` and ``table`` in it, its schema resolved now (before any request);
    ``ConfigurationError`` (no such block), ``DatabaseUnreachableError`` or ``LoadError``."""
    db = await db_block_database(db_block)
    return Target(db=db, table=await asyncio.to_thread(resolve_table, db, table))
