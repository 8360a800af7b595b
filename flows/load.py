"""Atomic, zero-downtime replacement of a PostgreSQL table with a DataFrame, via COPY.

Public API::

    parse_table_name("analytics.countries") -> TableName
    content_hash(df, column_types=None) -> str
    replace_table(engine, df, "analytics.countries", column_types=..., force=False,
                  min_row_fraction=0.5) -> LoadResult

The code works on a plain SQLAlchemy ``Engine`` (psycopg2 driver); the Prefect
flow passes the one from the ``countries-db`` ``SqlAlchemyConnector`` block.

How a replace works (one transaction, on one connection):

1. ``pg_advisory_xact_lock`` keyed on the schema-qualified table name:
   concurrent loaders of the same table run one after the other.
2. Read the current table's stored content hash (see "change detection"). If
   it equals the new data's hash, stop: nothing is written, ``changed=False``.
3. Count the current table's rows and apply the row-drop rule
   (``flows.quality.check_row_drop``): ``QualityGateError``, nothing written.
4. ``CREATE TABLE`` a staging table next to it, ``COPY ... FROM STDIN`` the
   rows into it (text format, serialised in a background thread while the
   server ingests: no INSERTs, no per-row Python), copy the old table's
   privileges (GRANTs) onto it, ``COMMENT ON`` it with the hash.
5. ``DROP`` the old table, ``RENAME`` the staging table to the name, commit.

Readers never see a missing, empty or partial table: until the commit the old
table is untouched; the ``DROP`` takes an ACCESS EXCLUSIVE lock only for the
last step, so readers wait (for milliseconds, not for the COPY) and then
PostgreSQL resolves the name again and they read the new table. A failure at
any point rolls the whole transaction back, leaving the old table exactly as
it was. Caveats (inherent to swapping tables, documented rather than hidden):

- Readers in REPEATABLE READ / SERIALIZABLE transactions whose snapshot
  predates the commit and who first touch the table after it see the new
  table as empty (PostgreSQL's "MVCC caveat" for DDL). READ COMMITTED readers,
  the default, are unaffected (verified by the concurrency test).
- A reader query that is already running holds the old table; the swap waits
  for it, and readers arriving meanwhile queue behind the swap.
- Indexes, constraints, triggers and views on the old table are not carried
  over; a view depending on the table makes the swap fail (``LoadError``, old
  table unchanged). Privileges are carried over.

Change detection: ``content_hash`` is a SHA-256 over the column names, their
SQL types, the row count and every value (with NULLs distinct from any
string). It is stored as the table's comment,
``countries-pipeline content-sha256=<hex> rows=<n>``, written in the same
transaction as the data, so it always describes the table's content. Editing
the table by hand does not update it; run ``COMMENT ON TABLE ... IS NULL`` to
make the next load rewrite the table regardless.

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
        raise InvalidTableNameError(f"invalid table name {shown}: at most one dot (schema.table) is allowed; {_NAME_HELP}")
    for part in parts:
        if not _IDENTIFIER.fullmatch(part):
            what = "an empty part" if part == "" else f"{json.dumps(part, ensure_ascii=False)} is not a plain identifier"
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


# --- serialisation: a frame as COPY text-format fields, plus its content hash -------

_NULL = "\\N"  # COPY text format's NULL marker
_SPECIAL = ("\\", "\t", "\n", "\r")
_SQL_TYPE = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(?: [A-Za-z_][A-Za-z0-9_]*)*"
    r"(?: ?\(\s*\d+\s*(?:,\s*\d+\s*)?\))?"
    r"(?: [A-Za-z_][A-Za-z0-9_]*)*"
)


@dataclass(frozen=True)
class _Column:
    """One column ready to load: name, SQL type, digest of its values, and its COPY fields by row range."""

    name: str
    sql_type: str
    digest: bytes
    fields: Callable[[int, int], list[str]]


@dataclass(frozen=True)
class _Prepared:
    columns: list[_Column]
    rows: int
    content_hash: str


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


def _text_fields(name: str, series: pd.Series, digest: hashlib._Hash) -> list[str]:
    """Text column: hash the UTF-8 of its values; return COPY fields (escaped, NULL as \\N)."""
    mask = series.isna().to_numpy(dtype=bool)
    values: list[str] = series.to_numpy(dtype=object, na_value="").tolist()
    try:
        joined = "\x00".join(values)
    except TypeError:  # non-str objects in an object column: load their str()
        values = [v if isinstance(v, str) else str(v) for v in values]
        joined = "\x00".join(values)
    if values and joined.count("\x00") != len(values) - 1:
        raise LoadError(
            f'column "{name}" contains a NUL character (\\x00), which PostgreSQL text cannot store; '
            "nothing was written"
        )
    try:
        encoded = joined.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LoadError(
            f'column "{name}" contains text that is not valid Unicode ({exc.reason}); nothing was written'
        ) from None
    digest.update(np.packbits(mask).tobytes())
    digest.update(encoded)
    del encoded
    if any(ch in joined for ch in _SPECIAL):  # rare: escape the whole column at C speed
        escaped = joined.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
        values = escaped.split("\x00")
    return _with_nulls(values, mask)


def _with_nulls(fields: list[str], mask: np.ndarray) -> list[str]:
    if not mask.any():
        return fields
    array = np.array(fields, dtype=object)
    array[mask] = _NULL
    return array.tolist()


def _prepare_column(name: str, series: pd.Series, sql_type: str) -> _Column:
    """Hash ``series`` and set up its COPY fields; vectorised, no per-row Python."""
    digest = hashlib.sha256()
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype):
        text = _text_fields(name, series if not isinstance(dtype, pd.CategoricalDtype) else series.astype(object), digest)
        return _Column(name, sql_type, digest.digest(), lambda i, j: text[i:j])

    mask = series.isna().to_numpy(dtype=bool)
    digest.update(np.packbits(mask).tobytes())
    if pd.api.types.is_bool_dtype(dtype):
        data = series.to_numpy(dtype=bool, na_value=False)
        digest.update(data.tobytes())
        words = np.array(["f", "t"], dtype=object)[data.astype(np.intp)]
        words[mask] = _NULL
        bools = words.tolist()
        return _Column(name, sql_type, digest.digest(), lambda i, j: bools[i:j])
    if pd.api.types.is_integer_dtype(dtype):
        unsigned = pd.api.types.is_unsigned_integer_dtype(dtype)
        ints = series.to_numpy(dtype="<u8" if unsigned else "<i8", na_value=0)
        digest.update(ints.tobytes())
        if not mask.any():
            return _Column(name, sql_type, digest.digest(), lambda i, j: list(map(str, ints[i:j].tolist())))
        return _Column(
            name, sql_type, digest.digest(), lambda i, j: _with_nulls(list(map(str, ints[i:j].tolist())), mask[i:j])
        )
    if pd.api.types.is_float_dtype(dtype):
        floats = np.array(series.to_numpy(dtype="<f8", na_value=np.nan), dtype="<f8", copy=True)
        floats[mask] = 0.0  # NaN is missing: NULL, like None
        digest.update(floats.tobytes())
        return _Column(
            name, sql_type, digest.digest(), lambda i, j: _with_nulls(list(map(repr, floats[i:j].tolist())), mask[i:j])
        )
    if pd.api.types.is_datetime64_any_dtype(dtype):
        if isinstance(dtype, pd.DatetimeTZDtype):
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)  # naive datetimes are taken as UTC
        stamps = series.to_numpy(dtype="datetime64[us]")
        digest.update(np.where(mask, 0, stamps.view("<i8")).astype("<i8").tobytes())
        iso = np.datetime_as_string(stamps, unit="us", timezone="UTC").astype(object)
        iso[mask] = _NULL
        texts = iso.tolist()
        return _Column(name, sql_type, digest.digest(), lambda i, j: texts[i:j])
    raise ConfigurationError(f'column "{name}" has dtype {dtype}, which the loader cannot serialise')


def _check_columns(df: pd.DataFrame, column_types: Mapping[str, str]) -> list[str]:
    names: list[str] = []
    for column in df.columns:
        if not isinstance(column, str) or not column or "\x00" in column:
            raise ConfigurationError(f"column name {column!r} is not usable: column names must be non-empty strings")
        if len(column.encode("utf-8")) > _MAX_IDENTIFIER_BYTES:
            raise ConfigurationError(f'column name "{column}" is longer than PostgreSQL\'s 63 bytes')
        names.append(column)
    if not names:
        raise ConfigurationError("the frame has no columns; there is nothing to load")
    if len(set(names)) != len(names):
        raise ConfigurationError(f"the frame has duplicate column names: {names}")
    unknown = sorted(set(column_types) - set(names))
    if unknown:
        raise ConfigurationError(f"column_types names columns the frame does not have: {unknown} (columns: {names})")
    for column, sql_type in column_types.items():
        if not isinstance(sql_type, str) or not _SQL_TYPE.fullmatch(sql_type.strip()):
            raise ConfigurationError(
                f'column_types["{column}"] = {sql_type!r} is not a plain SQL type name '
                '(like "text", "bigint", "numeric(12,2)", "timestamp with time zone")'
            )
    return names


def _prepare(df: pd.DataFrame, column_types: Mapping[str, str] | None) -> _Prepared:
    """Validate the frame, hash it and set up its serialisation (no database)."""
    if not isinstance(df, pd.DataFrame):
        raise ConfigurationError(f"expected a pandas DataFrame, got {type(df).__name__}")
    column_types = dict(column_types or {})
    names = _check_columns(df, column_types)
    columns = []
    for position, name in enumerate(names):
        series = df.iloc[:, position]
        sql_type = column_types.get(name, "").strip() or _default_sql_type(name, series.dtype)
        columns.append(_prepare_column(name, series, sql_type))
    header = json.dumps({"columns": names, "types": [c.sql_type for c in columns], "rows": len(df)})
    total = hashlib.sha256(header.encode("utf-8"))
    for column in columns:
        total.update(column.digest)
    return _Prepared(columns=columns, rows=len(df), content_hash=total.hexdigest())


def content_hash(df: pd.DataFrame, column_types: Mapping[str, str] | None = None) -> str:
    """SHA-256 hex of the frame's content: column names, SQL types, row count, values in order.

    Two frames hash alike exactly when loading them gives the same table: the
    index is ignored, NULL (None/NaN/NaT/NA) differs from every string, dtype
    matters only through the SQL type (``column_types`` as for
    ``replace_table``). Raises ``ConfigurationError`` for unloadable frames.
    """
    return _prepare(df, column_types).content_hash


# --- the COPY source ---------------------------------------------------------------

_COPY_CHUNK_ROWS = 32_768
"""Rows per chunk handed to COPY (tests make it small)."""

_copy_read_hook: Callable[[int], None] | None = None
"""Test hook: called in the loading thread before each chunk is handed to COPY,
with the number of chunks already handed. ``None`` in production."""


def _copy_chunks(prepared: _Prepared, chunk_rows: int) -> Iterator[bytes]:
    """The rows as COPY text format (tab-separated, newline-terminated, UTF-8), chunk by chunk."""
    width = len(prepared.columns)
    for start in range(0, prepared.rows, chunk_rows):
        stop = min(start + chunk_rows, prepared.rows)
        count = stop - start
        pieces: list[str | None] = [None] * (2 * width * count)
        tabs = ["\t"] * count
        for position, column in enumerate(prepared.columns):
            pieces[2 * position :: 2 * width] = column.fields(start, stop)
            pieces[2 * position + 1 :: 2 * width] = tabs if position < width - 1 else ["\n"] * count
        yield "".join(pieces).encode("utf-8")  # type: ignore[arg-type]


class _CopySource:
    """A file-like object for ``copy_expert`` whose chunks a background thread serialises.

    Serialising in Python and parsing in the server overlap: ``read`` is called
    by psycopg2 between sends, and while it waits for the server to accept a
    chunk (GIL released), the next one is being built. ``close`` stops the
    thread whatever happened.
    """

    def __init__(self, prepared: _Prepared, chunk_rows: int) -> None:
        self._chunks = _copy_chunks(prepared, chunk_rows)
        self._queue: queue.Queue[bytes | Exception] = queue.Queue(maxsize=4)
        self._stop = threading.Event()
        self._done = False
        self.chunks_read = 0
        self._thread = threading.Thread(target=self._produce, name="copy-serialiser", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for chunk in self._chunks:
                if self._stop.is_set():
                    return
                self._queue.put(chunk)
            self._queue.put(b"")
        except Exception as exc:  # handed to the reading thread, which re-raises it
            self._queue.put(exc)

    def read(self, size: int = -1) -> bytes:  # noqa: ARG002 - file protocol; chunks are ours to size
        if self._done:
            return b""
        if _copy_read_hook is not None:
            _copy_read_hook(self.chunks_read)
        item = self._queue.get()
        if isinstance(item, Exception):
            self._done = True
            raise item
        self._done = item == b""
        self.chunks_read += 1
        return item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


# --- database helpers ----------------------------------------------------------------

_COMMENT = re.compile(r"countries-pipeline content-sha256=([0-9a-f]{64}) rows=(\d+)")
_PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"})


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
    conn: sa.Connection, prepared: _Prepared, table: TableName, force: bool, min_row_fraction: float
) -> tuple[int | None, bool]:
    """Steps 1-5 of the module docstring inside the caller's transaction; returns (previous rows, changed).

    ``table`` must be schema-qualified (``_resolve_schema``).
    """
    exists = conn.execute(sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": table.schema}).first()
    if exists is None:
        raise LoadError(
            f'schema "{table.schema}" does not exist: create it first (CREATE SCHEMA {_quote_ident(table.schema)}) '
            f"or load into another schema; nothing was written"
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
    if current is not None:
        oid, relkind, comment = current
        if relkind != "r":
            raise LoadError(f"{table} exists but is not a plain table (relkind {relkind!r}); refusing to replace it")
        stored = _COMMENT.fullmatch(comment or "")
        if stored and stored.group(1) == prepared.content_hash:
            logger.info("%s unchanged (content-sha256 %s); nothing written", table, prepared.content_hash[:12])
            return int(stored.group(2)), False
        previous_rows = _run(conn, f"SELECT count(*) FROM {table.sql}")[0][0]  # type: ignore[index]
        check_row_drop(prepared.rows, previous_rows, min_row_fraction, force, table=table.name)
        staging = _staging_name(table)
        grants = _grants(conn, oid, staging)
    else:
        staging = _staging_name(table)

    columns = ", ".join(f"{_quote_ident(c.name)} {c.sql_type}" for c in prepared.columns)
    _run(conn, f"CREATE TABLE {staging.sql} ({columns})")
    _copy(conn, prepared, staging)
    for grant in grants:
        _run(conn, grant)
    comment = f"countries-pipeline content-sha256={prepared.content_hash} rows={prepared.rows}"
    _run(conn, f"COMMENT ON TABLE {staging.sql} IS {_quote_literal(comment)}")
    if current is not None:
        _run(conn, f"DROP TABLE {table.sql}")
    _run(conn, f"ALTER TABLE {staging.sql} RENAME TO {_quote_ident(table.name)}")
    return previous_rows, True


def _copy(conn: sa.Connection, prepared: _Prepared, staging: TableName) -> None:
    """COPY the prepared rows into ``staging`` on the transaction's own DBAPI connection."""
    columns = ", ".join(_quote_ident(c.name) for c in prepared.columns)
    statement = f"COPY {staging.sql} ({columns}) FROM STDIN WITH (FORMAT text, ENCODING 'UTF8')"
    raw = conn.connection.dbapi_connection
    source = _CopySource(prepared, _COPY_CHUNK_ROWS)
    try:
        with raw.cursor() as cursor:
            cursor.copy_expert(statement, source, size=1 << 20)
    except psycopg2.Error as exc:
        if raw.closed:  # the server went away: let SQLAlchemy discard the connection
            conn.invalidate(exc)
        raise
    finally:
        source.close()


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
    prepared = _prepare(df, column_types)
    prepared_at = time.perf_counter()

    conn = _connect(engine)
    try:
        with conn.begin():
            target = _resolve_schema(conn, target)
            previous_rows, changed = _replace_in_transaction(conn, prepared, target, force, min_row_fraction)
    except CountriesError:
        raise
    except (sa_exc.DBAPIError, psycopg2.Error) as exc:
        raise LoadError(
            f"loading {target} failed: {_scrub(_pg_message(exc), engine.url)}; the previous table is unchanged"
        ) from exc
    finally:
        conn.close()

    seconds = time.perf_counter() - started
    if changed:
        logger.info(
            "replaced %s: %d rows (previously %s) in %.3fs (%.3fs preparing)",
            target,
            prepared.rows,
            "no table" if previous_rows is None else previous_rows,
            seconds,
            prepared_at - started,
        )
    return LoadResult(
        table=str(target),
        rows=prepared.rows,
        previous_rows=previous_rows,
        changed=changed,
        content_hash=prepared.content_hash,
        seconds=seconds,
    )
