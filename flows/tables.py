"""Table names, and what the loader last loaded into a table: the light half of ``flows.load`` (no pandas).

- :func:`parse_table_name` -> :class:`TableName`; :func:`resolve_table` (and
  :func:`resolve_schema` on a cursor) make the schema explicit, checked against
  the database; :data:`STRATEGIES`: how a load may replace a table.
- :func:`source_digest`: a digest of what a run is about to load, taken before
  any transform: the records, the columns they become, and the code that turns
  one into the other.
- :func:`already_loaded`: whether the table's last load was of that very
  source, by the load state (``flows._load_state``) every successful load
  writes in its transaction. When it was, loading it again would write
  nothing, so a run may skip the transform and the load.

Importing this module imports psycopg2, never SQLAlchemy, pandas or numpy: the
database is a ``flows._postgres.Database`` and these checks run on a psycopg2
connection of their own. ``flows.load`` re-exports the names.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import psycopg2
import psycopg2.errors

from flows._load_state import STATE_TABLE, is_legacy_comment
from flows._postgres import MAX_IDENTIFIER_BYTES, Database, pg_message, quote_ident, scrub
from flows.changes import ChangeSummary
from flows.errors import InvalidTableNameError, LoadError

__all__ = [
    "STRATEGIES",
    "Strategy",
    "TableName",
    "already_loaded",
    "parse_table_name",
    "resolve_schema",
    "resolve_table",
    "source_digest",
]

Strategy = Literal["rows", "swap"]
STRATEGIES: tuple[str, ...] = ("rows", "swap")

# --- table names -------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_NAME_HELP = "use letters, digits and underscores, optionally schema-qualified like analytics.countries"


@dataclasses.dataclass(frozen=True)
class TableName:
    """A validated, lower-case table name; ``schema`` is ``None`` for "the first schema on search_path"."""

    schema: str | None
    name: str

    @property
    def sql(self) -> str:
        """The quoted name for SQL, e.g. ``"public"."countries"``."""
        if self.schema is None:
            return quote_ident(self.name)
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    def __str__(self) -> str:
        return self.name if self.schema is None else f"{self.schema}.{self.name}"


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """What a load did to a table (``flows.load.replace_table``), or that it had nothing to do.

    ``table``: schema-qualified name; ``rows``: rows now in it; ``rows_written``: rows this
    load put in place, i.e. ``rows`` when the content changed (strategy ``"rows"`` writes only
    the rows that differ; the others were already there) and 0 when unchanged;
    ``previous_rows``: rows before (``None``: no table);
    ``changed``: ``False`` when the content was identical and the table not touched;
    ``changes``: the change summary (``None`` without a ``ChangeSpec``); ``strategy``: the
    one used; ``content_hash``: SHA-256 hex of the content (``None`` when the load was
    skipped because the source was already loaded, see :func:`already_loaded`);
    ``seconds``: wall time.
    """

    table: str
    rows: int
    rows_written: int
    previous_rows: int | None
    changed: bool
    changes: ChangeSummary | None
    strategy: str
    content_hash: str | None
    seconds: float = 0.0


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
        if len(part) > MAX_IDENTIFIER_BYTES:
            raise InvalidTableNameError(
                f"invalid table name {shown}: a part is {len(part)} characters long, "
                f"PostgreSQL allows at most {MAX_IDENTIFIER_BYTES}; {_NAME_HELP}"
            )
    parts = [p.lower() for p in parts]
    return TableName(None, parts[0]) if len(parts) == 1 else TableName(parts[0], parts[1])


def resolve_schema(cur: psycopg2.extensions.cursor, table: TableName) -> TableName:
    """``table`` with its schema made explicit (the first existing schema of ``search_path`` if none).

    Raises ``LoadError`` when the schema does not exist or ``search_path`` names none.
    """
    if table.schema is None:
        cur.execute("SELECT current_schema()")
        schema = cur.fetchone()[0]
        if schema is None:
            raise LoadError(f"cannot place table {table}: search_path names no existing schema; use schema.table")
        return TableName(schema, table.name)
    cur.execute("SELECT to_regnamespace(%s)", (quote_ident(table.schema),))
    if cur.fetchone()[0] is None:
        raise LoadError(
            f'schema "{table.schema}" does not exist: create it first '
            f"(CREATE SCHEMA {quote_ident(table.schema)}) or load into another schema; nothing was written"
        )
    return table


def resolve_table(db: Database, table: str | TableName) -> TableName:
    """``table`` schema-qualified as a load would place it, checked against the database ``db``.

    Connects once (so an unreachable database is found before anything else
    is spent): ``DatabaseUnreachableError``; a schema that does not exist, or a
    ``search_path`` naming none: ``LoadError``. Nothing is written.
    """
    target = table if isinstance(table, TableName) else parse_table_name(table)
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            return resolve_schema(cur, target)
    except psycopg2.Error as exc:
        raise LoadError(f"checking {target} failed: {scrub(pg_message(exc), db)}") from exc
    finally:
        conn.close()


# --- what a run is about to load -------------------------------------------------------

_ROW_MAKING_LIBRARIES = ("pandas", "numpy")
"""Libraries whose version can change the rows made from the same records (dtypes, text of values)."""


@functools.cache
def _code_identity() -> str:
    """SHA-256 hex of the ``flows`` package's source files and the versions of the row-making libraries."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(f"{path.relative_to(package).as_posix()}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for name in _ROW_MAKING_LIBRARIES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "-"
        digest.update(f"{name}=={version}\0".encode())
    return digest.hexdigest()


