"""Benchmark: fetching the six regions concurrently vs one after another.

The fake REST Countries server (v5 dialect, 250 synthetic countries, one page
per region) adds a fixed latency to every response (500 ms for the real
measurement). Ours is ``flows.api.fetch_regions`` (concurrent); the baseline
fetches the same regions with ``fetch_region`` one after another. Target: ours
takes at most 1.2x the latency of a single request.

``python -m tests.benchmarks.bench_fetch [--smoke]`` prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from flows.api import REGIONS, RequestStats, fetch_region, fetch_regions, get_dialect, make_client
from tests.benchmarks._report import Figure, format_table
from tests.countries_data import synthetic_countries
from tests.fake_api import FakeRestCountries

_KEY = "bench-key"


async def _concurrent(base_url: str, stats: RequestStats) -> list[dict]:
    async with make_client(api_key=_KEY) as client:
        return await fetch_regions(client, REGIONS, dialect=get_dialect("v5"), base_url=base_url, stats=stats)


async def _sequential(base_url: str, stats: RequestStats) -> list[dict]:
    out: list[dict] = []
    async with make_client(api_key=_KEY) as client:
        for region in REGIONS:
            out += await fetch_region(client, region, dialect=get_dialect("v5"), base_url=base_url, stats=stats)
    return out


def _timed(fn, base_url: str, repeats: int) -> tuple[float, list[dict], int]:
    """(median seconds, records of the last run, requests per run)."""
    times: list[float] = []
    records: list[dict] = []
    stats = RequestStats()
    for _ in range(repeats):
        stats = RequestStats()
        start = time.perf_counter()
        records = asyncio.run(fn(base_url, stats))
        times.append(time.perf_counter() - start)
    return statistics.median(times), records, stats.requests


def run(smoke: bool = False) -> list[Figure]:
    """Measure; ``smoke`` uses 20 ms latency, one run, and asserts both ways return the same records."""
    latency = 0.02 if smoke else 0.5
    repeats = 1 if smoke else 3
    countries = synthetic_countries(250, seed=7)
    with FakeRestCountries(countries, api_key=_KEY, latency=latency) as fake:
        ours, ours_records, ours_requests = _timed(_concurrent, fake.v5_base_url, repeats)
        seq, seq_records, seq_requests = _timed(_sequential, fake.v5_base_url, repeats)
    key = lambda r: r["names"]["official"]  # noqa: E731
    same = sorted(ours_records, key=key) == sorted(seq_records, key=key)
    if smoke:
        assert same, "concurrent and sequential fetches returned different records"
        assert len(ours_records) == 250 and ours_requests == seq_requests == len(REGIONS)
    note = f"regions=6 countries={len(ours_records)} requests={ours_requests} latency={latency * 1000:.0f}ms"
    return [
        Figure(
            benchmark="fetch 6 regions (vs sequential)",
            metric="seconds",
            baseline_name="fetch_region one after another",
            baseline=seq,
            ours=ours,
            target="",
            met=None,
            note=note,
        ),
        Figure(
            benchmark="fetch 6 regions (vs one request)",
            metric="seconds",
            baseline_name="single-request latency",
            baseline=latency,
            ours=ours,
            target="ours/baseline <= 1.2",
            met=ours <= 1.2 * latency,
            note=note + ("" if same else " RECORDS DIFFER"),
        ),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    print(format_table(run(smoke=parser.parse_args().smoke)))  # the benchmark's output
