"""Atomic, zero-downtime replacement of a PostgreSQL table with a DataFrame, via COPY.

Public API::

    parse_table_name("analytics.countries") -> TableName
    content_hash(df, column_types=None) -> str
    replace_table(engine, df, "analytics.countries", column_types=..., force=False,
                  min_row_fraction=0.5) -> LoadResult

The code works on a plain SQLAlchemy ``Engine`` (psycopg2 driver); the Prefect
flow passes the one from the ``countries-db`` ``SqlAlchemyConnector`` block.

How a replace works. A background thread starts serialising the frame to
COPY text format (and hashing it) the moment ``replace_table`` is called;
meanwhile, in one transaction on one connection:

1. ``pg_advisory_xact_lock`` keyed on the schema-qualified table name:
   concurrent loaders of the same table run one after the other.
2. Read the current table's comment (see "change detection"). If the new
   data's hash equals the stored one, stop: nothing is written,
   ``changed=False``.
3. Apply the row-drop rule (``flows.quality.check_row_drop``) against the
   row count stored with the table (``count(*)`` if the table was not loaded
   by us): ``QualityGateError``, nothing written.
4. ``CREATE TABLE`` a staging table next to it, ``COPY ... FROM STDIN WITH
   (FREEZE)`` the rows into it while they are being serialised (psycopg2
   ``copy_expert``; no INSERTs, no per-row Python: each chunk is one
   ``%``-format of a repeated row template), copy the old table's privileges
   (GRANTs) onto it, ``COMMENT ON`` it with the hash.
5. ``DROP`` the old table, ``RENAME`` the staging table to the name, commit.

Readers never see a missing, empty or partial table: until the commit the old
table is untouched; the ``DROP`` takes an ACCESS EXCLUSIVE lock only for the
last step, so readers wait (for milliseconds, not for the COPY) and then
PostgreSQL resolves the name again and they read the new table (tested with
concurrent readers during 50 swaps). Because the rows are COPY'd FROZEN, even a
REPEATABLE READ reader whose snapshot predates the swap sees the whole new
table (without FREEZE it would see an empty one). A failure at any point rolls
the whole transaction back, leaving the old table exactly as it was. Caveats
(inherent to swapping tables, documented rather than hidden):

- A reader query that is already running holds the old table; the swap waits
  for it, and readers arriving meanwhile queue behind the swap.
- Indexes, constraints, triggers and views on the old table are not carried
  over; a view depending on the table makes the swap fail (``LoadError``, old
  table unchanged). Privileges are carried over; the owner becomes the loader.

Change detection: ``content_hash`` is the SHA-256 of a small JSON header
(column names, SQL types, row count) followed by the rows in COPY text format:
every value, in order, NULL distinct from any string. It is stored as the
table's comment, ``countries-pipeline content-sha256=<hex> rows=<n>
head-sha256=<hex> head-rows=4096``, written in the same transaction as the
data, so it always describes the table's content. The head digest covers the
header and the first 4096 rows: when it differs, the data has changed and COPY
starts at once; otherwise the full hash is awaited before anything is written
(the serialised rows wait in memory meanwhile: at most the COPY text of the
frame). Editing the table by hand does not update the comment; run
``COMMENT ON TABLE ... IS NULL`` to make the next load rewrite the table.

Errors (all ``flows.errors``): ``InvalidTableNameError`` and
``ConfigurationError`` before touching the database; ``DatabaseUnreachableError``
when no connection can be made (names host/port or socket directory, database
and user, never the password); ``QualityGateError`` from the row-drop rule;
``LoadError`` for anything else, with PostgreSQL's message; in every case the
previous table is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import psycopg2
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from flows.errors import (
    ConfigurationError,
    CountriesError,
    DatabaseUnreachableError,
    InvalidTableNameError,
    LoadError,
)
from flows.quality import check_row_drop

logger = logging.getLogger(__name__)

__all__ = ["LoadResult", "TableName", "content_hash", "parse_table_name", "replace_table"]

# --- table names -------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1; longer names would be truncated silently
_NAME_HELP = "use letters, digits and underscores, optionally schema-qualified like analytics.countries"


def _quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (any text is safe: quotes are doubled)."""
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    """``value`` as an SQL string literal, safe whatever ``standard_conforming_strings`` is."""
    return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


