"""Replace the rows of a PostgreSQL table with a DataFrame's, in one transaction, never blocking readers.

Public API: ``parse_table_name``, ``content_hash``, ``replace_table`` -> ``LoadResult``. One load
is one transaction on a SQLAlchemy engine's connection (psycopg2 driver):

1. ``pg_advisory_xact_lock`` on the table's name: loaders of one table run one after the
   other (this wait is not bounded; it blocks no reader).
2. Read the table's row count and the hash stored by its last load; apply the row-drop rule
   (``flows.quality.check_row_drop``).
3. ``COPY ... FROM STDIN (FREEZE)`` the rows, serialised as COPY reads them and hashed on the
   way, into a staging table: temporary (strategy ``"rows"``) or next to the target
   (``"swap"``). If the hash is the stored one, stop: the table is not touched.
4. With a ``ChangeSpec``, compare table and staged rows in the database (``flows.changes``).
5. ``"rows"`` (default): ``DELETE`` the rows, ``INSERT ... SELECT`` the staged ones. The table
   keeps all attached to it (views, indexes, constraints, triggers, grants, comment, owner;
   extra columns get their defaults) and must have the data's columns (a first load creates
   it). Its ROW EXCLUSIVE lock conflicts with no reader; under MVCC readers see the old rows
   until the commit, then the new ones. ``"swap"`` (very large tables): ``LOCK`` the table
   ``ACCESS EXCLUSIVE``, ``DROP`` it, ``RENAME`` the staging one (written FREEZE: older
   snapshots see all of it); grants and comment are carried over, indexes, constraints,
   triggers and owner are not; a view on the table makes it fail.
6. Record the load state; commit. Any failure rolls back: the table is as it was.

Waits for locks users hold (the swap's lock, the DELETE behind a user's row lock, the count
behind an ``ALTER TABLE``) run in a savepoint with ``lock_timeout`` and are tried
``1 + lock_retries`` times, so no reader queues behind the load longer than that at a time;
then ``TableBusyError`` names the blocking sessions (pid, user, application, state,
transaction age, query).

Load state: ``countries_pipeline_state``, a table in the target's schema, holds per table
its oid, content hash, row count, strategy and load time; trusted only while the table has
that oid and row count (to force a rewrite, delete the table's row there). The hash that
earlier releases kept in the table's comment is read once and that comment removed; any
other comment is the user's. ``content_hash``: SHA-256 of a JSON header (column names, SQL
types, row count) followed by the rows in COPY text format.

Errors (``flows.errors``; the table is then as it was): ``InvalidTableNameError`` and
``ConfigurationError`` before touching the database, ``DatabaseUnreachableError`` (never the
password), ``QualityGateError``, ``TableBusyError``, ``LoadError`` (PostgreSQL's message).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Literal, TypeVar

import numpy as np
import pandas as pd
import psycopg2
import psycopg2.errors
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from flows import changes as change_report
from flows.changes import ChangeSpec, ChangeSummary
from flows.errors import (
    ConfigurationError,
    CountriesError,
    DatabaseUnreachableError,
    InvalidTableNameError,
    LoadError,
    TableBusyError,
    setting,
)
from flows.quality import check_row_drop

logger = logging.getLogger(__name__)

__all__ = [
    "STATE_TABLE",
    "LoadResult",
    "Strategy",
    "TableName",
    "content_hash",
    "parse_table_name",
    "replace_table",
    "resolve_table",
]

Strategy = Literal["rows", "swap"]
STRATEGIES: tuple[str, ...] = ("rows", "swap")
STATE_TABLE = "countries_pipeline_state"
"""The load-state table, created in the target table's schema."""

# --- table names -------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1; longer names would be truncated silently
_NAME_HELP = "use letters, digits and underscores, optionally schema-qualified like analytics.countries"


