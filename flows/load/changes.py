"""What a load changes: the change report, computed in the database, and the row-drop rule.

The report is generic over a :class:`ChangeSpec`; for the countries table the key is
``nation_official_name``, the measure ``population`` and the set column ``currency_name``.
Rows are grouped by the key (NULL keys left out); per key a measure's value is
``max(column)`` (every row of a country repeats its population) and a set column's value
the set of its distinct non-NULL values. The report holds the keys added and removed; per
measure, how many keys changed value and the largest changes (NULL last); per set column,
how many keys changed set and the first of them. Lists hold at most ``spec.limit`` keys
(code-point order); counts are exact.

:func:`compare` is one statement over the rows the load found different (under its write
lock): only the keys they touch are aggregated on both sides, so its cost follows the
changes. Renderings: :meth:`ChangeSummary.phrase` (``+1 country, 3 populations changed``),
``log_lines``, ``table_rows`` and ``markdown`` (the artifact).

:func:`check_row_drop`: refuse a load that would shrink the table below a fraction of its rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from flows.errors import ConfigurationError, QualityGateError, setting
from flows.load.database import quote_ident as _q

# --- what to compare --------------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    """A numeric column compared by value, e.g. ``Measure("population", "population", "populations")``."""

    column: str
    noun: str
    plural: str

    def label(self, count: int) -> str:
        return self.noun if count == 1 else self.plural


@dataclass(frozen=True)
class SetColumn:
    """A column whose distinct values per key form a set, e.g. ``SetColumn("currency_name", "currencies")``."""

    column: str
    label: str


@dataclass(frozen=True)
class ChangeSpec:
    """What :func:`compare` compares: the key column, its entity's noun, measures and set columns; ``limit`` caps
    every list in the report (the counts stay exact)."""

    key: str
    noun: str = "row"
    plural: str = "rows"
    measures: tuple[Measure, ...] = ()
    sets: tuple[SetColumn, ...] = ()
    limit: int = 10

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the comparison reads: key, measures, set columns."""
        return (self.key, *(m.column for m in self.measures), *(s.column for s in self.sets))

    def entities(self, count: int) -> str:
        """``"1 country"``, ``"3 countries"``."""
        return f"{count:,} {self.noun if count == 1 else self.plural}"


# --- what changed ----------------------------------------------------------------------


def _number(value: Any) -> str:
    """``5,500,000``; ``none`` for NULL; as PostgreSQL wrote it otherwise (``NaN``, ``Infinity``)."""
    if value is None:
        return "none"
    return f"{value:,}" if isinstance(value, int | float) else str(value)


@dataclass(frozen=True)
class MeasureChange:
    """One key whose measure changed: ``before`` and ``after`` (``None`` for NULL)."""

    key: str
    before: int | float | None
    after: int | float | None

    def __str__(self) -> str:
        text = f"{self.key} {_number(self.before)} -> {_number(self.after)}"
        if isinstance(self.before, int | float) and isinstance(self.after, int | float):
            text += f" ({self.after - self.before:+,})"
        return text


@dataclass(frozen=True)
class MeasureChanges:
    """How many keys' ``measure`` changed, and the largest changes (at most ``spec.limit``)."""

    measure: Measure
    count: int
    largest: tuple[MeasureChange, ...]


@dataclass(frozen=True)
class SetChange:
    """One key whose set changed: the sorted values before and after."""

    key: str
    before: tuple[str, ...]
    after: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.key}: {_set(self.before)} -> {_set(self.after)}"


def _set(values: tuple[str, ...]) -> str:
    return "{" + ", ".join(values) + "}"


@dataclass(frozen=True)
class SetChanges:
    """How many keys' set column changed, and the first of them by key (at most ``spec.limit``)."""

    column: SetColumn
    count: int
    changes: tuple[SetChange, ...]