@dataclass(frozen=True)
class TableName:
    """A validated, lower-case table name; ``schema`` is ``None`` for "the first schema on search_path"."""

    schema: str | None
    name: str

    @property
    def sql(self) -> str:
        """The quoted name for SQL, e.g. ``"public"."countries"``."""
        if self.schema is None:
            return _quote_ident(self.name)
        return f"{_quote_ident(self.schema)}.{_quote_ident(self.name)}"

    def __str__(self) -> str:
        return self.name if self.schema is None else f"{self.schema}.{self.name}"


def parse_table_name(name: str) -> TableName:
    """Parse ``"countries"`` or ``"analytics.countries"`` into a ``TableName``.

    Each part must match ``[A-Za-z_][A-Za-z0-9_$]*`` and be at most 63 bytes.
    Upper case is folded to lower case, as PostgreSQL does for unquoted names:
    ``Analytics.Countries`` is the table a ``psql`` user reaches by typing that.
    Raises ``InvalidTableNameError`` (one line: what was wrong, what is allowed)
    for anything else; the database is not touched.
    """
    if not isinstance(name, str):
        raise InvalidTableNameError(f"invalid table name {name!r}: expected a string; {_NAME_HELP}")
    shown = json.dumps(name, ensure_ascii=False)
    parts = name.split(".")
    if len(parts) > 2:
        raise InvalidTableNameError(
            f"invalid table name {shown}: at most one dot (schema.table) is allowed; {_NAME_HELP}"
        )
    for part in parts:
        if not _IDENTIFIER.fullmatch(part):
            quoted = json.dumps(part, ensure_ascii=False)
            what = "an empty part" if part == "" else f"{quoted} is not a plain identifier"
            raise InvalidTableNameError(f"invalid table name {shown}: {what}; {_NAME_HELP}")
        if len(part) > _MAX_IDENTIFIER_BYTES:
            raise InvalidTableNameError(
                f"invalid table name {shown}: a part is {len(part)} characters long, "
                f"PostgreSQL allows at most {_MAX_IDENTIFIER_BYTES}; {_NAME_HELP}"
            )
    parts = [p.lower() for p in parts]
    return TableName(None, parts[0]) if len(parts) == 1 else TableName(parts[0], parts[1])


