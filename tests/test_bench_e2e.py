"""The end-to-end benchmark's smoke mode: one real run of `python flows/countries.py` and one of the floor.

Runs against the session's Prefect server (the ``prefect_server`` fixture sets
PREFECT_API_URL, which the smoke mode uses), so it costs seconds, not a server's
start-up. The benchmark itself asserts that the loaded table is exactly the
expected 20 rows.
"""

from __future__ import annotations

from tests.benchmarks import bench_e2e


def test_bench_e2e_smoke(prefect_server):
    figures = bench_e2e.run(smoke=True)
    assert [(f.benchmark, f.metric) for f in figures] == [
        ("e2e smoke, running server", "seconds"),
        ("e2e smoke, running server", "peak MiB"),
        ("e2e flow body, Northern Europe", "seconds"),
    ]
    assert all(f.ours > 0 for f in figures)
    assert all(f.baseline and f.baseline > 0 for f in figures[:2])
    assert figures[0].target == f"ours/baseline <= {bench_e2e.SERVER_RATIO_TARGET}"