def _quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (any text is safe: quotes are doubled)."""
    return '"' + name.replace('"', '""') + '"'


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """What ``replace_table`` did.

    ``table``: schema-qualified name; ``rows``: rows now in it; ``rows_written``: rows this
    load wrote (0 when unchanged); ``previous_rows``: rows before (``None``: no table);
    ``changed``: ``False`` when the content was identical and the table not touched;
    ``changes``: the change summary (``None`` without a ``ChangeSpec``); ``strategy``: the
    one used; ``content_hash``: SHA-256 hex of the content; ``seconds``: wall time.
    """

    table: str
    rows: int
    rows_written: int
    previous_rows: int | None
    changed: bool
    changes: ChangeSummary | None
    strategy: str
    content_hash: str
    seconds: float = 0.0


# --- serialisation: a frame as COPY text format ------------------------------------

_NULL = "\\N"  # COPY text format's NULL marker
_SQL_TYPE = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(?: [A-Za-z_][A-Za-z0-9_]*)*"
    r"(?: ?\(\s*\d+\s*(?:,\s*\d+\s*)?\))?"
    r"(?: [A-Za-z_][A-Za-z0-9_]*)*"
)
_COPY_CHUNK_ROWS = 4096
"""Rows per chunk handed to COPY: the server parses one chunk while the next is serialised."""


@dataclasses.dataclass(frozen=True)
class _Column:
    name: str
    sql_type: str
    series: pd.Series


@dataclasses.dataclass(frozen=True)
class _Plan:
    """A validated frame: its columns with SQL types, row count, and the header its hash starts with."""

    columns: list[_Column]
    rows: int
    header: bytes


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


def _plan(df: pd.DataFrame, column_types: Mapping[str, str] | None) -> _Plan:
    """Validate the frame and settle each column's SQL type (cheap; no data is touched)."""
    if not isinstance(df, pd.DataFrame):
        raise ConfigurationError(f"expected a pandas DataFrame, got {type(df).__name__}")
    column_types = dict(column_types or {})
    names = list(df.columns)
    for name in names:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise ConfigurationError(f"column name {name!r} is not usable: column names must be non-empty strings")
        if len(name.encode("utf-8")) > _MAX_IDENTIFIER_BYTES:
            raise ConfigurationError(f'column name "{name}" is longer than PostgreSQL\'s 63 bytes')
    if not names:
        raise ConfigurationError("the frame has no columns; there is nothing to load")
    if len(set(names)) != len(names):
        raise ConfigurationError(f"the frame has duplicate column names: {names}")
    unknown = sorted(set(column_types) - set(names))
    if unknown:
        raise ConfigurationError(f"column_types names columns the frame does not have: {unknown} (columns: {names})")
    for name, sql_type in column_types.items():
        if not isinstance(sql_type, str) or not _SQL_TYPE.fullmatch(sql_type.strip()):
            raise ConfigurationError(
                f'column_types["{name}"] = {sql_type!r} is not a plain SQL type name '
                '(like "text", "bigint", "numeric(12,2)", "timestamp with time zone")'
            )
    columns = []
    for position, name in enumerate(names):
        series = df.iloc[:, position]
        columns.append(
            _Column(name, column_types.get(name, "").strip() or _default_sql_type(name, series.dtype), series)
        )
    header = json.dumps({"columns": names, "types": [c.sql_type for c in columns], "rows": len(df)})
    return _Plan(columns=columns, rows=len(df), header=header.encode("utf-8") + b"\n")


