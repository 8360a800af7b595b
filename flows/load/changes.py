"""What a load changes: the change report, computed in the database, and the row-drop rule.

Per key of a :class:`ChangeSpec` (NULL keys left out): added, removed, a measure's distinct values changed, a set
column's non-NULL values changed; lists hold at most ``spec.limit`` keys, counts are exact.
:func:`check_row_drop` refuses a load that shrinks the table too much.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from flows.errors import ConfigurationError, QualityGateError, setting
from flows.load.database import quote_ident as _q

@dataclass(frozen=True)
class Measure:
    """A numeric column compared by value, e.g. ``Measure("population", "population", "populations")``."""

    column: str
    noun: str
    plural: str


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


def _number(value: Any) -> str:
    """``5,500,000``; ``none`` for NULL; as PostgreSQL wrote it otherwise (``NaN``, ``Infinity``)."""
    if value is None:
        return "none"
    return f"{value:,}" if isinstance(value, int | float) else str(value)


def _values(values: list[Any]) -> str:
    """A key's distinct values of a measure, in order: ``5,500,000``, or ``1 / 5,500,000`` when its rows disagree."""
    return " / ".join(map(_number, values))


def _set(values: list[str]) -> str:
    """A set column's values, sorted, as ``{a, b}``."""
    return "{" + ", ".join(sorted(set(values))) + "}"


@dataclass(frozen=True)
class Kind:
    """One kind of change: its ``name`` in the table, how many keys, the ``listed`` changes as (key, before,
    after, text), its ``phrase`` and its log line's ``head``."""

    name: str
    count: int
    listed: tuple[tuple[str, str, str, str], ...]
    phrase: str
    head: str


@dataclass(frozen=True)
class ChangeSummary:
    """The ``kinds`` of change between the previous table and the new rows; ``unchanged``: the content was equal;
    ``not_compared``: why the comparison could not run, else ``""``."""

    spec: ChangeSpec
    kinds: tuple[Kind, ...] = ()
    unchanged: bool = False
    not_compared: str = ""

    def phrase(self) -> str:
        """``+1 country, -2 countries, 3 populations changed``; ``no changes``; ``same countries, populations and
        currencies`` when rows changed in other columns."""
        if self.unchanged:
            return "no changes"
        if self.not_compared:
            return f"changes not compared: {self.not_compared}"
        parts = [kind.phrase for kind in self.kinds]
        if parts:
            return ", ".join(parts)
        spec = self.spec
        names = [spec.plural, *(m.plural for m in spec.measures), *(s.label for s in spec.sets)]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        return f"same {listed}"

    def log_lines(self) -> list[str]:
        """One line per kind of change, lists capped (``and N more``); ``[phrase]`` when nothing is listed."""
        lines = []
        for kind in self.kinds:
            more = f" and {kind.count - len(kind.listed):,} more" if kind.count > len(kind.listed) else ""
            lines.append(f"{kind.head}: {', '.join(change[3] for change in kind.listed)}{more}")
        return lines or [self.phrase()]

    def table_rows(self) -> list[dict[str, str]]:
        """Rows ``change``, the noun (e.g. ``country``), ``before``, ``after``: one per listed change, a capped list
        ending with ``and N more``; empty when nothing is listed."""
        rows = []
        for kind in self.kinds:
            listed = kind.listed
            if kind.count > len(listed):
                listed = (*listed, (f"and {kind.count - len(listed):,} more", "", "", ""))
            rows += [{"change": kind.name, self.spec.noun: key, "before": b, "after": a} for key, b, a, _ in listed]
        return rows

    def markdown(self) -> str:
        """A markdown section: a heading line with :meth:`phrase`, then the :meth:`table_rows` as a table."""
        lines = [f"**Changes:** {self.phrase()}"]
        rows = self.table_rows()
        if rows:
            header = list(rows[0])
            lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            cells = (" | ".join(r[h].replace("|", "\\|").replace("\n", " ") for h in header) for r in rows)
            lines += [f"| {line} |" for line in cells]
        return "\n".join(lines) + "\n"


