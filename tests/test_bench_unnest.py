"""The unnest benchmark's smoke mode: ours and json_normalize agree, and the figures are sane."""

from __future__ import annotations

import math

import pytest

from flows.unnest import unnest
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


def test_generator_is_seeded_and_streams():
    first = list(bench_unnest.country_records(5, seed=3))
    assert first == list(bench_unnest.country_records(5, seed=3))
    assert first != list(bench_unnest.country_records(5, seed=4))
    stream = bench_unnest.country_records(3_000)
    assert next(stream)["name"]["common"] == "Country 0"


def test_agreement_check_fails_when_the_outputs_differ():
    records = list(bench_unnest.country_records(20))

    def wrong(*args, **kwargs):
        frame = unnest(*args, **kwargs)
        return frame.iloc[::-1].reset_index(drop=True)

    bench_unnest._check_agreement(records, unnest)  # the real one agrees
    with pytest.raises(AssertionError):
        bench_unnest._check_agreement(records, wrong)