# --- results -----------------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    """What ``replace_table`` did.

    ``table`` is the schema-qualified name; ``rows`` the rows now in it;
    ``previous_rows`` the rows before (``None`` if there was no table);
    ``changed`` is ``False`` when the data was identical and nothing was
    written; ``content_hash`` the SHA-256 hex stored with the table;
    ``seconds`` the wall time of the whole call.
    """

    table: str
    rows: int
    previous_rows: int | None
    changed: bool
    content_hash: str
    seconds: float = 0.0


# --- serialisation: a frame as COPY text format, hashed as it is produced ----------

_NULL = "\\N"  # COPY text format's NULL marker
_SQL_TYPE = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(?: [A-Za-z_][A-Za-z0-9_]*)*"
    r"(?: ?\(\s*\d+\s*(?:,\s*\d+\s*)?\))?"
    r"(?: [A-Za-z_][A-Za-z0-9_]*)*"
)
_TAB, _NEWLINE, _BACKSLASH, _CR, _NUL = 9, 10, 92, 13, 0


@dataclass(frozen=True)
class _Column:
    """One column of the frame, as it will be loaded."""

    name: str
    sql_type: str
    series: pd.Series


@dataclass(frozen=True)
class _Plan:
    """A validated frame: its columns with SQL types, row count, and the header its hash starts with."""

    columns: list[_Column]
    rows: int
    header: bytes


class _Fields:
    """A column's COPY fields by row range, as ``%``-format arguments; built in the serialising thread.

    ``spec`` is the format of one field: ``%d`` for ints and ``%r`` for floats
    (exact round-trip) when they have no NULLs, ``%s`` otherwise.
    ``chunk(i, j, escape)`` returns the arguments for rows ``i:j`` with NULL
    as ``\\N``, and the number of NULLs. Without ``escape`` text is passed
    as is: right for all but the rare values holding a backslash, tab,
    newline or CR, which the caller detects by counting bytes and then asks
    again with ``escape=True`` (the slow path).
    """

    def __init__(self, column: _Column) -> None:
        series, dtype = column.series, column.series.dtype
        self.name = column.name
        self.spec = "%s"
        self._text = isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype)
        if self._text:
            self._values = series.to_numpy(dtype=object)  # NaN/None/NA where missing
            return
        mask = series.isna().to_numpy(dtype=bool)
        self._mask: np.ndarray | None = mask if mask.any() else None
        if pd.api.types.is_bool_dtype(dtype):
            flags = series.to_numpy(dtype=bool, na_value=False).astype(np.intp)
            words = np.array(["f", "t"], dtype=object)[flags]
            words[mask] = _NULL
            self._format: Callable[[int, int], list] = lambda i, j: words[i:j].tolist()
        elif pd.api.types.is_integer_dtype(dtype):
            unsigned = pd.api.types.is_unsigned_integer_dtype(dtype)
            ints = series.to_numpy(dtype="uint64" if unsigned else "int64", na_value=0)
            if self._mask is None:
                self.spec = "%d"
                self._format = lambda i, j: ints[i:j].tolist()
            else:
                self._format = lambda i, j: self._with_nulls(list(map(str, ints[i:j].tolist())), i, j)
        elif pd.api.types.is_float_dtype(dtype):
            floats = series.to_numpy(dtype="float64", na_value=np.nan)  # NaN is missing: NULL, like None
            if self._mask is None:
                self.spec = "%r"
                self._format = lambda i, j: floats[i:j].tolist()
            else:
                self._format = lambda i, j: self._with_nulls(list(map(repr, floats[i:j].tolist())), i, j)
        elif pd.api.types.is_datetime64_any_dtype(dtype):
            if isinstance(dtype, pd.DatetimeTZDtype):
                series = series.dt.tz_convert("UTC").dt.tz_localize(None)  # naive datetimes are taken as UTC
            stamps = series.to_numpy(dtype="datetime64[us]")
            iso = np.datetime_as_string(stamps, unit="us", timezone="UTC").astype(object)
            iso[mask] = _NULL
            self._format = lambda i, j: iso[i:j].tolist()
        else:  # _default_sql_type refused it already unless column_types named a type
            raise ConfigurationError(
                f'column "{column.name}" has dtype {dtype}, which the loader cannot serialise'
            )

    def _with_nulls(self, fields: list[str], i: int, j: int) -> list[str]:
        if self._mask is None or not self._mask[i:j].any():
            return fields
        array = np.array(fields, dtype=object)
        array[self._mask[i:j]] = _NULL
        return array.tolist()

    def chunk(self, i: int, j: int, escape: bool) -> tuple[list, int]:
        if not self._text:
            nulls = 0 if self._mask is None else int(np.count_nonzero(self._mask[i:j]))
            return self._format(i, j), nulls
        values = self._values[i:j]
        mask = pd.isna(values)
        nulls = int(np.count_nonzero(mask))
        if escape:
            return self._escaped(values, mask), nulls
        if nulls:
            values = values.copy()
            values[mask] = _NULL
        return values.tolist(), nulls

    def _escaped(self, values: np.ndarray, mask: np.ndarray) -> list[str]:
        texts = [v if isinstance(v, str) else str(v) for v in values.tolist()]  # slow path only: odd objects
        for k in np.flatnonzero(mask):
            texts[k] = ""
        joined = "\x00".join(texts)
        if joined.count("\x00") != len(texts) - 1:
            raise LoadError(
                f'column "{self.name}" contains a NUL character (\\x00), which PostgreSQL text cannot store; '
                "the previous table is unchanged"
            )
        escaped = joined.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
        array = np.array(escaped.split("\x00"), dtype=object)
        array[mask] = _NULL
        return array.tolist()


def _default_sql_type(name: str, dtype: object) -> str:
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype):
        return "text"
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "bigint"
    if pd.api.types.is_float_dtype(dtype):
        return "double precision"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "timestamptz"
    raise ConfigurationError(
        f'column "{name}" has dtype {dtype}, which the loader cannot map to an SQL type; '
        "convert it to text, integer, float, bool or datetime"
    )


def _check_columns(df: pd.DataFrame, column_types: Mapping[str, str]) -> list[str]:
    names: list[str] = []
    for column in df.columns:
        if not isinstance(column, str) or not column or "\x00" in column:
            raise ConfigurationError(
                f"column name {column!r} is not usable: column names must be non-empty strings"
            )
        if len(column.encode("utf-8")) > _MAX_IDENTIFIER_BYTES:
            raise ConfigurationError(f'column name "{column}" is longer than PostgreSQL\'s 63 bytes')
        names.append(column)
    if not names:
        raise ConfigurationError("the frame has no columns; there is nothing to load")
    if len(set(names)) != len(names):
        raise ConfigurationError(f"the frame has duplicate column names: {names}")
    unknown = sorted(set(column_types) - set(names))
    if unknown:
        raise ConfigurationError(
            f"column_types names columns the frame does not have: {unknown} (columns: {names})"
        )
    for column, sql_type in column_types.items():
        if not isinstance(sql_type, str) or not _SQL_TYPE.fullmatch(sql_type.strip()):
            raise ConfigurationError(
                f'column_types["{column}"] = {sql_type!r} is not a plain SQL type name '
                '(like "text", "bigint", "numeric(12,2)", "timestamp with time zone")'
            )
    return names


def _plan(df: pd.DataFrame, column_types: Mapping[str, str] | None) -> _Plan:
    """Validate the frame and settle each column's SQL type (cheap; no data is touched)."""
    if not isinstance(df, pd.DataFrame):
        raise ConfigurationError(f"expected a pandas DataFrame, got {type(df).__name__}")
    column_types = dict(column_types or {})
    names = _check_columns(df, column_types)
    columns = []
    for position, name in enumerate(names):
        series = df.iloc[:, position]
        sql_type = column_types.get(name, "").strip() or _default_sql_type(name, series.dtype)
        columns.append(_Column(name, sql_type, series))
    header = json.dumps({"columns": names, "types": [c.sql_type for c in columns], "rows": len(df)})
    return _Plan(columns=columns, rows=len(df), header=header.encode("utf-8") + b"\n")


