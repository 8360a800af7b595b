"""The quality gate: rules the data must pass before it may replace the table.

Pure (no database): ``validate_countries(df)`` checks the transformed countries frame against
``FRAME_RULES`` (shape and dtypes) and then ``ROW_RULES`` (per-row values). The rules are data:
to add one, append a ``FrameRule`` or ``RowRule``.
The row-drop rule (a load smaller than a fraction of the table) is the load's:
``flows.load.changes.check_row_drop``, applied against the table it replaces.

Every failure is a ``QualityGateError`` whose message is one line naming the
first problem found and how many rows it affects, ending with
"the table was not changed".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from flows.transform import schema
from flows.errors import QualityGateError

logger = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = schema.COLUMN_NAMES
"""The countries table's columns, in order (from ``flows.transform.schema``)."""

_NOT_CHANGED = "the table was not changed"


@dataclass(frozen=True)
class FrameRule:
    """A rule on the frame as a whole: ``problem(df)`` returns a description, or ``None`` if it passes."""

    name: str
    problem: Callable[[pd.DataFrame], str | None]


@dataclass(frozen=True)
class RowRule:
    """A rule on each row: ``failing(df)`` is a boolean mask of the rows that break it.

    The message reads "<n> rows have <problem> (e.g. <example>)", where the
    example is ``example(df, index_label)`` for the first failing row.
    """

    name: str
    problem: str
    failing: Callable[[pd.DataFrame], pd.Series]
    example: Callable[[pd.DataFrame, object], str]


def _is_string_like(series: pd.Series) -> bool:
    """A str dtype, or an object column whose values are all str (or missing)."""
    if series.dtype == object:
        return pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty")
    return pd.api.types.is_string_dtype(series.dtype) and not isinstance(series.dtype, pd.CategoricalDtype)


def _columns_problem(df: pd.DataFrame) -> str | None:
    actual = [str(c) for c in df.columns]
    if tuple(actual) == COLUMNS:
        return None
    expected = ", ".join(COLUMNS)
    return f"the columns are [{', '.join(actual)}], expected exactly [{expected}] in that order"


def _dtypes_problem(df: pd.DataFrame) -> str | None:
    for col in schema.COLUMNS:
        series = df[col.name]
        if col.dtype == "str" and not _is_string_like(series):
            return f'column "{col.name}" has dtype {series.dtype}, expected text (str)'
        if col.dtype == "int64" and not pd.api.types.is_integer_dtype(series.dtype):
            return f'column "{col.name}" has dtype {series.dtype}, expected an integer dtype'
    return None


def _empty_problem(df: pd.DataFrame) -> str | None:
    return "the data has no rows" if len(df) == 0 else None


def _name_of(df: pd.DataFrame, label: object) -> str:
    name = df.at[label, schema.KEY.name]
    return f"row {label}" if pd.isna(name) else f'"{name}"'


def _required(col: schema.Column) -> RowRule:
    example = (lambda df, label: f"row {label}") if col is schema.KEY else _name_of
    return RowRule(f"{col.name} present", f"no {col.name}", lambda df: df[col.name].isna(), example)


def _at_least(col: schema.Column, minimum: int) -> RowRule:
    return RowRule(
        f"{col.name} at least {minimum}",
        f"a negative {col.name}" if minimum == 0 else f"{col.name} below {minimum}",
        lambda df: (df[col.name] < minimum).fillna(False).astype(bool),
        lambda df, label: f"{_name_of(df, label)}: {df.at[label, col.name]}",
    )


FRAME_RULES: list[FrameRule] = [
    FrameRule("columns", _columns_problem),
    FrameRule("dtypes", _dtypes_problem),
    FrameRule("not empty", _empty_problem),
]
"""Checked first, in order; the row rules assume these passed."""

ROW_RULES: list[RowRule] = [
    *(_required(col) for col in schema.COLUMNS if col.required),
    *(_at_least(col, col.minimum) for col in schema.COLUMNS if col.minimum is not None),
]
"""Checked in order after the frame rules; the first rule with failing rows is reported.

Derived from ``flows.transform.schema``: a required column has a value in every row; a
column with a minimum has no value below it."""


def validate_countries(df: pd.DataFrame) -> None:
    """Check the transformed countries frame; return ``None`` if it may be loaded.

    Input: the frame the transform produced. Nothing is modified.
    Raises ``QualityGateError`` naming the first failed rule (frame rules,
    then row rules, in list order) and, for row rules, how many rows fail
    with an example, e.g.
    ``quality gate: 2 rows have a negative population (e.g. "Narnia": -5); the table was not changed``.
    """
    for frame_rule in FRAME_RULES:
        problem = frame_rule.problem(df)
        if problem is not None:
            raise QualityGateError(f"quality gate: {problem}; {_NOT_CHANGED}")
    for row_rule in ROW_RULES:
        failing = row_rule.failing(df).to_numpy(dtype=bool)
        count = int(failing.sum())
        if count:
            label = df.index[failing.argmax()]
            rows = "1 row has" if count == 1 else f"{count} rows have"
            example = row_rule.example(df, label)
            raise QualityGateError(f"quality gate: {rows} {row_rule.problem} (e.g. {example}); {_NOT_CHANGED}")
    logger.debug("quality gate passed: %d rows", len(df))