@dataclass(frozen=True)
class ChangeSummary:
    """What changed between the previous table and the new rows (see the module docstring).

    ``unchanged``: the content was equal; ``not_compared``: why the comparison could not run, else ``""``.
    """

    spec: ChangeSpec
    added_count: int = 0
    added: tuple[str, ...] = ()
    removed_count: int = 0
    removed: tuple[str, ...] = ()
    measures: tuple[MeasureChanges, ...] = ()
    sets: tuple[SetChanges, ...] = ()
    unchanged: bool = False
    not_compared: str = ""

    @classmethod
    def identical(cls, spec: ChangeSpec) -> ChangeSummary:
        return cls(spec, unchanged=True)

    @classmethod
    def skipped(cls, spec: ChangeSpec, reason: str) -> ChangeSummary:
        return cls(spec, not_compared=reason)

    @property
    def any(self) -> bool:
        """Whether anything the spec compares changed."""
        return any([self.added_count, self.removed_count, *(m.count for m in self.measures),
                    *(s.count for s in self.sets)])  # fmt: skip

    def _capped(self, items: tuple, count: int) -> str:
        text = ", ".join(str(i) for i in items)
        return text + (f" and {count - len(items):,} more" if count > len(items) else "")

    def phrase(self) -> str:
        """``+1 country, -2 countries, 3 populations changed``; ``no changes``; ``same countries, populations and
        currencies`` when rows changed in other columns."""
        spec = self.spec
        if self.unchanged:
            return "no changes"
        if self.not_compared:
            return f"changes not compared: {self.not_compared}"
        parts = []
        if self.added_count:
            parts.append(f"+{spec.entities(self.added_count)}")
        if self.removed_count:
            parts.append(f"-{spec.entities(self.removed_count)}")
        parts += [f"{m.count:,} {m.measure.label(m.count)} changed" for m in self.measures if m.count]
        parts += [f"{s.column.label} changed for {spec.entities(s.count)}" for s in self.sets if s.count]
        if parts:
            return ", ".join(parts)
        names = [spec.plural, *(m.measure.plural for m in self.measures), *(s.column.label for s in self.sets)]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return f"same {listed}"

    def log_lines(self) -> list[str]:
        """One line per kind of change, lists capped (``and N more``); ``[phrase]`` when nothing is listed."""
        spec, lines = self.spec, []
        if self.added_count:
            lines.append(f"{spec.plural} added ({self.added_count:,}): {self._capped(self.added, self.added_count)}")
        if self.removed_count:
            removed = self._capped(self.removed, self.removed_count)
            lines.append(f"{spec.plural} removed ({self.removed_count:,}): {removed}")
        for m in self.measures:
            if m.count:
                lines.append(f"{m.measure.plural} changed ({m.count:,}), largest: {self._capped(m.largest, m.count)}")
        for s in self.sets:
            if s.count:
                changes = self._capped(s.changes, s.count)
                lines.append(f"{s.column.label} changed for {spec.entities(s.count)}: {changes}")
        return lines or [self.phrase()]

    def table_rows(self) -> list[dict[str, str]]:
        """Rows ``change``, the noun (e.g. ``country``), ``before``, ``after``: one per listed change, a capped list
        ending with ``and N more``; empty when nothing is listed."""
        noun, rows = self.spec.noun, []

        def row(change: str, key: str, before: str = "", after: str = "") -> None:
            rows.append({"change": change, noun: key, "before": before, "after": after})

        def more(change: str, shown: int, count: int) -> None:
            if count > shown:
                row(change, f"and {count - shown:,} more")

        for key in self.added:
            row("added", key)
        more("added", len(self.added), self.added_count)
        for key in self.removed:
            row("removed", key)
        more("removed", len(self.removed), self.removed_count)
        for m in self.measures:
            for c in m.largest:
                row(m.measure.noun, c.key, _number(c.before), _number(c.after))
            more(m.measure.noun, len(m.largest), m.count)
        for s in self.sets:
            for c in s.changes:
                row(s.column.label, c.key, _set(c.before), _set(c.after))
            more(s.column.label, len(s.changes), s.count)
        return rows

    def markdown(self) -> str:
        """A markdown section: a heading line with :meth:`phrase`, then the :meth:`table_rows` as a table."""
        lines = [f"**Changes:** {self.phrase()}"]
        rows = self.table_rows()
        if rows:
            header = list(rows[0])
            lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(_cell(r[h]) for h in header) + " |" for r in rows]
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- the comparison in SQL ------------------------------------------------------------------


