"""Keep a PostgreSQL table of countries fresh from the REST Countries API.

The story of one run of ``countries_flow``:

1. Resolve the source: API dialect (hosted v5 or a self-hosted v3.1 server),
   base URL, and API key (env ``RESTCOUNTRIES_API_KEY`` or the
   ``restcountries-api-key`` Secret block).
2. Fetch every requested region concurrently, one task per region, sharing one
   HTTP client; each task is retried on transient failures only and cached for
   a few minutes so a retried run does not spend quota again.
3. Unnest the JSON records into the countries frame: one row per country and
   currency, columns ``nation_official_name``, ``currency_name``, ``population``.
4. Check the frame against the quality gate.
5. Replace the table atomically through the ``SqlAlchemyConnector`` block
   (skipped when the content has not changed).
6. Publish a report artifact for the Prefect UI.

Run it locally with ``python flows/countries.py --help``; deploy it with
``prefect deploy`` (see ``prefect.yaml``).
"""

from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # `python flows/countries.py`, prefect deploy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import asyncio
import atexit
import hashlib
import math
import os
import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import httpx
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE
from pydantic import Field

from flows import api as restcountries
from flows import budget, load, local_db, quality
from flows.errors import ConfigurationError, CountriesError, InvalidTableNameError, TransientApiError, setting
from flows.settings import API_KEY_BLOCK, DEFAULT_DB_BLOCK
from flows.unnest import unnest

DEFAULT_REGIONS = ["Northern Europe"]
DEFAULT_TABLE = "northern_europe_countries"
REPORT_ARTIFACT_KEY = "countries-load-report"


# --- 0. the parameters -------------------------------------------------------------


def default_table(regions: Sequence[str]) -> str:
    """The table a run loads when none is named: the regions' names, then ``_countries``.

    ``["Northern Europe"]`` -> ``northern_europe_countries``; ``["all"]`` ->
    ``all_countries``; ``["Europe", "Asia"]`` -> ``europe_asia_countries``.
    Names are folded to lower-case ASCII letters, digits and underscores; a name
    longer than PostgreSQL's 63 bytes is shortened and keeps a hash of the whole.
    """
    parts = []
    for region in regions:
        ascii_name = unicodedata.normalize("NFKD", str(region)).encode("ascii", "ignore").decode()
        part = re.sub(r"[^a-z0-9]+", "_", ascii_name.casefold()).strip("_")
        if part and part not in parts:
            parts.append(part)
    name = "_".join(parts or ["regions"]) + "_countries"
    if name[0].isdigit():
        name = "r_" + name
    if len(name) > 63:
        digest = hashlib.sha256("|".join(map(str, regions)).encode()).hexdigest()[:8]
        name = f"{name[:44].rstrip('_')}_{digest}_countries"
    return name


def _check_base_url(base_url: str) -> str:
    url = base_url.strip()
    if not url:
        return ""
    parts = urlsplit(url)
    problem = None
    if parts.scheme not in ("http", "https"):
        problem = "must start with http:// or https://"
    elif not parts.hostname:
        problem = "names no host"
    elif parts.username or parts.password:
        problem = "must not contain credentials (the API key is a Secret block or RESTCOUNTRIES_API_KEY)"
    elif parts.query or parts.fragment:
        problem = "must not have a query or fragment"
    else:
        try:
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            problem = "has an invalid port"
    if problem:
        shown = "" if parts.username or parts.password else f" {url!r}"  # never echo credentials
        raise ConfigurationError(
            f"{setting('base_url')}{shown} {problem}: give the API's address, e.g. "
            "https://api.restcountries.com/countries/v5 or http://127.0.0.1:8080 for a self-hosted v3.1 server"
        )
    return url.rstrip("/")