def source_digest(records: Sequence[Any], *, dialect: str, columns: Iterable[tuple[str, str, str]]) -> str | None:
    """SHA-256 hex of what a run is about to load, before any transform; None if it cannot be taken.

    Covers the records in order, as canonical JSON (keys sorted, no whitespace,
    text as is); ``columns`` (each ``(name, source path in the dialect's
    records, SQL type)``, in table order); the API ``dialect``'s name; and the
    code that turns records into rows (the ``flows`` package's source files and
    the versions of pandas and numpy), so that a new release loads once even
    when the data is the same. Equal digests mean equal rows. None when a record
    holds something JSON cannot express exactly (the caller then loads).
    """
    header = {"dialect": dialect, "columns": [list(c) for c in columns], "code": _code_identity()}
    try:
        text = json.dumps(
            {"table": header, "records": list(records)},
            sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=True,
        )  # fmt: skip
    except (TypeError, ValueError):  # not JSON data: a non-str key, an object, a cycle
        return None
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def already_loaded(
    db: Database, table: TableName, source: str | None, columns: Sequence[str], *, lock_timeout: float = 1.0
) -> int | None:
    """The rows in ``table`` if its last load was of ``source`` (a :func:`source_digest`) and still stands; else None.

    It still stands when the load state the loader wrote for ``table``
    (schema-qualified, see :func:`resolve_table`) names that source digest and
    still describes the table as the loader trusts it: the same table (oid),
    the same row count, no legacy state comment; and the table has every one
    of ``columns``. Loading the same source again would then write nothing.

    Read-only, in one snapshot (``REPEATABLE READ``); waits at most
    ``lock_timeout`` seconds for a lock a user holds on the table. Any doubt is
    None, so that the caller loads and the loader decides: no state, a state
    table from before source digests, a lock wait that timed out, a failed
    statement, a connection lost on the way. Raises only
    ``DatabaseUnreachableError`` (no connection). The connection is its own,
    closed at the end.
    """
    if source is None or table.schema is None:
        return None
    state = f"{quote_ident(table.schema)}.{quote_ident(STATE_TABLE)}"
    conn = db.connect()
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)  # sent with the BEGIN
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{max(1, round(lock_timeout * 1000))}ms",))
            cur.execute("SELECT to_regclass(%s)", (state,))
            if cur.fetchone()[0] is None:
                return None
            cur.execute(  # a state table from before source digests has no such column: NULL
                f"SELECT table_oid, row_count, to_jsonb(s) ->> 'source_sha256' FROM {state} s WHERE table_name = %s",
                (table.name,),
            )
            stored = cur.fetchone()
            if stored is None or stored[2] != source:
                return None
            oid, rows = stored[0], stored[1]
            cur.execute(
                "SELECT c.oid, c.relkind, obj_description(c.oid, 'pg_class'), ARRAY(SELECT attname FROM pg_attribute"
                " WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped) FROM pg_class c"
                " WHERE c.relnamespace = to_regnamespace(%s) AND c.relname = %s",
                (quote_ident(table.schema), table.name),
            )
            found = cur.fetchone()
            if found is None or found[0] != oid or found[1] != "r" or is_legacy_comment(found[2]):
                return None
            if not set(columns) <= set(found[3]):
                return None
            cur.execute(f"SELECT count(*) FROM {table.sql}")
            return rows if cur.fetchone()[0] == rows else None
    except psycopg2.Error:  # a lock wait timed out, a statement failed, the server went away: load instead
        return None
    finally:
        conn.close()  # ends the read-only transaction
