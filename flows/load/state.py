"""What the last load wrote, so that a run with the same source can skip the transform and the load.

The load state of a table is a Prefect Variable (named from a hash of the database, without its password, and the
table): the digest of the source records, the table's fingerprint after the load, its columns and rows. Imports
psycopg2 and Prefect, never pandas or SQLAlchemy.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg2

from flows.load.database import SECRET_QUERY_KEYS, Database, TableName, quote_ident

if TYPE_CHECKING:
    from flows.load.changes import ChangeSummary


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """What a load did to ``table``: ``previous_rows`` is ``None`` for a new table; ``deleted`` / ``inserted`` are
    0 when nothing was written (a swap counts every row); ``changes`` is ``None`` without a ``ChangeSpec``;
    ``fingerprint`` and ``columns``: the table's content as committed (:func:`fingerprint`)."""

    table: str
    rows: int
    previous_rows: int | None
    deleted: int
    inserted: int
    changes: ChangeSummary | None
    strategy: str
    fingerprint: str
    columns: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether this load wrote anything."""
        return self.deleted + self.inserted > 0


_DIGEST_CHUNK = 50_000


@functools.cache
def _code_identity() -> str:
    """SHA-256 hex of the ``flows`` package's source files and the versions of the row-making libraries."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        digest.update(f"{path.relative_to(package).as_posix()}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for name in ("pandas", "numpy"):  # their versions can change the rows made from the same records
        digest.update(f"{name}=={metadata.version(name)}\0".encode())
    return digest.hexdigest()


def source_digest(records: Sequence[Any], *, dialect: str, columns: Iterable[tuple[str, str, str]]) -> str | None:
    """SHA-256 hex of the ``records`` as canonical JSON, ``columns`` (name, source path, SQL type), ``dialect``
    and the code that turns records into rows: equal digests mean equal rows. None for records JSON cannot hold."""
    import orjson

    header = {"dialect": dialect, "columns": [list(c) for c in columns], "code": _code_identity()}
    digest = hashlib.sha256(orjson.dumps(header, option=orjson.OPT_SORT_KEYS))
    with ThreadPoolExecutor(1) as hasher:  # hashes a chunk while orjson serialises the next
        hashed = hasher.submit(int)
        for start in range(0, len(records), _DIGEST_CHUNK):
            try:  # each chunk a JSON array: their concatenation reads back one way only
                chunk = orjson.dumps(records[start : start + _DIGEST_CHUNK], option=orjson.OPT_SORT_KEYS)
            except TypeError:  # not JSON data: a non-str key, an object, a cycle, a huge integer
                return None
            hashed.result()
            hashed = hasher.submit(digest.update, chunk)
        hashed.result()
    return digest.hexdigest()


def row_hash(cur: psycopg2.extensions.cursor, relation: str, columns: Sequence[str]) -> str:
    """An SQL expression of the 64-bit hash by value of ``columns`` of ``relation``: the XOR of each column's hash
    by its type's extended hash function (``hash_record_extended(ROW(...))``, twice as slow, for a type without)."""
    cur.execute(
        "SELECT (SELECT p.amproc::regproc::text FROM pg_opclass c JOIN pg_amproc p ON p.amprocfamily = c.opcfamily"
        " AND p.amprocnum = 2 AND p.amproclefttype = c.opcintype AND p.amprocrighttype = c.opcintype"
        " WHERE c.opcmethod = (SELECT oid FROM pg_am WHERE amname = 'hash') AND c.opcdefault AND (c.opcintype = t"
        " OR EXISTS (SELECT FROM pg_cast WHERE castsource = t AND casttarget = c.opcintype AND castmethod = 'b'))"
        " ORDER BY c.opcintype = t DESC LIMIT 1) FROM unnest(%s::text[]) WITH ORDINALITY AS w(name, i)"
        " LEFT JOIN LATERAL (SELECT CASE WHEN y.typtype = 'd' THEN y.typbasetype ELSE y.oid END AS t FROM pg_attribute"
        " a JOIN pg_type y ON y.oid = a.atttypid WHERE a.attrelid = %s::regclass AND a.attname = w.name) x ON true"
        " ORDER BY i",
        (list(columns), relation),
    )
    functions = [r[0] for r in cur.fetchall()]
    cells = [quote_ident(c) for c in columns]
    if not all(functions):
        return f"hash_record_extended(ROW({', '.join(cells)}), 0)"
    return "(" + " # ".join(f"coalesce({f}({c}, {i}), {i})" for i, (f, c) in enumerate(zip(functions, cells))) + ")"


def fingerprint(cur: psycopg2.extensions.cursor, relation: str, columns: Sequence[str]) -> str:
    """``"<rows>:<sum of row hashes>"`` of the ``columns`` of ``relation`` (quoted SQL), in the caller's snapshot."""
    cur.execute(f"SELECT count(*), coalesce(sum({row_hash(cur, relation, columns)}), 0) FROM {relation}")
    rows, total = cur.fetchone()
    return f"{rows}:{total}"


def variable_name(db: Database, table: TableName) -> str:
    """The Prefect Variable of ``table`` in ``db``: a hash of where the database is (no secret) and the table."""
    query = {k: v for k, v in db.query.items() if k not in SECRET_QUERY_KEYS}
    where = [db.username, db.host, db.port, db.database, sorted(query.items()), str(table)]
    return "countries-load-" + hashlib.sha256(json.dumps(where, default=str).encode()).hexdigest()[:32]


def live_rows(db: Database, table: TableName, stored: dict[str, Any], *, lock_timeout: float = 1.0) -> int | None:
    """The table's rows if its live fingerprint is ``stored["fingerprint"]``, else None (any doubt is None).

    Read-only; waits at most ``lock_timeout`` seconds for a lock. Raises only ``DatabaseUnreachableError``."""
    conn = db.connect()
    try:
        conn.set_session(readonly=True)
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{max(1, round(lock_timeout * 1000))}ms",))
            live = fingerprint(cur, table.sql, stored["columns"])
        return int(stored["rows"]) if live == stored["fingerprint"] else None
    except (psycopg2.Error, KeyError, TypeError, ValueError):  # no table, a column gone, a lock wait: load instead
        return None
    finally:
        conn.close()


async def stored_state(db: Database, table: TableName) -> dict[str, Any] | None:
    """What the last load of ``table`` recorded (``source``, ``fingerprint``, ``columns``, ``rows``), or None."""
    from prefect.variables import Variable

    stored = await Variable.aget(variable_name(db, table), default=None)
    return stored if isinstance(stored, dict) else None


async def mark_pending(db: Database, table: TableName, stored: dict[str, Any]) -> None:
    """Mark ``stored``, the recorded state of ``table``, ``pending`` before a load of other data: until that load
    saves its own, the table may differ from it by the pipeline's own rows (a worker killed after the commit)."""
    from prefect.variables import Variable

    await Variable.aset(variable_name(db, table), {**stored, "pending": True}, overwrite=True)


async def save_state(db: Database, table: TableName, source_digest: str | None, result: LoadResult) -> None:
    """Record that ``table`` holds ``result`` (its fingerprint, columns and rows), made from ``source_digest``."""
    from prefect.variables import Variable

    value = {"source": source_digest, "fingerprint": result.fingerprint, "columns": list(result.columns),
             "rows": result.rows}  # fmt: skip
    await Variable.aset(variable_name(db, table), value, overwrite=True)
