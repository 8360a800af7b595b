"""The load benchmark's smoke mode: ours, raw COPY and to_sql give identical tables."""

from __future__ import annotations

from tests.benchmarks.bench_load import run


def test_bench_load_smoke():
    figures = run(smoke=True)

    assert [f.baseline_name for f in figures] == [
        "raw COPY of a pre-serialised buffer",
        "DataFrame.to_sql(if_exists='replace')",
        "",
    ]
    assert all(f.ours > 0 for f in figures)
    assert all(f.met is None for f in figures)  # smoke timings are not judged