def _fields(column: _Column) -> tuple[str, Callable[[int, int], list]]:
    """(``%``-format of one field, rows ``i:j`` -> their fields with NULL as ``\\N``) for a column.

    Ints and floats without NULLs go to the format as numbers (``%d``, and ``%r``: exact
    round trip); everything else as text.
    """
    series, dtype = column.series, column.series.dtype
    if _is_text(dtype):
        values = series.to_numpy(dtype=object)  # NaN/None/NA where missing
        return "%s", lambda i, j: _escaped(values[i:j], column.name)
    mask = series.isna().to_numpy(dtype=bool)
    if pd.api.types.is_bool_dtype(dtype):
        words = np.array(["f", "t"], dtype=object)[series.to_numpy(dtype=bool, na_value=False).astype(np.intp)]
    elif pd.api.types.is_integer_dtype(dtype):
        ints = series.to_numpy(dtype="uint64" if pd.api.types.is_unsigned_integer_dtype(dtype) else "int64", na_value=0)
        if not mask.any():
            return "%d", lambda i, j: ints[i:j].tolist()
        words = np.array(list(map(str, ints.tolist())), dtype=object)
    elif pd.api.types.is_float_dtype(dtype):
        floats = series.to_numpy(dtype="float64", na_value=np.nan)  # NaN is missing: NULL, like None
        if not mask.any():
            return "%r", lambda i, j: floats[i:j].tolist()
        words = np.array(list(map(repr, floats.tolist())), dtype=object)
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
    """Text values as COPY fields: backslash, tab, newline and CR escaped, NULL as ``\\N``.

    One join, four replaces and one split per chunk (C speed); other objects load as ``str()``.
    """
    texts = values.tolist()
    nulls = np.flatnonzero(pd.isna(values))
    for k in nulls:
        texts[k] = ""
    try:
        joined = "\x00".join(texts)
    except TypeError:  # other objects than str: their text
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        joined = "\x00".join(texts)
    if joined.count("\x00") != len(texts) - 1:
        raise LoadError(
            f'column "{name}" contains a NUL character (\\x00), which PostgreSQL text cannot store; '
            "the previous table is unchanged"
        )
    escaped = joined.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    fields = texts if escaped is joined else escaped.split("\x00")  # replace() returns its input when nothing matched
    for k in nulls:
        fields[k] = _NULL
    return fields


def _serialise(plan: _Plan) -> Iterator[bytes]:
    """The rows in COPY text format (UTF-8), chunk by chunk: one ``%``-format of a repeated row per chunk.

    Raises ``LoadError`` for text PostgreSQL cannot store (NUL, lone surrogates).
    """
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
                f"{exc.object[exc.start : exc.end]!r}); the previous table is unchanged"
            ) from None
        yield chunk


def content_hash(df: pd.DataFrame, column_types: Mapping[str, str] | None = None) -> str:
    """SHA-256 hex of the frame's content: column names, SQL types, row count, values in order.

    The digest of a JSON header (names, SQL types as ``replace_table`` would create them,
    given ``column_types``; row count) followed by the rows in COPY text format, i.e.
    exactly what is loaded: the index is ignored, NULL (None/NaN/NaT/NA) differs from every
    string, dtypes matter only through their SQL type. Raises ``ConfigurationError`` or
    ``LoadError`` for frames that cannot be loaded.
    """
    plan = _plan(df, column_types)
    digest = hashlib.sha256(plan.header)
    for chunk in _serialise(plan):
        digest.update(chunk)
    return digest.hexdigest()


class _CopyStream:
    """What ``copy_expert`` reads: the frame serialised as COPY asks; ``digest`` once all was read.

    An error raised while serialising aborts the COPY and propagates.
    """

    def __init__(self, plan: _Plan) -> None:
        self._chunks = _serialise(plan)
        self._hash = hashlib.sha256(plan.header)
        self.digest: str | None = None

    def read(self, size: int = -1) -> bytes:
        chunk = next(self._chunks, b"")
        self._hash.update(chunk)
        if not chunk:
            self.digest = self._hash.hexdigest()
        return chunk


# --- database helpers ----------------------------------------------------------------

_LEGACY_COMMENT = re.compile(
    r"countries-pipeline content-sha256=(?P<hash>[0-9a-f]{64}) rows=(?P<rows>\d+)"
    r"(?: head-sha256=[0-9a-f]{64} head-rows=\d+)?"
)
_PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"})
_MODES = "AccessShare RowShare RowExclusive ShareUpdateExclusive Share ShareRowExclusive Exclusive AccessExclusive"
_MODES_WEAKEST_FIRST = tuple(f"{m}Lock" for m in _MODES.split())
_BLOCKERS = {  # the table locks of sessions that can make a step wait
    "read": _MODES_WEAKEST_FIRST[-1:],
    "write": _MODES_WEAKEST_FIRST[1:],  # DELETE, INSERT, COMMENT: conflicting table locks, writers' row locks
    "swap": _MODES_WEAKEST_FIRST,
}
_RETRY_PAUSE = 0.2  # seconds between tries: readers queued behind the load go first
_T = TypeVar("_T")


