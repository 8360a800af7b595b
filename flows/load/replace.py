"""Make a PostgreSQL table's rows equal to a DataFrame's, in one transaction, writing only what differs.

Advisory lock on the table's name; ``COPY`` into a staging table in the table's types (unlogged beside it when the
role may, temporary otherwise); ``SHARE ROW EXCLUSIVE`` lock (no other writer, no reader blocked); the row-drop rule;
``"rows"``: one aggregate of a hash full join of the row hashes gives the rows to delete and insert, checked by both
sides' row counts (rows in both untouched, so all attached to the table stays); ``"swap"``: grants and comment carried
over, DROP, RENAME.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import psycopg2
import psycopg2.errors
from psycopg2 import sql

from flows.errors import CommitUnknownError, ConfigurationError, CountriesError, LoadError, LoadInterruptedError
from flows.errors import setting
import flows.load.changes as change_report
from flows.load.changes import ChangeSpec, ChangeSummary, check_min_row_fraction, check_row_drop
from flows.load.database import TableName, parse_table_name, pg_message, quote_ident, resolve_schema, scrub, unreachable
from flows.load.locks import LockWaits, commit, running_loads
from flows.load.state import LoadResult, fingerprint, row_hash

if TYPE_CHECKING:
    import pandas as pd
    import sqlalchemy as sa

    from flows.load.copy import CopyPlan

Strategy = Literal["rows", "swap"]
STRATEGIES: tuple[str, ...] = ("rows", "swap")
_STAGE = 'pg_temp."countries_pipeline_new"'
_DIFF = 'pg_temp."countries_pipeline_diff"'
_KEYS = 'pg_temp."countries_pipeline_keys"'
_OLD = 'pg_temp."countries_pipeline_old"'


def _listed(side: str) -> str:
    """The condition that a row's ctid is one of ``_DIFF``'s ``side``: ``gone`` (the table's) or ``added`` (staged)."""
    return f"ctid = ANY((SELECT {side} FROM {_DIFF})::tid[])"


@dataclasses.dataclass
class _Load:
    """One load's steps after the advisory lock, on ``cur`` in the caller's transaction."""

    cur: psycopg2.extensions.cursor
    table: TableName  # schema-qualified
    plan: CopyPlan
    options: dict

    @property
    def columns(self) -> list[str]:
        return [c.name for c in self.plan.columns]

    def run(self, waits: LockWaits) -> LoadResult:
        cur, table, swap, spec = self.cur, self.table, self.options["strategy"] == "swap", self.options["changes"]
        cur.execute(
            "SELECT c.oid, c.relkind, obj_description(c.oid, 'pg_class'), has_schema_privilege(s, 'CREATE')"
            " FROM to_regnamespace(%s) s LEFT JOIN pg_class c ON c.relnamespace = s AND c.relname = %s",
            (quote_ident(table.schema), table.name),
        )
        oid, relkind, comment, may_create = cur.fetchone()
        if relkind not in (None, "r"):
            raise LoadError(f"{table} exists but is not a plain table (relkind {relkind!r}); refusing to replace it")
        if oid is None:  # a first load: the rows go straight into the new table
            self._stage(table.sql, None, "", oid=oid, waits=waits)
            cur.execute(f"ANALYZE {table.sql}")  # its statistics from the start: VACUUM skips frozen pages
            summary = None if spec is None else change_report.compare(cur, spec, None, table.sql, table.sql)
            return self._result(None, 0, self.plan.rows, summary, fingerprint(cur, table.sql, self.columns))
        have = list(change_report.column_categories(cur, oid))
        missing = [c for c in self.columns if c not in have]
        if missing and not swap:  # a swap may replace a table lacking some
            names = ", ".join(json.dumps(m, ensure_ascii=False) for m in missing)
            raise LoadError(
                f"{table} has no column {names} of the data (its columns: {', '.join(have)}): add it, drop the "
                f"table so that the next load creates it, or load with {setting('strategy', 'swap')} to replace "
                "the table; the table was not changed"
            )
        complete = not missing
        kind = "" if swap else "UNLOGGED " if may_create else "TEMPORARY "
        beside = TableName(table.schema, f"{table.name[:40]}__{'swap' if swap else 'load'}_{secrets.token_hex(4)}")
        staging = _STAGE if kind == "TEMPORARY " else beside.sql
        self._stage(staging, table.sql if complete else None, kind, oid=oid, waits=waits)

        def lock_and_count() -> int:
            cur.execute(f"LOCK TABLE {table.sql} IN SHARE ROW EXCLUSIVE MODE")  # no other writer; no reader blocked
            cur.execute(f"SELECT count(*) FROM {table.sql}")
            return cur.fetchone()[0]

        previous = waits.bounded(oid, "write", lock_and_count)
        if not self.options["force"]:
            check_row_drop(self.plan.rows, previous, self.options["min_row_fraction"], table.name)
        if swap:
            return self._swap(oid, comment, staging, previous, complete, waits)
        deleted, inserted, content = self._diff(staging, previous)
        summary = None if spec is None else self._report(oid, staging, deleted, previous, inserted)
        if deleted or inserted:  # behind a user's row lock (SELECT ... FOR UPDATE): bounded, retried
            waits.bounded(oid, "write", lambda: self._write(staging, deleted, previous, inserted))
        cur.execute(f"DROP TABLE {staging}")  # never seen by another session: created in this transaction
        return self._result(previous, deleted, inserted, summary, content)

    def _result(self, previous, deleted: int, inserted: int, summary, content: str) -> LoadResult:
        return LoadResult(
            str(self.table), int(content.split(":")[0]), previous, deleted, inserted, summary,
            self.options["strategy"], content, tuple(self.columns),
        )  # fmt: skip

    def _stage(self, staging: str, like: str | None, kind: str, oid: int | None, waits: LockWaits) -> None:
        """Create ``staging`` in the types of ``like`` (the table) or of the data, and COPY the rows in."""
        cur, names = self.cur, self.plan.names()
        on_commit = " ON COMMIT DROP" if kind == "TEMPORARY " else ""
        if like is None:
            cur.execute(f"CREATE {kind}TABLE {staging} ({self.plan.definitions()}){on_commit}")
        else:  # in the table's own types: compared by value, as the table holds them
            create = f"CREATE {kind}TABLE {staging}{on_commit} AS SELECT {names} FROM {like} WITH NO DATA"
            waits.bounded(oid, "read", lambda: cur.execute(create))
        from flows.load.copy import copy_rows

        copy_rows(cur, self.plan, f"COPY {staging} ({names}) FROM STDIN WITH (FORMAT text, FREEZE, ENCODING 'UTF8')")

    def _diff(self, staging: str, previous: int) -> tuple[int, int, str]:
        """Compare the table (``previous`` rows) with ``staging``; return (rows to delete, to insert, the staged rows'
        fingerprint). Rows pair by row hash, as fingerprints compare (64 bits). Unless every row differs, ``_DIFF``
        holds one row: the ctids of the table's rows to delete (``gone``) and of the staged rows to insert
        (``added``)."""
        cur = self.cur
        # Hash joins, here and in the change report: in memory 2x faster, a merge join sorts (20% slower), a nested
        # loop (chosen when statistics say a table is nearly empty, or for EXISTS) reads a million rows per row.
        for setting_sql in ("work_mem = '128MB'", "enable_mergejoin = off", "enable_nestloop = off"):
            cur.execute(f"SET LOCAL {setting_sql}")
        h = row_hash(cur, staging, self.columns)  # staged in the table's types: one hash function for both
        old, new = (f"(SELECT ctid AS id, {h} AS h{{}} FROM {relation})" for relation in (self.table.sql, staging))
        # Perhaps no row in both when none is in the first pages of both (a TID range, never a synchronised scan):
        # one join of the hashes says (1M rows: 0.45 s).
        heads = f"SELECT {h} AS h FROM {{}} WHERE ctid < '(8,0)'"
        common = bool(previous and self.plan.rows)
        if common:
            cur.execute(f"SELECT EXISTS ({heads.format(self.table.sql)} INTERSECT {heads.format(staging)})"
                        f" OR EXISTS (SELECT FROM {old.format('')} o JOIN {new.format('')} n USING (h))")  # fmt: skip
            common = cur.fetchone()[0]
        if not common:  # every row differs: all deleted, all inserted
            return previous, self.plan.rows, fingerprint(cur, staging, self.columns)
        # One aggregate of the join: both sides' row counts say whether each row paired once, and the ctids on one
        # side only (1M rows, 1% different: 0.55 s; with the values compared and both fingerprints: 0.85 s). A
        # repeated hash pairs rows more than once: a second pass pairs the copies of a hash by number (exact).
        for copy in ("", f", row_number() OVER (PARTITION BY {h}) AS i"):
            on = "o.h = n.h" + (" AND o.i = n.i" if copy else "")
            cur.execute(f"DROP TABLE IF EXISTS {_DIFF}")
            cur.execute(
                f"CREATE TEMPORARY TABLE {_DIFF} ON COMMIT DROP AS SELECT count(o.id) AS old_rows, count(n.id) AS"
                " new_rows, coalesce(sum(n.h), 0) AS new_total, coalesce(array_agg(o.id) FILTER (WHERE n.id IS NULL),"
                " '{}') AS gone, coalesce(array_agg(n.id) FILTER (WHERE o.id IS NULL), '{}') AS added"
                f" FROM {old.format(copy)} o FULL JOIN {new.format(copy)} n ON {on}"
            )
            cur.execute(f"SELECT old_rows, new_rows, new_total, cardinality(gone), cardinality(added) FROM {_DIFF}")
            old_rows, new_rows, total, deleted, inserted = cur.fetchone()
            if copy or (old_rows, new_rows) == (previous, self.plan.rows):
                return deleted, inserted, f"{new_rows}:{total}"

    def _report(self, oid: int, staging: str, deleted: int, previous: int, inserted: int) -> ChangeSummary:
        spec = self.options["changes"]
        if not deleted + inserted:
            return ChangeSummary(spec, unchanged=True)
        reason = change_report.missing_columns(self.cur, spec, oid)
        if reason:
            return ChangeSummary(spec, not_compared=reason)
        cur, k, table = self.cur, quote_ident(spec.key), self.table.sql
        every = (deleted, inserted) == (previous, self.plan.rows)  # every row differs: every key
        keys = (f"SELECT {k} FROM {table} UNION ALL SELECT {k} FROM {staging}" if every
                else f"SELECT {k} FROM {table} WHERE {_listed('gone')} UNION ALL"
                f" SELECT {k} FROM {staging} WHERE {_listed('added')}")  # fmt: skip
        # Analysed: the planner knows how many keys there are (guessing 10, it may scan the table once per key).
        cur.execute(f"CREATE TEMPORARY TABLE {_KEYS} ON COMMIT DROP AS"
                    f" SELECT DISTINCT key AS {k} FROM ({keys}) AS differing(key)")  # fmt: skip
        cur.execute(f"ANALYZE {_KEYS}")
        if every:
            return change_report.compare(cur, spec, table, staging, _KEYS)
        # The table read once (1M rows, 1% different: 0.1 s saved): its rows of those keys, and the new rows of those
        # keys are they without the gone rows, with the added ones.
        columns = ", ".join(quote_ident(c) for c in dict.fromkeys(spec.columns))
        cur.execute(f"CREATE TEMPORARY TABLE {_OLD} ON COMMIT DROP AS SELECT ctid AS id, {columns} FROM {table}"
                    f" WHERE {k} IN (SELECT {k} FROM {_KEYS})")  # fmt: skip
        new = (f"(SELECT {columns} FROM {_OLD} WHERE id NOT IN (SELECT unnest(gone) FROM {_DIFF}) UNION ALL"
               f" SELECT {columns} FROM {staging} WHERE {_listed('added')}) AS new_rows")  # fmt: skip
        return change_report.compare(cur, spec, _OLD, new, _KEYS)

    def _write(self, staging: str, deleted: int, previous: int, inserted: int) -> None:
        """Delete the table's rows of ``gone``, insert the staged ones of ``added``."""
        cur, table, names = self.cur, self.table.sql, self.plan.names()

        def among(ctids: str, count: int, of: int) -> str:  # all rows: no need to find them one by one
            return "" if count == of else f" WHERE {_listed(ctids)}"

        if deleted:
            cur.execute(f"DELETE FROM {table}{among('gone', deleted, previous)}")
        if inserted:
            where = among("added", inserted, self.plan.rows)
            cur.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {staging}{where}")

    def _equal(self, staging: str, previous: int) -> tuple[str, bool]:
        """(The staged rows' fingerprint, whether the table holds the same rows). A row of the table that is not
        staged proves a difference without fingerprinting the whole table (1M rows: 0.07 s saved)."""
        cur, cells = self.cur, [quote_ident(c) for c in self.columns]
        cur.execute(f"SELECT {', '.join(f'{c}::text' for c in cells)} FROM {self.table.sql} LIMIT 1")
        row = cur.fetchone()  # compared by value, as text literals that take the column's type (1M rows: 5 ms)
        same = ("0" if row is None else "count(*) FILTER (WHERE "
                + " AND ".join(f"{c} IS NOT DISTINCT FROM {sql.Literal(v).as_string(cur)}" for c, v in zip(cells, row))
                + ")")  # fmt: skip
        cur.execute(f"SELECT count(*), coalesce(sum({row_hash(cur, staging, self.columns)}), 0), {same} FROM {staging}")
        rows, total, found = cur.fetchone()
        content = f"{rows}:{total}"
        if rows != previous or (row is not None and not found):
            return content, False
        return content, fingerprint(cur, self.table.sql, self.columns) == content

    def _swap(self, oid: int, comment, staging: str, previous: int, complete: bool, waits: LockWaits) -> LoadResult:
        """Unless the content is equal to the table's, carry grants and the comment over, DROP, RENAME. ``complete``:
        the table has every column of the data."""
        cur, table, spec = self.cur, self.table, self.options["changes"]
        if spec is not None and complete:  # the comparison says what changed, and whether anything did
            deleted, inserted, content = self._diff(staging, previous)
            summary, equal = self._report(oid, staging, deleted, previous, inserted), not deleted + inserted
        else:
            if complete:
                content, equal = self._equal(staging, previous)
            else:
                content, equal = fingerprint(cur, staging, self.columns), False
            summary = None
            if spec is not None:
                reason = change_report.missing_columns(cur, spec, oid) or "other columns"
                summary = ChangeSummary(spec, not_compared=reason)
        if equal:
            cur.execute(f"DROP TABLE {staging}")
            return self._result(previous, 0, 0, summary, content)
        cur.execute(
            "SELECT a.privilege_type, a.is_grantable, r.rolname FROM pg_class c CROSS JOIN LATERAL"
            " aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee WHERE c.oid = %s",
            (oid,),
        )
        for privilege, grantable, role in cur.fetchall():  # a table's privileges: all of them valid in GRANT
            grantee = "PUBLIC" if role is None else quote_ident(role)
            cur.execute(f"GRANT {privilege} ON {staging} TO {grantee}{' WITH GRANT OPTION' * grantable}")
        if comment:
            cur.execute(f"COMMENT ON TABLE {staging} IS %s", (comment,))

        def swap() -> None:
            cur.execute(f"LOCK TABLE {table.sql} IN ACCESS EXCLUSIVE MODE")
            try:
                cur.execute(f"DROP TABLE {table.sql}")
            except psycopg2.errors.DependentObjectsStillExist as exc:
                raise LoadError(
                    f"cannot swap {table}: {pg_message(exc)}; load with {setting('strategy', 'rows')} "
                    "(the default), which keeps them, or drop them; the table was not changed"
                ) from None
            cur.execute(f"ALTER TABLE {staging} RENAME TO {quote_ident(table.name)}")

        waits.bounded(oid, "swap", swap)
        return self._result(previous, previous, self.plan.rows, summary, content)


def _check_options(plan: CopyPlan, o: dict) -> None:
    if o["strategy"] not in STRATEGIES:
        raise ConfigurationError(f"{setting('strategy')} must be one of {', '.join(STRATEGIES)}, got {o['strategy']!r}")
    check_min_row_fraction(o["min_row_fraction"])
    for name in ("lock_timeout", "loader_wait"):
        if isinstance(o[name], bool) or not isinstance(o[name], int | float) or not 0 < o[name] <= 3600:
            raise ConfigurationError(f"{name} must be a number of seconds in (0, 3600], got {o[name]!r}")
    if isinstance(o["lock_retries"], bool) or not isinstance(o["lock_retries"], int) or o["lock_retries"] < 0:
        raise ConfigurationError(f"lock_retries must be a whole number >= 0, got {o['lock_retries']!r}")
    names = [c.name for c in plan.columns]
    missing = [] if o["changes"] is None else [c for c in o["changes"].columns if c not in names]
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
    loader_wait: float = 60.0,
) -> LoadResult:
    """Make the rows of ``table`` (its schema must exist) equal to the columns of ``df`` in one transaction,
    writing only what differs; return a ``LoadResult``.

    ``column_types``: SQL types for a table the load creates (else from the dtypes). ``min_row_fraction``: refuse a
    load smaller than that fraction of the table, unless ``force``. ``changes``: what the change report compares.
    ``strategy``: ``"rows"`` (keeps the table and all attached to it) or ``"swap"`` (a new table).
    ``lock_timeout`` / ``lock_retries``: each wait for a user's lock; ``loader_wait``: for another load (seconds).
    Raises a ``CountriesError`` (``LoadError``, ``TableBusyError``, ...) and leaves the table as it was.
    """
    import sqlalchemy as sa

    from flows.load.copy import plan_copy

    target = table if isinstance(table, TableName) else parse_table_name(table)
    plan = plan_copy(df, column_types)
    options = dict(force=force, min_row_fraction=min_row_fraction, changes=changes, strategy=strategy,
                   lock_timeout=lock_timeout, lock_retries=lock_retries, loader_wait=loader_wait)  # fmt: skip
    _check_options(plan, options)
    try:
        proxy = engine.raw_connection()
    except (sa.exc.DBAPIError, psycopg2.Error) as exc:  # the driver's error, wrapped by SQLAlchemy or not
        raise unreachable(engine.url, exc) from None
    connection, url = proxy.dbapi_connection, engine.url
    interrupted = LoadInterruptedError(f"interrupted: the table was not changed ({target} was being loaded)")
    try:
        with running_loads(connection) as load:
            try:
                if load.interrupted:  # interrupted before it began
                    raise interrupted
                with connection.cursor() as cur:
                    target = resolve_schema(cur, target)
                    LockWaits(cur, str(target), url, loader_wait, 0).advisory()
                    waits = LockWaits(cur, str(target), url, lock_timeout, lock_retries)
                    waits.apply_limit()
                    result = _Load(cur, target, plan, options).run(waits)
                commit(load, result, interrupted)
            except BaseException as exc:  # rolled back while the load is still registered: an interrupt waits
                if not connection.closed:
                    with contextlib.suppress(psycopg2.Error):  # lost on the way: nothing was committed
                        connection.rollback()
                if load.interrupted and isinstance(exc, psycopg2.Error | LoadError):
                    raise interrupted from None
                if isinstance(exc, CountriesError) or not isinstance(exc, psycopg2.Error):
                    raise
                message = scrub(pg_message(exc), url)
                if load.committing and connection.closed:
                    raise CommitUnknownError(  # the server may have committed before the connection was lost
                        f"loading {target}: the connection was lost during the commit ({message}); the table holds "
                        "its previous rows or the new ones: re-run"
                    ) from None
                raise LoadError(f"loading {target} failed: {message}; the table was not changed") from None
    finally:
        if connection.closed:  # lost: SQLAlchemy's pool drops it
            proxy.invalidate()
        else:
            proxy.close()
    return result
