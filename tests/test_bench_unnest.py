"""The unnest benchmark's smoke mode: ours and json_normalize agree, and the figures are sane."""

from __future__ import annotations

import math

from tests.benchmarks import bench_unnest
from tests.benchmarks._report import Figure, format_table


def test_bench_unnest_smoke():
    figures = bench_unnest.run(smoke=True)
    assert len(figures) == 2
    assert all(isinstance(f, Figure) for f in figures)
    assert [f.metric for f in figures] == ["CPU seconds", "peak MiB (tracemalloc)"]
    for figure in figures:
        assert figure.baseline is not None and figure.baseline > 0
        assert figure.ours > 0 and math.isfinite(figure.ours)
        assert figure.ratio is not None
    assert "agreement checked" in figures[0].note
    assert "rows=" in figures[1].note
    assert len(format_table(figures).splitlines()) == 4