def _describe_target(url: sa.engine.URL) -> str:
    """Where ``url`` points, for messages: host and port or socket directory, database, user. No password."""
    host = url.host or url.query.get("host")
    host = ",".join(host) if isinstance(host, tuple) else host
    if not host:
        where = "the default socket directory"
    elif str(host).startswith("/"):
        where = f"socket directory {host}"
    else:
        where = f"host {host} port {url.port or url.query.get('port') or 5432}"
    return f'database "{url.database or "?"}" at {where} as user "{url.username or "?"}"'


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip()
    return text.splitlines()[0].strip() if text else type(original).__name__


def _pg_message(exc: BaseException) -> str:
    """PostgreSQL's message for a failed statement (primary, detail, context) on one line."""
    diag = getattr(getattr(exc, "orig", None) or exc, "diag", None)
    parts = [getattr(diag, "message_primary", None), getattr(diag, "message_detail", None)]
    context = getattr(diag, "context", None)
    if context:
        parts.append(context.splitlines()[0])
    parts = [" ".join(p.split()) for p in parts if p and p.strip()]
    return "; ".join(parts) if parts else _first_line(exc)  # no server message: the connection was lost


def _scrub(text: str, url: sa.engine.URL) -> str:
    return text.replace(str(url.password), "***") if url.password else text


def _connect(engine: sa.Engine) -> sa.Connection:
    """A connection from ``engine``, or ``DatabaseUnreachableError`` saying where and what to do."""
    try:
        return engine.connect()
    except (sa_exc.DBAPIError, psycopg2.Error) as exc:
        raise DatabaseUnreachableError(
            f"cannot connect to PostgreSQL {_describe_target(engine.url)}: {_scrub(_first_line(exc), engine.url)}; "
            "check the countries-db block's connection settings and that PostgreSQL is running"
        ) from None


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"countries-pipeline:{name}".encode()).digest()[:8], "big", signed=True)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _describe_session(pid, user, application, state, open_seconds, query) -> str:
    parts = [f'user "{user}"', *([f'application "{application}"'] if application else []), state or "state unknown"]
    if open_seconds is not None:
        parts.append(f"transaction open {_duration(open_seconds)}")
    if query:
        text = " ".join(query.split())
        parts.append(f'query "{text if len(text) <= 60 else text[:57] + "..."}"')
    return f"pid {pid} ({', '.join(parts)})"


@dataclasses.dataclass(frozen=True)
class _Target:
    """The table as the loader found it under its advisory lock (``oid`` ``None``: no table)."""

    oid: int | None = None
    rows: int | None = None
    comment: str | None = None
    stored_hash: str | None = None  # from the load state (or a legacy comment) if it still describes the table

    @property
    def legacy_comment(self) -> bool:
        return _LEGACY_COMMENT.fullmatch(self.comment or "") is not None