_HEAD_ROWS = 4096
"""Rows covered by the head digest (stored with the table; a different head means changed data)."""

_COPY_CHUNK_ROWS = 1024
"""Rows per chunk handed to COPY (~65 KB for the countries table). Small chunks keep the
serialiser's GIL-holding steps short, so the loading thread feeds the server promptly:
measured best among 256..131072 on 1M rows. Tests make it smaller still."""


def _chunk_bounds(rows: int, head_rows: int, max_rows: int) -> Iterator[tuple[int, int]]:
    """Row ranges: small ones up to ``head_rows`` (always a boundary), then doubling up to ``max_rows``."""
    start, size = 0, max(1, min(max_rows, head_rows))
    while start < rows:
        stop = min(rows, start + size, head_rows) if start < head_rows else min(rows, start + size)
        yield start, stop
        start = stop
        if start >= head_rows:
            size = min(max_rows, size * 2)


def _serialise(plan: _Plan, digests: _Digests) -> Iterator[bytes]:
    """The rows in COPY text format (UTF-8), chunk by chunk, feeding ``digests`` as it goes.

    Each chunk is one ``%``-format of a row template repeated (C speed: no
    per-row Python). Fast path: text unescaped, then count tab, newline,
    backslash, CR and NUL bytes (numpy); if they are exactly the separators and
    the NULL markers' backslashes, no value needed escaping. Otherwise the
    chunk is rebuilt with escaping. Raises ``LoadError`` for text PostgreSQL
    cannot store (NUL, lone surrogates).
    """
    fields = [_Fields(c) for c in plan.columns]
    width = len(fields)
    fast_row = "\t".join(f.spec for f in fields) + "\n"
    slow_row = "\t".join("%s" for _ in fields) + "\n"
    for start, stop in _chunk_bounds(plan.rows, _HEAD_ROWS, _COPY_CHUNK_ROWS):
        count = stop - start
        chunk, nulls = _format_rows(fields, fast_row, start, stop, escape=False)
        raw = np.frombuffer(chunk, dtype=np.uint8)
        clean = (
            np.count_nonzero(raw == _TAB) == count * (width - 1)
            and np.count_nonzero(raw == _NEWLINE) == count
            and np.count_nonzero(raw == _BACKSLASH) == nulls
            and np.count_nonzero(raw == _CR) == 0
            and np.count_nonzero(raw == _NUL) == 0
        )
        if not clean:
            chunk, _ = _format_rows(fields, slow_row, start, stop, escape=True)
        digests.update(chunk, head_done=stop >= min(_HEAD_ROWS, plan.rows))
        yield chunk
    if plan.rows == 0:
        digests.update(b"", head_done=True)


