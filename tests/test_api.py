"""The REST Countries client against the real fake server (tests/fake_api.py): no mocks.

Expected values come from issue 8 and the API facts it cites: the legacy API's
301 to a static file on another host, the demo key's fixed sample, where the
key may go, the per-attempt deadline, the size bound, the request budget, and
messages that put the cause first and a short ``(GET …)`` last.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import pickle
import re
import socket
import time
import tracemalloc
from collections.abc import Coroutine, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flows.transform import schema
from flows.source import (
    ApiClient,
    RequestStats,
    expand_regions,
    fetch_region,
    fingerprint,
    get_dialect,
    make_client,
    one_error,
)
from flows.source import budget
from flows.source.client import DEADLINE_ENV, HOSTED_ORIGIN, MAX_RESPONSE_ENV, KeyAuth, is_loopback
from flows.source.dialects import DIALECTS, REGIONS, SUBREGIONS, canonical_region
from flows.source.request import RetryPolicy, dns_failure
from flows.errors import (
    ApiError,
    AuthenticationError,
    BadResponseError,
    ConfigurationError,
    DeadlineExceededError,
    DemoKeyError,
    DeprecatedApiError,
    ForeignRecordsError,
    HostNotFoundError,
    KeyWithheldError,
    NothingListeningError,
    PermanentApiError,
    QuotaExceededError,
    ResponseTooLargeError,
    TransientApiError,
    UnknownRegionError,
    UnknownRegionNameError,
    WrongBaseUrlError,
)
from tests.conftest import free_port
from tests.countries_data import COUNTRIES, NORTHERN_EUROPE, synthetic_countries, to_v5
from tests.fake_api import (
    DEPRECATION_MESSAGE,
    LEGACY_FILE_PATH,
    FakeRestCountries,
    Fault,
    ForwardProxy,
    legacy_hosted,
)

T = TypeVar("T")
V5 = get_dialect("v5")
V31 = get_dialect("v3.1")
# The source paths the table needs, as the lead's schema passes them (issue 8 §8).
PATHS = {
    "v5": ("names.official", "currencies.*.name", "population"),
    "v3.1": ("name.official", "currencies.*.name", "population"),
}
CANARY = "canary-KEY-7f3a9c1e5b"
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, max_total_seconds=10)
NE_NAMES = [c["name"]["official"] for c in NORTHERN_EUROPE]
EUROPE = [c for c in COUNTRIES if c["region"] == "Europe"]
NO_HOST = "nonexistent-host.invalid"  # .invalid never resolves (RFC 2606)
PROXY_VARS = [f"{n}_{s}" for n in ("http", "https", "all", "no") for s in ("proxy", "PROXY")]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def fake() -> Iterator[FakeRestCountries]:
    with FakeRestCountries(api_key=CANARY) as f:
        yield f


@pytest.fixture
def proxy_env(monkeypatch) -> Iterator[pytest.MonkeyPatch]:
    """No proxy variable from the machine running the tests: each test sets the ones it means."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


@pytest.fixture
def paged() -> Iterator[FakeRestCountries]:
    """Serves at most 5 v5 records per page, so Northern Europe (16) takes 4 pages."""
    with FakeRestCountries(api_key=CANARY, max_limit=5) as f:
        yield f


@pytest.fixture
def other() -> Iterator[FakeRestCountries]:
    """A second server: another origin, which the client was not told to trust."""
    with FakeRestCountries(api_key=CANARY) as f:
        yield f


def client_for(
    f: FakeRestCountries | None,
    *,
    key: str | None = CANARY,
    trust: Sequence[str] | None = None,
    deadline: float = 5.0,
    max_bytes: int = 5_000_000,
) -> ApiClient:
    """A client that trusts ``f``'s origin (or exactly ``trust``)."""
    trusted = trust if trust is not None else ([f.url] if f is not None else [])
    return make_client(api_key=key, trusted_base_urls=trusted, deadline=deadline, max_bytes=max_bytes)


async def fetch_all(client: ApiClient, names: Sequence[str], **kwargs: Any) -> list[dict]:
    """The flow's shape: every region at once over one client, then each country once."""
    regions = expand_regions(names)
    batches = await asyncio.gather(*(fetch_region(client, n, **kwargs) for n in regions))
    return schema.each_country_once(zip(regions, batches, strict=True), kwargs["dialect"].name)


async def _fetch(
    f: FakeRestCountries,
    region: str | list[str],
    *,
    dialect=V5,
    key: str | None = CANARY,
    trust: Sequence[str] | None = None,
    deadline: float = 5.0,
    max_bytes: int = 5_000_000,
    retry: RetryPolicy = FAST,
    base_url: str | None = None,
    **kwargs: Any,
) -> list[dict]:
    base = base_url or (f.v5_base_url if dialect.name == "v5" else f.v31_base_url)
    kwargs.setdefault("paths", PATHS[dialect.name])
    async with client_for(f, key=key, trust=trust, deadline=deadline, max_bytes=max_bytes) as client:
        if isinstance(region, list):
            return await fetch_all(client, region, dialect=dialect, base_url=base, retry=retry, **kwargs)
        return await fetch_region(client, region, dialect=dialect, base_url=base, retry=retry, **kwargs)


