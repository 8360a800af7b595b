"""A DataFrame as PostgreSQL's COPY text format (private to ``flows.load``).

:func:`plan_copy` checks a frame and settles each column's SQL type; :func:`serialise` yields its rows as COPY text
(UTF-8, NULL as ``\\N``, numbers exact, datetimes in UTC) a chunk at a time; :func:`copy_rows` sends them.
"""

from __future__ import annotations

import dataclasses
import re
import types
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from flows.load.database import MAX_IDENTIFIER_BYTES, quote_ident
from flows.errors import ConfigurationError, LoadError

if TYPE_CHECKING:
    import psycopg2.extensions

_NULL = "\\N"  # COPY text format's NULL marker
_SQL_TYPE = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(?: [A-Za-z_][A-Za-z0-9_]*)*"
    r"(?: ?\(\s*\d+\s*(?:,\s*\d+\s*)?\))?"
    r"(?: [A-Za-z_][A-Za-z0-9_]*)*"
)
_COPY_CHUNK_ROWS = 4096


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of the frame: its name, its SQL type, and its values."""

    name: str
    sql_type: str
    series: pd.Series


@dataclasses.dataclass(frozen=True)
class CopyPlan:
    """A validated frame: its columns with SQL types, and its row count."""

    columns: list[Column]
    rows: int

    def names(self) -> str:
        """The quoted column names, comma-separated, for a column list."""
        return ", ".join(quote_ident(c.name) for c in self.columns)

    def definitions(self) -> str:
        """The column definitions (quoted name, SQL type) for ``CREATE TABLE``."""
        return ", ".join(f"{quote_ident(c.name)} {c.sql_type}" for c in self.columns)


def _is_text(dtype: object) -> bool:
    return isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype)


def _default_sql_type(name: str, dtype: object) -> str:
    for check, sql_type in (
        (_is_text, "text"),
        (pd.api.types.is_bool_dtype, "boolean"),
        (pd.api.types.is_integer_dtype, "bigint"),
        (pd.api.types.is_float_dtype, "double precision"),
        (pd.api.types.is_datetime64_any_dtype, "timestamptz"),
    ):
        if check(dtype):
            return sql_type
    raise ConfigurationError(
        f'column "{name}" has dtype {dtype}, which the loader cannot map to an SQL type; '
        "convert it to text, integer, float, bool or datetime"
    )


def plan_copy(df: pd.DataFrame, column_types: Mapping[str, str] | None) -> CopyPlan:
    """Check the frame's column names and ``column_types`` and settle each column's SQL type (no data is read).

    A frame without columns or with duplicate names fails later, in PostgreSQL (``LoadError``)."""
    column_types = dict(column_types or {})
    names = list(df.columns)
    for name in names:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ConfigurationError(f"column name {name!r} is not usable: column names must be non-empty strings")
        if len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
            raise ConfigurationError(f'column name "{name}" is longer than PostgreSQL\'s 63 bytes')
    unknown = sorted(set(column_types) - set(names))
    if unknown:
        raise ConfigurationError(f"column_types names columns the frame does not have: {unknown} (columns: {names})")
    for name, sql_type in column_types.items():
        if not isinstance(sql_type, str) or not _SQL_TYPE.fullmatch(sql_type.strip()):
            raise ConfigurationError(
                f'column_types["{name}"] = {sql_type!r} is not a plain SQL type name '
                '(like "text", "bigint", "numeric(12,2)", "timestamp with time zone")'
            )
    series = [df.iloc[:, position] for position in range(len(names))]  # by position: names may repeat
    types = [column_types.get(n, "").strip() or _default_sql_type(n, s.dtype) for n, s in zip(names, series)]
    return CopyPlan(columns=list(map(Column, names, types, series)), rows=len(df))


def _fields(column: Column) -> tuple[str, Callable[[int, int], list]]:
    """(``%``-format of one field, rows ``i:j`` -> their fields) for a column; numbers without NULLs stay numbers."""
    series, dtype = column.series, column.series.dtype
    if _is_text(dtype):
        values = series.to_numpy(dtype=object)  # NaN/None/NA where missing
        return "%s", lambda i, j: _escaped(values[i:j], column.name)
    mask, floating = series.isna().to_numpy(dtype=bool), pd.api.types.is_float_dtype(dtype)
    if pd.api.types.is_bool_dtype(dtype):
        words = np.array(["f", "t"], dtype=object)[series.to_numpy(dtype=bool, na_value=False).astype(np.intp)]
    elif floating or pd.api.types.is_integer_dtype(dtype):  # ints as %d, floats as %r: both exact
        kind = "float64" if floating else "uint64" if pd.api.types.is_unsigned_integer_dtype(dtype) else "int64"
        numbers = series.to_numpy(dtype=kind, na_value=np.nan if floating else 0)  # NaN is missing: NULL
        if not mask.any():
            return "%r" if floating else "%d", lambda i, j: numbers[i:j].tolist()
        words = np.array(list(map(repr if floating else str, numbers.tolist())), dtype=object)
    elif pd.api.types.is_datetime64_any_dtype(dtype):
        if isinstance(dtype, pd.DatetimeTZDtype):
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)  # naive datetimes are taken as UTC
        stamps = series.to_numpy(dtype="datetime64[us]")
        words = np.datetime_as_string(stamps, unit="us", timezone="UTC").astype(object)
    else:  # _default_sql_type refused it already unless column_types named a type
        raise ConfigurationError(f'column "{column.name}" has dtype {dtype}, which the loader cannot serialise')
    words[mask] = _NULL
    return "%s", lambda i, j: words[i:j].tolist()


def _escaped(values: np.ndarray, name: str) -> list[str]:
    """Text values as escaped COPY fields (others as ``str()``); a NUL raises LoadError here or in ``serialise``."""
    texts, nulls = values.tolist(), []
    try:
        joined = "\x00".join(texts)
    except TypeError:  # a missing value (NaN, None, NA) or another object than str
        nulls = np.flatnonzero(pd.isna(values)).tolist()
        for k in nulls:
            texts[k] = ""
        if set(map(type, texts)) != {str}:
            texts = [t if isinstance(t, str) else str(t) for t in texts]
        joined = "\x00".join(texts)
    fields = texts  # four membership tests, not four replaces finding nothing: 4 us against 270 us per 4,096 values
    if any(special in joined for special in "\\\t\n\r"):
        escaped = joined.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
        fields = escaped.split("\x00")
        if len(fields) != len(texts):
            raise _nul(name)
    for k in nulls:
        fields[k] = _NULL
    return fields


def _nul(name: str) -> LoadError:  # the one message for a NUL, from _escaped or serialise
    return LoadError(f'column "{name}" contains a NUL character (\\x00), which PostgreSQL text cannot store; '
                     "the table was not changed")  # fmt: skip


def serialise(plan: CopyPlan) -> Iterator[bytes]:
    """The rows in COPY text format (UTF-8), chunk by chunk; ``LoadError`` for text PostgreSQL cannot store."""
    fields = [_fields(c) for c in plan.columns]
    width = len(fields)
    row = "\t".join(spec for spec, _ in fields) + "\n"
    for start in range(0, plan.rows, _COPY_CHUNK_ROWS):
        stop = min(plan.rows, start + _COPY_CHUNK_ROWS)
        arguments: list[object] = [None] * (width * (stop - start))
        for position, (_, values) in enumerate(fields):
            arguments[position::width] = values(start, stop)
        try:
            chunk = ((row * (stop - start)) % tuple(arguments)).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise LoadError(
                f"the data contains text that is not valid Unicode ({exc.reason}: "
                f"{exc.object[exc.start : exc.end]!r}); the table was not changed"
            ) from None
        if b"\x00" in chunk:  # a NUL in a value (the fields' separators are tab and newline)
            raise _nul(next(plan.columns[p % width].name for p, a in enumerate(arguments) if "\x00" in str(a)))
        yield chunk


def copy_rows(cur: psycopg2.extensions.cursor, plan: CopyPlan, copy_sql: str) -> None:
    """Run ``copy_sql`` (a ``COPY ... FROM STDIN`` in text format) with the rows of ``plan``; ``LoadError`` aborts it.

    The next chunk is serialised on a thread while psycopg2 sends this one (it releases the GIL): measured at 1M
    rows, 0.48 s against 0.90 s serialising in line, where the server sat idle while Python worked (raw COPY of a
    ready buffer: 0.47 s)."""
    chunks = serialise(plan)
    with ThreadPoolExecutor(1, thread_name_prefix="copy-serialise") as serialiser:
        pending = [serialiser.submit(next, chunks, b"")]

        def read(_size: int) -> bytes:  # an error raised here aborts the COPY
            pending.append(serialiser.submit(next, chunks, b""))
            return pending.pop(0).result()

        try:
            cur.copy_expert(copy_sql, types.SimpleNamespace(read=read), size=1 << 20)
        finally:
            pending[-1].cancel()
