"""countries_flow end to end, in process, against real parts.

A real Prefect server (session fixture), the fake REST Countries server on
127.0.0.1 speaking v5 and v3.1, and a fresh database on the embedded
PostgreSQL reached through a stored SqlAlchemyConnector block. What the
Prefect UI shows of a run (state message, logs, names, artifacts, parameter
form) is read back through the Prefect client.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import sqlalchemy as sa
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogWorker

from flows import report
from flows.load import state as load_state
from flows.cli import run_once
from flows.countries import countries_flow
from flows.errors import (
    AuthenticationError,
    BadResponseError,
    ConfigurationError,
    CountriesError,
    DemoKeyError,
    DeprecatedApiError,
    InvalidRecordError,
    InvalidTableNameError,
    UnknownRegionError,
)
from tests.conftest import table_rows as read_table
from tests.e2e_support import wait_for
from tests.countries_data import COUNTRIES
from tests.expected import EXPECTED_NORTHERN_EUROPE, NORTHERN_EUROPE_COUNTRIES
from tests.fake_api import FakeRestCountries, Fault, legacy_hosted

TABLE = "northern_europe_countries"
SCRIPT = Path(__file__).resolve().parents[1] / "flows" / "countries.py"


@pytest.fixture
def fake_api():
    with FakeRestCountries(max_limit=5) as fake:  # small pages: v5 walks several of them
        yield fake


@pytest.fixture
def db(db_block):
    return db_block


@pytest.fixture
def v5(fake_api, monkeypatch):
    """The fake's v5 API, its key in the environment and its base URL trusted (as an operator would set)."""
    monkeypatch.setenv("RESTCOUNTRIES_API_KEY", fake_api.api_key)
    monkeypatch.setenv("RESTCOUNTRIES_BASE_URL", fake_api.v5_base_url)
    return fake_api


def table_rows(url: str, table: str = TABLE) -> list[tuple]:
    return read_table(url, table)


def edit_by_hand(url: str, sql: str) -> None:
    """Run ``sql`` on the database at ``url`` in its own transaction, as an analyst would."""
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def column_types(url: str, table: str = TABLE) -> list[tuple[str, str]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    sa.text(
                        "SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_name = :t ORDER BY ordinal_position"
                    ),
                    {"t": table},
                )
            ]
    finally:
        engine.dispose()


def run(**params) -> report.RunSummary:
    """Run the flow; no fetch cache unless the test asks for one (fake servers may reuse a port)."""
    return asyncio.run(run_once(countries_flow, **{"cache_minutes": 0, **params}))


def run_state(**params):
    """Run the flow; return its final state (as the UI sees it) once its logs have reached the server."""
    state = asyncio.run(countries_flow(**{"cache_minutes": 0, **params}, return_state=True))
    APILogWorker.drain_all(timeout=10)
    return state


def flow_run_of(state) -> Any:
    with get_client(sync_client=True) as client:
        (flow_run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
        return flow_run


def log_records_of(flow_run_id) -> list[Any]:
    """The run's log records (the flow's and its tasks'), oldest first."""
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return sorted(logs, key=lambda log: log.timestamp)


def logs_of(flow_run_id) -> list[str]:
    return [log.message for log in log_records_of(flow_run_id)]


def task_runs_of(flow_run_id) -> list[Any]:
    """The flow run's task runs once the server has recorded each one's final state.

    Prefect 3 sends task states to the server as events, recorded asynchronously: right after the flow
    returns, a task that failed can still read RUNNING for a moment.
    """
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    def settled() -> list[Any] | None:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]))
            )
        return runs if runs and all(t.state is not None and t.state.is_final() for t in runs) else None

    return wait_for("every task run's final state", settled, time.monotonic() + 30)


def artifacts(key: str) -> list[Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return sorted(found, key=lambda a: a.created)


def with_country(name: str, **changes: Any) -> list[dict]:
    """The fixture countries with the v3.1 record of ``name`` changed."""
    countries = copy.deepcopy(COUNTRIES)
    (record,) = [c for c in countries if c["name"]["common"] == name]
    record.update(changes)
    return countries


# --- what a run loads --------------------------------------------------------------------


def test_v31_loads_the_exact_northern_europe_table(fake_api, db):
    block, url = db
    summary = run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url)

    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE
    assert column_types(url) == [
        ("nation_official_name", "text"),
        ("currency_name", "text"),
        ("population", "bigint"),
    ]
    assert (summary.rows, summary.inserted, summary.countries) == (20, 20, NORTHERN_EUROPE_COUNTRIES)
    assert summary.table == f"public.{TABLE}"  # named after the regions when no table is given
    (request,) = fake_api.requests
    assert request.path == "/v3.1/subregion/Northern Europe"  # as the fake decoded it
    # only the fields the table needs, plus region and subregion to check every record belongs
    assert set(request.query["fields"][0].split(",")) == {"name", "currencies", "population", "region", "subregion"}


def test_v5_with_key_from_the_secret_block_pages_and_loads_the_same_table(v5, db, monkeypatch):
    from prefect.blocks.system import Secret

    block, url = db
    monkeypatch.delenv("RESTCOUNTRIES_API_KEY")
    Secret(value=v5.api_key).save("restcountries-api-key", overwrite=True)
    try:
        summary = run(db_block=block)  # api v5 by default; base URL from RESTCOUNTRIES_BASE_URL
    finally:
        Secret(value="not-the-key").save("restcountries-api-key", overwrite=True)

    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE
    assert summary.requests == 4 == v5.count()  # 16 countries in pages of 5
    assert all(r.authorized for r in v5.requests)


