"""The flow ``countries_flow``: make a PostgreSQL table's rows equal to the REST Countries API's, steps 1 to 7
below. A ``CountriesError`` ends the run Failed with its one line, the table untouched (but for a connection lost
during the commit). Run it with ``python flows/countries.py --help``; deploy it with ``prefect deploy``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.utilities.annotations import quote
from pydantic import Field

from flows import report
from flows import source as restcountries
from flows.errors import CountriesError, TransientApiError
from flows.failures import failing_with_the_cause, quiet_expected_failures
from flows.load import LoadResult
from flows.load import state as load_state
from flows.load.changes import ChangeSummary
from flows.ops import settings
from flows.parameters import DEFAULT_REGIONS, check_parameters, target_table
from flows.source import budget
from flows.transform import schema

if TYPE_CHECKING:  # imported by the tasks that need them, only when they run
    import pandas as pd


TASK_RETRY_DELAY_SECONDS = 30
FETCH_RETRIES = 1  # delayed task retries of a region fetch after a transient failure (the client retries first)


def run_name() -> str:
    """The flow run's name: ``<table> ← <regions>``, e.g. ``northern_europe_countries ← Northern Europe``."""
    regions = flow_run.parameters.get("regions") or DEFAULT_REGIONS
    regions = [regions] if isinstance(regions, str) else regions
    return f"{target_table(flow_run.parameters.get('table'), regions)} ← {', '.join(map(str, regions))}"


@dataclass(frozen=True)
class Source:
    """What determines a fetch's answer, so the fetch cache is keyed on it (a hash of the key, never the key)."""

    api: str
    base_url: str
    paths: tuple[str, ...]
    key_fingerprint: str


def retry_transient(task, task_run, state) -> bool:
    """Retry a transient failure, unless the server asked to wait longer than the retry delay."""
    exc = state.data
    return isinstance(exc, TransientApiError) and (exc.retry_after or 0) <= TASK_RETRY_DELAY_SECONDS


@task(
    task_run_name="fetch {region}",
    retries=FETCH_RETRIES,
    retry_delay_seconds=TASK_RETRY_DELAY_SECONDS,
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_transient,
    cache_policy=(INPUTS + TASK_SOURCE) - "client" - "run_budget",  # the source, the key's hash, the region
    cache_expiration=timedelta(minutes=4),
)
# Not failing_with_the_cause: Prefect would cache a returned Failed state as the task's result.
async def fetch_region(
    client: restcountries.ApiClient, region: str, source: Source, run_budget: budget.RunBudget
) -> report.RegionFetch:
    """Every country of one region or subregion, with only the fields the table needs."""
    stats = restcountries.RequestStats()
    records = await restcountries.fetch_region(
        client,
        region,
        dialect=restcountries.get_dialect(source.api),
        base_url=source.base_url,
        paths=source.paths,
        stats=stats,
        before_request=run_budget.before_request,
    )
    requests = report.plural(stats.requests, "request")
    get_run_logger().info("fetched %d countries of %s (%s)", len(records), region, requests)
    return report.RegionFetch(
        region=region,
        records=records,
        countries=len(records),
        fetched_at=datetime.now(UTC),
        requests=stats.requests,
        retries=stats.retries,
    )


async def fetch_all(
    regions: list[str], source: Source, api_key: str | None, trusted: list[str], cache_minutes: float
) -> list[report.RegionFetch]:
    """Every region's fetch, in region order, each to its end. Raises what ``flows.source.check_source`` raises,
    then ``flows.source.one_error`` of the regions that failed; an unexpected error as it is."""
    if cache_minutes:
        fetch = fetch_region.with_options(cache_expiration=timedelta(minutes=cache_minutes))
    else:  # always fetch: no records persisted for a cache nothing reads
        fetch = fetch_region.with_options(cache_policy=NO_CACHE, persist_result=False)
    dialect = restcountries.get_dialect(source.api)
    async with restcountries.make_client(api_key=api_key, trusted_base_urls=trusted) as client:
        restcountries.check_source(client, dialect=dialect, base_url=source.base_url)
        run_budget = await budget.start_run(len(regions), metered=dialect.requires_key)
        runs = [fetch(client, region, source, run_budget, return_state=True) for region in regions]
        states = await asyncio.gather(*runs)
    results = [await state.aresult(raise_on_failure=False) for state in states]
    failures = [r for r in results if isinstance(r, BaseException)]
    if unexpected := [f for f in failures if not isinstance(f, CountriesError)]:
        raise unexpected[0]
    if failures:
        raise restcountries.one_error(failures, asked=len(regions), dialect=dialect)
    return results


