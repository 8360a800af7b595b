"""Replace the rows of a PostgreSQL table with a DataFrame's, in one transaction, never blocking readers.

Public API: ``parse_table_name`` -> ``TableName``, ``resolve_table``, ``content_hash``,
``replace_table`` -> ``LoadResult``, ``STRATEGIES``, ``STATE_TABLE``. This module tells the story
of one load; its parts are the light ``flows.tables`` (table names and schemas, without pandas:
the names above are re-exported from there) and private modules: the COPY serialisation and
content hash (``flows._copy_text``), the locks and bounded lock waits (``flows._locks``), the
load-state table (``flows._load_state``) and connecting, quoting and messages (``flows._postgres``).
One load is one transaction on a SQLAlchemy engine's connection (psycopg2 driver):

1. ``pg_advisory_xact_lock`` on the table's name: loaders of one table run one after the
   other (this wait is not bounded; it blocks no reader).
2. Read the table's row count and the hash stored by its last load; apply the row-drop rule
   (``flows.transform.quality.check_row_drop``).
3. ``COPY ... FROM STDIN (FREEZE)`` the rows, serialised as COPY reads them and hashed on the
   way, into a staging table: temporary (strategy ``"rows"``) or next to the target
   (``"swap"``). If the hash is the stored one, stop: the table is not touched.
4. With a ``ChangeSpec``, compare table and staged rows in the database (``flows.changes``).
5. ``"rows"`` (default): write only the difference, as multisets of rows: ``DELETE`` the rows
   the new data lacks, ``INSERT ... SELECT`` the staged rows the table lacks; rows in both stay
   untouched (same row version), so a user's foreign key to the table (even ``ON DELETE
   CASCADE``) loses nothing to rows that come back. The table keeps all attached to it
   (views, indexes, constraints, triggers, grants, comment, owner; extra columns keep their
   values in kept rows and get their defaults in new ones) and must have the data's columns
   (a first load creates it). It locks the table ``SHARE ROW EXCLUSIVE`` before it compares,
   so no other writer changes a row between the comparison and the write; that lock
   conflicts with no reader, and under MVCC readers see the old rows until the commit, then
   the new ones. ``"swap"`` (very large tables): ``LOCK`` the table
   ``ACCESS EXCLUSIVE``, ``DROP`` it, ``RENAME`` the staging one (written FREEZE: older
   snapshots see all of it); grants and comment are carried over, indexes, constraints,
   triggers and owner are not; a view on the table makes it fail.
6. Record the load state (with the caller's source digest, also when only that changed);
   commit. Any failure rolls back: the table is as it was.

Waits for locks users hold (the swap's lock, the rows' lock behind a user's writes, the count
behind an ``ALTER TABLE``) run in a savepoint with ``lock_timeout`` and are tried
``1 + lock_retries`` times, so no reader queues behind the load longer than that at a time;
then ``TableBusyError`` names the blocking sessions (pid, user, application, state,
transaction age; not their query text). See ``flows._locks``.

Load state: ``countries_pipeline_state``, a table in the target's schema, holds per table
its oid, content hash, row count, strategy, load time and source digest (what the rows were
made from, see ``flows.tables.already_loaded``); trusted only while the table has
that oid and row count (to force a rewrite, delete the table's row there). The hash that
earlier releases kept in the table's comment is read once and that comment removed; any
other comment is the user's (``flows._load_state``). ``content_hash``: SHA-256 of a JSON header
(column names, SQL types, row count) followed by the rows in COPY text format.

Errors (``flows.errors``; the table is then as it was): ``InvalidTableNameError`` and
``ConfigurationError`` before touching the database, ``DatabaseUnreachableError`` (never the
password), ``QualityGateError``, ``TableBusyError``, ``LoadError`` (PostgreSQL's message).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Mapping

import pandas as pd
import psycopg2
import psycopg2.errors
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from flows import changes as change_report
from flows._copy_text import CopyPlan, CopyStream, content_digest, plan_copy
from flows._load_state import STATE_TABLE, LoadState, Stored, is_legacy_comment
from flows._locks import LockWaits, advisory_lock
from flows._postgres import connect, pg_message, quote_ident, scrub
from flows.changes import ChangeSpec, ChangeSummary
from flows.errors import ConfigurationError, CountriesError, LoadError, setting
from flows.transform.quality import check_row_drop
from flows.tables import (
    STRATEGIES,
    LoadResult,
    Strategy,
    TableName,
    parse_table_name,
    resolve_schema,
    resolve_table,
)

logger = logging.getLogger(__name__)

__all__ = [
    "STATE_TABLE",
    "STRATEGIES",
    "LoadResult",
    "Strategy",
    "TableName",
    "content_hash",
    "parse_table_name",
    "replace_table",
    "resolve_table",
]

# --- content hash ------------------------------------------------------------------


def content_hash(df: pd.DataFrame, column_types: Mapping[str, str] | None = None) -> str:
    """SHA-256 hex of the frame's content: column names, SQL types, row count, values in order.

    The digest of a JSON header (names, SQL types as ``replace_table`` would create them,
    given ``column_types``; row count) followed by the rows in COPY text format, i.e.
    exactly what is loaded: the index is ignored, NULL (None/NaN/NaT/NA) differs from every
    string, dtypes matter only through their SQL type. Raises ``ConfigurationError`` or
    ``LoadError`` for frames that cannot be loaded.
    """
    return content_digest(plan_copy(df, column_types))


# --- one load, in one transaction ------------------------------------------------------

_DIFF = 'pg_temp."countries_pipeline_diff"'
"""Strategy "rows": how the table's rows differ from the staged ones (see ``_Load._diff``)."""

_PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"})
"""Table privileges a swap carries over to the new table."""


@dataclasses.dataclass(frozen=True)
class _Target:
    """The table as the loader found it under its advisory lock (``oid`` ``None``: no table)."""

    oid: int | None = None
    rows: int | None = None
    comment: str | None = None
    stored: Stored | None = None  # from the load state (or a legacy comment) if it still describes the table

    @property
    def legacy_comment(self) -> bool:
        return is_legacy_comment(self.comment)


@dataclasses.dataclass(frozen=True)
class _Load:
    """Steps 1-6 of the module docstring on ``cur``, inside the caller's transaction."""

    cur: psycopg2.extensions.cursor
    url: sa.engine.URL
    table: TableName  # schema-qualified
    plan: CopyPlan
    force: bool
    min_row_fraction: float
    changes: ChangeSpec | None
    strategy: str
    lock_timeout: float
    lock_retries: int
    source_digest: str | None

    @property
    def state(self) -> LoadState:
        """The load-state table of the target's schema."""
        assert self.table.schema is not None
        return LoadState(self.cur, self.table.schema)

    @property
    def waits(self) -> LockWaits:
        """Waits for locks users hold on the table: bounded, retried, then "table busy"."""
        return LockWaits(self.cur, str(self.table), self.url, self.lock_timeout, self.lock_retries)

    def run(self) -> LoadResult:
        cur, table = self.cur, self.table
        self.waits.lift_limit()  # waiting for another loader blocks no reader
        advisory_lock(cur, str(table))
        self.state.ensure()
        self.waits.apply_limit()
        target = self._inspect()
        check_row_drop(self.plan.rows, target.rows, self.min_row_fraction, self.force, table=table.name)

        swap = TableName(table.schema, f"{table.name[:40]}__swap_{secrets.token_hex(4)}")
        staging = swap.sql if self.strategy == "swap" else 'pg_temp."countries_pipeline_new"'
        digest = self._stage(staging)
        if target.stored is not None and digest == target.stored.content_hash:
            if self.strategy == "swap":
                cur.execute(f"DROP TABLE {staging}")
            if target.legacy_comment:  # ours, from an earlier release: the state table takes over
                self.waits.bounded(target.oid, "write", lambda: cur.execute(f"COMMENT ON TABLE {table.sql} IS NULL"))
                self._save_state(digest)
            elif self.source_digest is not None and self.source_digest != target.stored.source_digest:
                self._save_state(digest)  # the same rows from another source digest: a next run may skip
            summary = None if self.changes is None else ChangeSummary.identical(self.changes)
            return self._result(target, False, summary, digest)

        summary = self._compare(target, staging)
        if self.strategy == "swap":
            self._swap(target, swap)
        else:
            self._write_rows(target, staging)
        self._save_state(digest)
        return self._result(target, True, summary, digest)

    def _save_state(self, digest: str) -> None:
        self.state.save(self.table.name, self.table.sql, digest, self.plan.rows, self.strategy, self.source_digest)

    def _result(self, target: _Target, changed: bool, summary: ChangeSummary | None, digest: str) -> LoadResult:
        written = self.plan.rows if changed else 0
        return LoadResult(
            str(self.table), self.plan.rows, written, target.rows, changed, summary, self.strategy, digest
        )

    def _inspect(self) -> _Target:
        """The table's oid, row count and comment, and the stored hash if it still describes the table."""
        cur, table = self.cur, self.table
        cur.execute(
            "SELECT oid, relkind, obj_description(oid, 'pg_class') FROM pg_class"
            " WHERE relnamespace = to_regnamespace(%s) AND relname = %s",
            (quote_ident(table.schema), table.name),
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

        rows = self.waits.bounded(oid, "read", count)
        return _Target(oid, rows, comment, self.state.stored(table.name, oid, rows, comment))

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

    def _stage(self, relation: str) -> str:
        """Create ``relation`` (temporary for strategy "rows") and COPY the rows in; return the content hash."""
        temporary = self.strategy == "rows"
        self.cur.execute(
            f"CREATE {'TEMPORARY ' if temporary else ''}TABLE {relation} ({self.plan.definitions()})"
            + (" ON COMMIT DROP" if temporary else "")
        )
        stream = CopyStream(self.plan)
        # FREEZE (the table is new in this transaction): its rows need no hint bits on first read.
        copy = f"COPY {relation} ({self.plan.names()}) FROM STDIN WITH (FORMAT text, FREEZE, ENCODING 'UTF8')"
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
        """Strategy "rows": write only the difference (creating the table on a first load).

        Rows of the table the new data lacks are deleted, staged rows the table lacks are
        inserted; rows in both stay untouched (same row version), so rows that reference
        them (a user's foreign key, even ``ON DELETE CASCADE``) are kept. See :meth:`_diff`.
        """
        cur, table = self.cur, self.table
        columns = self.plan.names()
        insert_all = f"INSERT INTO {table.sql} ({columns}) SELECT {columns} FROM {staging}"
        if target.oid is None:
            cur.execute(f"CREATE TABLE {table.sql} ({self.plan.definitions()})")
            cur.execute(insert_all)
            return
        staged = ", ".join(f"s.{quote_ident(c.name)}" for c in self.plan.columns)
        insert_new = (
            f"INSERT INTO {table.sql} ({columns}) SELECT {staged} FROM {_DIFF} d JOIN {staging} s ON s.ctid = d.new_id"
            " CROSS JOIN LATERAL generate_series(1, d.nc - d.oc) WHERE d.nc > d.oc"
        )

        def write() -> tuple[int, int]:
            # Other writers wait from here to the commit (readers do not), so the difference found
            # below is the one written: a row updated meanwhile cannot escape the DELETE.
            cur.execute(f"LOCK TABLE {table.sql} IN SHARE ROW EXCLUSIVE MODE")
            cur.execute(f"SELECT count(*) FROM {table.sql}")
            (rows,) = cur.fetchone()
            deletes, inserts, surplus_groups = self._diff(rows, staging)
            gone = f"SELECT old_id FROM {_DIFF} WHERE oc = 1 AND nc = 0"
            if surplus_groups:  # a row the table holds several times, fewer times in the new data: number the copies
                old = ", ".join(f"o.{quote_ident(c.name)}" for c in self.plan.columns)
                gone += (
                    f" UNION ALL SELECT w.id FROM (SELECT o.ctid AS id, d.oc - d.nc AS surplus, row_number() OVER"
                    f' (PARTITION BY d.k) AS i FROM {table.sql} o JOIN {_DIFF} d ON d.k = ROW({old})::text COLLATE "C"'
                    " WHERE d.oc > 1 AND d.oc > d.nc) w WHERE w.i <= w.surplus"
                )
            if rows and deletes == rows:  # every row differs: no need to find them one by one
                cur.execute(f"DELETE FROM {table.sql}")
            else:
                cur.execute(f"DELETE FROM {table.sql} t USING ({gone}) g(id) WHERE t.ctid = g.id")
            cur.execute(insert_all if inserts == self.plan.rows else insert_new)
            if target.legacy_comment:
                cur.execute(f"COMMENT ON TABLE {table.sql} IS NULL")
            return deletes, inserts

        deletes, inserts = self.waits.bounded(target.oid, "write", write)
        logger.debug("%s: %d rows deleted, %d inserted, the others kept", table, deletes, inserts)

    def _diff(self, rows: int, staging: str) -> tuple[int, int, int]:
        """Compare the table's rows with the staged ones, as multisets, into the temporary table ``_DIFF``.

        A row's key is its text form over the data's columns (``ROW(...)::text``, compared
        byte by byte): NULL differs from every string, duplicates count. One hash aggregate
        over both sides gives, per key that differs, its count in the table (``oc``) and in
        the new data (``nc``), and a row of each (``old_id``, ``new_id``: ctids). Returns
        (rows to delete, rows to insert, keys held several times in the table and to delete).
        ``rows``: the table's row count.
        """
        cur, table = self.cur, self.table
        key = f'ROW({self.plan.names()})::text COLLATE "C"'
        if not rows:  # an empty table: every staged row is new
            columns = "k text, oc bigint, nc bigint, old_id tid, new_id tid"
            cur.execute(f"CREATE TEMPORARY TABLE {_DIFF} ({columns}) ON COMMIT DROP")
            return 0, self.plan.rows, 0
        cur.execute(
            f"CREATE TEMPORARY TABLE {_DIFF} ON COMMIT DROP AS SELECT k, count(*) FILTER (WHERE side = 0) AS oc,"
            " count(*) FILTER (WHERE side = 1) AS nc, min(id) FILTER (WHERE side = 0) AS old_id,"
            " min(id) FILTER (WHERE side = 1) AS new_id FROM"
            f" (SELECT 0 AS side, ctid AS id, {key} AS k FROM {table.sql}"
            f" UNION ALL SELECT 1, ctid, {key} FROM {staging}) u GROUP BY k"
            " HAVING count(*) FILTER (WHERE side = 0) <> count(*) FILTER (WHERE side = 1)"
        )
        cur.execute(f"ANALYZE {_DIFF}")  # the planner then knows how many rows change
        cur.execute(
            "SELECT coalesce(sum(oc - nc) FILTER (WHERE oc > nc), 0), coalesce(sum(nc - oc) FILTER (WHERE nc > oc), 0),"
            f" count(*) FILTER (WHERE oc > 1 AND oc > nc) FROM {_DIFF}"
        )
        deletes, inserts, surplus_groups = cur.fetchone()
        return int(deletes), int(inserts), int(surplus_groups)

    def _swap(self, target: _Target, staging: TableName) -> None:
        """Strategy "swap": carry grants and the comment over, DROP the table, RENAME the staging one."""
        cur, table = self.cur, self.table
        rename = f"ALTER TABLE {staging.sql} RENAME TO {quote_ident(table.name)}"
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
                grantee = "PUBLIC" if role is None else quote_ident(role)
                cur.execute(f"GRANT {privilege} ON {staging.sql} TO {grantee}{' WITH GRANT OPTION' * grantable}")
        if target.comment and not target.legacy_comment:
            cur.execute(f"COMMENT ON TABLE {staging.sql} IS %s", (target.comment,))

        def swap() -> None:
            cur.execute(f"LOCK TABLE {table.sql} IN ACCESS EXCLUSIVE MODE")
            try:
                cur.execute(f"DROP TABLE {table.sql}")
            except psycopg2.errors.DependentObjectsStillExist as exc:
                raise LoadError(
                    f"cannot swap {table}: {pg_message(exc)}; load with {setting('strategy', 'rows')} "
                    "(the default), which keeps them, or drop them; the previous table is unchanged"
                ) from None
            cur.execute(rename)

        self.waits.bounded(target.oid, "swap", swap)


# --- the public entry point -----------------------------------------------------------


def _check_options(
    plan: CopyPlan, changes: ChangeSpec | None, strategy: str, lock_timeout: float, retries: int
) -> None:
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
    source_digest: str | None = None,
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
    ``lock_retries`` bound each wait for a lock a user's session holds. ``source_digest``: the
    digest of the source data ``df`` was made from (``flows.tables.source_digest``), saved
    in the load state with the content hash (also when the content was unchanged), so that
    ``flows.tables.already_loaded`` can tell a later run with the same source it need not load.

    Returns a ``LoadResult`` (``changed=False``, ``rows_written == 0``: the stored hash
    matched and the table was not touched). Raises ``InvalidTableNameError`` /
    ``ConfigurationError`` (nothing touched), ``DatabaseUnreachableError``,
    ``QualityGateError``, ``TableBusyError`` or ``LoadError``; the table is then as it was.
    """
    started = time.perf_counter()
    target = table if isinstance(table, TableName) else parse_table_name(table)
    check_row_drop(0, None, min_row_fraction, force)  # validates min_row_fraction only
    plan = plan_copy(df, column_types)
    _check_options(plan, changes, strategy, lock_timeout, lock_retries)
    conn = connect(engine)
    raw = conn.connection.dbapi_connection
    try:
        with conn.begin():
            try:
                with raw.cursor() as cur:
                    target = resolve_schema(cur, target)
                    options = (force, min_row_fraction, changes, strategy, lock_timeout, lock_retries, source_digest)
                    result = _Load(cur, engine.url, target, plan, *options).run()
            except psycopg2.Error as exc:
                if raw.closed:  # the server went away: let SQLAlchemy discard the connection
                    conn.invalidate(exc)
                raise
    except CountriesError:
        raise
    except (sa_exc.DBAPIError, psycopg2.Error) as exc:
        raise LoadError(
            f"loading {target} failed: {scrub(pg_message(exc), engine.url)}; the previous table is unchanged"
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
