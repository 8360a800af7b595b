"""The shape every benchmark reports in, and the table/JSON writers.

A benchmark module under ``tests/benchmarks`` exposes::

    def run(smoke: bool = False) -> list[Figure]

``smoke=True`` uses tiny sizes, finishes in a few seconds, and raises
``AssertionError`` if ours and the baseline disagree on the output; the test
suite calls it. ``smoke=False`` is the real measurement.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Figure:
    """One measured comparison: our figure against a baseline's, lower is better."""

    benchmark: str  # e.g. "unnest 100k records"
    metric: str  # e.g. "seconds", "peak MiB"
    baseline_name: str  # e.g. "pandas.json_normalize"; "" when there is no baseline
    baseline: float | None
    ours: float
    target: str  # human-readable, e.g. "ours/baseline <= 0.1"; "" when there is none
    met: bool | None  # None when the figure has no target
    note: str = ""  # e.g. "rows=250000 cols=9"

    @property
    def ratio(self) -> float | None:
        """ours / baseline (lower is better), or None without a baseline."""
        if self.baseline in (None, 0):
            return None
        return self.ours / self.baseline


def format_table(figures: list[Figure]) -> str:
    """The figures as an aligned plain-text table, one line per figure."""
    header = ("benchmark", "metric", "baseline", "baseline value", "ours", "ratio", "target", "met", "note")
    rows = [header]
    for f in figures:
        rows.append(
            (
                f.benchmark,
                f.metric,
                f.baseline_name or "-",
                "-" if f.baseline is None else f"{f.baseline:.4g}",
                f"{f.ours:.4g}",
                "-" if f.ratio is None else f"{f.ratio:.3f}",
                f.target or "-",
                {True: "yes", False: "NO", None: "-"}[f.met],
                f.note,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(figures: list[Figure], path: Path, machine: dict) -> None:
    """Write the figures (with their ratios) and a description of the machine as JSON."""
    payload = {
        "machine": machine,
        "figures": [dict(asdict(f), ratio=f.ratio) for f in figures],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
