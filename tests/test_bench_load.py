"""The load benchmark's smoke mode: raw COPY and each strategy give identical tables, and every figure is there."""

from __future__ import annotations

from tests.benchmarks.bench_load import RAW, run


def test_bench_load_smoke():
    figures = run(smoke=True)

    loads = [f for f in figures if f.metric == "rows/s"]
    assert [f.benchmark for f in loads] == [
        f"load {rows} countries rows: {label}"
        for rows in ("250", "2,000")
        for label in (
            'replace_table(strategy="rows")',
            'replace_table(strategy="swap")',
            'strategy="rows" + change summary, 1% of rows changed',
        )
    ]
    assert all(f.baseline_name == RAW and f.baseline > 0 and f.ours > 0 and f.ratio > 0 for f in loads)
    assert [f.metric for f in figures].count("seconds") == 2  # re-load unchanged, at each size
    assert all(f.met is None for f in figures)  # smoke timings are not judged