def test_v5_code_keyed_currencies_give_the_same_table(db, monkeypatch):
    block, url = db
    with FakeRestCountries(v5_currencies="object") as fake:
        monkeypatch.setenv("RESTCOUNTRIES_API_KEY", fake.api_key)
        monkeypatch.setenv("RESTCOUNTRIES_BASE_URL", fake.v5_base_url)
        run(db_block=block)
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


def test_the_default_table_follows_the_regions(fake_api, db):
    block, url = db
    summary = run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, regions=["all"])
    assert summary.table == "public.all_countries"
    assert len(table_rows(url, "all_countries")) == summary.rows > 20
    with pytest.raises(sa.exc.ProgrammingError):  # the Northern Europe table was not touched
        table_rows(url, TABLE)


@pytest.mark.parametrize(
    ("regions", "table"),
    [
        (["Northern Europe"], "northern_europe_countries"),
        (["all"], "all_countries"),
        (["all", "Africa"], "all_countries"),  # 'all' takes every region: the table is the same
        (["Europe", "Asia"], "europe_asia_countries"),
    ],
)
def test_the_default_table_is_named_after_the_regions(regions, table):
    from flows.parameters import default_table

    assert default_table(regions) == table


def test_overlapping_regions_are_fetched_concurrently_and_each_country_loaded_once(fake_api, db):
    block, url = db
    fake_api.latency = 0.5
    summary = run(
        db_block=block, api="v3.1", base_url=fake_api.v31_base_url, regions=["Europe", "Northern Europe"], table=TABLE
    )
    assert fake_api.max_overlap() == 2
    names = [row[0] for row in table_rows(url)]
    assert summary.countries == len(set(names)) == len([c for c in COUNTRIES if c["region"] == "Europe"])


# --- the cache ------------------------------------------------------------------------------


def test_a_second_run_is_served_from_the_cache_and_says_so(fake_api, db):
    block, url = db
    first = run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=4)
    second = run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=4)

    assert fake_api.count() == 1
    assert (second.rows, second.deleted, second.inserted, second.changed) == (20, 0, 0, False)
    assert second.requests == 0
    assert [f.region for f in second.cached] == ["Northern Europe"]
    assert second.fetches[0].fetched_at == first.fetches[0].fetched_at
    assert "Northern Europe from the cache (fetched " in second.one_line()
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


def test_the_cache_is_keyed_on_the_key_so_a_wrong_key_fails(v5, db, monkeypatch):
    block, url = db
    run(db_block=block, cache_minutes=4)
    monkeypatch.setenv("RESTCOUNTRIES_API_KEY", "wrong-key")
    with pytest.raises(AuthenticationError):
        run(db_block=block, cache_minutes=4)  # within cache_minutes of the good run, but another key
    assert v5.count() == 4 + 1
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


def test_a_cause_every_region_meets_is_said_once(v5, db, monkeypatch):
    """A wrong key fails every region alike: the run fails with that error, its cause said once."""
    block, url = db
    run(db_block=block)
    monkeypatch.setenv("RESTCOUNTRIES_API_KEY", "wrong-key")
    with pytest.raises(AuthenticationError) as caught:
        run(db_block=block, regions=["Europe", "Asia", "Africa"], table=TABLE, cache_minutes=0)
    assert str(caught.value).count(" (GET ") == 1, str(caught.value)
    assert "RESTCOUNTRIES_API_KEY" in str(caught.value)
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


# --- unchanged source data: no transform, no load --------------------------------------------------

TRANSFORM_AND_LOAD = {"unnest 16 records", "quality gate", f"load public.{TABLE}"}


def task_names(state, timeout: float = 30.0) -> set[str]:
    """The names of the tasks the flow run ran, read back from the server.

    Every task run logs its final state, and ``run_state`` has sent the logs; the
    task runs themselves are recorded by the server from events, a moment later:
    this polls (with a deadline) until every task run that logged is recorded.
    """
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    logged = {log.task_run_id for log in logs if log.task_run_id is not None}
    deadline = time.monotonic() + timeout
    while True:
        recorded = {t.id: t.name for t in task_runs_of(flow_run_id)}
        if logged <= recorded.keys():
            return set(recorded.values())
        assert time.monotonic() < deadline, f"task runs {logged - recorded.keys()} not recorded after {timeout}s"
        time.sleep(0.05)