def _format_rows(
    fields: list[_Fields], row: str, start: int, stop: int, *, escape: bool
) -> tuple[bytes, int]:
    """Rows ``start:stop`` as COPY text, and how many NULL markers they hold."""
    width, count = len(fields), stop - start
    arguments: list[object] = [None] * (width * count)
    nulls = 0
    for position, column in enumerate(fields):
        values, column_nulls = column.chunk(start, stop, escape)
        arguments[position::width] = values
        nulls += column_nulls
    text = (row * count) % tuple(arguments)
    try:
        return text.encode("utf-8"), nulls
    except UnicodeEncodeError as exc:
        raise LoadError(
            f"the data contains text that is not valid Unicode "
            f"({exc.reason}: {exc.object[exc.start : exc.end]!r}); "
            "the previous table is unchanged"
        ) from None


class _Digests:
    """SHA-256 of header + COPY bytes: ``head`` once the first _HEAD_ROWS rows are in, ``full`` at the end."""

    def __init__(self, header: bytes) -> None:
        self._hash = hashlib.sha256(header)
        self.head: str | None = None
        self.full: str | None = None

    def update(self, chunk: bytes, *, head_done: bool) -> None:
        self._hash.update(chunk)
        if head_done and self.head is None:
            self.head = self._hash.hexdigest()

    def finish(self) -> str:
        self.full = self._hash.hexdigest()
        return self.full


def content_hash(df: pd.DataFrame, column_types: Mapping[str, str] | None = None) -> str:
    """SHA-256 hex of the frame's content: column names, SQL types, row count, values in order.

    It is the digest of a small JSON header (names, SQL types as
    ``replace_table`` would create them, given ``column_types``; row count)
    followed by the rows in COPY text format, i.e. exactly what is loaded:
    the index is ignored, NULL (None/NaN/NaT/NA) differs from every string,
    dtypes matter only through their SQL type. Raises ``ConfigurationError``
    or ``LoadError`` for frames that cannot be loaded.
    """
    plan = _plan(df, column_types)
    digests = _Digests(plan.header)
    for _ in _serialise(plan, digests):
        pass
    return digests.finish()


# --- the COPY source ---------------------------------------------------------------

_copy_read_hook: Callable[[int], None] | None = None
"""Test hook: called in the loading thread before each chunk is handed to COPY,
with the number of chunks already handed. ``None`` in production."""


