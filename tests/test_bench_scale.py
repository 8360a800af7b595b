"""The scale benchmark's smoke mode: ours and the hand-written script load the same rows (issue 18)."""

from __future__ import annotations

from tests.benchmarks import bench_scale


def test_bench_scale_smoke_loads_what_the_script_loads(prefect_server):
    figures = bench_scale.run(smoke=True)  # raises when the two tables differ
    assert [f.metric for f in figures] == ["seconds", "peak MiB"]
    assert all(f.ours > 0 and f.baseline and f.baseline > 0 for f in figures)
    assert "600 countries" in figures[0].note
