"""The fake REST Countries server itself: routes, auth, projection, paging, faults, shutdown."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime

import httpx
import pytest

from tests.conftest import REPO_ROOT, free_port
from tests.countries_data import COUNTRIES, NORTHERN_EUROPE, synthetic_countries, to_v5
from tests.fake_api import DEPRECATION_MESSAGE, FakeRestCountries, Fault


@pytest.fixture
def fake():
    with FakeRestCountries(max_limit=5) as f:
        yield f


def _auth(f: FakeRestCountries) -> dict[str, str]:
    return {"Authorization": f"Bearer {f.api_key}"}


def test_data_northern_europe_is_complete():
    assert len(NORTHERN_EUROPE) == 16
    assert {c["region"] for c in COUNTRIES} == {"Africa", "Americas", "Antarctic", "Asia", "Europe", "Oceania"}
    names = [c["name"]["official"] for c in COUNTRIES]
    assert len(names) == len(set(names))
    faroe = to_v5(next(c for c in COUNTRIES if c["cca3"] == "FRO"))
    assert faroe["names"]["official"] == "Faroe Islands"
    assert faroe["currencies"] == [
        {"code": "DKK", "name": "Danish krone", "symbol": "kr"},
        {"code": "FOK", "name": "Faroese króna", "symbol": "kr"},
    ]
    assert to_v5(COUNTRIES[0], currencies="object")["currencies"] == {"EUR": {"name": "Euro", "symbol": "€"}}


def test_synthetic_countries_are_reproducible_and_unique():
    a, b = synthetic_countries(60, seed=3), synthetic_countries(60, seed=3)
    assert a == b
    assert len({c["name"]["official"] for c in a}) == 60
    assert {c["region"] for c in a} == {"Africa", "Americas", "Antarctic", "Asia", "Europe", "Oceania"}


def test_v5_subregion_pages_and_projection(fake):
    url = f"{fake.v5_base_url}/subregion/Northern%20Europe"
    params = {"response_fields": "names.official,currencies,population", "limit": 5}
    seen = []
    offset = 0
    while True:
        r = httpx.get(url, params={**params, "offset": offset}, headers=_auth(fake))
        assert r.status_code == 200
        data = r.json()["data"]
        seen += data["objects"]
        assert data["meta"]["total"] == 16
        if not data["meta"]["more"]:
            break
        offset += data["meta"]["count"]
    assert len(seen) == 16 and fake.count() == 4
    assert seen[0] == {
        "names": {"official": "Åland Islands"},
        "currencies": [{"code": "EUR", "name": "Euro", "symbol": "€"}],
        "population": 29458,
    }
    assert all(r.authorization for r in fake.requests)


def test_v5_region_errors(fake):
    base = fake.v5_base_url
    assert httpx.get(base, params={"region": "Europe"}).status_code == 401
    bad = httpx.get(base, params={"region": "Europe"}, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["errors"][0]["message"]
    assert httpx.get(base, params={"limit": 101}, headers=_auth(fake)).status_code == 400
    clamped = httpx.get(base, params={"limit": 100}, headers=_auth(fake)).json()["data"]
    assert len(clamped["objects"]) == 5 and clamped["meta"]["limit"] == 5 and clamped["meta"]["more"]
    r = httpx.get(base, params={"response_fields": "names.bogus"}, headers=_auth(fake))
    assert r.status_code == 404 and "Unknown property" in r.json()["errors"][0]["message"]
    assert httpx.get(base, params={"response_fields": "gini"}, headers=_auth(fake)).status_code == 403
    empty = httpx.get(base, params={"region": "Atlantis", "limit": 5}, headers=_auth(fake)).json()
    assert empty["data"]["meta"] == {"total": 0, "count": 0, "limit": 5, "offset": 0, "more": False}
    assert empty["data"]["objects"] == []


def test_v5_object_currencies():
    with FakeRestCountries(v5_currencies="object") as f:
        r = httpx.get(f"{f.v5_base_url}/subregion/northern europe", params={"limit": 100}, headers=_auth(f))
        objs = r.json()["data"]["objects"]
        assert len(objs) == 16 and objs[3]["currencies"]["FOK"] == {"name": "Faroese króna", "symbol": "kr"}


def test_v31_routes(fake):
    r = httpx.get(f"{fake.url}/v3.1/subregion/Northern Europe", params={"fields": "name,currencies,population"})
    assert r.status_code == 200 and len(r.json()) == 16
    assert set(r.json()[0]) == {"name", "currencies", "population"}
    assert len(httpx.get(f"{fake.url}/v3.1/region/antarctic").json()) == 4
    assert httpx.get(f"{fake.url}/v3.1/region/Atlantis").status_code == 404
    assert httpx.get(f"{fake.url}/v3.1/all").status_code == 400
    assert len(httpx.get(f"{fake.url}/v3.1/all", params={"fields": "name"}).json()) == len(COUNTRIES)
    assert httpx.get(f"{fake.url}/v3.1/all", params={"fields": ",".join("abcdefghijk")}).status_code == 400


def test_v31_legacy_mode():
    with FakeRestCountries(legacy_v31=True) as f:
        r = httpx.get(f"{f.url}/v3.1/subregion/Northern Europe")
        assert r.status_code == 200
        assert r.json() == {"success": False, "data": None, "errors": [{"message": DEPRECATION_MESSAGE}]}


def test_faults_are_consumed_in_order(fake):
    url = f"{fake.url}/v3.1/region/Europe"
    when = datetime(2030, 1, 1, tzinfo=UTC)
    fake.inject("/v3.1/*", Fault.status(429, retry_after=3), Fault.status(503, retry_after=when))
    fake.inject("/v3.1/*", Fault.bad_body("html"), Fault.bad_body("truncated"), Fault.bad_body("non_list"))
    fake.inject("/v3.1/*", Fault.missing_field("population"), Fault.bad_body("errors_body", "nope"))
    r = httpx.get(url)
    assert (r.status_code, r.headers["retry-after"]) == (429, "3")
    r = httpx.get(url)
    assert (r.status_code, r.headers["retry-after"]) == (503, "Tue, 01 Jan 2030 00:00:00 GMT")
    assert httpx.get(url).headers["content-type"].startswith("text/html")
    with pytest.raises(ValueError):
        httpx.get(url).json()
    assert isinstance(httpx.get(url).json(), dict)
    assert "population" not in httpx.get(url).json()[0]
    assert httpx.get(url).json()["errors"] == [{"message": "nope"}]
    assert fake.pending_faults() == 0
    assert httpx.get(url).status_code == 200
    assert fake.count("/v3.1/region/*") == 8
    assert [r.fault for r in fake.requests][:2] == ["status", "status"]


def test_drop_and_hang(fake):
    fake.inject("*", Fault.drop(), Fault.hang())
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{fake.url}/v3.1/region/Europe")
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{fake.url}/v3.1/region/Europe", timeout=0.3)
    assert fake.count() == 2  # logged on arrival, so no waiting needed
    assert httpx.get(f"{fake.url}/v3.1/region/Europe").status_code == 200


def test_hang_does_not_block_shutdown():
    f = FakeRestCountries().start()
    f.inject("*", Fault.hang())
    client = httpx.Client(timeout=30)
    import threading

    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.get(f"{f.url}/v3.1/region/Europe")
        except httpx.HTTPError as exc:
            errors.append(exc)

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 5
    while f.count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling for the request to arrive
    started = time.monotonic()
    f.stop()
    t.join(5)
    client.close()
    assert time.monotonic() - started < 3
    assert errors and not t.is_alive()


def test_concurrent_requests_overlap():
    with FakeRestCountries(latency=0.2) as f:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda r: httpx.get(f"{f.url}/v3.1/region/{r}"), ["Europe", "Asia", "Africa", "Oceania"]))
        assert f.max_overlap() == 4 and f.max_in_flight == 4


def test_control_endpoints(fake):
    r = httpx.post(f"{fake.url}/_fake/faults", json={"pattern": "*", "faults": [{"kind": "status", "status_code": 502}]})
    assert r.json() == {"pending": 1}
    assert httpx.get(f"{fake.url}/v3.1/region/Europe").status_code == 502
    log = httpx.get(f"{fake.url}/_fake/requests").json()
    assert [(e["path"], e["status"]) for e in log] == [("/v3.1/region/Europe", 502)]
    httpx.post(f"{fake.url}/_fake/reset")
    assert fake.count() == 0


def test_standalone_cli():
    port = free_port()
    with subprocess.Popen(
        [sys.executable, "-m", "tests.fake_api", "--port", str(port), "--max-limit", "3"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # the server prints this once it listens
            assert line.strip() == f"fake REST Countries listening on http://127.0.0.1:{port}"
            r = httpx.get(f"http://127.0.0.1:{port}/v3.1/subregion/Northern Europe")
            assert len(r.json()) == 16
        finally:
            proc.terminate()
            assert proc.wait(10) == 0