def row_versions(url: str, table: str = TABLE) -> tuple:
    """The table's oid and its rows' versions (xmin): both stay the same unless the table is rewritten."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            oid = conn.execute(sa.text("SELECT to_regclass(:t)::oid"), {"t": table}).scalar_one()
            xmins = conn.exec_driver_sql(f'SELECT array_agg(xmin::text ORDER BY ctid) FROM "{table}"').scalar_one()
    finally:
        engine.dispose()
    return oid, tuple(xmins)


def test_a_second_run_with_unchanged_data_writes_nothing_and_runs_no_transform_or_load(fake_api, db):
    block, url = db
    first_state = run_state(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=4)
    first = asyncio.run(first_state.aresult())
    assert task_names(first_state) == {"fetch Northern Europe"} | TRANSFORM_AND_LOAD
    before = row_versions(url)

    state = run_state(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=4)  # again
    summary = asyncio.run(state.aresult())

    assert state.is_completed()
    assert task_names(state) == {"fetch Northern Europe"}  # served from the fetch cache; nothing else ran
    assert (summary.rows, summary.inserted, summary.previous_rows, summary.changed) == (20, 0, 20, False)
    assert summary.changes.phrase() == "no changes"
    assert (summary.countries, summary.currencies) == (first.countries, first.currencies)
    assert summary.one_line().startswith(f"unchanged: 20 rows already in public.{TABLE} at ")
    assert ", nothing written; " in summary.one_line()
    logs = logs_of(state.state_details.flow_run_id)
    assert summary.one_line() in logs
    assert any(line.startswith(f"public.{TABLE} unchanged: 20 rows") for line in logs)
    latest = artifacts(report.artifact_key(TABLE))[-1]
    assert "| rows inserted | 0 (same content, nothing written) |" in latest.data
    assert f"| countries | {first.countries} |" in latest.data and f"| currencies | {first.currencies} |" in latest.data
    assert row_versions(url) == before  # not one row rewritten
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


def test_after_an_unchanged_run_a_change_in_the_data_is_loaded(db):
    block, url = db
    with FakeRestCountries() as api:
        run(db_block=block, api="v3.1", base_url=api.v31_base_url, cache_minutes=0)
        run(db_block=block, api="v3.1", base_url=api.v31_base_url, cache_minutes=0)
    with FakeRestCountries(with_country("Iceland", population=400_000)) as changed:
        state = run_state(db_block=block, api="v3.1", base_url=changed.v31_base_url, cache_minutes=0)
    summary = asyncio.run(state.aresult())

    assert TRANSFORM_AND_LOAD <= task_names(state)
    assert (summary.changed, summary.deleted, summary.inserted, summary.repaired) == (True, 1, 1, False)
    assert summary.one_line().startswith(f"loaded public.{TABLE} at ")  # what was written, not the frame's size
    assert ": 1 row deleted, 1 inserted (1 population changed), 20 rows in the table; " in summary.one_line()
    assert ("Iceland", "Icelandic króna", 400_000) in table_rows(url)


def test_a_hand_edit_is_repaired_by_the_next_run_and_said_so(fake_api, db):
    block, url = db
    run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=0)
    edit_by_hand(url, f"DELETE FROM {TABLE} WHERE nation_official_name = 'Iceland'")

    state = run_state(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=0)  # same data
    summary = asyncio.run(state.aresult())

    assert TRANSFORM_AND_LOAD <= task_names(state)
    assert (summary.changed, summary.deleted, summary.inserted, summary.previous_rows) == (True, 0, 1, 19)
    assert summary.repaired and summary.one_line().startswith("repaired rows edited outside the pipeline in ")
    assert summary.one_line() in logs_of(state.state_details.flow_run_id)  # the repair, said in the run's log
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


def test_rows_a_run_wrote_without_saving_its_state_are_not_called_edited_by_hand(fake_api, db, monkeypatch):
    """A run commits new data, then its state is not saved (its worker died; here, the save fails). The next run
    of the first data loads it back: the pipeline's own rows, not rows edited outside it."""
    block, url = db
    run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=0)
    with monkeypatch.context() as patched, FakeRestCountries(with_country("Iceland", population=400_000)) as changed:
        patched.setattr(load_state, "save_state", refuse_to_save)
        unsaved = run_state(db_block=block, api="v3.1", base_url=changed.v31_base_url, cache_minutes=0)
        assert asyncio.run(unsaved.aresult()).changed
    assert ("Iceland", "Icelandic króna", 400_000) in table_rows(url)
    warning = "the load state was not saved (the next run compares the rows instead): the worker died"
    assert any(line.startswith(warning) for line in logs_of(unsaved.state_details.flow_run_id))

    summary = run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=0)  # the first data

    assert (summary.changed, summary.deleted, summary.inserted, summary.repaired) == (True, 1, 1, False)
    assert summary.one_line().startswith(f"loaded public.{TABLE} at ")
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


def test_a_refused_load_of_other_data_leaves_the_old_data_skipping(fake_api, db):
    block, url = db
    run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=0)
    few = [c for c in COUNTRIES if c.get("subregion") == "Northern Europe"][:3]
    with FakeRestCountries(few) as shrunk:  # 3 countries: below min_row_fraction of the table's 20 rows
        refused = run_state(db_block=block, api="v3.1", base_url=shrunk.v31_base_url, cache_minutes=0)
    assert refused.is_failed() and "below min_row_fraction" in refused.message

    state = run_state(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=0)  # the old data

    assert state.is_completed()
    assert task_names(state) == {"fetch Northern Europe"}  # skipped: the table is as its last load left it
    assert asyncio.run(state.aresult()).one_line().startswith(f"unchanged: 20 rows already in public.{TABLE} at ")
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


async def refuse_to_save(*args: object) -> None:
    raise RuntimeError("the worker died before the load state was saved")


def test_a_hand_edit_keeping_the_row_count_is_repaired_even_with_force_or_swap(fake_api, db):
    """Issue 16 §1: an UPDATE by hand (same oid, same row count) is seen by a warm run, by --force and by swap."""
    block, url = db
    for params in ({}, {"force": True}, {"strategy": "swap"}):
        run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=4, **params)
        edit_by_hand(url, f"UPDATE {TABLE} SET population = 1 WHERE nation_official_name = 'Iceland'")
        summary = run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=4, **params)
        assert (summary.changed, summary.repaired) == (True, True), params
        if params.get("strategy") != "swap":  # swap rewrites the whole table: its counts are the table's
            assert (summary.deleted, summary.inserted) == (1, 1), params
            assert summary.one_line().startswith("repaired rows edited outside the pipeline"), params
        assert table_rows(url) == EXPECTED_NORTHERN_EUROPE, params


