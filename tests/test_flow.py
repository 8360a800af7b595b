"""countries_flow end to end, in process, against real parts.

A real Prefect server (session fixture), the fake REST Countries server on
127.0.0.1 speaking v5 and v3.1, and a fresh database on the embedded
PostgreSQL reached through a stored SqlAlchemyConnector block.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pandas as pd
import pytest
import sqlalchemy as sa

from flows.countries import REPORT_ARTIFACT_KEY, countries_flow
from flows.errors import (
    AuthenticationError,
    BadResponseError,
    ConfigurationError,
    DeprecatedApiError,
    InvalidTableNameError,
    UnknownRegionError,
)
from tests.conftest import table_rows as read_table
from tests.expected import EXPECTED_NORTHERN_EUROPE, NORTHERN_EUROPE_COUNTRIES
from tests.fake_api import FakeRestCountries, Fault

TABLE = "northern_europe_countries"


@pytest.fixture
def fake_api():
    with FakeRestCountries(max_limit=5) as fake:  # small pages: v5 walks several of them
        yield fake


@pytest.fixture
def db(db_block):
    return db_block


def table_rows(url: str, table: str = TABLE) -> list[tuple]:
    return read_table(url, table)


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


def run(**params):
    return asyncio.run(countries_flow(**params))


def test_v31_loads_the_exact_northern_europe_table(fake_api, db):
    block, url = db
    summary = run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url)

    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE
    assert column_types(url) == [
        ("nation_official_name", "text"),
        ("currency_name", "text"),
        ("population", "bigint"),
    ]
    frame = summary.frame
    assert list(frame.columns) == ["nation_official_name", "currency_name", "population"]
    assert [tuple(r) for r in frame.itertuples(index=False)] == EXPECTED_NORTHERN_EUROPE  # sorted by the flow
    assert isinstance(frame.index, pd.RangeIndex)
    assert str(frame["population"].dtype) == "int64"
    assert (summary.rows, summary.countries, summary.changed) == (20, NORTHERN_EUROPE_COUNTRIES, True)
    # one subregion request, asking only for the fields the table needs
    assert fake_api.count("/v3.1/subregion/*") == 1 == summary.requests
    assert fake_api.requests[0].param("fields") == "name,currencies,population"


def test_v5_with_key_from_the_secret_block_pages_and_loads_the_same_table(fake_api, db):
    from prefect.blocks.system import Secret

    block, url = db
    Secret(value=fake_api.api_key).save("restcountries-api-key", overwrite=True)
    summary = run(db_block=block, api="v5", base_url=fake_api.v5_base_url)

    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE
    pages = fake_api.count("/countries/v5/subregion/*")
    assert pages == 4 == summary.requests  # 16 countries, 5 a page
    assert all(r.param("limit") == "100" for r in fake_api.requests)
    assert all(r.authorized for r in fake_api.requests)


def test_v5_code_keyed_currencies_give_the_same_table(db, monkeypatch):
    block, url = db
    with FakeRestCountries(v5_currencies="object") as fake:
        monkeypatch.setenv("RESTCOUNTRIES_API_KEY", fake.api_key)
        monkeypatch.setenv("RESTCOUNTRIES_BASE_URL", fake.v5_base_url)
        run(db_block=block)
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


def test_overlapping_regions_are_fetched_concurrently_and_not_duplicated(fake_api, db):
    block, url = db
    summary = run(
        db_block=block, api="v3.1", base_url=fake_api.v31_base_url,
        regions=["Europe", "Northern Europe", "Antarctic"], table="europe",
    )
    rows = table_rows(url, "europe")
    names = [r[0] for r in rows]
    assert len(rows) == len(set((r[0], r[1]) for r in rows))  # no duplicate (country, currency)
    assert set(n for n, *_ in EXPECTED_NORTHERN_EUROPE) <= set(names)
    assert ("Antarctica", None) in [(r[0], r[1]) for r in rows]  # no currency keeps one row, null currency
    assert fake_api.count("/v3.1/region/*") == 2 and fake_api.count("/v3.1/subregion/*") == 1
    assert summary.regions == ["Europe", "Northern Europe", "Antarctic"]


def test_second_run_is_served_from_cache_and_leaves_the_table_unchanged(fake_api, db):
    block, url = db
    first = run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url)
    second = run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url)
    assert first.changed and not second.changed
    assert second.requests == 0 and fake_api.count() == 1  # the cached fetch spent no request
    third = run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url, cache_minutes=0)
    assert third.requests == 1 and fake_api.count() == 2
    assert table_rows(url) == EXPECTED_NORTHERN_EUROPE


def test_run_publishes_the_report_artifact(fake_api, db):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    block, _ = db
    run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[REPORT_ARTIFACT_KEY])),
        )
    latest = max(artifacts, key=lambda a: a.created)
    for fact in ("rows loaded | 20", "countries | 16", "Northern Europe", "API requests | 1", "table changed | yes"):
        assert fact in latest.data


@pytest.mark.parametrize(
    ("arrange", "params", "error", "message"),
    [
        (lambda f: None, {"regions": ["Narnia"]}, UnknownRegionError, "Narnia"),
        (lambda f: None, {"api": "v5", "key": "wrong-key"}, AuthenticationError, "RESTCOUNTRIES_API_KEY"),
        (lambda f: setattr(f, "legacy_v31", True), {}, DeprecatedApiError, "deprecated"),
        (lambda f: f.inject("*", Fault.bad_body("html")), {}, BadResponseError, "HTML"),
        (lambda f: f.inject("*", Fault.bad_body("truncated")), {}, BadResponseError, "JSON"),
        (lambda f: None, {"table": "x; drop table y"}, InvalidTableNameError, "x; drop table y"),
        (lambda f: None, {"db_block": "no-such-block"}, ConfigurationError, "create_blocks.py"),
    ],
    ids=["unknown-region", "401", "legacy-deprecation", "html-body", "truncated-json", "bad-table", "no-block"],
)
def test_bad_input_fails_clearly_and_leaves_the_table_untouched(
    fake_api, db, monkeypatch, arrange, params, error, message
):
    block, url = db
    run(db_block=block, api="v3.1", base_url=fake_api.v31_base_url)
    before = table_rows(url)
    assert len(before) == 20

    params = dict(params)
    if params.get("api") == "v5":
        monkeypatch.setenv("RESTCOUNTRIES_API_KEY", params.pop("key"))
        params["base_url"] = fake_api.v5_base_url
    else:
        params.setdefault("api", "v3.1")
        params["base_url"] = fake_api.v31_base_url
    params.setdefault("db_block", block)
    params.setdefault("cache_minutes", 0)
    arrange(fake_api)

    with pytest.raises(error) as caught:
        run(**params)
    text = str(caught.value)
    assert message in text and "\n" not in text
    assert table_rows(url) == before


def test_api_key_and_db_password_never_reach_logs_artifacts_or_errors(prefect_server, pg, caplog, monkeypatch):
    """Canary secrets: a key the API rejects and a DB password; scan everything captured."""
    from prefect.client.orchestration import get_client
    from prefect_sqlalchemy import SqlAlchemyConnector

    from blocks.create_blocks import connection_from_url

    canary_key = "canary-key-" + uuid.uuid4().hex
    canary_password = "canary-pw-" + uuid.uuid4().hex
    block = f"flow-test-canary-{uuid.uuid4().hex[:8]}"
    # the embedded server trusts local connections, so the password is sent but not needed
    SqlAlchemyConnector(connection_info=connection_from_url(pg.url(), password=canary_password)).save(block)

    caplog.set_level(logging.DEBUG)
    with FakeRestCountries(api_key=canary_key) as good_api:
        monkeypatch.setenv("RESTCOUNTRIES_API_KEY", canary_key)
        summary = run(db_block=block, api="v5", base_url=good_api.v5_base_url, table="canary_countries")
        monkeypatch.setenv("RESTCOUNTRIES_API_KEY", canary_key + "-wrong")
        with pytest.raises(AuthenticationError) as caught:
            run(db_block=block, api="v5", base_url=good_api.v5_base_url, cache_minutes=0, table="canary_countries")
    errors = [caught.value]

    assert summary.rows == 20
    with get_client(sync_client=True) as client:
        logs = client.read_logs()
        artifacts = client.read_artifacts()
    captured = "\n".join(
        [caplog.text, repr(summary), summary.one_line(), summary.markdown()]
        + [log.message for log in logs]
        + [str(a.data) + str(a.description) for a in artifacts]
        + [str(e) + repr(e) for e in errors]
    )
    assert summary.database.endswith(f"?host={pg.socket_dir}")
    assert canary_key not in captured
    assert canary_password not in captured
