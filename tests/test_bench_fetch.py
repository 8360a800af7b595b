"""The fetch benchmark's smoke mode: both ways return the same records, and it reports two figures."""

from __future__ import annotations

from tests.benchmarks import bench_fetch


def test_bench_fetch_smoke():
    figures = bench_fetch.run(smoke=True)
    assert [f.metric for f in figures] == ["seconds", "seconds"]
    assert all(f.ours > 0 and f.baseline for f in figures)
    assert figures[1].target == "ours/baseline <= 1.2"