class _CopySource:
    """Serialises the frame in a background thread from the moment it is created.

    The thread starts before the database is even contacted, so the content
    digests are usually ready when the loader asks; during COPY it overlaps
    with the server's parsing (psycopg2 releases the GIL while sending).
    Chunks are kept until read (at most the whole COPY text in memory, when
    the loader must see the full hash before deciding to write).
    ``read`` is the file protocol for ``copy_expert``; ``close`` stops the
    thread whatever happened.
    """

    def __init__(self, plan: _Plan) -> None:
        self.rows = plan.rows
        self.digests = _Digests(plan.header)
        self._plan = plan
        self._chunks: queue.SimpleQueue[bytes | BaseException] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._head_ready = threading.Event()
        self._full_ready = threading.Event()
        self._error: BaseException | None = None
        self._done = False
        self.chunks_read = 0
        self._thread = threading.Thread(target=self._produce, name="copy-serialiser", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for chunk in _serialise(self._plan, self.digests):
                if self.digests.head is not None:
                    self._head_ready.set()
                if self._stop.is_set():
                    return
                self._chunks.put(chunk)
                # Yield the GIL: the loading thread is usually waiting for it to hand the
                # next chunk to the server, which otherwise idles until the switch interval.
                time.sleep(0)
            self.digests.finish()
            self._chunks.put(b"")
        except Exception as exc:  # noqa: BLE001 - handed to the loading thread, which re-raises it
            self._error = exc
            self._chunks.put(exc)
        finally:
            self._head_ready.set()
            self._full_ready.set()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def head_digest(self) -> str:
        """The digest after the first _HEAD_ROWS rows (waits for them)."""
        self._head_ready.wait()
        self._raise_error()
        assert self.digests.head is not None
        return self.digests.head

    def full_digest(self) -> str:
        """The content hash (waits for the whole frame to be serialised)."""
        self._full_ready.wait()
        self._raise_error()
        assert self.digests.full is not None
        return self.digests.full

    def read(self, size: int = -1) -> bytes:
        if self._done:
            return b""
        if _copy_read_hook is not None:
            _copy_read_hook(self.chunks_read)
        item = self._chunks.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._done = item == b""
        self.chunks_read += 1
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# --- database helpers ----------------------------------------------------------------

_COMMENT = re.compile(
    r"countries-pipeline content-sha256=(?P<hash>[0-9a-f]{64}) rows=(?P<rows>\d+)"
    r"(?: head-sha256=(?P<head>[0-9a-f]{64}) head-rows=(?P<head_rows>\d+))?"
)
_PRIVILEGES = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"}
)


def _describe_target(url: sa.engine.URL) -> str:
    """Where ``url`` points, for messages: host and port or socket directory, database, user. No password."""
    host = url.host or url.query.get("host")
    if isinstance(host, tuple):
        host = ",".join(host)
    port = url.port or url.query.get("port") or 5432
    if not host:
        where = "the default socket directory"
    elif str(host).startswith("/"):
        where = f"socket directory {host}"
    else:
        where = f"host {host} port {port}"
    return f'database "{url.database or "?"}" at {where} as user "{url.username or "?"}"'


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip()
    return text.splitlines()[0].strip() if text else type(original).__name__


def _pg_message(exc: BaseException) -> str:
    """PostgreSQL's message for a failed statement (primary, detail, context) on one line."""
    original = getattr(exc, "orig", None) or exc
    diag = getattr(original, "diag", None)
    parts = [getattr(diag, "message_primary", None), getattr(diag, "message_detail", None)]
    context = getattr(diag, "context", None)
    if context:
        parts.append(context.splitlines()[0])
    parts = [p.strip() for p in parts if p]
    if not parts:  # no server message (e.g. the connection was lost): libpq's first line
        return _first_line(exc)
    return "; ".join(" ".join(p.split()) for p in parts) or type(original).__name__


def _scrub(text: str, url: sa.engine.URL) -> str:
    if url.password:
        text = text.replace(str(url.password), "***")
    return text


def _connect(engine: sa.Engine) -> sa.Connection:
    """A connection from ``engine``, or ``DatabaseUnreachableError`` saying where and what to do."""
    try:
        return engine.connect()
    except (sa_exc.DBAPIError, psycopg2.Error) as exc:
        reason = _scrub(_first_line(exc), engine.url)
        raise DatabaseUnreachableError(
            f"cannot connect to PostgreSQL {_describe_target(engine.url)}: {reason}; "
            "check the countries-db block's connection settings and that PostgreSQL is running"
        ) from None