# --- one load, in one transaction ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Load:
    """Steps 1-6 of the module docstring on ``cur``, inside the caller's transaction."""

    cur: psycopg2.extensions.cursor
    url: sa.engine.URL
    table: TableName  # schema-qualified
    plan: _Plan
    force: bool
    min_row_fraction: float
    changes: ChangeSpec | None
    strategy: str
    lock_timeout: float
    lock_retries: int

    @property
    def state(self) -> TableName:
        return TableName(self.table.schema, STATE_TABLE)

    def run(self) -> LoadResult:
        cur, table = self.cur, self.table
        cur.execute("SET LOCAL lock_timeout = 0")  # waiting for another loader blocks no reader
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(str(table)),))
        self._ensure_state_table()
        cur.execute(f"SET LOCAL lock_timeout = '{max(1, round(self.lock_timeout * 1000))}ms'")
        target = self._inspect()
        check_row_drop(self.plan.rows, target.rows, self.min_row_fraction, self.force, table=table.name)

        swap = TableName(table.schema, f"{table.name[:40]}__swap_{secrets.token_hex(4)}")
        staging = swap.sql if self.strategy == "swap" else 'pg_temp."countries_pipeline_new"'
        digest = self._stage(staging)
        if digest == target.stored_hash:
            if self.strategy == "swap":
                cur.execute(f"DROP TABLE {staging}")
            if target.legacy_comment:  # ours, from an earlier release: the state table takes over
                self._bounded(target.oid, "write", lambda: cur.execute(f"COMMENT ON TABLE {table.sql} IS NULL"))
                self._save_state(digest)
            summary = None if self.changes is None else ChangeSummary.identical(self.changes)
            return self._result(target, False, summary, digest)

        summary = self._compare(target, staging)
        if self.strategy == "swap":
            self._swap(target, swap)
        else:
            self._write_rows(target, staging)
        self._save_state(digest)
        return self._result(target, True, summary, digest)

    def _result(self, target: _Target, changed: bool, summary: ChangeSummary | None, digest: str) -> LoadResult:
        written = self.plan.rows if changed else 0
        return LoadResult(
            str(self.table), self.plan.rows, written, target.rows, changed, summary, self.strategy, digest
        )

    def _bounded(self, oid: int, need: str, action: Callable[[], _T]) -> _T:
        """``action()`` in a savepoint, each try waiting at most ``lock_timeout`` for a lock.

        Tried ``1 + lock_retries`` times, then ``TableBusyError`` naming the sessions whose
        locks on the table can block ``need`` ("read", "write" or "swap").
        """
        for attempt in range(self.lock_retries + 1):
            self.cur.execute("SAVEPOINT countries_pipeline_lock")
            try:
                result = action()
            except psycopg2.errors.LockNotAvailable:
                self.cur.execute("ROLLBACK TO SAVEPOINT countries_pipeline_lock")
                if attempt == self.lock_retries:
                    raise TableBusyError(self._busy(oid, need)) from None
                time.sleep(_RETRY_PAUSE)
                continue
            self.cur.execute("RELEASE SAVEPOINT countries_pipeline_lock")
            return result
        raise AssertionError("unreachable")

    def _busy(self, oid: int, need: str) -> str:
        self.cur.execute(
            "SELECT pid, usename, application_name, state, extract(epoch FROM clock_timestamp() - xact_start)::float8,"
            " query FROM pg_stat_activity WHERE pid IN (SELECT pid FROM pg_locks WHERE locktype = 'relation'"
            " AND relation = %s AND pid <> pg_backend_pid() AND mode = ANY(%s)"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
            " ORDER BY xact_start NULLS LAST, pid",
            (oid, list(_BLOCKERS[need])),
        )
        sessions = [_describe_session(*row) for row in self.cur.fetchall()]
        if sessions:
            more = f"; and {len(sessions) - 3} more" if len(sessions) > 3 else ""
            pids = ", ".join(s.split(" ", 2)[1] for s in sessions[:3])
            blocked = (
                f"blocked by {'; '.join(sessions[:3])}{more}; end that transaction "
                f"(or SELECT pg_terminate_backend(pid) for pid {pids}) and re-run"
            )
        else:
            blocked = "the blocking session has ended since; re-run"
        return _scrub(
            f"table {self.table} is busy: {self.lock_retries + 1} tries to lock it, each waiting up to "
            f"{self.lock_timeout:g}s, failed; {blocked}; the previous table is unchanged",
            self.url,
        )

    def _ensure_state_table(self) -> None:
        """Create the load-state table unless it exists (serialised between loaders).

        Existence is read from ``pg_class`` with the statement's snapshot: ``to_regclass`` may
        answer from a cache that has not seen another loader's commit yet.
        """
        state, cur = self.state, self.cur
        exists = "SELECT 1 FROM pg_class WHERE relnamespace = to_regnamespace(%s) AND relname = %s"
        cur.execute(exists, (state.schema, state.name))
        if cur.fetchone() is None:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(str(state)),))
            cur.execute(exists, (state.schema, state.name))
            if cur.fetchone() is None:
                cur.execute(
                    f"CREATE TABLE {state.sql} (table_name text PRIMARY KEY, table_oid oid NOT NULL, content_sha256"
                    " text NOT NULL, row_count bigint NOT NULL, strategy text NOT NULL, loaded_at timestamptz NOT NULL)"
                )
                cur.execute(
                    f"COMMENT ON TABLE {state.sql} IS 'countries pipeline: what it last loaded into each table of"
                    " this schema; delete a table''s row to make its next load rewrite it'"
                )

    def _save_state(self, digest: str) -> None:
        self.cur.execute(
            f"INSERT INTO {self.state.sql} VALUES (%s, to_regclass(%s), %s, %s, %s, now())"
            " ON CONFLICT (table_name) DO UPDATE SET table_oid = excluded.table_oid,"
            " content_sha256 = excluded.content_sha256, row_count = excluded.row_count,"
            " strategy = excluded.strategy, loaded_at = excluded.loaded_at",
            (self.table.name, self.table.sql, digest, self.plan.rows, self.strategy),
        )

    def _inspect(self) -> _Target:
        """The table's oid, row count and comment, and the stored hash if it still describes the table."""
        cur, table = self.cur, self.table
        cur.execute(
            "SELECT oid, relkind, obj_description(oid, 'pg_class') FROM pg_class"
            " WHERE relnamespace = to_regnamespace(%s) AND relname = %s",
            (table.schema, table.name),
        )
        found = cur.fetchone()
        if found is None:
            return _Target()
        oid, relkind, comment = found
        if relkind != "r":
            raise LoadError(f"{table} exists but is not a plain table (relkind {relkind!r}); refusing to replace it")
        if self.strategy == "rows":
            self._check_table_columns(oid)

        def count() -> int:
            cur.execute(f"SELECT count(*) FROM {table.sql}")
            return cur.fetchone()[0]

        rows = self._bounded(oid, "read", count)
        cur.execute(
            f"SELECT content_sha256 FROM {self.state.sql} WHERE table_name = %s AND table_oid = %s AND row_count = %s",
            (table.name, oid, rows),
        )
        stored = cur.fetchone()
        legacy = _LEGACY_COMMENT.fullmatch(comment or "")
        if stored is None and legacy is not None and int(legacy["rows"]) == rows:
            stored = (legacy["hash"],)
        return _Target(oid, rows, comment, None if stored is None else stored[0])

    def _check_table_columns(self, oid: int) -> None:
        """Strategy "rows" keeps the table: it must have every column of the data."""
        self.cur.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped", (oid,)
        )
        have = [r[0] for r in self.cur.fetchall()]
        missing = [c.name for c in self.plan.columns if c.name not in have]
        if missing:
            names = ", ".join(json.dumps(m, ensure_ascii=False) for m in missing)
            raise LoadError(
                f"{self.table} has no column {names} of the data (its columns: {', '.join(have)}): add it, drop the "
                f"table so that the next load creates it, or load with {setting('strategy', 'swap')} to replace "
                "the table; the previous table is unchanged"
            )

    def _definitions(self) -> str:
        return ", ".join(f"{_quote_ident(c.name)} {c.sql_type}" for c in self.plan.columns)

    def _stage(self, relation: str) -> str:
        """Create ``relation`` (temporary for strategy "rows") and COPY the rows in; return the content hash."""
        temporary = self.strategy == "rows"
        self.cur.execute(
            f"CREATE {'TEMPORARY ' if temporary else ''}TABLE {relation} ({self._definitions()})"
            + (" ON COMMIT DROP" if temporary else "")
        )
        columns = ", ".join(_quote_ident(c.name) for c in self.plan.columns)
        stream = _CopyStream(self.plan)
        # FREEZE (the table is new in this transaction): its rows need no hint bits on first read.
        copy = f"COPY {relation} ({columns}) FROM STDIN WITH (FORMAT text, FREEZE, ENCODING 'UTF8')"
        self.cur.copy_expert(copy, stream, size=1 << 20)
        assert stream.digest is not None
        return stream.digest

    def _compare(self, target: _Target, staging: str) -> ChangeSummary | None:
        if self.changes is None:
            return None
        self.cur.execute(f"ANALYZE {staging}")  # a few ms: the planner then knows how many rows there are
        if target.oid is None:
            return change_report.compare(self.cur, self.changes, None, staging)
        reason = change_report.missing_columns(self.cur, self.changes, target.oid)
        if reason:
            return ChangeSummary.skipped(self.changes, reason)
        return change_report.compare(self.cur, self.changes, self.table.sql, staging)

    def _write_rows(self, target: _Target, staging: str) -> None:
        """Strategy "rows": DELETE the rows, INSERT the staged ones (creating the table on a first load)."""
        cur, table = self.cur, self.table
        columns = ", ".join(_quote_ident(c.name) for c in self.plan.columns)
        insert = f"INSERT INTO {table.sql} ({columns}) SELECT {columns} FROM {staging}"
        if target.oid is None:
            cur.execute(f"CREATE TABLE {table.sql} ({self._definitions()})")
            cur.execute(insert)
            return

        def write() -> None:
            cur.execute(f"DELETE FROM {table.sql}")
            cur.execute(insert)
            if target.legacy_comment:
                cur.execute(f"COMMENT ON TABLE {table.sql} IS NULL")

        self._bounded(target.oid, "write", write)

    def _swap(self, target: _Target, staging: TableName) -> None:
        """Strategy "swap": carry grants and the comment over, DROP the table, RENAME the staging one."""
        cur, table = self.cur, self.table
        rename = f"ALTER TABLE {staging.sql} RENAME TO {_quote_ident(table.name)}"
        if target.oid is None:
            cur.execute(rename)
            return
        cur.execute(
            "SELECT a.privilege_type, a.is_grantable, r.rolname FROM pg_class c CROSS JOIN LATERAL"
            " aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee WHERE c.oid = %s",
            (target.oid,),
        )
        for privilege, grantable, role in cur.fetchall():
            if privilege in _PRIVILEGES:
                grantee = "PUBLIC" if role is None else _quote_ident(role)
                cur.execute(f"GRANT {privilege} ON {staging.sql} TO {grantee}{' WITH GRANT OPTION' * grantable}")
        if target.comment and not target.legacy_comment:
            cur.execute(f"COMMENT ON TABLE {staging.sql} IS %s", (target.comment,))

        def swap() -> None:
            cur.execute(f"LOCK TABLE {table.sql} IN ACCESS EXCLUSIVE MODE")
            try:
                cur.execute(f"DROP TABLE {table.sql}")
            except psycopg2.errors.DependentObjectsStillExist as exc:
                raise LoadError(
                    f"cannot swap {table}: {_pg_message(exc)}; load with {setting('strategy', 'rows')} "
                    "(the default), which keeps them, or drop them; the previous table is unchanged"
                ) from None
            cur.execute(rename)

        self._bounded(target.oid, "swap", swap)


