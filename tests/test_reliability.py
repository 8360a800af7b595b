"""Faults injected into whole flow runs: each asserts the final table state and the error text.

Client-level behaviour (backoff, Retry-After forms, hangs, dropped connections)
is covered in test_api.py; the atomic swap under concurrent readers at the load
level in test_load.py. Here the same faults meet the flow, its task retries,
the quality gate and the stored database block.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
import uuid

import pytest
import sqlalchemy as sa

import flows.countries
from flows.countries import countries_flow
from flows.errors import (
    DatabaseUnreachableError,
    QualityGateError,
    QuotaExceededError,
    ResponseTooLargeError,
    TransientApiError,
)
from tests.conftest import free_port
from tests.conftest import table_rows as read_table
from tests.countries_data import COUNTRIES, NORTHERN_EUROPE
from tests.expected import EXPECTED_NORTHERN_EUROPE
from tests.fake_api import FakeRestCountries, Fault

TABLE = "northern_europe_countries"


@pytest.fixture
def fake_api():
    with FakeRestCountries() as fake:
        yield fake


@pytest.fixture
def db(db_block):
    return db_block


@pytest.fixture
def no_task_retry_delay(monkeypatch):
    """The flow's fetch task with its 30 s retry delay set to 0, so a test can watch it retry."""
    monkeypatch.setattr(
        flows.countries, "fetch_region", flows.countries.fetch_region.with_options(retry_delay_seconds=0)
    )


def run(fake: FakeRestCountries, block: str, **params):
    params = {"db_block": block, "api": "v3.1", "base_url": fake.v31_base_url, "cache_minutes": 0, **params}
    return asyncio.run(countries_flow(**params))


def table_rows(url: str, table: str = TABLE) -> list[tuple]:
    return read_table(url, table)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


def test_transient_errors_are_retried_inside_the_client(fake_api, db):
    block, url = db
    fake_api.inject("*", Fault.status(503), Fault.status(502))
    summary = run(fake_api, block)
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE
    assert (summary.requests, summary.retries) == (3, 2)


def test_an_outage_longer_than_the_client_budget_is_retried_by_the_task(fake_api, db, no_task_retry_delay):
    block, url = db
    fake_api.inject("*", Fault.drop(), times=4)  # the client's 4 attempts all fail
    summary = run(fake_api, block)
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE
    assert fake_api.count() == 5  # 4 in the failed task run, 1 in its retry
    assert summary.rows == 20


def test_a_long_retry_after_fails_at_once_without_retries_and_keeps_the_table(fake_api, db, no_task_retry_delay):
    block, url = db
    run(fake_api, block)
    fake_api.reset()
    fake_api.inject("*", Fault.status(429, retry_after=3600))
    with pytest.raises(TransientApiError) as caught:
        run(fake_api, block)
    assert "429" in one_line(caught.value) and "3600" in str(caught.value)
    assert fake_api.count() == 1  # neither the client nor the task retried
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


def test_a_trickling_api_ends_the_run_at_the_deadline_and_keeps_the_table(
    fake_api, db, no_task_retry_delay, monkeypatch
):
    block, url = db
    run(fake_api, block)
    monkeypatch.setenv("RESTCOUNTRIES_DEADLINE_SECONDS", "1")
    fake_api.inject("*", Fault.trickle(0.5), times=20)  # a 2.5 kB body at 2 bytes a second
    started = time.monotonic()
    with pytest.raises(TransientApiError) as caught:
        run(fake_api, block)
    elapsed = time.monotonic() - started
    assert "deadline" in one_line(caught.value)
    # every attempt, of the client and of the task's retry, was cut at the 1 s deadline
    assert elapsed < 30 and fake_api.count() >= 3
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


def test_an_oversize_answer_is_refused_while_streaming_and_keeps_the_table(fake_api, db, monkeypatch):
    block, url = db
    run(fake_api, block)
    monkeypatch.setenv("RESTCOUNTRIES_MAX_RESPONSE_MB", "1")
    fake_api.inject("*", Fault.oversize(50_000_000, declare_length=False))
    with pytest.raises(ResponseTooLargeError) as caught:
        run(fake_api, block)
    assert "MB" in one_line(caught.value)
    assert fake_api.count() == 2  # the good run, then one refused answer: not retried
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


def test_quota_exceeded_is_not_retried_and_keeps_the_table(db, monkeypatch):
    block, url = db
    with FakeRestCountries(quota=2) as fake:  # 2 requests allowed, then 403
        monkeypatch.setenv("RESTCOUNTRIES_API_KEY", fake.api_key)
        monkeypatch.setenv("RESTCOUNTRIES_BASE_URL", fake.v5_base_url)
        run(fake, block, api="v5", base_url=fake.v5_base_url, regions=["Northern Europe", "Europe"], table=TABLE)
        before = table_rows(url)
        with pytest.raises(QuotaExceededError) as caught:
            run(fake, block, api="v5", base_url=fake.v5_base_url)
        assert "quota" in one_line(caught.value).lower()
        assert fake.count() == 3  # 2 for the first run, then exactly one refused request
    assert table_rows(url) == before