def _run(conn: sa.Connection, statement: str) -> list[tuple] | None:
    """Execute SQL built from quoted identifiers and literals, with no parameters; return its rows, if any.

    Runs on the transaction's DBAPI cursor: neither ``sqlalchemy.text`` (which
    reads ``:x`` as a parameter) nor psycopg2's ``%`` substitution (only done
    when parameters are passed) sees the text, so any quoted name is safe.
    """
    with conn.connection.dbapi_connection.cursor() as cursor:
        cursor.execute(statement)
        return cursor.fetchall() if cursor.description is not None else None


def _lock_key(table: TableName) -> int:
    digest = hashlib.sha256(f"countries-pipeline:{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _staging_name(table: TableName) -> TableName:
    return TableName(table.schema, f"{table.name[:40]}__staging_{secrets.token_hex(4)}")


def _grants(conn: sa.Connection, oid: int, table: TableName) -> list[str]:
    """GRANT statements that give ``table`` the privileges the relation ``oid`` has."""
    rows = conn.execute(
        sa.text(
            "SELECT a.privilege_type, a.is_grantable, r.rolname"
            " FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a"
            " LEFT JOIN pg_roles r ON r.oid = a.grantee WHERE c.oid = :oid"
        ),
        {"oid": oid},
    ).all()
    statements = []
    for privilege, grantable, role in rows:
        if privilege not in _PRIVILEGES:
            continue
        grantee = "PUBLIC" if role is None else _quote_ident(role)
        option = " WITH GRANT OPTION" if grantable else ""
        statements.append(f"GRANT {privilege} ON {table.sql} TO {grantee}{option}")
    return statements


def _resolve_schema(conn: sa.Connection, table: TableName) -> TableName:
    """``table`` with its schema made explicit (the first existing schema of ``search_path`` if none)."""
    if table.schema is not None:
        return table
    schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one_or_none()
    if schema is None:
        raise LoadError(f"cannot place table {table}: search_path names no existing schema; use schema.table")
    return TableName(schema, table.name)


def _replace_in_transaction(
    conn: sa.Connection,
    source: _CopySource,
    plan: _Plan,
    table: TableName,
    force: bool,
    min_row_fraction: float,
) -> tuple[int | None, bool]:
    """Steps 1-5 of the module docstring inside the caller's transaction; returns (previous rows, changed).

    ``table`` must be schema-qualified (``_resolve_schema``).
    """
    schema_query = sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :s")
    exists = conn.execute(schema_query, {"s": table.schema}).first()
    if exists is None:
        raise LoadError(
            f'schema "{table.schema}" does not exist: create it first '
            f"(CREATE SCHEMA {_quote_ident(table.schema)}) or load into another schema; nothing was written"
        )
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(table)})
    current = conn.execute(
        sa.text(
            "SELECT c.oid, c.relkind, obj_description(c.oid, 'pg_class') FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s AND c.relname = :t"
        ),
        {"s": table.schema, "t": table.name},
    ).first()

    previous_rows: int | None = None
    grants: list[str] = []
    staging = _staging_name(table)
    if current is not None:
        oid, relkind, comment = current
        if relkind != "r":
            raise LoadError(
                f"{table} exists but is not a plain table (relkind {relkind!r}); refusing to replace it"
            )
        stored = _COMMENT.fullmatch(comment or "")
        if stored is not None:
            previous_rows = int(stored["rows"])
            head_differs = stored["head"] is not None and int(stored["head_rows"]) == _HEAD_ROWS and (
                source.head_digest() != stored["head"]
            )
            if not head_differs and source.full_digest() == stored["hash"]:
                logger.info("%s unchanged (content-sha256 %s); nothing written", table, stored["hash"][:12])
                return previous_rows, False
        else:  # not loaded by us (or comment edited): count
            previous_rows = _run(conn, f"SELECT count(*) FROM {table.sql}")[0][0]  # type: ignore[index]
        check_row_drop(plan.rows, previous_rows, min_row_fraction, force, table=table.name)
        grants = _grants(conn, oid, staging)

    columns = ", ".join(f"{_quote_ident(c.name)} {c.sql_type}" for c in plan.columns)
    _run(conn, f"CREATE TABLE {staging.sql} ({columns})")
    _copy(conn, source, plan, staging)
    for grant in grants:
        _run(conn, grant)
    comment = (
        f"countries-pipeline content-sha256={source.full_digest()} rows={plan.rows}"
        f" head-sha256={source.head_digest()} head-rows={_HEAD_ROWS}"
    )
    _run(conn, f"COMMENT ON TABLE {staging.sql} IS {_quote_literal(comment)}")
    if current is not None:
        _run(conn, f"DROP TABLE {table.sql}")
    _run(conn, f"ALTER TABLE {staging.sql} RENAME TO {_quote_ident(table.name)}")
    return previous_rows, True