def _resolve_schema(cur: psycopg2.extensions.cursor, table: TableName) -> TableName:
    """``table`` with its schema made explicit (the first existing schema of ``search_path`` if none)."""
    if table.schema is None:
        cur.execute("SELECT current_schema()")
        schema = cur.fetchone()[0]
        if schema is None:
            raise LoadError(f"cannot place table {table}: search_path names no existing schema; use schema.table")
        return TableName(schema, table.name)
    cur.execute("SELECT to_regnamespace(%s)", (_quote_ident(table.schema),))
    if cur.fetchone()[0] is None:
        raise LoadError(
            f'schema "{table.schema}" does not exist: create it first '
            f"(CREATE SCHEMA {_quote_ident(table.schema)}) or load into another schema; nothing was written"
        )
    return table


def resolve_table(engine: sa.Engine, table: str | TableName) -> TableName:
    """``table`` schema-qualified as a load would place it, checked against the database.

    Connects once (so an unreachable database is found before anything else
    is spent): ``DatabaseUnreachableError``; a schema that does not exist, or a
    ``search_path`` naming none: ``LoadError``. Nothing is written.
    """
    target = table if isinstance(table, TableName) else parse_table_name(table)
    conn = _connect(engine)
    try:
        with conn.connection.dbapi_connection.cursor() as cur:
            return _resolve_schema(cur, target)
    except (sa_exc.DBAPIError, psycopg2.Error) as exc:
        raise LoadError(f"checking {target} failed: {_scrub(_pg_message(exc), engine.url)}") from exc
    finally:
        conn.close()