def check_parameters(
    *,
    regions: Sequence[str],
    table: str,
    db_block: str,
    api: str,
    base_url: str,
    force: bool,
    min_row_fraction: float,
    cache_minutes: float,
) -> dict[str, Any]:
    """Check the flow's parameters without touching the network; return them normalised.

    Returns the same keys with: ``regions`` as the distinct names to fetch
    (``"all"`` expanded, regions in their canonical case), ``table`` derived from
    the regions when empty (see :func:`default_table`), ``base_url`` stripped
    (empty stays empty: the configured default applies later). Raises
    ``ConfigurationError`` (``InvalidTableNameError`` for a table name) with one
    line naming the parameter, what was wrong and what to do.
    """
    names = restcountries.expand_regions(regions)
    table_name = (table or "").strip() or default_table([r.strip() for r in regions])
    try:
        load.parse_table_name(table_name)
    except InvalidTableNameError as exc:
        raise InvalidTableNameError(f"{setting('table')}: {exc}") from None
    restcountries.get_dialect(api)
    if not isinstance(db_block, str) or not db_block.strip():
        raise ConfigurationError(f"{setting('db_block')} is empty: name a SqlAlchemyConnector block, e.g. countries-db")
    if isinstance(min_row_fraction, bool) or not (isinstance(min_row_fraction, int | float) and 0 <= min_row_fraction <= 1):
        raise ConfigurationError(
            f"{setting('min_row_fraction')} must be between 0 and 1 (a fraction of the current table's rows), "
            f"got {min_row_fraction!r}"
        )
    if isinstance(cache_minutes, bool) or not (isinstance(cache_minutes, int | float) and 0 <= cache_minutes < math.inf):
        raise ConfigurationError(
            f"{setting('cache_minutes')} must be 0 (always fetch) or a positive number of minutes, got {cache_minutes!r}"
        )
    return {
        "regions": names,
        "table": table_name,
        "db_block": db_block.strip(),
        "api": api.strip(),
        "base_url": _check_base_url(base_url or ""),
        "force": bool(force),
        "min_row_fraction": float(min_row_fraction),
        "cache_minutes": float(cache_minutes),
    }



# --- 1. the source -----------------------------------------------------------------


async def resolve_api_key(dialect: restcountries.Dialect) -> str | None:
    """The API key: env ``RESTCOUNTRIES_API_KEY`` first, then the ``restcountries-api-key`` block.

    Returns None when the dialect needs no key or none is configured (the
    client then fails with a clear message before sending a request).
    """
    if not dialect.requires_key:
        return None
    if key := os.environ.get("RESTCOUNTRIES_API_KEY"):
        return key
    from prefect.blocks.system import Secret

    try:
        secret = await Secret.aload(API_KEY_BLOCK)
    except ValueError:  # Prefect's "Unable to find block document named ..."
        return None
    return str(secret.get())


# --- 2. fetch ----------------------------------------------------------------------


TASK_RETRY_DELAY_SECONDS = 30


def retry_if_transient(task, task_run, state) -> bool:
    """Retry a fetch task only after a transient failure (429, 5xx, timeout, dropped connection),
    and not when the server asked to wait longer than the task's retry delay (``Retry-After``)."""
    exc = state.data
    if not isinstance(exc, TransientApiError):
        return False
    return exc.retry_after is None or exc.retry_after <= TASK_RETRY_DELAY_SECONDS


@task(
    task_run_name="fetch {region}",
    # The client already retries each page (backoff, Retry-After); this one delayed
    # task retry covers an outage longer than the client's budget.
    retries=1,
    retry_delay_seconds=TASK_RETRY_DELAY_SECONDS,
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
    # Key on what determines the answer; the client and the counters are not inputs.
    cache_policy=(INPUTS + TASK_SOURCE) - "client" - "stats",
    cache_expiration=timedelta(minutes=4),
)
async def fetch_region(
    client: httpx.AsyncClient,
    region: str,
    dialect: str,
    base_url: str | None,
    stats: restcountries.RequestStats,
) -> list[dict[str, Any]]:
    """Every country of one region or subregion, with only the fields the table needs."""
    logger = get_run_logger()
    api_dialect = restcountries.get_dialect(dialect)
    records = await restcountries.fetch_region(
        client,
        region,
        dialect=api_dialect,
        base_url=base_url,
        stats=stats,
        # Only the hosted, metered API spends the shared request budget; a self-hosted server has no quota.
        before_request=budget.take_request_slot if api_dialect.requires_key else None,
    )
    logger.info("fetched %d countries for %s", len(records), region)
    return records