def column_categories(cursor: Any, relation_oid: int) -> dict[str, str]:
    """The columns of the relation ``relation_oid`` in order, each with its type's category (``N``: numeric)."""
    cursor.execute(
        "SELECT a.attname, t.typcategory FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (relation_oid,),
    )
    return dict(cursor.fetchall())


def missing_columns(cursor: Any, spec: ChangeSpec, relation_oid: int) -> str:
    """Why the relation ``relation_oid`` cannot be compared (a column missing, a measure not numeric), or ``""``."""
    categories = column_categories(cursor, relation_oid)
    missing = [c for c in spec.columns if c not in categories]
    if missing:
        return "the previous table has no column " + ", ".join(f'"{c}"' for c in missing)
    text = [m.column for m in spec.measures if categories[m.column] != "N"]
    if text:
        return "the previous table's " + ", ".join(f'"{c}"' for c in text) + " is not numeric"
    return ""


def _statement(spec: ChangeSpec, old: str, new: str, differing: str) -> str:
    """One statement that aggregates both sides by key for the keys of ``differing`` only, so that its cost follows
    the number of changes: per kind of change, its count and the first ``spec.limit`` (a top-N sort)."""
    key, by_key = _q(spec.key), 'k COLLATE "C"'
    measures, sets = range(len(spec.measures)), range(len(spec.sets))
    aggregates = [f"{key}::text AS k"]
    measured = [_q(m.column) for m in spec.measures]
    aggregates += [f"array_agg(DISTINCT {c} ORDER BY {c})::numeric[] AS v{i}, max({c})::numeric AS m{i}"
                   for i, c in enumerate(measured)]
    aggregates += [
        f"coalesce(array_agg({_q(c.column)}::text) FILTER (WHERE {_q(c.column)} IS NOT NULL), '{{}}') AS s{i}"
        for i, c in enumerate(spec.sets)
    ]
    o, n = (f"SELECT {', '.join(aggregates)} FROM {relation} WHERE {key} IS NOT NULL AND {key}::text IN"
            " (SELECT k FROM t) GROUP BY 1" for relation in (old, new))  # fmt: skip
    kept = ["coalesce(n.k, o.k) AS k", "o.k IS NULL AS added", "n.k IS NULL AS removed"]
    kept += [f"o.v{i} AS ov{i}, n.v{i} AS nv{i}, o.m{i} AS om{i}, n.m{i} AS nm{i}" for i in measures]
    kept += [f"o.s{i} AS os{i}, n.s{i} AS ns{i}, NOT (o.s{i} @> n.s{i} AND n.s{i} @> o.s{i}) AS sd{i}" for i in sets]
    ctes = [
        f"t AS MATERIALIZED (SELECT DISTINCT {key}::text AS k FROM {differing} WHERE {key} IS NOT NULL)",
        f"o AS ({o})",
        f"n AS ({n})",
        f"d AS MATERIALIZED (SELECT {', '.join(kept)} FROM o FULL JOIN n ON n.k = o.k)",
    ]
    both = "NOT added AND NOT removed"
    kinds = [("added", "k", by_key), ("removed", "k", by_key)]
    kinds += [(f"{both} AND ov{i} IS DISTINCT FROM nv{i}", f"json_build_array(k, ov{i}, nv{i})",
               f"abs(nm{i} - om{i}) DESC NULLS LAST, {by_key}") for i in measures]  # fmt: skip
    kinds += [(f"{both} AND sd{i}", f"json_build_array(k, os{i}, ns{i})", by_key) for i in sets]
    results = [
        f"(SELECT count(*) FROM d WHERE {where}), (SELECT coalesce(json_agg({value} ORDER BY {order}), '[]') FROM"
        f" (SELECT * FROM d WHERE {where} ORDER BY {order} LIMIT {int(spec.limit)}) x)"
        for where, value, order in kinds
    ]
    return f"WITH {', '.join(ctes)} SELECT {', '.join(results)}"