# --- the public entry point -----------------------------------------------------------


def _check_options(plan: _Plan, changes: ChangeSpec | None, strategy: str, lock_timeout: float, retries: int) -> None:
    if strategy not in STRATEGIES:
        raise ConfigurationError(f"{setting('strategy')} must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, int | float) or not 0 < lock_timeout <= 60:
        raise ConfigurationError(f"lock_timeout must be a number of seconds in (0, 60], got {lock_timeout!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigurationError(f"lock_retries must be a whole number >= 0, got {retries!r}")
    names = [c.name for c in plan.columns]
    missing = [] if changes is None else [c for c in changes.columns if c not in names]
    if missing:
        raise ConfigurationError(f"the change spec names columns the data does not have: {missing} (columns: {names})")


def replace_table(
    engine: sa.Engine,
    df: pd.DataFrame,
    table: str | TableName,
    *,
    column_types: Mapping[str, str] | None = None,
    force: bool = False,
    min_row_fraction: float = 0.5,
    changes: ChangeSpec | None = None,
    strategy: Strategy = "rows",
    lock_timeout: float = 1.0,
    lock_retries: int = 3,
) -> LoadResult:
    """Replace the rows of ``table`` with those of ``df`` in one transaction, unless the content is unchanged.

    ``df``'s columns become the table's, in order (the index is ignored). ``table``: a
    ``TableName`` or a string for ``parse_table_name`` (no schema: the first of
    ``search_path``; the schema must exist, the table need not). ``column_types``: SQL
    types by column for a table the load creates; the others get text / bigint / double
    precision / boolean / timestamptz from their dtype (NaN and NaT load as NULL; naive
    datetimes are UTC). ``min_row_fraction``/``force``: the row-drop rule of
    ``check_row_drop``. ``changes``: what the change summary compares (its columns must be
    in ``df``). ``strategy``: ``"rows"`` (keeps the table and all attached to it; never
    blocks readers) or ``"swap"`` (a new table). ``lock_timeout`` (seconds) and
    ``lock_retries`` bound each wait for a lock a user's session holds.

    Returns a ``LoadResult`` (``changed=False``, ``rows_written == 0``: the stored hash
    matched and the table was not touched). Raises ``InvalidTableNameError`` /
    ``ConfigurationError`` (nothing touched), ``DatabaseUnreachableError``,
    ``QualityGateError``, ``TableBusyError`` or ``LoadError``; the table is then as it was.
    """
    started = time.perf_counter()
    target = table if isinstance(table, TableName) else parse_table_name(table)
    check_row_drop(0, None, min_row_fraction, force)  # validates min_row_fraction only
    plan = _plan(df, column_types)
    _check_options(plan, changes, strategy, lock_timeout, lock_retries)
    conn = _connect(engine)
    raw = conn.connection.dbapi_connection
    try:
        with conn.begin():
            try:
                with raw.cursor() as cur:
                    target = _resolve_schema(cur, target)
                    options = (force, min_row_fraction, changes, strategy, lock_timeout, lock_retries)
                    result = _Load(cur, engine.url, target, plan, *options).run()
            except psycopg2.Error as exc:
                if raw.closed:  # the server went away: let SQLAlchemy discard the connection
                    conn.invalidate(exc)
                raise
    except CountriesError:
        raise
    except (sa_exc.DBAPIError, psycopg2.Error) as exc:
        raise LoadError(
            f"loading {target} failed: {_scrub(_pg_message(exc), engine.url)}; the previous table is unchanged"
        ) from exc
    finally:
        conn.close()

    result = dataclasses.replace(result, seconds=time.perf_counter() - started)
    if result.changed:
        previous = "no table" if result.previous_rows is None else f"{result.previous_rows} rows"
        summary = "" if result.changes is None else f" ({result.changes.phrase()})"
        logger.info("loaded %s [%s]: %d rows, previously %s, in %.3fs%s", target, strategy, result.rows, previous,
                    result.seconds, summary)  # fmt: skip
    else:
        logger.info("%s unchanged: %d rows already up to date; nothing written", target, result.rows)
    return result
