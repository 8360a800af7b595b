"""What a run did: :class:`RunSummary` (its summary line and artifact), :func:`failure_markdown` (a failed
run's artifact) and :func:`artifact_key` (one per table). Pure: no Prefect calls, no I/O."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flows.errors import CommitUnknownError, CountriesError, InvalidTableNameError
from flows.load import parse_table_name
from flows.load.state import LoadResult


@dataclass(frozen=True)
class RegionFetch:
    """One region's records, fetched at ``fetched_at`` (UTC; a cached fetch keeps it) with ``requests``."""

    region: str
    records: list[dict[str, Any]]
    countries: int
    fetched_at: datetime
    requests: int
    retries: int = 0


def artifact_key(table: str) -> str:
    """The report artifact's key for ``table``, one per table however its name is written: ``public.t_1`` ->
    ``countries-t-1``, ``analytics.t`` -> ``countries-analytics--t``; a name the slug does not spell back
    exactly gets a hash too, so two tables never share a key."""
    try:
        name = parse_table_name(table)
        parts = [name.name] if name.schema in (None, "public") else [name.schema, name.name]
    except InvalidTableNameError:
        parts = [table]
    key = "countries-" + "--".join(re.sub(r"[^a-z0-9]+", "-", part.lower()).strip("-") or "table" for part in parts)
    if any(not re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", part) for part in parts):
        key += "-" + hashlib.sha256(".".join(parts).encode()).hexdigest()[:8]
    return key


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``count`` and ``noun``, in the plural unless ``count`` is 1: ``plural(2, "request")`` -> ``2 requests``."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"


def _table(title: str, rows: list[tuple[str, Any]], seconds: float) -> list[str]:
    rows = [*rows, ("duration", f"{seconds:.2f} s")]
    return [f"# {title}", "", "| what | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


@dataclass(frozen=True, kw_only=True)
class RunSummary(LoadResult):
    """What a completed run did: its load's :class:`LoadResult`, figures, ``fetches`` (without their records:
    Prefect need not walk the data), and ``preview``, the table's new content as pandas shows it (None when the
    transform and load were skipped)."""

    database: str
    countries: int
    currencies: int
    fetches: list[RegionFetch]
    started: datetime
    seconds: float
    repaired: bool = False
    step_seconds: dict[str, float] = field(default_factory=dict)
    preview: str | None = field(default=None, repr=False)

    @property
    def cached(self) -> list[RegionFetch]:
        """The regions served from the fetch cache."""
        return [f for f in self.fetches if f.fetched_at < self.started]

    @property
    def requests(self) -> int:
        """HTTP requests this run sent (cached regions sent none)."""
        return sum(f.requests for f in self.fetches if f.fetched_at >= self.started)

    @property
    def retries(self) -> int:
        """Of :attr:`requests`, those that were retries."""
        return sum(f.retries for f in self.fetches if f.fetched_at >= self.started)

    def one_line(self) -> str:
        """The summary line, e.g. ``loaded public.t at …: 1 row deleted, 1 inserted (1 population changed), 20 rows
        in the table; 1 API request``, ``unchanged: …`` or ``repaired rows edited outside the pipeline …``."""
        where = f"{self.table} at {self.database}"
        written = f"{plural(self.deleted, 'row')} deleted, {self.inserted} inserted ({self.changes.phrase()})"
        if not self.changed:
            done = f"unchanged: {plural(self.rows, 'row')} already in {where}, nothing written"
        elif self.repaired:  # how many rows were edited is not known: an edit may show as a deletion and an insertion
            swapped = " (the table swapped)" if self.strategy == "swap" else ""
            done = f"repaired rows edited outside the pipeline in {where}{swapped}: {written}"
        else:
            done = f"loaded {where}: {written}, {plural(self.rows, 'row')} in the table"
        api = plural(self.requests, "API request")
        if self.cached:
            oldest = min(f.fetched_at for f in self.cached)
            api += f"; {', '.join(f.region for f in self.cached)} from the cache (fetched {_when(oldest)})"
        return f"{done}; {api}"

    def markdown(self) -> str:
        """The report artifact: what was loaded, what changed, where the data came from, how long it took."""
        before = "no table" if self.previous_rows is None else plural(self.previous_rows, "row")
        rows = [
            ("table", f"`{self.table}`"),
            ("database", f"`{self.database}`"),
            ("rows in the table", f"{self.rows} (before: {before})"),
            ("rows deleted", self.deleted),
            ("rows inserted", f"{self.inserted}" + ("" if self.changed else " (same content, nothing written)")),
            *([("repaired", "rows edited outside the pipeline were put back")] if self.repaired else []),
            ("countries", self.countries),
            ("currencies", self.currencies),
            ("changes", self.changes.phrase()),
            ("API requests", f"{self.requests} ({plural(self.retries, 'retry', 'retries')})"),
        ]
        lines = _table("Countries load", rows, self.seconds)
        lines += ["", "## Sources", "", "| region | countries | fetched | requests |", "|---|---|---|---|"]
        for f in self.fetches:
            cached = f.fetched_at < self.started
            how = f"from the cache (fetched {_when(f.fetched_at)})" if cached else _when(f.fetched_at)
            lines.append(f"| {f.region} | {f.countries} | {how} | {0 if cached else f.requests} |")
        if self.previous_rows is not None:
            lines += ["", "## Changes", "", self.changes.markdown().strip()]
        if self.step_seconds:
            lines += ["", "## Steps", "", "| step | seconds |", "|---|---|"]
            lines += [f"| {step} | {seconds:.3f} |" for step, seconds in self.step_seconds.items()]
        return "\n".join(lines) + "\n"


def failure_markdown(table: str, error: CountriesError, seconds: float) -> str:
    """The short report of a run failed with ``error``: what failed, and that the table is untouched (unless the
    connection was lost during the commit, ``CommitUnknownError``)."""
    unchanged = not isinstance(error, CommitUnknownError)
    rows = [
        ("table", f"`{table}`"),
        ("result", "**failed**: the table was not changed" if unchanged else "**failed**: see the cause"),
        ("cause", str(error).replace("|", "\\|")),
    ]
    return "\n".join(_table("Countries load failed", rows, seconds)) + "\n"