def _sorted(values: list[str]) -> tuple[str, ...]:
    return tuple(sorted(set(values)))


def missing_columns(cursor: Any, spec: ChangeSpec, relation_oid: int) -> str:
    """Why the relation ``relation_oid`` cannot be compared under ``spec``, or ``""`` if it can.

    It can when it has every column of ``spec.columns`` and its measures are numeric.
    """
    cursor.execute(
        "SELECT a.attname, t.typcategory FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped",
        (relation_oid,),
    )
    categories = dict(cursor.fetchall())
    missing = [c for c in spec.columns if c not in categories]
    if missing:
        return "the previous table has no column " + ", ".join(f'"{c}"' for c in missing)
    text = [m.column for m in spec.measures if categories[m.column] != "N"]
    if text:
        return "the previous table's " + ", ".join(f'"{c}"' for c in text) + " is not numeric"
    return ""


def _top(source: str, where: str, value: str, order: str, limit: int) -> str:
    """A JSON array of ``value`` for the first ``limit`` rows of ``source`` matching ``where`` (top-N sort)."""
    return (
        f"(SELECT coalesce(json_agg({value} ORDER BY {order}), '[]') FROM"
        f" (SELECT * FROM {source} WHERE {where} ORDER BY {order} LIMIT {limit}) x)"
    )


def _statement(spec: ChangeSpec, old: str, new: str, differing: str) -> str:
    """One statement whose cost follows the number of changes.

    ``t``: the keys of the rows that differ (``differing``, the loader's comparison).
    For those keys only: aggregate each side by key, join on the key and keep the
    keys that differ. A set column is aggregated unordered and compared as a set
    (``@>`` both ways); the listed sets are sorted in Python.
    """
    key, limit, by_key = _q(spec.key), int(spec.limit), 'k COLLATE "C"'
    measures, sets = range(len(spec.measures)), range(len(spec.sets))

    aggregates = [f"{key}::text AS k"]
    aggregates += [f"max({_q(m.column)})::numeric AS m{i}" for i, m in enumerate(spec.measures)]
    aggregates += [
        f"coalesce(array_agg({_q(c.column)}::text) FILTER (WHERE {_q(c.column)} IS NOT NULL), '{{}}') AS s{i}"
        for i, c in enumerate(spec.sets)
    ]

    def per_key(relation: str) -> str:
        return (
            f"SELECT {', '.join(aggregates)} FROM {relation}"
            f" WHERE {key} IS NOT NULL AND {key}::text IN (SELECT k FROM t) GROUP BY 1"
        )

    kept = ["coalesce(n.k, o.k) AS k", "o.k IS NULL AS added", "n.k IS NULL AS removed"]
    kept += [f"o.m{i} AS om{i}, n.m{i} AS nm{i}" for i in measures]
    kept += [f"o.s{i} AS os{i}, n.s{i} AS ns{i}, NOT (o.s{i} @> n.s{i} AND n.s{i} @> o.s{i}) AS sd{i}" for i in sets]
    differs = ["o.k IS NULL", "n.k IS NULL"]
    differs += [f"o.m{i} IS DISTINCT FROM n.m{i}" for i in measures]
    differs += [f"NOT (o.s{i} @> n.s{i} AND n.s{i} @> o.s{i})" for i in sets]
    ctes = [
        f"t AS MATERIALIZED (SELECT DISTINCT {key}::text AS k FROM {differing} WHERE {key} IS NOT NULL)",
        f"o AS ({per_key(old)})",
        f"n AS ({per_key(new)})",
        f"d AS MATERIALIZED (SELECT {', '.join(kept)} FROM o FULL JOIN n ON n.k = o.k WHERE {' OR '.join(differs)})",
    ]

    both = "NOT added AND NOT removed"
    results = [
        "(SELECT count(*) FROM d WHERE added)",
        _top("d", "added", "k", by_key, limit),
        "(SELECT count(*) FROM d WHERE removed)",
        _top("d", "removed", "k", by_key, limit),
    ]
    for i in measures:
        changed = f"{both} AND om{i} IS DISTINCT FROM nm{i}"
        order = f"abs(nm{i} - om{i}) DESC NULLS LAST, {by_key}"
        results.append(f"(SELECT count(*) FROM d WHERE {changed})")
        results.append(_top("d", changed, f"json_build_array(k, om{i}, nm{i})", order, limit))
    for i in sets:
        changed = f"{both} AND sd{i}"
        results.append(f"(SELECT count(*) FROM d WHERE {changed})")
        results.append(_top("d", changed, f"json_build_array(k, os{i}, ns{i})", by_key, limit))
    return f"WITH {', '.join(ctes)} SELECT {', '.join(results)}"