def test_a_new_column_type_in_the_table_schema_is_loaded(fake_api, db, monkeypatch):
    from flows.transform import schema

    block, url = db
    run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=0)
    # the next release declares population numeric: its first run must load, not skip
    columns = tuple(dataclasses.replace(c, sql_type="numeric") if c.name == "population" else c for c in schema.COLUMNS)
    monkeypatch.setattr(schema, "COLUMNS", columns)
    monkeypatch.setattr(schema, "SQL_TYPES", {c.name: c.sql_type for c in columns})

    state = run_state(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=0)
    assert TRANSFORM_AND_LOAD <= task_names(state)
    # the source digest covers the columns, so the skip does not apply; compared by value, nothing differs
    assert asyncio.run(state.aresult()).changed is False

    again = run_state(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=0)
    assert task_names(again) == {"fetch Northern Europe"}
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


LIGHT_PATH_NEVER_IMPORTS = (
    "pandas",
    "numpy",
    "sqlalchemy",
    "prefect_sqlalchemy",
    "flows.load.copy",
    "flows.transform.unnest",
    "flows.transform.quality",
)


def test_importing_the_flow_imports_neither_pandas_nor_sqlalchemy_nor_the_loader():
    code = f"import sys, flows.countries; print(sorted(m for m in {LIGHT_PATH_NEVER_IMPORTS!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_warm_run_of_the_command_imports_neither_pandas_nor_sqlalchemy(fake_api, db):
    """The command line with the table already loaded from the same data: checks over psycopg2 alone, no load."""
    block, url = db
    run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url)  # the first run loads
    argv = [str(SCRIPT), "--api", "v3.1", "--base-url", fake_api.v31_base_url, "--db-block", block]
    argv += ["--cache-minutes", "0"]
    code = (
        "import atexit, runpy, sys\n"
        f"atexit.register(lambda: print('imported:', sorted(m for m in {LIGHT_PATH_NEVER_IMPORTS!r} "
        "if m in sys.modules)))\n"
        f"sys.argv = {argv!r}\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=SCRIPT.parents[1])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"unchanged: 20 rows already in public.{TABLE}" in result.stdout
    assert result.stdout.splitlines()[-1] == "imported: []"
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


def test_a_run_reads_the_operator_settings_once(fake_api, db, monkeypatch):
    """The base URL and the URLs trusted with the key come from one read of the settings block."""
    from flows.ops import settings

    reads: list[settings.CountriesSettings] = []
    load_settings = settings.load_settings

    async def counted() -> settings.CountriesSettings:
        reads.append(await load_settings())
        return reads[-1]

    monkeypatch.setattr(settings, "load_settings", counted)
    block, _ = db
    run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url)
    assert len(reads) == 1


def test_the_database_block_is_read_as_prefect_sqlalchemy_reads_it(prefect_server, pg):
    """The flow reads the block document itself (no prefect_sqlalchemy, no SQLAlchemy): same URL, same
    connect_args, for its psycopg2 connections and for the load's engine."""
    from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector
    from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

    from flows.ops.settings import connection_from_url, db_block_database

    suffix = uuid.uuid4().hex[:8]
    needs_quoting = "p@ss w/rd:%"  # as a password
    components = connection_from_url(pg.url(), password=needs_quoting)
    connect_args = {"application_name": "countries-block-test"}
    blocks = {
        f"flow-test-components-{suffix}": SqlAlchemyConnector(connection_info=components, connect_args=connect_args),
        f"flow-test-url-{suffix}": SqlAlchemyConnector(connection_info=pg.url()),
        f"flow-test-remote-{suffix}": SqlAlchemyConnector(
            connection_info=ConnectionComponents(
                driver="postgresql+psycopg2", username="u", password="", host="db.example", port=6543, database="d"
            )
        ),
        f"flow-test-url-remote-{suffix}": SqlAlchemyConnector(
            connection_info=f"postgresql://u:{needs_quoting.replace('%', '%25').replace('@', '%40')}@db.example/d"
            "?sslmode=require&host=db2.example&port=7",
            connect_args={"connect_timeout": 3},
        ),
    }
    for name, block in blocks.items():
        block.save(name)

    for name in blocks:
        connector = SqlAlchemyConnector.load(name)
        info = connector.connection_info
        expected = info.create_url() if isinstance(info, ConnectionComponents) else sa.make_url(info)
        db = asyncio.run(db_block_database(name))
        # the psycopg2 connection gets what SQLAlchemy's psycopg2 dialect would pass, with the block's connect_args
        cargs, cparams = PGDialect_psycopg2().create_connect_args(expected)
        assert db.psycopg2_arguments() == (list(cargs), {**cparams, **(connector.connect_args or {})})
        assert db.description == unquote(expected.render_as_string(hide_password=True))
        assert needs_quoting not in db.description and needs_quoting not in repr(db)
        engine = db.engine()
        try:
            # a plain postgresql:// means psycopg 3 to SQLAlchemy 2.1: the engine names psycopg2, the only driver here
            engine_url = expected.set(drivername="postgresql+psycopg2")
            assert engine.url.render_as_string(hide_password=False) == engine_url.render_as_string(hide_password=False)
            if "remote" not in name:
                with engine.connect() as conn:
                    application = conn.exec_driver_sql("SELECT current_setting('application_name')").scalar_one()
                assert (application == "countries-block-test") == ("components" in name)
                with contextlib.closing(db.connect()) as raw, raw.cursor() as cur:
                    cur.execute("SELECT current_setting('application_name')")
                    assert (cur.fetchone()[0] == "countries-block-test") == ("components" in name)
        finally:
            engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg2://",
        "postgresql+psycopg2://u:p%40ss@h:5433/d?sslmode=require&application_name=a",
        "postgresql+psycopg2://u@/d?host=/tmp/sockets",
        "postgresql://u@/d?host=db1.example:6543",
        "postgresql://u@/d?host=db1.example,db2.example&port=6543,6544",
        "postgresql://u@/d?host=db1.example:6543&host=db2.example:6544",
        "postgresql://u@db.example/d?port=7",
    ],
)
def test_a_database_connects_with_the_arguments_sqlalchemy_would_pass(url):
    """One host, several hosts in any of SQLAlchemy's ways, or none: psycopg2 gets what SQLAlchemy's dialect gives,
    and the block's connect_args on top."""
    from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

    from flows.load.database import Database

    parsed = sa.make_url(url)
    cargs, cparams = PGDialect_psycopg2().create_connect_args(parsed)
    connect_args = {"connect_timeout": 3}
    by_url = Database.from_url(url, connect_args)
    by_parts = Database(
        parsed.drivername, parsed.username, parsed.password, parsed.host, parsed.port, parsed.database,
        parsed.query, connect_args,
    )  # fmt: skip
    for db in (by_url, by_parts):
        assert db.psycopg2_arguments() == (list(cargs), {**cparams, **connect_args})