@task(cache_policy=NO_CACHE)
@failing_with_the_cause
def unnest_countries(records: list[dict[str, Any]], api_name: str) -> pd.DataFrame:
    """The checked records as the countries frame: a row per country and currency, sorted by name then currency."""
    from flows.transform.unnest import unnest

    schema.check_records(records, api_name)
    frame = schema.to_frame_dtypes(unnest(records, columns=schema.unnest_columns(api_name)))
    frame = frame.sort_values(list(schema.SORT_BY), na_position="first", kind="stable", ignore_index=True)
    get_run_logger().info("unnested %d records into %d rows", len(records), len(frame))
    return frame


@task(task_run_name="quality gate", cache_policy=NO_CACHE)
@failing_with_the_cause
def quality_gate(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame, with every column in its table dtype, once it has passed the quality gate."""
    from flows.transform import quality

    quality.validate_countries(frame)
    get_run_logger().info("quality gate passed: %d rows", len(frame))
    return frame.astype({c.name: c.dtype for c in schema.COLUMNS if c.dtype == "int64"})


@task(task_run_name="load {target.table}", cache_policy=NO_CACHE)
@failing_with_the_cause
def load_table(frame: pd.DataFrame, target: settings.Target, options: dict[str, Any]) -> LoadResult:
    """Make the target table's rows equal to the frame's (``options``: ``flows.load.replace_table``'s)."""
    from flows import load

    engine = target.db.engine()
    try:
        result = load.replace_table(
            engine, frame, target.table, column_types=schema.SQL_TYPES, changes=schema.CHANGES, **options
        )
    finally:
        engine.dispose()
    for line in result.changes.log_lines():  # what changed, one line per kind; the summary line says the rest
        get_run_logger().info(line)
    return result


@flow(name="countries", flow_run_name=run_name, log_prints=False)
async def countries_flow(
    regions: list[str] = DEFAULT_REGIONS,
    table: str = "",
    db_block: str = settings.DEFAULT_DB_BLOCK,
    api: Literal["v5", "v3.1"] = "v5",
    base_url: str = "",
    force: bool = False,
    min_row_fraction: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.5,
    cache_minutes: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 4.0,
    strategy: Literal["rows", "swap"] = "rows",
) -> report.RunSummary:
    """Refresh a PostgreSQL table of countries (name, currency, population) from REST Countries.

    Args:
        regions: Regions or subregions to load: Africa, Americas, Antarctic, Asia, Europe, Oceania, "all"
            (every region), or a subregion such as "Northern Europe", "Western Africa", "South America".
        table: Target table, optionally schema-qualified (analytics.countries); its rows are replaced on every
            run. Empty = named after the regions: northern_europe_countries, all_countries, europe_asia_countries.
        db_block: Name of the SqlAlchemyConnector block for the target PostgreSQL database.
        api: API version: v5, the hosted API (needs an API key), or v3.1, a self-hosted server.
        base_url: API base URL. Empty = $RESTCOUNTRIES_BASE_URL on the worker, the base URL saved by
            blocks/create_blocks.py, or the public API. The API key is sent only to trusted origins.
        force: Skip nothing: compare and load even when the source and the table are as the last load left them,
            and even if the new data has fewer rows than min_row_fraction of the current table.
        min_row_fraction: Refuse a load smaller than this fraction of the current table's rows, from 0 to 1
            (0.5 = refuse to lose more than half; 0 = never refuse).
        cache_minutes: Reuse a region's fetch for this many minutes, 0 or more (0 = always fetch); keep it
            below the schedule's interval.
        strategy: How the table is replaced: rows (its rows in one transaction; keeps views, indexes, grants and
            comments, never blocks readers) or swap (a new table swapped in: for very large tables; drops indexes,
            refuses while views depend on the table).

    Returns:
        What the run did: rows, changes, regions and requests, a text preview of the table.

    Raises:
        CountriesError: only when called directly; the run ends Failed with one secret-free line, cause first,
            and the table unchanged (except after ``CommitUnknownError``: a connection lost during the commit).
    """
    given = dict(locals())  # the parameters: nothing else is defined yet
    started_at, started = datetime.now(UTC), time.perf_counter()
    steps: dict[str, float] = {}
    report_table = target_table(table, regions)  # the failure report's table, until the target is resolved
    try:
        # 1. The parameters.
        p = check_parameters(**given)

        # 2. The source and the target.
        dialect = restcountries.get_dialect(p["api"])
        api_key = await settings.load_api_key() if dialect.requires_key else None
        operator = await settings.load_settings()  # once per run
        source = Source(
            api=dialect.name,
            base_url=settings.resolve_base_url(p["base_url"], dialect.default_base_url, operator),
            paths=tuple(schema.unnest_columns(dialect.name).values()),
            key_fingerprint=restcountries.fingerprint(api_key),
        )
        target = await settings.open_target(p["db_block"], p["table"])
        report_table = str(target.table)

        # 3. Fetch.
        with _timed(steps, "fetch"), quiet_expected_failures():
            trusted = settings.trusted_base_urls(operator)
            fetches = await fetch_all(p["regions"], source, api_key, trusted, p["cache_minutes"])
            records = schema.each_country_once(((f.region, f.records) for f in fetches), dialect.name)

        # 4. to 6. Check, unnest, quality gate and load, unless the table was loaded from this very source.
        result, frame, repaired = await transform_and_load(records, dialect.name, target, p, steps)
    except CountriesError as exc:
        seconds = time.perf_counter() - started
        await publish(report_table, report.failure_markdown(report_table, exc, seconds), f"failed: {exc}")
        return Failed(message=str(exc), data=exc)

    # 7. Report. The table is written: nothing from here on may fail the run.
    summary = report.RunSummary(
        **vars(result),
        database=target.db.description,
        repaired=repaired,
        countries=schema.count_distinct(records, schema.KEY, dialect.name),
        currencies=schema.count_distinct(records, schema.column("currency_name"), dialect.name),
        fetches=[replace(f, records=[]) for f in fetches],
        started=started_at,
        seconds=time.perf_counter() - started,
        step_seconds=steps,
        preview=None if frame is None else frame.to_string(max_rows=60, min_rows=10),
    )
    get_run_logger().info(summary.one_line())
    await publish(summary.table, summary.markdown(), summary.one_line())
    return summary


async def publish(table: str, markdown: str, description: str) -> None:
    """Publish ``table``'s report artifact; a failure here is only a warning (the run's outcome is decided)."""
    try:
        await acreate_markdown_artifact(key=report.artifact_key(table), markdown=markdown, description=description)
    except Exception as exc:  # noqa: BLE001 - anything: see the docstring
        get_run_logger().warning("the report artifact was not published: %s", exc)


async def transform_and_load(
    records: list[dict[str, Any]], api_name: str, target: settings.Target, p: dict[str, Any], steps: dict[str, float]
) -> tuple[LoadResult, pd.DataFrame | None, bool]:
    """Steps 4 to 6 (skipped unless ``force`` when the table holds what its last load of the same source
    committed): what the load did, the frame (``None`` when skipped) and whether it repaired edited rows."""
    with _timed(steps, "unchanged check"):
        columns = [(c.name, c.sources[api_name], c.sql_type) for c in schema.COLUMNS]
        digest = load_state.source_digest(records, dialect=api_name, columns=columns)
        stored = await load_state.stored_state(target.db, target.table)
        same_source = digest is not None and (stored or {}).get("source") == digest
        live = same_source and not p["force"]  # the table may hold what that load committed: its fingerprint says
        rows = await asyncio.to_thread(load_state.live_rows, target.db, target.table, stored) if live else None
    if rows is not None:
        get_run_logger().info("%s unchanged: %d rows already loaded from the same source data, nothing written "
                              "(unnest, quality gate and load skipped)", target.table, rows)  # fmt: skip
        skipped = LoadResult(
            table=str(target.table), rows=rows, previous_rows=rows, deleted=0, inserted=0,
            changes=ChangeSummary(schema.CHANGES, unchanged=True), strategy=p["strategy"], fingerprint="",
        )  # fmt: skip
        return skipped, None, False
    # Each step's state is read for its result: a failed step raises its error here (see failing_with_the_cause).
    with _timed(steps, "unnest + quality gate"):
        unnest = unnest_countries.with_options(task_run_name=f"unnest {len(records)} records")
        unnested = await unnest(quote(records), api_name, return_state=True).aresult()
        frame = await quality_gate(quote(unnested), return_state=True).aresult()
    with _timed(steps, "load"):
        if stored is not None and not same_source:  # else a repair: the state stays true
            await load_state.mark_pending(target.db, target.table, stored)
        options = {k: p[k] for k in ("force", "min_row_fraction", "strategy")}
        result = await load_table(quote(frame), target, options, return_state=True).aresult()
    try:
        await load_state.save_state(target.db, target.table, digest, result)
    except Exception as exc:  # noqa: BLE001 - the table is written; a run without a state compares the rows
        kept = "the previous state of the same data stays" if same_source else "the next run compares the rows instead"
        get_run_logger().warning("the load state was not saved (%s): %s", kept, exc)
    repaired = result.changed and same_source and not stored.get("pending")  # pending: perhaps rows of ours
    return result, frame, repaired


@contextmanager
def _timed(steps: dict[str, float], name: str) -> Iterator[None]:
    """Record the block's wall time in seconds as ``steps[name]``."""
    mark = time.perf_counter()
    try:
        yield
    finally:
        steps[name] = time.perf_counter() - mark


def main(argv: list[str] | None = None) -> int:
    """The command line (``countries`` and ``python flows/countries.py``): see ``flows.cli``."""
    from flows.cli import main as command_line

    return command_line(countries_flow, argv)


if __name__ == "__main__":
    raise SystemExit(main())
