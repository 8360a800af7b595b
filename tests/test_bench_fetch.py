"""The fetch benchmark's smoke mode: the flow on the session's running Prefect server, against the fake API.

It runs ``countries_flow(regions=["all"])`` and the same-shape fetch flow once
each (0.2 s latency) and checks that each sent the six region requests and got
every country; the figures report the arrival spread against the 0.25 s target. Then the
client and plain httpx + json.loads fetch six larger v3.1 bodies (20,000 countries), each
checked to get every country.
"""

from __future__ import annotations

from tests.benchmarks import bench_fetch


def test_bench_fetch_smoke(prefect_server, db_block):
    figures = bench_fetch.run(smoke=True, db_block=db_block[0])
    assert [f.metric for f in figures] == ["arrival spread s", "seconds", "arrival spread s", "seconds", "CPU seconds"]
    assert [f.baseline for f in figures[:3]] == [0.25, 0.2, 0.25]
    assert all(f.ours >= 0 for f in figures)
    assert figures[0].target == figures[2].target == "ours/baseline <= 1"