@pytest.mark.parametrize(
    ("connection_info", "problem"),
    [
        ("mysql://u@h/d", "uses the driver 'mysql', not postgresql+psycopg2"),
        ({"driver": "postgresql+asyncpg", "host": "h"}, "uses the driver 'postgresql+asyncpg'"),
        ("not a url", "is not a SQLAlchemy URL"),
        ({"driver": "postgresql+psycopg2", "port": "many"}, "has a component of the wrong type"),
        ({"host": "h"}, "must be a SQLAlchemy URL or connection components with a driver"),
        (
            "postgresql://u@/d?host=h1:1&host=h2:2&port=3",
            "has a query SQLAlchemy cannot read: Can't mix 'multihost' formats",
        ),
        ("postgresql://u@/d?host=h1,h2&port=1,2,3", "has a query SQLAlchemy cannot read: number of hosts and ports"),
    ],
)
def test_a_database_block_the_flow_cannot_use_is_one_clear_error(connection_info, problem):
    from flows.ops.settings import block_database

    with pytest.raises(ConfigurationError) as caught:
        block_database(connection_info)
    assert str(caught.value).startswith(f"the database block's connection_info {problem}")
    assert "python blocks/create_blocks.py --db-url" in str(caught.value)


# --- what changed -------------------------------------------------------------------------------


def test_each_run_reports_what_changed_in_the_log_the_artifact_and_the_summary_line(db):
    block, url = db
    with FakeRestCountries() as before:
        run(db_block=block, api="v3.1", base_url=before.v31_base_url, cache_minutes=0)
    changed = with_country("Iceland", population=400_000, currencies={"EUR": {"name": "Euro", "symbol": "€"}})
    gone = [c for c in changed if c["name"]["common"] != "Åland Islands"]
    with FakeRestCountries(gone) as after:
        state = run_state(db_block=block, api="v3.1", base_url=after.v31_base_url, cache_minutes=0)
    summary = asyncio.run(state.aresult())

    line = summary.one_line()
    assert line.startswith(f"loaded public.{TABLE} at ")
    assert "(-1 country, 1 population changed, currencies changed for 1 country), 19 rows in the table;" in line
    logs = "\n".join(logs_of(state.state_details.flow_run_id))
    assert "Åland Islands" in logs and "Iceland 366,425 -> 400,000" in logs
    latest = artifacts(report.artifact_key(TABLE))[-1]
    for fact in ("Åland Islands", "Iceland", "Icelandic króna", "Euro", "rows in the table | 19 (before: 20 rows)"):
        assert fact in latest.data
    assert len(table_rows(url)) == 19


# --- the report artifact ---------------------------------------------------------------------------


def test_the_report_is_one_artifact_history_per_table(fake_api, db):
    block, _ = db
    run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=4)
    run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, regions=["Oceania"])
    run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=4)  # cached: nothing written

    ne, oceania = artifacts("countries-northern-europe-countries"), artifacts("countries-oceania-countries")
    assert len(ne) >= 2 and len(oceania) >= 1
    first, latest = ne[-2].data, ne[-1].data
    assert "| rows in the table | 20" in first and "| rows inserted | 20 |" in first and "| rows deleted | 0 |" in first
    assert "| rows inserted | 0 (same content, nothing written) |" in latest
    assert "from the cache (fetched " in latest and "| duration |" in latest
    assert "| what | value |" in latest  # a real header row, not an empty bar
    assert "Oceania" in oceania[-1].data and "Northern Europe" not in oceania[-1].data


def test_one_table_has_one_report_history_however_its_name_is_written(fake_api, db):
    block, _ = db
    key = "countries-northern-europe-countries"
    before = len(artifacts(key))
    for spelling in (TABLE, f"public.{TABLE}", f"Public.{TABLE.title()}"):
        run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, table=spelling)
    with pytest.raises(UnknownRegionError):  # a failed run too, once the table is known
        run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, regions=["Narnia"], table=f"public.{TABLE}")
    assert len(artifacts(key)) == before + 4
    # Another schema is another table: its own history, not confused with a like-named table in public.
    assert report.artifact_key("analytics.countries") != report.artifact_key("analytics_countries")


def test_a_failed_run_publishes_a_short_report_and_leaves_the_table(fake_api, db):
    block, url = db
    run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url)
    with pytest.raises(UnknownRegionError):
        run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, regions=["Narnia"], table=TABLE)
    latest = artifacts(report.artifact_key(TABLE))[-1]
    assert "failed" in latest.data and "the table was not changed" in latest.data and "Narnia" in latest.data
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