def compare(cursor: Any, spec: ChangeSpec, old: str | None, new: str, differing: str) -> ChangeSummary:
    """Compare relation ``old`` (``None``: no previous table) with ``new``, for the keys of ``differing`` (the rows
    on one side only), on a psycopg2 ``cursor`` in the load's transaction. Quoted relation names, which must have
    the spec's columns (check ``old`` with :func:`missing_columns`). Reads only; one statement."""
    if old is None:
        old = f"(SELECT * FROM {new} WHERE false) AS nothing"
    cursor.execute(_statement(spec, old, new, differing))
    values = list(cursor.fetchone())
    added_count, added, removed_count, removed = values[:4]
    measures, position = [], 4
    for measure in spec.measures:
        count, largest = values[position : position + 2]
        position += 2
        measures.append(MeasureChanges(measure, count, tuple(MeasureChange(*c) for c in largest)))
    sets = []
    for column in spec.sets:
        count, changes = values[position : position + 2]
        position += 2
        sets.append(SetChanges(column, count, tuple(SetChange(k, _sorted(b), _sorted(a)) for k, b, a in changes)))
    return ChangeSummary(spec, added_count, tuple(added), removed_count, tuple(removed), tuple(measures), tuple(sets))


# --- the row-drop rule: how much a load may shrink the table ------------------------------------


def _percent(kept: float, limit: float) -> str:
    shown = f"{kept * 100:.0f}"
    if float(shown) >= limit * 100:
        shown = f"{math.floor(kept * 1000) / 10:.1f}"
    return f"{shown}%"


def check_min_row_fraction(min_fraction: float) -> None:
    """``ConfigurationError`` unless ``min_fraction`` is a number in [0, 1]."""
    valid = isinstance(min_fraction, int | float) and not isinstance(min_fraction, bool)
    if not valid or math.isnan(min_fraction) or not 0.0 <= min_fraction <= 1.0:
        raise ConfigurationError(
            f"{setting('min_row_fraction')} must be between 0 and 1 (a fraction like 0.5 for 50%), got {min_fraction!r}"
        )


def check_row_drop(new_rows: int, previous_rows: int | None, min_fraction: float, table: str) -> None:
    """Refuse (``QualityGateError``) a load of fewer than ``min_fraction`` of the table's ``previous_rows``.

    Never refused: a first load (``None``), an empty table. Exactly ``min_fraction``
    passes (computed on the decimal fraction: 0.1 of 10 rows is 1 row).
    """
    if not previous_rows:
        return
    needed = Fraction(repr(float(min_fraction))) * previous_rows
    if new_rows < needed:
        raise QualityGateError(
            f"new data has {new_rows} rows, {_percent(new_rows / previous_rows, min_fraction)} of the "
            f"{previous_rows} in {table}, below {setting('min_row_fraction', min_fraction)} "
            f"(at least {math.ceil(needed)} rows); re-run with {setting('force', True)} if this is expected"
        )