def compare(cursor: Any, spec: ChangeSpec, old: str | None, new: str, differing: str) -> ChangeSummary:
    """Compare relation ``old`` (``None``: no previous table) with ``new``, for the keys of ``differing`` (the rows
    on one side only), on a psycopg2 ``cursor`` in the load's transaction. Quoted relation names, which must have
    the spec's columns (check ``old`` with :func:`missing_columns`). Reads only; one statement."""
    if old is None:
        old = f"(SELECT * FROM {new} WHERE false) AS nothing"
    cursor.execute(_statement(spec, old, new, differing))
    row = cursor.fetchone()
    (added, added_keys), (removed, removed_keys), *pairs = (row[i : i + 2] for i in range(0, len(row), 2))
    kinds = [
        Kind("added", added, tuple((k, "", "", k) for k in added_keys), f"+{spec.entities(added)}",
             f"{spec.plural} added ({added:,})"),
        Kind("removed", removed, tuple((k, "", "", k) for k in removed_keys), f"-{spec.entities(removed)}",
             f"{spec.plural} removed ({removed:,})"),
    ]  # fmt: skip
    for m, (count, largest) in zip(spec.measures, pairs):
        listed = []
        for key, old_values, new_values in largest:  # the key's distinct values, in order
            before, after = _values(old_values), _values(new_values)
            text = f"{key} {before} -> {after}"
            (b, *more_b), (a, *more_a) = old_values, new_values
            if isinstance(b, int | float) and isinstance(a, int | float) and not more_b + more_a:
                text += f" ({a - b:+,})"
            listed.append((key, before, after, text))
        noun = m.noun if count == 1 else m.plural
        head = f"{m.plural} changed ({count:,}), largest"
        kinds.append(Kind(m.noun, count, tuple(listed), f"{count:,} {noun} changed", head))
    for c, (count, first) in zip(spec.sets, pairs[len(spec.measures) :]):
        listed = [(key, _set(before), _set(after)) for key, before, after in first]
        phrase = f"{c.label} changed for {spec.entities(count)}"
        kinds.append(Kind(c.label, count, tuple((k, b, a, f"{k}: {b} -> {a}") for k, b, a in listed), phrase, phrase))
    return ChangeSummary(spec, tuple(kind for kind in kinds if kind.count))


def check_min_row_fraction(min_fraction: float) -> None:
    """``ConfigurationError`` unless ``min_fraction`` is a number in [0, 1]."""
    valid = isinstance(min_fraction, int | float) and not isinstance(min_fraction, bool)
    if not valid or not 0.0 <= min_fraction <= 1.0:  # NaN is in no range
        raise ConfigurationError(
            f"{setting('min_row_fraction')} must be between 0 and 1 (a fraction like 0.5 for 50%), got {min_fraction!r}"
        )


def check_row_drop(new_rows: int, previous_rows: int | None, min_fraction: float, table: str) -> None:
    """``QualityGateError`` for fewer ``new_rows`` than ``min_fraction`` (as a decimal: 0.1 of 10 rows is 1 row) of
    ``previous_rows``; never for a first load (``None``) or an empty table."""
    if not previous_rows:
        return
    needed = Fraction(repr(float(min_fraction))) * previous_rows
    if new_rows < needed:
        shown = f"{new_rows / previous_rows * 100:.0f}"
        if float(shown) >= min_fraction * 100:  # rounded up to the limit: one decimal, rounded down
            shown = f"{math.floor(new_rows / previous_rows * 1000) / 10:.1f}"
        raise QualityGateError(
            f"new data has {new_rows} rows, {shown}% of the "
            f"{previous_rows} in {table}, below {setting('min_row_fraction', min_fraction)} "
            f"(at least {math.ceil(needed)} rows); re-run with {setting('force', True)} if this is expected"
        )