def _copy(conn: sa.Connection, source: _CopySource, plan: _Plan, staging: TableName) -> None:
    """COPY the rows into ``staging`` on the transaction's own DBAPI connection.

    FREEZE (allowed: the table was created in this transaction) writes the
    rows already frozen, so the first readers after the swap do not have to
    set hint bits on a million rows.
    """
    columns = ", ".join(_quote_ident(c.name) for c in plan.columns)
    statement = f"COPY {staging.sql} ({columns}) FROM STDIN WITH (FORMAT text, FREEZE, ENCODING 'UTF8')"
    raw = conn.connection.dbapi_connection
    try:
        with raw.cursor() as cursor:
            cursor.copy_expert(statement, source, size=1 << 20)
    except psycopg2.Error as exc:
        if raw.closed:  # the server went away: let SQLAlchemy discard the connection
            conn.invalidate(exc)
        raise


# --- the public entry point -----------------------------------------------------------


def replace_table(
    engine: sa.Engine,
    df: pd.DataFrame,
    table: str | TableName,
    *,
    column_types: Mapping[str, str] | None = None,
    force: bool = False,
    min_row_fraction: float = 0.5,
) -> LoadResult:
    """Replace ``table`` with the rows of ``df``, atomically, unless the content is unchanged.

    Inputs: an Engine (psycopg2 driver); the frame (its columns become the
    table's columns, in order; the index is ignored); the table name (a
    ``TableName`` or a string for ``parse_table_name``; without a schema, the
    first schema of ``search_path``; the schema must exist, the table need
    not). ``column_types`` maps column names to SQL types; other columns get
    text / bigint / double precision / boolean / timestamptz from their dtype
    (NaN and NaT load as NULL; naive datetimes are taken as UTC).
    ``min_row_fraction``/``force``: the row-drop rule of ``check_row_drop``.

    Returns a ``LoadResult``; ``changed=False`` means the stored content hash
    matched and nothing was written. Raises ``InvalidTableNameError`` /
    ``ConfigurationError`` (bad arguments, nothing touched),
    ``DatabaseUnreachableError``, ``QualityGateError`` or ``LoadError``; after
    any of them the previous table is exactly as it was.
    """
    started = time.perf_counter()
    target = table if isinstance(table, TableName) else parse_table_name(table)
    check_row_drop(0, None, min_row_fraction, force)  # validates min_row_fraction only
    plan = _plan(df, column_types)
    source = _CopySource(plan)  # starts serialising and hashing now, while we connect
    try:
        conn = _connect(engine)
        try:
            with conn.begin():
                target = _resolve_schema(conn, target)
                previous_rows, changed = _replace_in_transaction(
                    conn, source, plan, target, force, min_row_fraction
                )
        except CountriesError:
            raise
        except (sa_exc.DBAPIError, psycopg2.Error) as exc:
            raise LoadError(
                f"loading {target} failed: {_scrub(_pg_message(exc), engine.url)}; "
                "the previous table is unchanged"
            ) from exc
        finally:
            conn.close()
        digest = source.full_digest()
    finally:
        source.close()

    seconds = time.perf_counter() - started
    if changed:
        logger.info(
            "replaced %s: %d rows (previously %s) in %.3fs",
            target,
            plan.rows,
            "no table" if previous_rows is None else previous_rows,
            seconds,
        )
    return LoadResult(
        table=str(target),
        rows=plan.rows,
        previous_rows=previous_rows,
        changed=changed,
        content_hash=digest,
        seconds=seconds,
    )