# --- 3. unnest ---------------------------------------------------------------------


@task
def to_countries_frame(records: list[dict[str, Any]], dialect: str) -> pd.DataFrame:
    """One row per country and currency, sorted by name then currency (a country with no currency keeps a row)."""
    frame = unnest(records, columns=restcountries.get_dialect(dialect).record_paths)
    frame = frame.reindex(columns=list(quality.COLUMNS))
    frame["population"] = pd.to_numeric(frame["population"], errors="coerce").astype("Int64")
    frame = frame.sort_values(list(quality.COLUMNS[:2]), na_position="first", kind="stable", ignore_index=True)
    get_run_logger().info("unnested %d records into %d rows", len(records), len(frame))
    return frame


# --- 4 and 5. quality gate and load -------------------------------------------------


@task
def check_quality(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame, with ``population`` as int64, once it has passed the quality gate."""
    quality.validate_countries(frame)
    return frame.astype({"population": "int64"})


@task
async def replace_table(
    frame: pd.DataFrame, table: str, db_block: str, force: bool, min_row_fraction: float
) -> tuple[load.LoadResult, str]:
    """Replace ``table`` with ``frame`` through the SqlAlchemyConnector block; returns the result and where."""
    from prefect_sqlalchemy import SqlAlchemyConnector

    try:
        connector = await SqlAlchemyConnector.aload(db_block)
    except ValueError:
        raise ConfigurationError(
            f"database block '{db_block}' not found on the Prefect server: create it with "
            "`python blocks/create_blocks.py --db-url postgresql+psycopg2://USER@HOST:PORT/DB`"
        ) from None
    with connector:
        engine = connector.get_engine()
        where = unquote(engine.url.render_as_string(hide_password=True))  # password shown as ***
        result = await asyncio.to_thread(
            load.replace_table, engine, frame, table, force=force, min_row_fraction=min_row_fraction
        )
    logger = get_run_logger()
    if result.changed:
        was = "a new table" if result.previous_rows is None else f"was {result.previous_rows} rows"
        logger.info("replaced %s with %d rows (%s)", result.table, result.rows, was)
    else:
        logger.info("%s unchanged: %d rows already up to date", result.table, result.rows)
    return result, where


# --- 6. report ---------------------------------------------------------------------


@dataclass
class RunSummary:
    """What a run did; returned by the flow and published as its artifact."""

    table: str
    database: str
    rows: int
    countries: int
    currencies: int
    regions: list[str]
    requests: int
    retries: int
    changed: bool
    step_seconds: dict[str, float] = field(default_factory=dict)
    frame: pd.DataFrame | None = field(default=None, repr=False)

    def one_line(self) -> str:
        what = f"{self.rows} rows ({self.countries} countries, {self.currencies} currencies)"
        where = f"{self.table} at {self.database}"
        done = f"loaded {what} into {where}" if self.changed else f"unchanged: {what} already in {where}"
        return f"{done}; API requests: {self.requests}"

    def markdown(self) -> str:
        rows = [
            ("table", f"`{self.table}`"),
            ("database", f"`{self.database}`"),
            ("table changed", "yes" if self.changed else "no (same content, not rewritten)"),
            ("rows loaded", self.rows),
            ("countries", self.countries),
            ("currencies", self.currencies),
            ("regions fetched", ", ".join(self.regions)),
            ("API requests", f"{self.requests} ({self.retries} retries)"),
        ]
        rows += [(f"{step} (s)", f"{seconds:.3f}") for step, seconds in self.step_seconds.items()]
        lines = ["# Countries load", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        return "\n".join(lines) + "\n"


# --- the flow ----------------------------------------------------------------------


@flow(name="countries", log_prints=False)
async def countries_flow(
    regions: list[str] = DEFAULT_REGIONS,
    table: str = "",
    db_block: str = DEFAULT_DB_BLOCK,
    api: Literal["v5", "v3.1"] = "v5",
    base_url: str = "",
    force: bool = False,
    min_row_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5,
    cache_minutes: Annotated[float, Field(ge=0)] = 4.0,
) -> RunSummary:
    """Refresh a PostgreSQL table of countries (name, currency, population) from REST Countries.

    Args:
        regions: Regions or subregions to load, e.g. "Northern Europe", "Africa"; "all" = every region.
        table: Target table, optionally schema-qualified (analytics.countries); replaced on every run.
            Empty = named after the regions: northern_europe_countries, all_countries, europe_asia_countries.
        db_block: Name of the SqlAlchemyConnector block for the target database.
        api: API dialect: hosted v5 (needs an API key) or a self-hosted v3.1 server.
        base_url: API base URL; empty = $RESTCOUNTRIES_BASE_URL or the dialect's public URL.
        force: Load even if the row count falls below min_row_fraction of the current table's.
        min_row_fraction: Refuse a load smaller than this fraction of the current table (0 to 1).
        cache_minutes: Reuse a region's fetch for this long; keep it below the schedule interval; 0 = always fetch.

    Returns:
        What the run did (rows, countries, requests, whether the table changed, the frame).

    Raises:
        CountriesError: one secret-free line saying what failed and what to do; the table is unchanged.
    """
    logger = get_run_logger()
    steps: dict[str, float] = {}
    started = time.perf_counter()

    # 0. The parameters.
    p = check_parameters(
        regions=regions, table=table, db_block=db_block, api=api, base_url=base_url, force=force,
        min_row_fraction=min_row_fraction, cache_minutes=cache_minutes,
    )
    table = p["table"]

    # 1. The source.
    dialect = restcountries.get_dialect(api)
    region_names = p["regions"]
    base_url = p["base_url"] or os.environ.get("RESTCOUNTRIES_BASE_URL") or None
    api_key = await resolve_api_key(dialect)
    if dialect.requires_key:
        await budget.ensure_rate_limit()

    # 2. Fetch all regions concurrently over one client.
    stats = restcountries.RequestStats()
    fetch = fetch_region.with_options(
        cache_expiration=timedelta(minutes=cache_minutes), refresh_cache=cache_minutes == 0
    )
    async with restcountries.make_client(api_key=api_key) as client:
        per_region = await asyncio.gather(
            *(fetch(client, region, dialect.name, base_url, stats) for region in region_names)
        )
    records = restcountries.dedupe_records((r for batch in per_region for r in batch), dialect)
    steps["fetch"] = time.perf_counter() - started

    # 3 and 4. Transform and check.
    mark = time.perf_counter()
    frame = check_quality(to_countries_frame(records, dialect.name))
    steps["unnest + quality gate"] = time.perf_counter() - mark

    # 5. Load.
    mark = time.perf_counter()
    result, where = await replace_table(frame, table, db_block, force, min_row_fraction)
    steps["load"] = time.perf_counter() - mark

    # 6. Report.
    summary = RunSummary(
        table=result.table,
        database=where,
        rows=result.rows,
        countries=int(frame["nation_official_name"].nunique()),
        currencies=int(frame["currency_name"].nunique()),
        regions=region_names,
        requests=stats.requests,
        retries=stats.retries,
        changed=result.changed,
        step_seconds=steps,
        frame=frame,
    )
    await acreate_markdown_artifact(
        key=REPORT_ARTIFACT_KEY, markdown=summary.markdown(), description=summary.one_line()
    )
    logger.info(summary.one_line())
    return summary


async def run_flow(**params: Any) -> RunSummary:
    """Run the flow once in this process; return its summary or raise the ``CountriesError`` it failed with.

    For callers such as the command line, which print ``exc.for_audience("cli")``.
    An unexpected failure is re-raised as it is.
    """
    state = await countries_flow(**params, return_state=True)
    if state.is_completed():
        return await state.aresult()
    failure = await state.aresult(raise_on_failure=False)
    if isinstance(failure, BaseException):
        raise failure
    raise CountriesError(state.message or f"the run ended {state.name}")


# --- command line ------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python flows/countries.py",
        description=(
            "Run the countries flow once: fetch countries from REST Countries, load them into a "
            "PostgreSQL table through a SqlAlchemyConnector block, print the table and a summary. "
            "When the database block does not exist, an embedded PostgreSQL is started under .local/ "
            "and the block is created for it."
        ),
    )
    p.add_argument(
        "--regions", nargs="+", default=DEFAULT_REGIONS, metavar="NAME",
        help='regions or subregions, e.g. "Northern Europe" Africa; "all" = every region (default: "Northern Europe")',
    )
    p.add_argument(
        "--table", default="", help="target table, optionally schema.table (default: named after the regions)"
    )
    p.add_argument("--db-block", default=DEFAULT_DB_BLOCK, help="SqlAlchemyConnector block name (default: %(default)s)")
    p.add_argument(
        "--api", choices=["v5", "v3.1"], default="v5",
        help="API dialect: hosted v5 (needs RESTCOUNTRIES_API_KEY or the restcountries-api-key block) "
        "or a self-hosted v3.1 server (default: %(default)s)",
    )
    p.add_argument(
        "--base-url", default="",
        help="API base URL, e.g. http://127.0.0.1:8080 for a v3.1 server (default: $RESTCOUNTRIES_BASE_URL, "
        "else the dialect's public URL)",
    )
    p.add_argument("--force", action="store_true", help="load even if the row count falls by more than the gate allows")
    p.add_argument(
        "--min-row-fraction", type=float, default=0.5,
        help="refuse a load smaller than this fraction of the current table (default: %(default)s)",
    )
    p.add_argument(
        "--cache-minutes", type=float, default=4.0,
        help="reuse a region's fetch for this many minutes; 0 = always fetch (default: %(default)s)",
    )
    p.add_argument(
        "--local-db-dir", type=Path, default=None, metavar="DIR",
        help="data directory of the embedded PostgreSQL started when the database block does not exist "
        "(default: .local/postgres in the repository)",
    )
    return p


async def _prepare_database(db_block: str, data_dir: Path | None) -> str | None:
    """Make sure ``db_block`` can be used; start the embedded server when the block is missing.

    Returns a note to print (the psql connection string) when the embedded
    server is in use, else None.
    """
    from prefect_sqlalchemy import SqlAlchemyConnector

    from flows.settings import connection_from_url, save_db_block

    data_dir = data_dir or local_db.DEFAULT_DATA_DIR
    try:
        block = await SqlAlchemyConnector.aload(db_block)
    except ValueError:
        block = None
    if block is not None:
        info = block.connection_info
        socket_dir = (getattr(info, "query", None) or {}).get("host")
        if not local_db.owns_socket(socket_dir, data_dir):
            return None  # a real database: nothing to start
        running = local_db.status(data_dir)
        if running is not None and running.socket_dir == socket_dir:
            return _local_note(running)  # warm run: up where the block points; nothing to start or save
    db = local_db.ensure_running(data_dir)
    await save_db_block(db_block, connection_from_url(db.sqlalchemy_url))
    return _local_note(db)


def _local_note(db: local_db.LocalDatabase) -> str:
    return f'embedded PostgreSQL (data in {db.data_dir}); inspect it with: psql "{db.psql_url}"'


async def _main_async(args: argparse.Namespace) -> RunSummary:
    note = await _prepare_database(args.db_block, args.local_db_dir)
    if note:
        print(note, flush=True)
    return await countries_flow(
        regions=args.regions,
        table=args.table,
        db_block=args.db_block,
        api=args.api,
        base_url=args.base_url,
        force=args.force,
        min_row_fraction=args.min_row_fraction,
        cache_minutes=args.cache_minutes,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the flow once from the command line; 0 on success, 1 on failure (error on the last line).

    The summary (or the error) is printed at interpreter exit, after Prefect has
    stopped its temporary server and flushed its own log lines, so it really is
    the last line a user sees.
    """
    args = _parser().parse_args(argv)
    final: list[tuple[str, object]] = []
    # atexit runs handlers last-registered-first: registered before Prefect's, this one runs after them.
    atexit.register(lambda: [print(text, file=stream, flush=True) for text, stream in final])
    try:
        summary = asyncio.run(_main_async(args))
    except CountriesError as exc:
        final.append((f"error: {exc}", sys.stderr))
        return 1
    with pd.option_context("display.max_rows", 500, "display.width", 200):
        print(summary.frame.to_string(), flush=True)
    final.append((summary.one_line(), sys.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
