"""What a run of the countries flow did, as a summary line, log lines and a Prefect artifact.

- :class:`RegionFetch`: the records of one region and when and how they were fetched
  (a cached fetch keeps the time it really happened).
- :class:`RunSummary`: a completed run; :meth:`RunSummary.one_line` is the command
  line's last line, :meth:`RunSummary.markdown` the artifact.
- :func:`failure_markdown`: the short report a failed run publishes.
- :func:`artifact_key`: one artifact key per table, so its history is that table's timeline.

Pure: no Prefect calls, no I/O.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

class ChangeSummary(Protocol):
    """What ``flows.load.changes`` reports about a load (the parts the report uses)."""

    def phrase(self) -> str: ...

    def markdown(self) -> str: ...


@dataclass(frozen=True)
class RegionFetch:
    """The records of one region or subregion, with how they were fetched.

    ``fetched_at`` is when the API answered (UTC); a result served from the
    fetch cache keeps that time, so a run can tell it apart from a fresh fetch.
    ``requests`` counts HTTP requests, ``retries`` those that were retries.
    """

    region: str
    records: list[dict[str, Any]]
    fetched_at: datetime
    requests: int
    retries: int = 0
    countries: int = -1
    """How many records the fetch returned (kept when :meth:`figures` drops the records)."""

    def __post_init__(self) -> None:
        if self.countries < 0:
            object.__setattr__(self, "countries", len(self.records))

    def figures(self) -> RegionFetch:
        """This fetch without its records: what the run's summary keeps (Prefect need not walk the data)."""
        return replace(self, records=[])

    def from_cache(self, run_started: datetime) -> bool:
        """Whether this fetch happened before the run started (the cache served it)."""
        return self.fetched_at < run_started


def artifact_key(table: str) -> str:
    """The report artifact's key for ``table``: one per table however its name is written, and always a key
    Prefect accepts (lowercase letters, digits and dashes) for any name the loader accepts.

    ``countries-<table>`` for a table in ``public`` or unqualified, else ``countries-<schema>--<table>``,
    underscores as dashes: ``northern_europe_countries`` and ``public.northern_europe_countries`` ->
    ``countries-northern-europe-countries``; ``analytics.countries`` -> ``countries-analytics--countries``.
    A name the slug does not spell back exactly (capitals, ``$``, other characters, ``__``, ``_`` at either
    end) also gets a hash of the exact name, so two tables never share a key.
    """
    from flows.errors import InvalidTableNameError
    from flows.load.database import parse_table_name

    try:
        name = parse_table_name(table)
        parts = [name.name] if name.schema in (None, "public") else [name.schema, name.name]
    except InvalidTableNameError:
        parts = [table]
    slugs = [re.sub(r"[^a-z0-9]+", "-", part.lower()).strip("-") or "table" for part in parts]
    key = "countries-" + "--".join(slugs)
    if any(not re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", part) for part in parts):
        key += "-" + hashlib.sha256(".".join(parts).encode()).hexdigest()[:8]
    return key


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``count`` and ``noun``, in the plural unless ``count`` is 1: ``plural(2, "request")`` -> ``2 requests``."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"


@dataclass
class RunSummary:
    """What a completed run did; the flow returns it and publishes it as the table's artifact.

    ``preview`` is the table's new content as text (pandas' display: every row of a small table, the
    first and last rows of a large one); None when the run skipped the transform and load. The summary
    holds no data (no frame, no records), so Prefect has nothing large to walk or keep.
    """

    table: str
    database: str
    rows: int
    rows_written: int
    previous_rows: int | None
    changed: bool
    countries: int
    currencies: int
    fetches: list[RegionFetch]
    started: datetime
    seconds: float
    changes: ChangeSummary | None = None
    step_seconds: dict[str, float] = field(default_factory=dict)
    preview: str | None = field(default=None, repr=False)

    @property
    def requests(self) -> int:
        """HTTP requests this run sent (cached regions sent none)."""
        return sum(f.requests for f in self.fetches if not f.from_cache(self.started))

    @property
    def retries(self) -> int:
        """Of :attr:`requests`, those that were retries."""
        return sum(f.retries for f in self.fetches if not f.from_cache(self.started))

    @property
    def cached(self) -> list[RegionFetch]:
        """The regions served from the fetch cache."""
        return [f for f in self.fetches if f.from_cache(self.started)]

    def _changes_text(self) -> str:
        if self.changes is not None:
            return self.changes.phrase()
        return "new table" if self.previous_rows is None else "changes not computed"

    def one_line(self) -> str:
        """The summary line, e.g. ``loaded 20 rows (+1 country, 3 populations changed) into ...; 1 API request``."""
        where = f"{self.table} at {self.database}"
        if self.changed:
            done = f"loaded {plural(self.rows, 'row')} ({self._changes_text()}) into {where}"
        else:
            done = f"unchanged: {plural(self.rows, 'row')} already in {where}, nothing written"
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
            ("rows written", f"{self.rows_written}" + ("" if self.changed else " (same content, not rewritten)")),
            ("countries", self.countries),
            ("currencies", self.currencies),
            ("changes", self._changes_text()),
            ("API requests", f"{self.requests} ({plural(self.retries, 'retry', 'retries')})"),
            ("duration", f"{self.seconds:.2f} s"),
        ]
        lines = ["# Countries load", "", "| what | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in rows]
        lines += ["", "## Sources", "", "| region | countries | fetched | requests |", "|---|---|---|---|"]
        for f in self.fetches:
            how = (
                f"from the cache (fetched {_when(f.fetched_at)})" if f.from_cache(self.started) else _when(f.fetched_at)
            )
            requests = 0 if f.from_cache(self.started) else f.requests
            lines.append(f"| {f.region} | {f.countries} | {how} | {requests} |")
        if self.changes is not None and self.previous_rows is not None:
            lines += ["", "## Changes", "", self.changes.markdown().strip()]
        if self.step_seconds:
            lines += ["", "## Steps", "", "| step | seconds |", "|---|---|"]
            lines += [f"| {step} | {seconds:.3f} |" for step, seconds in self.step_seconds.items()]
        return "\n".join(lines) + "\n"


def failure_markdown(table: str, message: str, seconds: float) -> str:
    """The short report of a failed run: what failed, and that the table is untouched."""
    rows = [
        ("table", f"`{table}`"),
        ("result", "**failed**: the table was not changed"),
        ("cause", message.replace("|", "\\|")),
        ("duration", f"{seconds:.2f} s"),
    ]
    lines = ["# Countries load failed", "", "| what | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"
