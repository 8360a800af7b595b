"""The quality gate: ``validate_countries(df)`` checks the frame's shape and dtypes, then ``ROW_RULES``
(derived from ``flows.transform.schema``). The row rules are data: to add one, append to the list."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from flows.errors import QualityGateError
from flows.transform import schema


@dataclass(frozen=True)
class RowRule:
    """``failing(df)``: a mask of the rows that break it, reported as "<n> rows have <problem> (e.g. <example>)";
    ``example(df, index_label)`` shows the first failing row."""

    problem: str
    failing: Callable[[pd.DataFrame], pd.Series]
    example: Callable[[pd.DataFrame, object], str]


def _is_text(series: pd.Series) -> bool:
    if series.dtype == object:
        return pd.api.types.infer_dtype(series, skipna=True) in ("string", "empty")
    return pd.api.types.is_string_dtype(series.dtype) and not isinstance(series.dtype, pd.CategoricalDtype)


def _frame_problem(df: pd.DataFrame) -> str | None:
    """The first way the frame's columns, dtypes or size break the schema, or None."""
    actual = [str(c) for c in df.columns]
    if tuple(actual) != schema.COLUMN_NAMES:
        expected = ", ".join(schema.COLUMN_NAMES)
        return f"the columns are [{', '.join(actual)}], expected exactly [{expected}] in that order"
    for col in schema.COLUMNS:
        series = df[col.name]
        if col.dtype == "str" and not _is_text(series):
            return f'column "{col.name}" has dtype {series.dtype}, expected text (str)'
        if col.dtype == "int64" and not pd.api.types.is_integer_dtype(series.dtype):
            return f'column "{col.name}" has dtype {series.dtype}, expected an integer dtype'
    return "the data has no rows" if len(df) == 0 else None


def _name_of(df: pd.DataFrame, label: object) -> str:
    name = df.at[label, schema.KEY.name]
    return f"row {label}" if pd.isna(name) else f'"{name}"'


def _required(col: schema.Column) -> RowRule:
    return RowRule(f"no {col.name}", lambda df: df[col.name].isna(), _name_of)


def _at_least(col: schema.Column, minimum: int) -> RowRule:
    return RowRule(
        f"a negative {col.name}" if minimum == 0 else f"{col.name} below {minimum}",
        lambda df: (df[col.name] < minimum).fillna(False).astype(bool),
        lambda df, label: f"{_name_of(df, label)}: {df.at[label, col.name]}",
    )


ROW_RULES: list[RowRule] = [
    *(_required(col) for col in schema.COLUMNS if col.required),
    *(_at_least(col, col.minimum) for col in schema.COLUMNS if col.minimum is not None),
]
"""Checked in order once the frame's shape and dtypes passed."""


def validate_countries(df: pd.DataFrame) -> None:
    """Return None if the frame may be loaded. Raises ``QualityGateError`` naming the first failed rule, e.g.
    ``quality gate: 2 rows have a negative population (e.g. "Narnia": -5); the table was not changed``."""
    if (problem := _frame_problem(df)) is not None:
        raise QualityGateError(f"quality gate: {problem}; the table was not changed")
    for row_rule in ROW_RULES:
        failing = row_rule.failing(df).to_numpy(dtype=bool)
        if count := int(failing.sum()):
            rows = "1 row has" if count == 1 else f"{count} rows have"
            example = row_rule.example(df, df.index[failing.argmax()])
            problem = f"{rows} {row_rule.problem} (e.g. {example})"
            raise QualityGateError(f"quality gate: {problem}; the table was not changed")