def test_a_shrunken_dataset_is_refused_unless_forced(fake_api, db):
    block, url = db
    run(fake_api, block)
    with FakeRestCountries(countries=NORTHERN_EUROPE[:3]) as shrunk:
        with pytest.raises(QualityGateError) as caught:
            run(shrunk, block)
        assert "re-run with force=True" in one_line(caught.value)
        assert table_rows(url) == EXPECTED_NORTHERN_EUROPE

        forced = run(shrunk, block, force=True)
    assert forced.changed and len(table_rows(url)) == forced.rows < 20


def test_a_negative_population_fails_the_quality_gate_and_keeps_the_table(fake_api, db):
    block, url = db
    run(fake_api, block)
    broken = copy.deepcopy(COUNTRIES)
    next(c for c in broken if c["name"]["common"] == "Iceland")["population"] = -5
    with FakeRestCountries(countries=broken) as bad, pytest.raises(QualityGateError) as caught:
        run(bad, block)
    assert "negative population" in one_line(caught.value) and "Iceland" in str(caught.value)
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


def test_an_unreachable_database_names_host_and_port_but_not_the_password(fake_api, prefect_server):
    from prefect_sqlalchemy import SqlAlchemyConnector

    from flows.ops.settings import connection_from_url

    port = free_port()
    password = "canary-unreachable-" + uuid.uuid4().hex
    block = f"reliability-nowhere-{uuid.uuid4().hex[:8]}"
    url = f"postgresql+psycopg2://etl@127.0.0.1:{port}/analytics"
    SqlAlchemyConnector(connection_info=connection_from_url(url, password=password)).save(block)
    with pytest.raises(DatabaseUnreachableError) as caught:
        run(fake_api, block)
    text = one_line(caught.value)
    assert "127.0.0.1" in text and str(port) in text and password not in text and password not in repr(caught.value)
    assert f"check the {block} block's connection settings" in text  # the block this run used (issue 16 §7)


def test_readers_never_see_an_error_or_a_partial_table_while_the_flow_replaces_it(db):
    """12 flow runs alternate two datasets while 3 reader threads query the table non-stop (each run rewrites
    rows; the load-level test in test_load.py hammers the same guarantee harder)."""
    block, url = db
    bigger = copy.deepcopy(COUNTRIES)
    for c in bigger:
        c["population"] += 1
    with FakeRestCountries() as a, FakeRestCountries(countries=bigger) as b:
        run(a, block)
        expected_a = table_rows(url)
        run(b, block)
        expected_b = table_rows(url)
        assert expected_a != expected_b and len(expected_a) == 20

        stop = threading.Event()
        seen: list[str] = []
        errors: list[BaseException] = []

        def reader():
            engine = sa.create_engine(url)
            try:
                while not stop.is_set():
                    try:
                        with engine.connect() as conn:
                            rows = sorted(
                                (tuple(r) for r in conn.execute(sa.text(f'SELECT * FROM "{TABLE}"'))),
                                key=lambda r: (r[0], r[1] or ""),
                            )
                        seen.append("a" if rows == expected_a else "b" if rows == expected_b else "other")
                    except Exception as exc:  # noqa: BLE001 - any reader error fails the test below
                        errors.append(exc)
            finally:
                engine.dispose()

        threads = [threading.Thread(target=reader) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            for i in range(12):
                run(a if i % 2 == 0 else b, block)
        finally:
            stop.set()
            for t in threads:
                t.join()

    assert errors == []
    assert "other" not in seen
    assert {"a", "b"} <= set(seen)


def test_a_long_reader_neither_blocks_the_load_nor_is_blocked_and_views_and_indexes_survive(fake_api, db):
    """A report holds a transaction open on the table while the flow replaces its rows."""
    block, url = db
    run(fake_api, block)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE VIEW big_countries AS SELECT * FROM "{TABLE}" WHERE population > 5000000'))
            conn.execute(sa.text(f'CREATE INDEX by_currency ON "{TABLE}" (currency_name)'))
            conn.execute(sa.text(f"COMMENT ON TABLE \"{TABLE}\" IS 'owned by the analytics team'"))
        bigger = copy.deepcopy(COUNTRIES)
        for c in bigger:
            c["population"] += 1
        with engine.connect() as long_reader, FakeRestCountries(countries=bigger) as b:
            long_reader.execute(sa.text("BEGIN ISOLATION LEVEL REPEATABLE READ"))
            before = long_reader.execute(sa.text(f'SELECT sum(population) FROM "{TABLE}"')).scalar_one()
            summary = run(b, block)  # must not wait for the open transaction
            with engine.connect() as reader:  # a new reader with a short statement timeout is not queued
                reader.execute(sa.text("SET statement_timeout = '5s'"))
                after = reader.execute(sa.text(f'SELECT sum(population) FROM "{TABLE}"')).scalar_one()
            still = long_reader.execute(sa.text(f'SELECT sum(population) FROM "{TABLE}"')).scalar_one()
            long_reader.execute(sa.text("COMMIT"))
        assert summary.changed and after == before + 20 and still == before
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM big_countries")).scalar_one() > 0
            assert conn.execute(sa.text("SELECT to_regclass('by_currency') IS NOT NULL")).scalar_one()
            comment = conn.execute(sa.text(f"SELECT obj_description('\"{TABLE}\"'::regclass)")).scalar_one()
            assert comment == "owned by the analytics team"
    finally:
        engine.dispose()