def test_a_failure_report_does_not_say_the_table_was_unchanged_after_a_lost_commit():
    """After CommitUnknownError the table may hold the new rows: the report must not claim it was not changed."""
    from flows.errors import CommitUnknownError

    lost = CommitUnknownError("loading public.t: the connection was lost during the commit (server closed)")
    markdown = report.failure_markdown("public.t", lost, 1.0)
    assert "not changed" not in markdown and "the connection was lost during the commit" in markdown


# --- what the UI shows of a failure -------------------------------------------------------------


def test_a_failed_run_states_its_cause_first_once_and_without_a_traceback(fake_api, db):
    block, _ = db
    fake_api.inject("/v3.1/subregion/*", Fault.bad_body("non_list"))
    state = run_state(db_block=block, api="v3.1", base_url=fake_api.v31_base_url)

    assert state.is_failed()
    assert state.message.startswith("the API's answer is a JSON object where a list of countries was expected")
    assert "(GET …/v3.1/subregion/Northern Europe)" in state.message and "127.0.0.1" not in state.message
    assert "base_url" in state.message and "--base-url" not in state.message  # the UI's name for it
    records = log_records_of(state.state_details.flow_run_id)
    logs = [r.message for r in records]
    assert not [line for line in logs if "Traceback" in line or "Encountered exception" in line]
    # The run's final line: the cause once, first.
    flow_lines = [
        r.message
        for r in records
        if not r.task_run_id and r.message.startswith("Finished in state Failed(") and "JSON object" in r.message
    ]
    assert len(flow_lines) == 1 and flow_lines[0][len("Finished in state Failed(") + 1 :].startswith("the API's")


def test_a_failed_step_states_its_cause_first_in_its_own_task(db):
    """The failed task's Details tab: the cause, not "Task run encountered an exception …" (issue 11)."""
    block, _ = db
    with FakeRestCountries(with_country("Iceland", population=1.5)) as fake:
        state = run_state(db_block=block, api="v3.1", base_url=fake.v31_base_url, table=TABLE, cache_minutes=0)
    assert state.is_failed() and state.message.startswith('population of "Iceland" is')
    (unnest,) = [t for t in task_runs_of(state.state_details.flow_run_id) if t.name.startswith("unnest ")]
    assert unnest.state_type.value == "FAILED" and unnest.state.message == state.message


def test_a_failed_fetch_is_not_served_from_the_cache_to_the_next_run(fake_api, db):
    block, url = db
    fake_api.inject("/v3.1/subregion/*", Fault.bad_body("non_list"))
    with pytest.raises(BadResponseError):
        run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=4)
    summary = run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=4)  # within 4 minutes
    assert fake_api.count("/v3.1/subregion/*") == 2 and summary.rows == 20
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


def test_every_failed_region_is_named_and_no_sibling_shows_as_crashed(fake_api, db):
    block, _ = db
    fake_api.inject("/v3.1/subregion/Western Europe", Fault.bad_body("non_list"))
    fake_api.inject("/v3.1/subregion/Southern Europe", Fault.bad_body("html"))
    state = run_state(
        db_block=block,
        api="v3.1",
        base_url=fake_api.v31_base_url,
        regions=["Northern Europe", "Western Europe", "Southern Europe"],
        cache_minutes=0,
    )
    assert state.is_failed()
    assert state.message.startswith("2 of 3 regions failed: ")
    assert "Western Europe" in state.message and "Southern Europe" in state.message
    tasks = {t.name: t.state.type.value for t in task_runs_of(state.state_details.flow_run_id)}
    assert tasks["fetch Northern Europe"] == "COMPLETED"
    assert tasks["fetch Western Europe"] == tasks["fetch Southern Europe"] == "FAILED"
    assert "CRASHED" not in tasks.values()


# --- names -----------------------------------------------------------------------------------------


def test_runs_and_tasks_are_named_after_what_they_do(fake_api, db):
    block, _ = db
    state = run_state(db_block=block, api="v3.1", base_url=fake_api.v31_base_url)
    assert flow_run_of(state).name == "northern_europe_countries ← Northern Europe"
    names = {t.name for t in task_runs_of(state.state_details.flow_run_id)}
    assert names == {"fetch Northern Europe", "unnest 16 records", "quality gate", f"load public.{TABLE}"}
    logs = logs_of(state.state_details.flow_run_id)
    assert "quality gate passed: 20 rows" in logs
    assert not [line for line in logs if "engine" in line.lower()]  # the connector's own INFO lines are quiet


# --- bad input: one clear line, the table untouched ---------------------------------------------