def _fail(f: FakeRestCountries, region: str = "Northern Europe", **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        run(_fetch(f, region, **kwargs))
    return info.value


def _assert_good_message(exc: BaseException, shown: str | None = None) -> None:
    """One line, no secret, the cause first and the request last and short, without the query string."""
    text = str(exc)
    assert "\n" not in text and CANARY not in text and CANARY not in repr(exc), text
    assert not text.startswith(("GET", "http")), text
    assert "response_fields" not in text and "fields=" not in text and "limit=" not in text, text
    if shown is not None:  # ``(GET …/x)``, or ``(GET …/x; 3 tries in 1.2s)`` after retries
        assert re.search(rf"\(GET {re.escape(shown)}(; \d+ tr(y|ies) in [\d.]+s)?\)$", text), text


def ne_names(records: list[dict]) -> list[str]:
    return [r["names"]["official"] for r in records]


# --- dialects, paths, regions, dedupe ------------------------------------------------------


def test_get_dialect_and_unknown_name():
    assert set(DIALECTS) == {"v5", "v3.1"} and get_dialect(" v5 ") is V5
    with pytest.raises(ConfigurationError, match=r"v4.*use one of v5, v3\.1"):
        get_dialect("v4")
    assert V5.requires_key and not V31.requires_key


def test_dialects_turn_source_paths_into_request_fields_and_add_region_fields():
    # v5 response_fields: dotted paths up to the first `*`; v3.1 fields: top-level names (issue 8 §8).
    assert V5.request_fields(PATHS["v5"]) == ("names.official", "currencies", "population", "region", "subregion")
    assert V31.request_fields(PATHS["v3.1"]) == ("name", "currencies", "population", "region", "subregion")


def test_expand_regions():
    assert expand_regions([" Northern Europe ", "europe", "ALL", "Europe"]) == [
        "Northern Europe",
        "Europe",
        "Africa",
        "Americas",
        "Antarctic",
        "Asia",
        "Oceania",
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


def test_dialects_are_hashable_and_picklable():
    for dialect in DIALECTS.values():
        clone = pickle.loads(pickle.dumps(dialect))  # noqa: S301 - our own object
        assert clone == dialect and hash(clone) == hash(dialect)


# --- v5 ------------------------------------------------------------------------------------------


def test_v5_paginates_asking_for_the_paths_and_region_fields_in_the_same_request(paged):
    stats = RequestStats()
    records = run(_fetch(paged, "Northern Europe", stats=stats))
    assert ne_names(records) == NE_NAMES
    reqs = paged.requests
    assert len(reqs) == 4 and (stats.requests, stats.retries) == (4, 0)
    assert [r.param("offset") for r in reqs] == ["0", "5", "10", "15"]
    for r in reqs:
        assert r.path == "/countries/v5/subregion/Northern Europe"
        assert r.authorization
        assert r.param("limit") == "100"
        assert r.param("response_fields") == "names.official,currencies,population,region,subregion"
    assert records[0] == {
        "names": {"official": "Åland Islands"},
        "currencies": [{"code": "EUR", "name": "Euro", "symbol": "€"}],
        "population": 29458,
        "region": "Europe",
        "subregion": "Northern Europe",
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
    assert [r["currencies"] for r in records] == [to_v5(c, currencies=form)["currencies"] for c in NORTHERN_EUROPE]


def test_all_regions_at_once_and_trailing_slash(fake):
    records = run(_fetch(fake, ["all"], base_url=fake.v5_base_url + "/"))
    assert sorted(ne_names(records)) == sorted(c["name"]["official"] for c in COUNTRIES)
    assert sorted(r.param("region") for r in fake.requests) == sorted(REGIONS)


def test_regions_are_fetched_concurrently():
    with FakeRestCountries(api_key=CANARY, latency=0.3) as f:
        records = run(_fetch(f, ["all"]))
        assert len(records) == len(COUNTRIES)
        assert f.count() == 6 and f.max_overlap() == 6


def test_dedupe_across_overlapping_regions(fake):
    stats = RequestStats()
    records = run(_fetch(fake, ["Europe", "Northern Europe"], stats=stats))
    assert ne_names(records) == [c["name"]["official"] for c in EUROPE]
    assert stats.requests == 2


# --- status codes -------------------------------------------------------------------------------


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
    assert str(err).startswith("the API key was refused (HTTP 401")
    _assert_good_message(err, "…?region=Europe")
    assert err.url is not None and err.url.startswith(fake.v5_base_url + "?")
    assert fake.count() == 1


def test_403_quota_is_quota_error_quoting_the_api():
    with FakeRestCountries(api_key=CANARY, quota=0) as f:
        err = _fail(f, "Europe")
        assert isinstance(err, QuotaExceededError) and "Monthly request quota of 0 requests exceeded" in str(err)
        assert f.count() == 1


def test_404_unknown_property_is_not_an_unknown_region(fake):
    err = _fail(fake, "Europe", paths=(*PATHS["v5"], "names.bogus"))
    assert type(err) is PermanentApiError and "Unknown property 'names.bogus'" in str(err)
    assert fake.count() == 1


@pytest.mark.parametrize(
    ("dialect", "shown"), [(V5, "…/subregion/Caribbean"), (V31, "…/v3.1/subregion/Caribbean")], ids=["v5", "v3.1"]
)
def test_a_documented_subregion_without_countries_puts_the_cause_first_and_the_request_last(fake, dialect, shown):
    err = _fail(fake, "caribbean", dialect=dialect)  # the fake holds no Caribbean country (v5: [], v3.1: 404)
    assert isinstance(err, UnknownRegionError) and err.region == "Caribbean"
    assert str(err).startswith("no countries of 'Caribbean' at this API")
    _assert_good_message(err, shown)
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


def test_a_v5_redirect_is_not_followed_and_the_key_does_not_cross_it(fake, other):
    fake.inject("*", Fault.status(302, message=other.v5_base_url + "/subregion/Northern%20Europe"))
    err = _fail(fake, trust=[fake.url, other.url])
    assert isinstance(err, PermanentApiError) and "redirected" in str(err) and err.status == 302
    assert fake.count() == 1 and other.count() == 0


def test_errors_body_on_v5_is_not_retried(fake):
    fake.inject("*", Fault.bad_body("errors_body", message="Something broke upstream."))
    err = _fail(fake)
    assert isinstance(err, DeprecatedApiError) and "Something broke upstream." in str(err)
    assert fake.count() == 1


# --- 1. the hosted legacy API redirects ------------------------------------------------------


def test_legacy_redirect_ends_in_the_deprecation_error_quoting_the_api_without_sending_the_key():
    with legacy_hosted(api_key=CANARY) as (api, files):
        # Even with both origins trusted, the key goes to the API and never across the redirect.
        err = _fail(api, dialect=V31, trust=[api.url, files.url])
        assert isinstance(err, DeprecatedApiError) and err.status == 301
        text = str(err)
        assert DEPRECATION_MESSAGE in text
        assert "deprecated" in text.split(":")[0]
        assert "api=v5" in text and "RESTCOUNTRIES_API_KEY" in text
        assert "--api v5" in err.for_audience("cli")
        _assert_good_message(err, "…/v3.1/subregion/Northern Europe")
        assert [(r.path, r.authorization) for r in api.requests] == [("/v3.1/subregion/Northern Europe", True)]
        assert [(r.path, r.authorization) for r in files.requests] == [(LEGACY_FILE_PATH, False)]


def test_a_redirect_of_a_self_hosted_server_to_its_new_address_is_not_called_deprecated(fake, other):
    """Only the API's errors body (or restcountries.com itself) means deprecated; a move is a plain redirect."""
    moved = other.v31_base_url + "/v3.1/subregion/Northern%20Europe"
    fake.inject("/v3.1/*", Fault.status(308, message=moved))
    err = _fail(fake, dialect=V31, key=None)
    assert isinstance(err, PermanentApiError) and not isinstance(err, DeprecatedApiError) and err.status == 308
    text = str(err)
    assert "deprecated" not in text
    assert f"redirected the request (HTTP 308 to {moved})" in text and "point base_url at the final API" in text
    assert other.count() == 1 and not other.requests[0].authorization  # read once, without credentials


def test_a_legacy_redirect_from_restcountries_com_is_deprecated_even_when_its_target_cannot_be_read(proxy_env):
    """The hosted legacy host (reached here through a proxy that maps it to the fake) redirecting anywhere."""
    with FakeRestCountries(legacy_redirect="http://files.invalid/countries.00/legacy.json") as api:
        with ForwardProxy({"restcountries.com": f"127.0.0.1:{api.port}"}) as proxy:
            proxy_env.setenv("HTTP_PROXY", proxy.url)
            err = _fail(api, dialect=V31, key=None, base_url="http://restcountries.com")
        assert [p[1] for p in proxy.seen] == [
            "http://restcountries.com/v3.1/subregion/Northern%20Europe?fields=name,currencies,population,region,subregion",
            "http://files.invalid/countries.00/legacy.json",
        ]
    assert isinstance(err, DeprecatedApiError) and err.status == 301
    assert "deprecated" in str(err) and "api=v5" in str(err) and DEPRECATION_MESSAGE not in str(err)


def test_a_redirect_to_an_unreadable_place_off_restcountries_com_is_a_plain_redirect():
    with FakeRestCountries(legacy_redirect=f"http://127.0.0.1:{free_port()}/countries.00/legacy.json") as api:
        err = _fail(api, dialect=V31, key=None)
    assert isinstance(err, PermanentApiError) and not isinstance(err, DeprecatedApiError)
    assert "deprecated" not in str(err) and "redirected the request (HTTP 301" in str(err)


def test_legacy_errors_body_is_the_deprecation_error():
    with FakeRestCountries(legacy_v31=True) as f:
        err = _fail(f, dialect=V31, key=None)
        assert isinstance(err, DeprecatedApiError)
        text = str(err)
        assert DEPRECATION_MESSAGE in text and "api=v5" in text and "base_url" in text
        assert "RESTCOUNTRIES_API_KEY" in text
        _assert_good_message(err, "…/v3.1/subregion/Northern Europe")
        assert f.count() == 1


# --- 2. the demo key ----------------------------------------------------------------------------


def test_the_demo_key_is_refused_before_any_request():
    with pytest.raises(DemoKeyError) as info:
        make_client(api_key="rc_live_demo")
    assert "only returns a fixed sample" in str(info.value) and "get a key at" in str(info.value)


@pytest.mark.parametrize("key", ["two words", "ke\ny", "clé"], ids=["space", "newline", "non-ascii"])
def test_a_key_no_header_can_carry_is_one_clear_error_that_never_quotes_it(key):
    with pytest.raises(ConfigurationError) as info:
        make_client(api_key=key)
    message = str(info.value)
    assert message.startswith("The API key contains spaces, control or non-ASCII characters")
    assert key.strip() not in message


def test_a_demo_answer_is_one_clear_error():
    """A key the API treats as its demo key gets Canada for Northern Europe, with `data._demo`."""
    with FakeRestCountries(demo_key=CANARY, api_key="another-key") as f:
        err = _fail(f)
        assert f.count() == 1
    assert isinstance(err, DemoKeyError)
    assert "the demo key only returns a fixed sample" in str(err) and "get a key at" in str(err)
    _assert_good_message(err, "…/subregion/Northern Europe")


@pytest.mark.parametrize("dialect", [V5, V31], ids=["v5", "v3.1"])
def test_records_of_another_region_are_refused_naming_them(fake, dialect):
    fake.inject("*", Fault.foreign("Americas"))
    err = _fail(fake, dialect=dialect)
    assert isinstance(err, ForeignRecordsError)
    assert "'Canada' (Americas / North America)" in str(err) and "'Northern Europe'" in str(err)
    assert fake.count() == 1  # region and subregion came with the same request
    _assert_good_message(err)


# --- 3. the key only where it belongs -----------------------------------------------------------


def test_v5_at_an_untrusted_origin_fails_before_any_request_saying_how_to_trust_it(fake, other):
    with pytest.raises(KeyWithheldError) as info:
        run(_fetch(other, "Northern Europe", trust=[fake.url]))
    assert other.count() == 0
    text = str(info.value)
    assert text.startswith(f"the API key was withheld from {other.url}")
    assert f"RESTCOUNTRIES_BASE_URL={other.v5_base_url}" in text
    assert f"python blocks/create_blocks.py --base-url {other.v5_base_url}" in text
    assert "\n" not in text and CANARY not in text


def test_v31_at_an_untrusted_origin_gets_no_key_and_still_works(fake, other):
    records = run(_fetch(other, "Northern Europe", dialect=V31, trust=[fake.url]))
    assert len(records) == 16
    assert [r.authorization for r in other.requests] == [False]
    run(_fetch(fake, "Northern Europe", dialect=V31, trust=[fake.url]))
    assert [r.authorization for r in fake.requests] == [True]


def test_no_request_of_the_client_carries_the_key_to_an_untrusted_origin(fake, other):
    """Structural: the client's own auth decides per request, so even a direct GET cannot leak it."""

    async def go() -> None:
        async with client_for(fake) as client:
            await client.get(other.v5_base_url, params={"region": "Europe"})
            await client.get(fake.v5_base_url, params={"region": "Europe"})

    run(go())
    assert [r.authorization for r in other.requests] == [False]
    assert [r.authorization for r in fake.requests] == [True]


def test_the_key_never_goes_over_plain_http_except_to_loopback(proxy_env, fake):
    """What the servers received: the key over plain http to loopback, not to a trusted host elsewhere."""
    plain = "http://countries.example.org"
    with ForwardProxy({"countries.example.org": f"127.0.0.1:{fake.port}"}) as proxy:
        proxy_env.setenv("HTTP_PROXY", proxy.url)

        async def go() -> None:
            async with client_for(None, trust=[plain, fake.url, f"http://localhost:{fake.port}"]) as client:
                await client.get(plain + "/countries/v5", params={"region": "Europe"})
                await client.get(fake.v5_base_url, params={"region": "Europe"})
                await client.get(f"http://localhost:{fake.port}/countries/v5", params={"region": "Europe"})

        run(go())
        assert proxy.seen == [("GET", plain + "/countries/v5?region=Europe", False)]  # loopback went direct
        assert [r.authorization for r in fake.requests] == [False, True, True]
        with pytest.raises(KeyWithheldError, match="never sent over plain http"):
            run(_fetch(fake, "Europe", trust=[plain], base_url=plain + "/countries/v5"))
        assert len(proxy.seen) == 1 and fake.count() == 3


def test_where_the_key_goes_over_https():
    withheld_reason = KeyAuth("k", [HOSTED_ORIGIN, "https://countries.internal:8443"]).withheld_reason
    assert withheld_reason(HOSTED_ORIGIN + "/countries/v5") is None
    assert withheld_reason("https://API.restcountries.com:443/countries/v5/subregion/Asia") is None
    assert withheld_reason("https://countries.internal:8443/v5") is None
    assert withheld_reason("https://api.restcountries.com.example.org/countries/v5") == "untrusted"
    assert withheld_reason("https://countries.internal/v5") == "untrusted"  # another port
    assert withheld_reason("http://api.restcountries.com/countries/v5") == "plain-http"


def test_an_untrusted_plain_http_base_url_is_told_about_plain_http_not_how_to_trust_it(fake):
    with pytest.raises(KeyWithheldError) as info:
        run(_fetch(fake, "Europe", base_url="http://countries.example.org/v5"))
    text = str(info.value)
    assert "never sent over plain http" in text and "use https" in text
    assert "RESTCOUNTRIES_BASE_URL" not in text and "create_blocks" not in text
    assert fake.count() == 0


def test_only_literal_loopback_addresses_and_localhost_are_loopback():
    for host in ("localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("api.localhost", "localhost.example.org", "x.localhost", "10.0.0.1", "::2", "example.org"):
        assert not is_loopback(host), host


def test_a_dot_localhost_name_gets_no_key_over_plain_http(fake):
    base = f"http://countries.localhost:{fake.port}/countries/v5"
    with pytest.raises(KeyWithheldError, match="never sent over plain http"):
        run(_fetch(fake, "Europe", trust=[base], base_url=base))
    assert fake.count() == 0


# --- proxies of the environment -------------------------------------------------------------


def test_requests_go_through_the_http_proxy_of_the_environment(proxy_env, fake):
    """A worker behind a proxy: an http base URL that is not loopback is fetched through $HTTP_PROXY."""
    with ForwardProxy({"countries.example.org": f"127.0.0.1:{fake.port}"}) as proxy:
        proxy_env.setenv("HTTP_PROXY", proxy.url)
        records = run(_fetch(fake, "Northern Europe", dialect=V31, key=None, base_url="http://countries.example.org"))
    assert sorted(c["name"]["official"] for c in records) == sorted(NE_NAMES)
    assert [(m, t.split("?")[0], a) for m, t, a in proxy.seen] == [
        ("GET", "http://countries.example.org/v3.1/subregion/Northern%20Europe", False)
    ]
    assert [r.path for r in fake.requests] == ["/v3.1/subregion/Northern Europe"]


def test_the_key_never_goes_over_plain_http_through_a_proxy(proxy_env):
    """Plain http to a loopback address the proxy would carry: the key is withheld, for v5 before any request."""
    with (
        FakeRestCountries(api_key=CANARY, host="127.0.0.2") as far,
        ForwardProxy({"127.0.0.2": f"127.0.0.2:{far.port}"}) as proxy,
    ):
        proxy_env.setenv("ALL_PROXY", proxy.url)
        with pytest.raises(KeyWithheldError) as info:
            run(_fetch(far, "Europe"))
        assert "proxy" in str(info.value) and CANARY not in str(info.value)
        records = run(_fetch(far, "Northern Europe", dialect=V31))  # keyless v3.1 still works, through the proxy
        assert len(records) == 16
        assert [(t.split("?")[0], a) for _, t, a in proxy.seen] == [
            (f"{far.url}/v3.1/subregion/Northern%20Europe", False)
        ]
        assert [r.authorization for r in far.requests] == [False]


def test_a_trusted_base_url_must_be_http_or_https():
    with pytest.raises(ConfigurationError, match="RESTCOUNTRIES_BASE_URL"):
        make_client(api_key=CANARY, trusted_base_urls=["ftp://example.org"])


# --- 4. a total deadline per attempt ----------------------------------------------------------


def test_a_trickling_answer_is_cut_at_the_deadline_and_retried_within_the_budget(fake):
    fake.inject("*", Fault.trickle(0.05), times=10)
    started = time.monotonic()
    err = _fail(fake, deadline=0.3, retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_total_seconds=10))
    elapsed = time.monotonic() - started
    assert isinstance(err, DeadlineExceededError) and isinstance(err, TransientApiError)
    assert "0.3s deadline" in str(err) and "3 tries" in str(err)
    assert fake.count() == 3 and 0.9 <= elapsed < 3
    _assert_good_message(err, "…/subregion/Northern Europe")


def test_the_retry_budget_bounds_the_whole_request(fake):
    """However many attempts are allowed, the request ends at its total budget (at least one deadline)."""
    fake.inject("*", Fault.trickle(0.05), times=50)
    started = time.monotonic()
    err = _fail(fake, deadline=0.4, retry=RetryPolicy(max_attempts=50, base_delay=0.01, max_total_seconds=1))
    # Without the budget: 50 tries of 0.4 s. The bound leaves room for a busy machine's setup time.
    assert isinstance(err, DeadlineExceededError) and time.monotonic() - started < 3


def test_a_hang_is_retried_after_the_deadline(fake):
    fake.inject("*", Fault.hang())
    assert len(run(_fetch(fake, "Northern Europe", deadline=0.3))) == 16 and fake.count() == 2


def test_deadline_and_size_defaults_and_environment(monkeypatch):
    monkeypatch.delenv(DEADLINE_ENV, raising=False)
    monkeypatch.delenv(MAX_RESPONSE_ENV, raising=False)
    client = make_client()
    assert (client.deadline, client.max_bytes) == (60.0, 20_000_000)  # issue 8: ~60 s, 20 MB
    monkeypatch.setenv(DEADLINE_ENV, "5")
    monkeypatch.setenv(MAX_RESPONSE_ENV, "2.5")
    client = make_client()
    assert (client.deadline, client.max_bytes) == (5.0, 2_500_000)
    monkeypatch.setenv(DEADLINE_ENV, "soon")
    with pytest.raises(ConfigurationError, match=DEADLINE_ENV):
        make_client()


# --- 5. a size bound ------------------------------------------------------------------------------


def test_an_announced_oversize_body_is_refused_without_reading_it(fake):
    fake.inject("*", Fault.oversize(200_000_000))
    started = time.monotonic()
    err = _fail(fake, max_bytes=100_000)
    assert isinstance(err, ResponseTooLargeError) and "larger than" in str(err)
    assert MAX_RESPONSE_ENV in str(err) and time.monotonic() - started < 5
    assert fake.count() == 1  # not retried
    _assert_good_message(err, "…/subregion/Northern Europe")


def test_an_unannounced_oversize_body_stops_at_the_bound_in_bounded_memory(fake):
    fake.inject("*", Fault.oversize(200_000_000, declare_length=False))
    tracemalloc.start()
    try:
        err = _fail(fake, max_bytes=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(err, ResponseTooLargeError) and "reading stopped there" in str(err)
    assert peak < 20_000_000, f"peak {peak / 1e6:.1f} MB while refusing a 200 MB body"
    assert fake.count() == 1


# --- 6. the request budget ---------------------------------------------------------------------


def test_an_unmetered_run_never_waits_nor_contacts_prefect():
    async def go() -> None:
        run_budget = await budget.start_run(6, metered=False)
        await asyncio.wait_for(asyncio.gather(*(run_budget.before_request() for _ in range(50))), timeout=5)

    run(go())


def test_a_metered_run_takes_its_slots_in_one_acquisition_on_a_real_server(prefect_server):
    from prefect.client.orchestration import get_client

    run_budget = run(budget.start_run(6))
    assert run_budget.prepaid == 6

    async def read():
        async with get_client() as client:
            return await client.read_global_concurrency_limit_by_name(budget.RATE_LIMIT_NAME)

    limit = run(read())
    assert limit.limit >= 6 and limit.slot_decay_per_second > 0


def test_a_runs_requests_make_no_prefect_round_trip(prefect_server):
    """Once the run has its slots, its requests go out without asking the server (issue 8 §6)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    run_budget = run(budget.start_run(6))

    async def send_all() -> None:
        await asyncio.wait_for(asyncio.gather(*(run_budget.before_request() for _ in range(6))), timeout=5)

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):  # no server there
        run(send_all())  # six requests let through without a server


def test_before_request_is_awaited_before_every_request(paged):
    paged.inject("*", Fault.status(500))
    calls = 0

    async def gate() -> None:
        nonlocal calls
        calls += 1

    run(_fetch(paged, ["Northern Europe", "Antarctic"], before_request=gate))
    assert calls == paged.count() == 4 + 1 + 1


def test_a_cancelled_fetch_ends_cleanly_and_the_client_stays_usable(fake):
    """What the flow relies on to cancel sibling regions when one fails (issue 8 §7)."""
    fake.inject("/countries/v5", Fault.hang())

    async def go() -> list[dict]:
        sent = asyncio.Event()

        async def mark() -> None:
            sent.set()

        async with client_for(fake) as client:
            task = asyncio.ensure_future(
                fetch_region(
                    client, "Europe", dialect=V5, base_url=fake.v5_base_url, paths=PATHS["v5"], before_request=mark
                )
            )
            await sent.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return await fetch_region(
                client, "Northern Europe", dialect=V5, base_url=fake.v5_base_url, paths=PATHS["v5"]
            )

    assert len(run(go())) == 16


# --- 7. messages ---------------------------------------------------------------------------------


def test_an_unknown_host_says_it_cannot_be_resolved_and_is_not_retried():
    stats = RequestStats()

    async def go() -> None:
        async with make_client() as client:
            await fetch_region(
                client,
                "Europe",
                dialect=V31,
                base_url=f"http://{NO_HOST}",
                paths=PATHS["v3.1"],
                retry=FAST,
                stats=stats,
            )

    with pytest.raises(HostNotFoundError) as info:
        run(go())
    text = str(info.value)
    assert text.startswith(f"the host {NO_HOST} cannot be resolved") and "network" in text and "URL" in text
    assert "unavailable or overloaded" not in text
    assert stats.requests == 1


def test_dns_failures_are_told_apart():
    """EAI_NONAME ("Name or service not known") is final; "Temporary failure in name resolution" is not."""

    def chained(gai: socket.gaierror) -> Exception:
        try:
            try:
                raise gai
            except socket.gaierror as inner:
                raise httpx.ConnectError(str(inner)) from inner
        except httpx.ConnectError as outer:
            return outer

    assert dns_failure(chained(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))) == (
        True,
        "Name or service not known",
    )
    assert dns_failure(chained(socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"))) == (
        False,
        "Temporary failure in name resolution",
    )
    assert dns_failure(httpx.ConnectError("[Errno 111] Connection refused")) is None


def test_fingerprint_is_a_short_hash_never_the_key():
    a, b = fingerprint(CANARY), fingerprint(CANARY + "x")
    assert a == fingerprint(CANARY) and a != b and CANARY not in a
    assert len(a) == 16 and int(a, 16) >= 0
    assert fingerprint(None) == fingerprint("  ") != a


def test_api_key_never_in_errors_reprs_or_logs(fake, caplog):
    caplog.set_level(logging.DEBUG)
    fake.inject("*", Fault.status(401, message=f"Invalid API key '{CANARY}'."))
    err = _fail(fake)
    assert isinstance(err, AuthenticationError) and "'***'" in str(err)
    fake.inject("*", Fault.status(503, message=f"overloaded for {CANARY}"), times=4)
    err = _fail(fake)
    assert isinstance(err, TransientApiError)
    _assert_good_message(err, "…/subregion/Northern Europe")
    fake.inject("*", Fault.bad_body("errors_body", message=f"deprecated {CANARY}"))
    _assert_good_message(_fail(fake), "…/subregion/Northern Europe")
    run(_fetch(fake, "Oceania"))
    client = client_for(fake)
    assert CANARY not in repr(client) and CANARY not in repr(client.auth)
    run(client.aclose())
    assert CANARY not in caplog.text


def test_bad_key_characters_are_refused_without_quoting_the_key():
    with pytest.raises(ConfigurationError) as info:
        make_client(api_key="abc\ndef")
    assert "abc" not in str(info.value)


def test_bad_base_url_and_all_in_fetch_region():
    async def go(base: str, region: str = "Europe") -> None:
        async with make_client() as client:
            await fetch_region(client, region, dialect=V31, base_url=base, paths=PATHS["v3.1"])

    with pytest.raises(ConfigurationError, match="http:// or https://"):
        run(go("ftp://example.invalid"))
    with pytest.raises(ConfigurationError, match="expand .all. first"):
        run(go("http://127.0.0.1:1", "all"))


BAD_BASE_URLS = [
    ("https://a\nb/x", "is not a valid URL", "'https://a\\nb/x'"),
    ("https://[::1/x", "is not a valid URL", "'https://[::1/x'"),
    ("https://countries.example.org/v5?apikey=SECRET-1", "must not have a query", "'https://countries.example.org/v5'"),
    (
        "https://countries.example.org/v5#SECRET-1",
        "must not have a query or fragment",
        "'https://countries.example.org/v5'",
    ),
    (
        "https://me:SECRET-1@countries.example.org/v5",
        "must not contain credentials",
        "'https://countries.example.org/v5'",
    ),
    ("https://SECRET-1@countries.example.org/v5", "must not contain credentials", "'https://countries.example.org/v5'"),
    ("https://[::1/x?apikey=SECRET-1", "is not a valid URL", "'https://[::1/x'"),
    ("ftp://countries.example.org/x?apikey=SECRET-1", "http:// or https://", "'ftp://countries.example.org/x'"),
    ("https://countries.example.org:99999/v5", "invalid port", None),
    ("https:///v5", "names no host", None),
]


@pytest.mark.parametrize(("url", "problem", "shown"), BAD_BASE_URLS)
def test_a_bad_base_url_is_one_configuration_error_without_its_secret_parts(url, problem, shown):
    from flows.parameters import check_base_url

    async def fetch() -> None:
        async with make_client() as client:
            await fetch_region(client, "Europe", dialect=V31, base_url=url, paths=PATHS["v3.1"])

    errors = []
    with pytest.raises(ConfigurationError) as info:
        check_base_url(url)
    errors.append(info.value)
    with pytest.raises(ConfigurationError) as info:
        run(fetch())
    errors.append(info.value)
    with pytest.raises(ConfigurationError) as info:
        make_client(trusted_base_urls=[url])
    errors.append(info.value)
    for err in errors:
        text = str(err)
        assert problem in text and "\n" not in text and "SECRET" not in text, text
        assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__), "no chained traceback"
        if shown is not None:
            assert shown in text, text


def test_short_key_masks_only_quoted_api_text():
    with FakeRestCountries(api_key="k") as f:
        f.inject("*", Fault.status(403, message="quota for k used up"))
        err = _fail(f, key="k")
        assert '"quota for *** used up"' in str(err)
        assert "the plan's request quota is used up" in str(err)
        f.inject("*", Fault.status(404, message="k has no such region"))
        err = _fail(f, "Caribbean", key="k")
        assert '"*** has no such region"' in str(err) and "no countries of 'Caribbean'" in str(err)


# --- 8. bad bodies and retries ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "dialect", "needle"),
    [
        (Fault.bad_body("html"), V5, "answered with HTML, not JSON (content-type text/html"),
        (Fault.bad_body("html"), V31, "is base_url pointing at the API?"),
        (Fault.bad_body("non_list"), V31, "a JSON object where a list of countries was expected"),
        (Fault.bad_body("non_list"), V5, "has no list at 'data.objects'"),
    ],
    ids=[
        "html-v5",
        "html-v31",
        "nonlist-v31",
        "envelope-v5",
    ],
)
def test_bad_bodies_are_bad_response_errors(fake, fault, dialect, needle):
    fake.inject("*", fault)
    err = _fail(fake, dialect=dialect)
    assert isinstance(err, BadResponseError), err
    assert needle in str(err)
    _assert_good_message(err)
    assert str(err).endswith("subregion/Northern Europe)")  # no retries: no count
    assert err.url is not None and err.url.startswith(fake.url)
    assert fake.count() == 1


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_status_is_retried(fake, status):
    fake.inject("*", Fault.status(status))
    stats = RequestStats()
    assert len(run(_fetch(fake, "Northern Europe", stats=stats))) == 16
    assert fake.count() == 2 and (stats.requests, stats.retries) == (2, 1)


def test_a_dropped_connection_is_retried(fake):
    fake.inject("*", Fault.drop())
    assert len(run(_fetch(fake, "Northern Europe"))) == 16
    assert fake.count() == 2


def test_failed_page_is_retried_without_refetching_earlier_pages(paged):
    paged.inject("*", Fault.ok(), Fault.ok(), Fault.status(503), Fault.drop())
    stats = RequestStats()
    records = run(_fetch(paged, "Northern Europe", stats=stats))
    assert ne_names(records) == NE_NAMES
    assert [r.param("offset") for r in paged.requests] == ["0", "5", "10", "10", "10", "15"]
    assert (stats.requests, stats.retries) == (6, 2)


@pytest.mark.parametrize(
    "fault", [Fault.status(503), Fault.status(429), Fault.drop(), Fault.hang()], ids=["503", "429", "drop", "hang"]
)
def test_retries_stop_at_max_attempts(fake, fault):
    fake.inject("*", fault, times=10)
    err = _fail(fake, retry=dataclasses.replace(FAST, max_attempts=3), deadline=0.3)
    assert isinstance(err, TransientApiError) and "3 tries" in str(err)
    _assert_good_message(err, "…/subregion/Northern Europe")
    assert fake.count() == 3 and fake.pending_faults() == 7


def test_retries_stop_at_the_total_time_budget(fake):
    fake.inject("*", Fault.status(503), times=10)
    policy = RetryPolicy(max_attempts=10, base_delay=50, max_delay=50, max_total_seconds=1)
    started = time.monotonic()
    err = _fail(fake, retry=policy, deadline=1)
    assert isinstance(err, TransientApiError) and err.status == 503 and "unavailable or overloaded" in str(err)
    assert time.monotonic() - started < 3 and fake.count() <= 2  # without the budget: a 50 s wait


def test_retry_after_seconds_is_honoured(fake, caplog):
    fake.inject("*", Fault.status(429, retry_after=1))
    caplog.set_level(logging.WARNING, logger="flows.source")
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
    assert str(err).startswith("the API asked to retry after") and "try again after" in str(err)
    assert fake.count() == 1


# --- issue 16 §5: paging bounded by the data ---------------------------------------------------


@pytest.mark.parametrize("paging", ["ignore_offset", "always_more"])
def test_broken_paging_stops_within_a_few_pages_of_what_the_total_needs(paging):
    """16 countries in pages of 5 need 4 pages; a server that always says more costs at most 2 pages more."""
    with FakeRestCountries(api_key=CANARY, max_limit=5, paging=paging) as f:
        err = _fail(f)
        assert isinstance(err, BadResponseError) and "paging" in str(err)
        _assert_good_message(err)
        assert f.count() <= 4 + 2
    if paging == "ignore_offset":
        assert f.count() == 2  # the repeated page ends it at once


def test_a_total_that_changes_while_paging_refetches_the_region_from_the_start_once(paged):
    paged.inject("*", Fault.ok(), Fault.grow())  # a country joins Northern Europe before page 2 is served
    stats = RequestStats()
    records = run(_fetch(paged, "Northern Europe", stats=stats))
    assert len({r["names"]["official"] for r in records}) == len(records) == 17
    assert [r.param("offset") for r in paged.requests] == ["0", "5", "0", "5", "10", "15"]
    assert stats.requests == 6


def test_a_total_that_keeps_changing_fails_without_a_mixed_snapshot(paged):
    paged.inject("*", Fault.ok(), Fault.grow(), Fault.ok(), Fault.grow())
    err = _fail(paged)
    assert isinstance(err, ApiError) and "changed while" in str(err) and "16, then 17, then 18" in str(err)
    _assert_good_message(err)
    assert paged.count() == 4


# --- issue 16 §7: errors that name the real cause ---------------------------------------------


@pytest.mark.parametrize(
    ("dialect", "base", "path"),
    [(V31, "{url}/v3.1", "/v3.1/v3.1/region/Africa?"), (V5, "{url}", "?region=Africa&")],
    ids=["v3.1-doubled", "v5-without-countries-v5"],
)
def test_a_base_url_with_a_wrong_path_is_named_with_the_full_url(fake, dialect, base, path):
    base = base.format(url=fake.url)

    async def go() -> list[BaseException]:
        async with client_for(fake) as client:
            fetches = (
                fetch_region(client, r, dialect=dialect, base_url=base, paths=PATHS[dialect.name], retry=FAST)
                for r in REGIONS
            )
            return await asyncio.gather(*fetches, return_exceptions=True)

    errors = run(go())
    assert all(isinstance(e, UnknownRegionError) and e.status == 404 for e in errors), errors
    err = one_error(errors, asked=len(REGIONS), dialect=dialect)
    text = str(err)
    assert isinstance(err, WrongBaseUrlError) and text.startswith("the base URL looks wrong")
    assert f"GET {fake.url}{path}" in text and "…" not in text, text
    assert "\n" not in text and CANARY not in text
    assert fake.count() == len(REGIONS)
    partly = one_error(errors[:2], asked=len(REGIONS), dialect=dialect)  # some regions had countries
    assert isinstance(partly, UnknownRegionError) and not isinstance(partly, WrongBaseUrlError)


def test_nothing_listening_fails_fast_saying_so_with_true_counts(caplog):
    caplog.set_level(logging.WARNING, logger="flows.source")
    port = free_port()
    stats = RequestStats()

    async def go() -> None:
        async with make_client() as client:
            await fetch_region(
                client, "Europe", dialect=V31, base_url=f"http://127.0.0.1:{port}", paths=PATHS["v3.1"], stats=stats
            )

    started = time.monotonic()
    with pytest.raises(NothingListeningError) as info:
        run(go())  # the default retry policy, as the flow uses it
    elapsed = time.monotonic() - started
    text = str(info.value)
    assert text.startswith(f"nothing is listening at 127.0.0.1:{port} (connection refused")
    said = re.search(r"(\d+) tries in ([\d.]+)s", text)
    assert said is not None and int(said.group(1)) == stats.requests >= 2, text
    # At least the waits between the tries (as logged, each rounded to 0.01 s), at most the call's time (0.1 s
    # rounding); a fixed tolerance around the call's time failed on a busy machine.
    waits = [float(w) for w in re.findall(r"retrying in ([\d.]+)s", caplog.text)]
    assert len(waits) == stats.requests - 1, caplog.text
    assert sum(waits) - 0.05 - 0.01 * len(waits) <= float(said.group(2)) <= elapsed + 0.05 and elapsed < 5
    assert not isinstance(info.value, TransientApiError)  # final: a task retry would not multiply it
    _assert_good_message(info.value, "…/v3.1/region/Europe")


def test_a_body_cut_short_once_is_retried(fake):
    fake.inject("*", Fault.bad_body("truncated"))
    assert len(run(_fetch(fake, "Northern Europe"))) == 16 and fake.count() == 2


@pytest.mark.parametrize("dialect", [V5, V31], ids=["v5", "v3.1"])
def test_a_body_that_is_never_json_fails_with_true_counts_and_no_try_again(fake, dialect):
    fake.inject("*", Fault.bad_body("truncated"), times=10)
    err = _fail(fake, dialect=dialect, retry=dataclasses.replace(FAST, max_attempts=3))
    assert isinstance(err, BadResponseError) and not isinstance(err, TransientApiError)
    assert "not valid JSON" in str(err) and "3 tries" in str(err) and "try again" not in str(err)
    _assert_good_message(err, "…/subregion/Northern Europe" if dialect is V5 else "…/v3.1/subregion/Northern Europe")
    assert fake.count() == 3


def test_an_html_page_is_final_and_does_not_say_try_again(fake):
    fake.inject("*", Fault.bad_body("html"), times=5)
    err = _fail(fake, dialect=V31)
    assert isinstance(err, BadResponseError) and "try again" not in str(err) and fake.count() == 1


# --- issue 17 §2: retries that tell the truth --------------------------------------------------


def test_the_tries_and_seconds_a_message_gives_are_the_ones_spent(fake, caplog):
    fake.inject("*", Fault.status(503), times=10)
    caplog.set_level(logging.WARNING, logger="flows.source")
    started = time.monotonic()
    err = _fail(fake, retry=dataclasses.replace(FAST, max_attempts=3))
    elapsed = time.monotonic() - started
    said = re.search(r"(\d+) tries in ([\d.]+)s", str(err))
    assert said is not None and int(said.group(1)) == fake.count() == 3
    # At least the time from the first request to the last answer, at most the call's (rounded to 0.1 s both ways).
    spent = fake.requests[-1].finished - fake.requests[0].started
    assert spent - 0.05 <= float(said.group(2)) <= elapsed + 0.05
    assert [r.getMessage().split("(try ")[1] for r in caplog.records if "retrying" in r.getMessage()] == [
        "2 of at most 3)",
        "3 of at most 3)",
    ]


# --- issue 16 §8: regions checked before any request ------------------------------------------


def test_a_mistyped_region_is_refused_before_any_request_with_a_suggestion(fake):
    with pytest.raises(UnknownRegionNameError) as info:
        run(_fetch(fake, ["Europe", "Nothern Europe"]))
    assert isinstance(info.value, ConfigurationError)  # the command line's exit 2
    assert "'Nothern Europe' (did you mean 'Northern Europe'?)" in str(info.value)
    assert "\n" not in str(info.value) and fake.count() == 0


def test_region_names_match_in_any_case_under_the_apis_spelling():
    from flows.parameters import check_parameters

    assert canonical_region(" northern EUROPE ") == "Northern Europe" and canonical_region("asia") == "Asia"
    assert expand_regions(["northern europe", "Northern Europe", "oceania"]) == ["Northern Europe", "Oceania"]
    params = {"table": "", "db_block": "b", "api": "v5", "base_url": "", "force": False}
    checked = check_parameters(regions=["northern europe"], min_row_fraction=0.5, cache_minutes=4, **params)
    assert checked["regions"] == ["Northern Europe"]  # the fetch (and its cache key) sees one spelling
    with pytest.raises(UnknownRegionNameError, match="did you mean 'Western Africa'"):
        check_parameters(regions=["westren africa"], min_row_fraction=0.5, cache_minutes=4, **params)


def test_every_region_and_subregion_of_the_test_data_is_documented():
    from tests.countries_data import _SUBREGIONS

    places = {(c["region"], c.get("subregion")) for c in COUNTRIES} | {
        (r, s) for r, subs in _SUBREGIONS.items() for s in subs
    }
    for region, subregion in places:
        assert canonical_region(region) == region and subregion in (None, *SUBREGIONS[region])


def test_the_command_line_refuses_a_mistyped_region_with_exit_2_before_any_request(fake, tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "PREFECT_HOME": str(tmp_path), "RESTCOUNTRIES_API_KEY": ""}
    done = subprocess.run(
        [sys.executable, "flows/countries.py", "--regions", "Nothern Europe", "--api", "v3.1",
         "--base-url", fake.v31_base_url],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "did you mean 'Northern Europe'?" in done.stderr + done.stdout
    assert fake.count() == 0


@pytest.mark.parametrize("regions", [["all"], ["Northern Europe"]], ids=["all", "one"])
def test_a_run_against_a_doubled_v31_path_says_the_base_url_looks_wrong(fake, db_block, regions):
    """The flow's own aggregation of region failures (issue 16 §7): one line, the full URL requested."""
    from prefect.logging.handlers import APILogWorker

    from flows.countries import countries_flow

    base = fake.v31_base_url + "/v3.1"
    state = asyncio.run(
        countries_flow(regions=regions, db_block=db_block[0], api="v3.1", base_url=base, cache_minutes=0,
                       return_state=True)
    )  # fmt: skip
    APILogWorker.drain_all(timeout=10)
    assert state.is_failed()
    message = state.message or ""
    assert message.startswith("the base URL looks wrong: every region asked for"), message
    assert f"GET {fake.url}/v3.1/v3.1/" in message and "…" not in message and "\n" not in message


def test_a_run_with_nothing_listening_says_so_once_without_task_retries(db_block):
    """Every region meets the same cause: one line naming host and port; the client's tries are all there are."""
    from prefect.logging.handlers import APILogWorker

    from flows.countries import countries_flow

    port = free_port()
    state = asyncio.run(
        countries_flow(regions=["all"], db_block=db_block[0], api="v3.1", base_url=f"http://127.0.0.1:{port}",
                       cache_minutes=0, return_state=True)
    )  # fmt: skip
    APILogWorker.drain_all(timeout=10)
    message = state.message or ""
    assert state.is_failed() and message.startswith(f"nothing is listening at 127.0.0.1:{port} (connection refused)")
    assert re.search(r"\(GET …/v3\.1/region/\w+; 3 tries in [\d.]+s\)$", message), message
