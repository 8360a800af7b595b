"""The REST Countries client against the real fake server (tests/fake_api.py): no mocks."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flows.api import (
    DIALECTS,
    REGIONS,
    RequestStats,
    RetryPolicy,
    dedupe_records,
    expand_regions,
    fetch_region,
    fetch_regions,
    get_dialect,
    make_client,
)
from flows.errors import (
    ApiError,
    AuthenticationError,
    BadResponseError,
    ConfigurationError,
    DeprecatedApiError,
    PermanentApiError,
    QuotaExceededError,
    TransientApiError,
    UnknownRegionError,
)
from tests.countries_data import COUNTRIES, NORTHERN_EUROPE, synthetic_countries, to_v5
from tests.fake_api import DEPRECATION_MESSAGE, FakeRestCountries, Fault

T = TypeVar("T")
V5 = get_dialect("v5")
V31 = get_dialect("v3.1")
CANARY = "canary-KEY-7f3a9c1e5b"
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, max_total_seconds=10, jitter=0.5)
NE_NAMES = [c["name"]["official"] for c in NORTHERN_EUROPE]
EUROPE = [c for c in COUNTRIES if c["region"] == "Europe"]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def fake() -> Iterator[FakeRestCountries]:
    with FakeRestCountries(api_key=CANARY) as f:
        yield f


@pytest.fixture
def paged() -> Iterator[FakeRestCountries]:
    """Serves at most 5 v5 records per page, so Northern Europe (16) takes 4 pages."""
    with FakeRestCountries(api_key=CANARY, max_limit=5) as f:
        yield f


async def _fetch(
    f: FakeRestCountries,
    region: str | list[str],
    *,
    dialect=V5,
    key: str | None = CANARY,
    timeout: float = 5.0,
    retry: RetryPolicy = FAST,
    stats: RequestStats | None = None,
    **kwargs: Any,
) -> list[dict]:
    base = f.v5_base_url if dialect.name == "v5" else f.v31_base_url
    async with make_client(api_key=key, timeout=timeout) as client:
        if isinstance(region, list):
            return await fetch_regions(client, region, dialect=dialect, base_url=base, retry=retry,
                                       stats=stats, **kwargs)
        return await fetch_region(client, region, dialect=dialect, base_url=base, retry=retry, stats=stats,
                                  **kwargs)


def _fail(f: FakeRestCountries, region: str = "Northern Europe", **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        run(_fetch(f, region, **kwargs))
    return info.value


def _assert_good_message(exc: BaseException, url_part: str) -> None:
    text = str(exc)
    assert "\n" not in text and url_part in text, text
    assert CANARY not in text and CANARY not in repr(exc)


# --- dialects, regions, dedupe ------------------------------------------------------------


def test_get_dialect_and_unknown_name():
    assert set(DIALECTS) == {"v5", "v3.1"} and get_dialect(" v5 ") is V5
    with pytest.raises(ConfigurationError, match=r"v4.*use one of v5, v3\.1"):
        get_dialect("v4")
    assert V5.record_paths["nation_official_name"] == "names.official"
    assert V31.record_paths["nation_official_name"] == "name.official"
    assert V5.requires_key and not V31.requires_key


def test_expand_regions():
    assert expand_regions([" Northern Europe ", "europe", "ALL", "Europe"]) == [
        "Northern Europe", "Europe", "Africa", "Americas", "Antarctic", "Asia", "Oceania",
    ]
    assert expand_regions(["all"]) == list(REGIONS)
    for bad in ([], [" "], ["Europe", ""]):
        with pytest.raises(ConfigurationError):
            expand_regions(bad)


@given(st.lists(st.sampled_from([*REGIONS, "all", "ALL", "Northern Europe", " asia", "Melanesia"]), min_size=1))
def test_expand_regions_properties(names):
    out = expand_regions(names)
    assert len({n.casefold() for n in out}) == len(out)
    assert expand_regions(out) == out
    assert {n.strip().casefold() for n in names if n.strip().casefold() != "all"} <= {o.casefold() for o in out}


def test_dedupe_records_keeps_first_in_order():
    recs = [{"names": {"official": "A"}, "n": 1}, {"names": {"official": "B"}}, {"names": {"official": "A"}, "n": 2}]
    assert dedupe_records(recs, V5) == recs[:2]


# --- v5 --------------------------------------------------------------------------------------


def test_v5_paginates_without_wasted_requests(paged):
    stats = RequestStats()
    records = run(_fetch(paged, "Northern Europe", stats=stats))
    assert [r["names"]["official"] for r in records] == NE_NAMES
    reqs = paged.requests
    assert len(reqs) == 4 and (stats.requests, stats.retries) == (4, 0)
    assert [r.param("offset") for r in reqs] == ["0", "5", "10", "15"]
    for r in reqs:
        assert r.path == "/countries/v5/subregion/Northern Europe"
        assert r.authorization
        assert r.param("limit") == "100"
        assert r.param("response_fields") == "names.official,currencies,population"
    assert records[0] == {
        "names": {"official": "Åland Islands"},
        "currencies": [{"code": "EUR", "name": "Euro", "symbol": "€"}],
        "population": 29458,
    }


def test_v5_exact_multiple_of_page_size_stops_on_more_false():
    data = [c for c in synthetic_countries(60, seed=1) if c["region"] == "Asia"]  # 10 countries
    with FakeRestCountries(data, api_key=CANARY, max_limit=5) as f:
        assert len(run(_fetch(f, "Asia"))) == 10
        assert f.count() == 2


def test_v5_region_of_up_to_100_countries_is_one_request(fake):
    records = run(_fetch(fake, "europe"))
    assert len(records) == len(EUROPE)
    (req,) = fake.requests
    assert req.path == "/countries/v5" and req.param("region") == "Europe"


@pytest.mark.parametrize("form", ["list", "object"])
def test_v5_currency_forms_pass_through_unchanged(form):
    with FakeRestCountries(api_key=CANARY, v5_currencies=form) as f:
        records = run(_fetch(f, "Northern Europe"))
    expected = [
        {k: v for k, v in to_v5(c, currencies=form).items() if k in ("currencies", "population")}
        | {"names": {"official": c["name"]["official"]}}
        for c in NORTHERN_EUROPE
    ]
    assert records == expected


def test_v5_all_regions_and_trailing_slash(fake):
    async def go() -> list[dict]:
        async with make_client(api_key=CANARY) as client:
            return await fetch_regions(client, ["all"], dialect=V5, base_url=fake.v5_base_url + "/", retry=FAST)

    records = run(go())
    assert sorted(r["names"]["official"] for r in records) == sorted(c["name"]["official"] for c in COUNTRIES)
    assert sorted(r.param("region") for r in fake.requests) == sorted(REGIONS)


def test_dedupe_across_overlapping_regions(fake):
    stats = RequestStats()
    records = run(_fetch(fake, ["Europe", "Northern Europe"], stats=stats))
    names = [r["names"]["official"] for r in records]
    assert names == [c["name"]["official"] for c in EUROPE]
    assert stats.requests == 2


def test_v5_missing_key_fails_before_any_request(fake):
    with pytest.raises(ConfigurationError, match="RESTCOUNTRIES_API_KEY") as info:
        run(_fetch(fake, "Europe", key=None))
    assert "\n" not in str(info.value)
    run(_fetch(fake, "Europe", key="  ", dialect=V31))  # v3.1 needs none
    assert fake.count("/countries/*") == 0


def test_401_is_authentication_error_not_retried(fake):
    err = _fail(fake, "Europe", key="wrong-" + CANARY[:3])
    assert isinstance(err, AuthenticationError) and err.status == 401
    assert "RESTCOUNTRIES_API_KEY" in str(err) and "restcountries-api-key" in str(err)
    _assert_good_message(err, fake.v5_base_url)
    assert fake.count() == 1


def test_403_quota_is_quota_error_quoting_the_api():
    with FakeRestCountries(api_key=CANARY, quota=0) as f:
        err = _fail(f, "Europe")
        assert isinstance(err, QuotaExceededError) and "Monthly request quota of 0 requests exceeded" in str(err)
        assert f.count() == 1


def test_404_unknown_property_is_not_an_unknown_region(fake):
    bogus = dataclasses.replace(V5, fields=(*V5.fields, "names.bogus"))
    err = _fail(fake, "Europe", dialect=bogus)
    assert type(err) is PermanentApiError and "Unknown property 'names.bogus'" in str(err)
    assert fake.count() == 1


@pytest.mark.parametrize("dialect", [V5, V31], ids=["v5", "v3.1"])
def test_unknown_region_lists_the_valid_ones(fake, dialect):
    err = _fail(fake, "Atlantis", dialect=dialect)
    assert isinstance(err, UnknownRegionError)
    assert "'Atlantis'" in str(err) and "Africa, Americas, Antarctic, Asia, Europe, Oceania" in str(err)
    assert "Northern Europe" in str(err)
    _assert_good_message(err, "Atlantis")
    assert fake.count() == 1


def test_400_is_permanent_quoting_the_api(fake):
    fake.inject("*", Fault.status(400, message="'offset' must be >= 0."))
    err = _fail(fake)
    assert type(err) is PermanentApiError and "'offset' must be >= 0." in str(err) and err.status == 400
    assert fake.count() == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404])
@pytest.mark.parametrize("dialect", [V5, V31], ids=["v5", "v3.1"])
def test_4xx_never_retried(fake, status, dialect):
    fake.inject("*", Fault.status(status, retry_after=0))
    err = _fail(fake, dialect=dialect)
    assert isinstance(err, PermanentApiError) and not isinstance(err, TransientApiError)
    assert fake.count() == 1


def test_redirect_is_not_followed(fake):
    fake.inject("*", Fault.status(302))
    err = _fail(fake)
    assert isinstance(err, PermanentApiError) and "redirected" in str(err) and fake.count() == 1


# --- v3.1 ------------------------------------------------------------------------------------


def test_v31_routes_and_fields(fake):
    records = run(_fetch(fake, ["Northern Europe", "Oceania"], dialect=V31, key=None))
    assert [r["name"]["official"] for r in records[:16]] == NE_NAMES
    assert len(records) == 16 + 5
    assert set(records[0]) == {"name", "currencies", "population"}
    assert records[3]["currencies"] == {
        "DKK": {"name": "Danish krone", "symbol": "kr"},
        "FOK": {"name": "Faroese króna", "symbol": "kr"},
    }
    assert sorted(r.path for r in fake.requests) == ["/v3.1/region/Oceania", "/v3.1/subregion/Northern Europe"]
    assert {r.param("fields") for r in fake.requests} == {"name,currencies,population"}
    assert not any(r.authorization for r in fake.requests)


def test_v31_sends_the_key_if_given_but_does_not_need_it(fake):
    run(_fetch(fake, "Asia", dialect=V31))
    assert fake.requests[0].authorization


def test_legacy_v31_deprecation_is_a_clear_error():
    with FakeRestCountries(legacy_v31=True) as f:
        err = _fail(f, dialect=V31, key=None)
        assert isinstance(err, DeprecatedApiError)
        text = str(err)
        assert DEPRECATION_MESSAGE in text and "--api v5" in text and "--base-url" in text
        assert "RESTCOUNTRIES_API_KEY" in text
        _assert_good_message(err, f"{f.url}/v3.1/subregion/Northern%20Europe")
        assert f.count() == 1


def test_errors_body_on_v5_is_not_retried(fake):
    fake.inject("*", Fault.bad_body("errors_body", message="Something broke upstream."))
    err = _fail(fake)
    assert isinstance(err, DeprecatedApiError) and "Something broke upstream." in str(err)
    assert fake.count() == 1


def test_a_record_without_currencies_is_kept(fake):
    """No currency is data, not a bad body: the country keeps a row with a null currency."""
    fake.inject("*", Fault.missing_field("currencies"))
    records = run(_fetch(fake, "Northern Europe", dialect=V31))
    assert len(records) == 16
    assert sum("currencies" not in r for r in records) == 1


# --- bad bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "dialect", "needle"),
    [
        (Fault.bad_body("html"), V5, "returned HTML, not JSON (content-type text/html"),
        (Fault.bad_body("html"), V31, "is --base-url pointing at the API?"),
        (Fault.bad_body("truncated"), V5, "invalid JSON"),
        (Fault.bad_body("truncated"), V31, "truncated"),
        (Fault.bad_body("non_list"), V31, "a JSON object where a list of countries was expected"),
        (Fault.bad_body("non_list"), V5, "without a list at 'data.objects'"),
        (Fault.missing_field("population"), V5, "without the requested field(s) population"),
        (Fault.missing_field("name"), V31, "without the requested field(s) name.official"),
    ],
    ids=["html-v5", "html-v31", "trunc-v5", "trunc-v31", "nonlist-v31", "envelope-v5", "missing-v5",
         "missing-name-v31"],
)
def test_bad_bodies_are_bad_response_errors(fake, fault, dialect, needle):
    fake.inject("*", fault)
    err = _fail(fake, dialect=dialect)
    assert isinstance(err, BadResponseError), err
    assert needle in str(err)
    _assert_good_message(err, "Northern%20Europe")
    assert err.url is not None and err.url.startswith(fake.url)
    assert fake.count() == 1


# --- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_status_is_retried(fake, status):
    fake.inject("*", Fault.status(status))
    stats = RequestStats()
    assert len(run(_fetch(fake, "Northern Europe", stats=stats))) == 16
    assert fake.count() == 2 and (stats.requests, stats.retries) == (2, 1)


@pytest.mark.parametrize("fault", [Fault.drop(), Fault.hang()], ids=["drop", "hang"])
def test_dropped_and_hung_connections_are_retried(fake, fault):
    fake.inject("*", fault)
    assert len(run(_fetch(fake, "Northern Europe", timeout=0.3))) == 16
    assert fake.count() == 2


def test_failed_page_is_retried_without_refetching_earlier_pages(paged):
    paged.inject("*", Fault.ok(), Fault.ok(), Fault.status(503), Fault.drop())
    stats = RequestStats()
    records = run(_fetch(paged, "Northern Europe", stats=stats))
    assert [r["names"]["official"] for r in records] == NE_NAMES
    assert [r.param("offset") for r in paged.requests] == ["0", "5", "10", "10", "10", "15"]
    assert (stats.requests, stats.retries) == (6, 2)


@pytest.mark.parametrize(
    "fault", [Fault.status(503), Fault.status(429), Fault.drop(), Fault.hang()], ids=["503", "429", "drop", "hang"]
)
def test_retries_stop_at_max_attempts(fake, fault):
    fake.inject("*", fault, times=10)
    policy = dataclasses.replace(FAST, max_attempts=3)
    err = _fail(fake, retry=policy, timeout=0.3)
    assert isinstance(err, TransientApiError) and "failed 3 times" in str(err)
    _assert_good_message(err, "Northern%20Europe")
    assert fake.count() == 3 and fake.pending_faults() == 7


def test_retries_stop_at_the_total_time_budget(fake):
    fake.inject("*", Fault.status(503), times=10)
    policy = RetryPolicy(max_attempts=10, base_delay=5, max_delay=5, max_total_seconds=1, jitter=0)
    err = _fail(fake, retry=policy)
    assert isinstance(err, TransientApiError) and "retry budget" in str(err) and err.status == 503
    assert fake.count() == 1


def test_retry_after_seconds_is_honoured(fake, caplog):
    fake.inject("*", Fault.status(429, retry_after=1))
    caplog.set_level(logging.WARNING, logger="flows.api")
    assert len(run(_fetch(fake, "Northern Europe"))) == 16
    reqs = fake.requests
    assert len(reqs) == 2 and reqs[1].started - reqs[0].finished >= 0.9
    assert any("retrying in 1.00s" in r.getMessage() for r in caplog.records)


def test_retry_after_http_date_in_the_past_retries_at_once(fake):
    fake.inject("*", Fault.status(503, retry_after=datetime(2001, 1, 1, tzinfo=UTC)))
    assert len(run(_fetch(fake, "Northern Europe"))) == 16 and fake.count() == 2


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_beyond_the_budget_gives_up_at_once(fake, form):
    ra: Any = 120 if form == "seconds" else datetime.now(UTC) + timedelta(seconds=120)
    fake.inject("*", Fault.status(429, retry_after=ra), times=5)
    err = _fail(fake, retry=dataclasses.replace(FAST, max_total_seconds=5))
    assert isinstance(err, TransientApiError) and err.status == 429
    assert err.retry_after is not None and 100 < err.retry_after <= 120
    assert "asked to retry after" in str(err) and "try again after" in str(err)
    assert fake.count() == 1


def test_before_request_is_awaited_before_every_request(paged):
    paged.inject("*", Fault.status(500))
    calls = 0

    async def gate() -> None:
        nonlocal calls
        calls += 1

    run(_fetch(paged, ["Northern Europe", "Antarctic"], before_request=gate))
    assert calls == paged.count() == 4 + 1 + 1


# --- concurrency ------------------------------------------------------------------------------


def test_regions_are_fetched_concurrently():
    with FakeRestCountries(api_key=CANARY, latency=0.3) as f:
        records = run(_fetch(f, ["all"]))
        assert len(records) == len(COUNTRIES)
        assert f.count() == 6 and f.max_overlap() == 6


def test_one_failing_region_cancels_the_rest(fake):
    fake.inject("/countries/v5/subregion/*", Fault.status(401))
    fake.inject("/countries/v5", Fault.hang())  # Europe would never finish on its own

    with pytest.raises(AuthenticationError):
        run(_fetch(fake, ["Europe", "Northern Europe"], timeout=30))


# --- secrets ----------------------------------------------------------------------------------


def test_api_key_never_in_errors_reprs_or_logs(fake, caplog):
    caplog.set_level(logging.DEBUG)
    fake.inject("*", Fault.status(401, message=f"Invalid API key '{CANARY}'."))
    err = _fail(fake)
    assert isinstance(err, AuthenticationError) and "'***'" in str(err)
    fake.inject("*", Fault.status(503, message=f"overloaded for {CANARY}"), times=4)
    err = _fail(fake)
    assert isinstance(err, TransientApiError)
    _assert_good_message(err, "Northern%20Europe")
    fake.inject("*", Fault.bad_body("errors_body", message=f"deprecated {CANARY}"))
    _assert_good_message(_fail(fake), "Northern%20Europe")
    run(_fetch(fake, "Oceania"))
    client = make_client(api_key=CANARY)
    assert CANARY not in repr(client.headers)
    run(client.aclose())
    for record in caplog.records:
        assert CANARY not in record.getMessage()
    assert CANARY not in caplog.text


def test_bad_key_characters_are_refused_without_quoting_the_key():
    with pytest.raises(ConfigurationError) as info:
        make_client(api_key="abc\ndef")
    assert "abc" not in str(info.value)


def test_connection_refused_is_transient():
    from tests.conftest import free_port

    port = free_port()

    async def go() -> None:
        async with make_client(timeout=1) as client:
            await fetch_region(client, "Europe", dialect=V31, base_url=f"http://127.0.0.1:{port}",
                               retry=dataclasses.replace(FAST, max_attempts=2))

    with pytest.raises(TransientApiError, match="failed 2 times.*connection failed"):
        run(go())


def test_bad_base_url_and_all_in_fetch_region():
    async def go(base: str, region: str = "Europe") -> None:
        async with make_client() as client:
            await fetch_region(client, region, dialect=V31, base_url=base)

    with pytest.raises(ConfigurationError, match="http:// or https://"):
        run(go("ftp://example.invalid"))
    with pytest.raises(ConfigurationError, match="fetch_regions"):
        run(go("http://127.0.0.1:1", "all"))


def test_make_client_options():
    client = make_client(api_key="k", timeout=7)
    try:
        assert client.headers["Authorization"] == "Bearer k"
        assert client.timeout.read == 7 and client.follow_redirects is False
    finally:
        run(client.aclose())
    assert "Authorization" not in make_client(api_key="  ").headers
    with pytest.raises(ConfigurationError):
        make_client(timeout=0)


def test_short_key_masks_only_quoted_api_text():
    with FakeRestCountries(api_key="k") as f:
        f.inject("*", Fault.status(403, message="quota for k used up"))
        err = _fail(f, key="k")
        assert "(quota for *** used up)" in str(err)
        assert "the plan's request quota is used up" in str(err)
        err = _fail(f, "Atlantis", key="k")
        assert "knows no region" in str(err) and "like 'Northern Europe'" in str(err)


def test_dialects_are_hashable_and_picklable():
    import pickle

    for dialect in DIALECTS.values():
        clone = pickle.loads(pickle.dumps(dialect))  # noqa: S301 - our own object
        assert clone == dialect and hash(clone) == hash(dialect)