@pytest.mark.parametrize(
    ("fake_options", "params", "error", "message"),
    [
        ({}, {"regions": ["Narnia"]}, UnknownRegionError, "unknown region 'Narnia'"),
        ({}, {"api": "v5", "key": "wrong-key"}, AuthenticationError, "RESTCOUNTRIES_API_KEY"),
        ({"demo_key": "demo-key-of-the-fake"}, {"api": "v5", "key": "demo-key-of-the-fake"}, DemoKeyError, "demo key"),
        ({"legacy_v31": True}, {}, DeprecatedApiError, "deprecated"),
        ({}, {"fault": Fault.bad_body("html")}, BadResponseError, "HTML"),
        ({}, {"fault": Fault.bad_body("truncated")}, BadResponseError, "JSON"),
        ({}, {"fault": Fault.foreign("Americas")}, BadResponseError, "Northern Europe"),
        ({}, {"table": "x; drop table y"}, InvalidTableNameError, "x; drop table y"),
        ({}, {"db_block": "no-such-block"}, ConfigurationError, "create_blocks.py"),
    ],
    ids=[
        "unknown-region",
        "401",
        "demo-answer",
        "legacy-deprecation",
        "html",
        "truncated",
        "foreign",
        "bad-table",
        "no-block",
    ],
)
def test_bad_input_fails_clearly_and_leaves_the_table_untouched(db, monkeypatch, fake_options, params, error, message):
    block, url = db
    with FakeRestCountries() as good:
        run(db_block=block, api="v3.1", base_url=good.v31_base_url, table=TABLE)
    before = table_rows(url)
    assert len(before) == 20

    params = dict(params)
    with FakeRestCountries(**fake_options) as fake:
        if params.get("api") == "v5":
            monkeypatch.setenv("RESTCOUNTRIES_API_KEY", params.pop("key"))
            monkeypatch.setenv("RESTCOUNTRIES_BASE_URL", fake.v5_base_url)
        else:
            params.setdefault("api", "v3.1")
            params["base_url"] = fake.v31_base_url
        if fault := params.pop("fault", None):
            fake.inject("*", fault, times=10)  # every try: a body cut short once is retried
        params.setdefault("db_block", block)
        params.setdefault("table", TABLE)
        params.setdefault("cache_minutes", 0)
        with pytest.raises(error) as caught:
            run(**params)
    text = str(caught.value)
    assert message in text and "\n" not in text
    assert table_rows(url) == before


def test_the_hosted_legacy_api_redirect_ends_in_the_deprecation_error(db):
    block, _ = db
    with legacy_hosted() as (api, files):
        with pytest.raises(DeprecatedApiError) as caught:
            run(db_block=block, api="v3.1", base_url=api.url, table=TABLE)
    text = str(caught.value)
    assert "deprecated" in text and "v5" in text and "\n" not in text
    assert files.count() == 1  # the static file was read, to quote the API's own message


@pytest.mark.parametrize(
    ("population", "shown"),
    [(30654.7, "30654.7"), (2**64 + 5, str(2**64 + 5)), (1e300, "1e+300"), (float("inf"), "Infinity"), (True, "true")],
    ids=["fraction", "beyond-bigint", "1e300", "infinity", "boolean"],
)
def test_a_population_that_is_not_a_whole_bigint_is_one_error_naming_the_country(db, population, shown):
    block, url = db
    with FakeRestCountries() as good:
        run(db_block=block, api="v3.1", base_url=good.v31_base_url, table=TABLE)
    with FakeRestCountries(with_country("Iceland", population=population)) as fake:
        with pytest.raises(InvalidRecordError) as caught:
            run(db_block=block, api="v3.1", base_url=fake.v31_base_url, table=TABLE, cache_minutes=0)
    text = str(caught.value)
    assert text.startswith(f'population of "Iceland" is {shown}') and "\n" not in text
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


@pytest.mark.parametrize("population", [366425.0, "366425"], ids=["whole-float", "whole-string"])
def test_a_population_that_is_exactly_a_whole_number_is_loaded(db, population):
    block, url = db
    with FakeRestCountries(with_country("Iceland", population=population)) as fake:
        run(db_block=block, api="v3.1", base_url=fake.v31_base_url, table=TABLE)
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


@pytest.mark.parametrize(
    "currencies",
    ["ISK", 352, ["ISK", "EUR"], {"ISK": {"name": {"en": "Icelandic króna"}}}],
    ids=["string", "number", "list-of-strings", "deeper-nesting"],
)
def test_a_currency_value_of_another_shape_is_one_error_naming_the_country(db, currencies):
    block, url = db
    with FakeRestCountries() as good:
        run(db_block=block, api="v3.1", base_url=good.v31_base_url, table=TABLE)
    with FakeRestCountries(with_country("Iceland", currencies=currencies)) as fake:
        with pytest.raises(InvalidRecordError) as caught:
            run(db_block=block, api="v3.1", base_url=fake.v31_base_url, table=TABLE, cache_minutes=0)
    text = str(caught.value)
    assert text.startswith('currencies of "Iceland" is ') and "\n" not in text
    assert "a list of objects with a name, an object keyed by currency code, empty, or null" in text
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


@pytest.mark.parametrize("currencies", [{}, [], None], ids=["empty-object", "empty-list", "null"])
def test_a_country_without_currencies_keeps_one_row(db, currencies):
    block, url = db
    with FakeRestCountries(with_country("Iceland", currencies=currencies)) as fake:
        run(db_block=block, api="v3.1", base_url=fake.v31_base_url, table=TABLE)
    assert ("Iceland", None, 366425) in table_rows(url)


# --- the parameter form ------------------------------------------------------------------------------


def test_the_parameter_form_has_a_plain_base_url_and_ranges_in_the_descriptions():
    schema = countries_flow.parameters.model_dump()["properties"]
    assert schema["base_url"]["type"] == "string" and schema["base_url"]["default"] == ""
    assert "anyOf" not in schema["base_url"]
    assert "from 0 to 1" in schema["min_row_fraction"]["description"]
    assert "0 or more" in schema["cache_minutes"]["description"]
    for region in ("Africa", "Americas", "Antarctic", "Asia", "Europe", "Oceania", "Northern Europe"):
        assert region in schema["regions"]["description"]


# --- secrets ---------------------------------------------------------------------------------------


def test_api_key_and_db_password_never_reach_logs_artifacts_or_errors(prefect_server, pg, caplog, monkeypatch):
    """Canary secrets: a key the API rejects and a DB password; scan everything captured."""
    from prefect_sqlalchemy import SqlAlchemyConnector

    from flows.ops.settings import connection_from_url

    canary_key = "canary-key-" + uuid.uuid4().hex
    canary_password = "canary-pw-" + uuid.uuid4().hex
    block = f"flow-test-canary-{uuid.uuid4().hex[:8]}"
    # the embedded server trusts local connections, so the password is sent but not needed
    SqlAlchemyConnector(connection_info=connection_from_url(pg.url(), password=canary_password)).save(block)

    caplog.set_level(logging.DEBUG)
    errors: list[CountriesError] = []
    with FakeRestCountries(api_key=canary_key) as good_api:
        monkeypatch.setenv("RESTCOUNTRIES_API_KEY", canary_key)
        monkeypatch.setenv("RESTCOUNTRIES_BASE_URL", good_api.v5_base_url)
        summary = run(db_block=block, table="canary_countries")
        monkeypatch.setenv("RESTCOUNTRIES_API_KEY", canary_key + "-wrong")
        with pytest.raises(AuthenticationError) as caught:
            run(db_block=block, cache_minutes=0, table="canary_countries")
        errors.append(caught.value)
        with FakeRestCountries(api_key=canary_key) as other_origin:  # not trusted: the key must not go there
            monkeypatch.setenv("RESTCOUNTRIES_API_KEY", canary_key)
            with pytest.raises(ConfigurationError) as withheld:
                run(db_block=block, base_url=other_origin.v5_base_url.replace("127.0.0.1", "localhost"))
            errors.append(withheld.value)
            assert other_origin.count() == 0
    APILogWorker.drain_all(timeout=10)

    assert summary.rows == 20
    with get_client(sync_client=True) as client:
        logs = client.read_logs()
        all_artifacts = client.read_artifacts()
    captured = "\n".join(
        [caplog.text, repr(summary), summary.one_line(), summary.markdown()]
        + [log.message for log in logs]
        + [str(a.data) + str(a.description) for a in all_artifacts]
        + [str(e) + repr(e) + e.for_audience("cli") for e in errors]
    )
    assert summary.database.endswith(f"?host={pg.socket_dir}")
    assert canary_key not in captured
    assert canary_password not in captured


# --- after the write, nothing fails the run (issue 16 §4) -------------------------------------------


@pytest.mark.parametrize("name", ["a$b", "Mixed$Case_"])
def test_any_table_name_the_loader_accepts_loads_and_reports_on_every_run(fake_api, db, name):
    block, url = db
    for _ in range(2):  # "every later run does the same": the second run must complete too
        summary = run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, table=name, cache_minutes=4)
        assert summary.rows == 20
    key = report.artifact_key(name)
    assert re.fullmatch(r"[a-z0-9-]+", key)  # what Prefect accepts as an artifact key
    assert "| rows in the table | 20" in artifacts(key)[-1].data
    assert report.artifact_key("a$b") != report.artifact_key("a-b") != report.artifact_key("a_b")


def test_a_report_that_cannot_be_published_does_not_fail_a_loaded_run(fake_api, db, monkeypatch, caplog):
    block, url = db

    async def refused(**kwargs):
        raise RuntimeError("the Prefect API refused the artifact")

    monkeypatch.setattr("flows.countries.acreate_markdown_artifact", refused)
    summary = run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url)
    assert summary.rows == 20 and table_rows(url) == EXPECTED_NORTHERN_EUROPE
    assert "report artifact was not published: the Prefect API refused the artifact" in caplog.text


# --- retries say what they do (issue 17 §2) ---------------------------------------------------------


def test_a_fetch_retried_once_says_retry_1_of_1_and_fails_without_a_traceback(fake_api, db, monkeypatch):
    import flows.countries

    monkeypatch.setattr(
        flows.countries, "fetch_region", flows.countries.fetch_region.with_options(retry_delay_seconds=0)
    )
    fake_api.inject("*", Fault.status(429, retry_after=1), times=1000)
    block, _ = db
    state = run_state(db_block=block, api="v3.1", base_url=fake_api.v31_base_url)
    assert state.is_failed()
    logs = logs_of(state.state_details.flow_run_id)
    assert [line for line in logs if "Retry 1/1 will start" in line]
    assert not [line for line in logs if "Retry 1/2" in line or "Retry 2/" in line]
    assert not [line for line in logs if "Traceback" in line]


def test_conflicting_records_from_two_regions_fail_the_run_and_keep_the_table(db):
    """Issue 16 §3: --regions all, one official name in two regions with other figures: one line, no load."""
    from flows.errors import ConflictingRecordsError
    from tests.countries_data import v31_records

    block, url = db
    with FakeRestCountries() as good:
        first = run(db_block=block, api="v3.1", base_url=good.v31_base_url, regions=["all"])
    before = table_rows(url, "all_countries")
    assert len(before) == first.rows > 20

    def narnia(region: str, population: int) -> dict:
        record = copy.deepcopy(COUNTRIES[0])
        record["name"]["official"] = "Kingdom of Narnia"
        record.update(region=region, population=population)
        record.pop("subregion", None)
        return record

    with FakeRestCountries([*v31_records(), narnia("Europe", 1_000), narnia("Asia", 2_000)]) as conflicting:
        with pytest.raises(ConflictingRecordsError) as caught:
            run(db_block=block, api="v3.1", base_url=conflicting.v31_base_url, regions=["all"])
    assert str(caught.value).startswith('"Kingdom of Narnia" differs between Asia and Europe (population)')
    assert "\n" not in str(caught.value)
    assert table_rows(url, "all_countries") == before
