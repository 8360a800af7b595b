"""The load-state table: what the loader last wrote into each table of a schema (private; see ``flows.load``).

``countries_pipeline_state`` (:data:`STATE_TABLE`), created in the target
table's schema on first use, holds per table its oid, content hash, row
count, strategy, load time and the digest of the source data the load was
made from (``source_sha256``, see ``flows.tables.source_digest``; NULL when
the caller gave none). A stored state describes the table only while the
table still has that oid and row count; to force a rewrite, delete the
table's row there. A state table from before source digests gets the column
on its next load.

Earlier releases kept the hash in the table's comment
(``countries-pipeline content-sha256=<hash> rows=<n>``): :meth:`LoadState.stored`
still reads it once, and the loader removes that comment on its next write
(:func:`is_legacy_comment`); any other comment is the user's.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import psycopg2

from flows._locks import advisory_lock
from flows._postgres import quote_ident

__all__ = ["STATE_TABLE", "LoadState", "Stored", "is_legacy_comment"]

STATE_TABLE = "countries_pipeline_state"
"""The load-state table, created in the target table's schema."""

_LEGACY_COMMENT = re.compile(
    r"countries-pipeline content-sha256=(?P<hash>[0-9a-f]{64}) rows=(?P<rows>\d+)"
    r"(?: head-sha256=[0-9a-f]{64} head-rows=\d+)?"
)


def is_legacy_comment(comment: str | None) -> bool:
    """Whether ``comment`` is the load state an earlier release kept in the table's comment."""
    return _LEGACY_COMMENT.fullmatch(comment or "") is not None


class Stored(NamedTuple):
    """What the load state says a table holds: its content hash, and the source digest it was loaded from."""

    content_hash: str
    source_digest: str | None


class LoadState:
    """The load-state table of ``schema``, read and written through ``cur`` in the loader's transaction."""

    def __init__(self, cur: psycopg2.extensions.cursor, schema: str) -> None:
        self.cur = cur
        self.schema = schema
        self.sql = f"{quote_ident(schema)}.{quote_ident(STATE_TABLE)}"

    def ensure(self) -> None:
        """Create the load-state table unless it exists, with the ``source_sha256`` column (serialised between loaders).

        Existence is read from ``pg_class`` with the statement's snapshot: ``to_regclass`` may
        answer from a cache that has not seen another loader's commit yet.
        """
        cur = self.cur
        exists = "SELECT 1 FROM pg_class WHERE relnamespace = to_regnamespace(%s) AND relname = %s"
        schema = quote_ident(self.schema)  # to_regnamespace reads a name as SQL does: unquoted, it is folded
        cur.execute(exists, (schema, STATE_TABLE))
        if cur.fetchone() is None:
            advisory_lock(cur, f"{self.schema}.{STATE_TABLE}")
            cur.execute(exists, (schema, STATE_TABLE))
            if cur.fetchone() is None:
                cur.execute(
                    f"CREATE TABLE {self.sql} (table_name text PRIMARY KEY, table_oid oid NOT NULL, content_sha256"
                    " text NOT NULL, row_count bigint NOT NULL, strategy text NOT NULL, loaded_at timestamptz NOT NULL,"
                    " source_sha256 text)"
                )
                cur.execute(
                    f"COMMENT ON TABLE {self.sql} IS 'countries pipeline: what it last loaded into each table of"
                    " this schema; delete a table''s row to make its next load rewrite it'"
                )
        # A state table from before source digests: add the column once, under the same lock. Checked first,
        # because ALTER TABLE locks the state table for every loader of the schema until this load commits.
        has_source = (
            "SELECT 1 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid WHERE c.relnamespace ="
            " to_regnamespace(%s) AND c.relname = %s AND a.attname = 'source_sha256' AND NOT a.attisdropped"
        )
        cur.execute(has_source, (schema, STATE_TABLE))
        if cur.fetchone() is None:
            advisory_lock(cur, f"{self.schema}.{STATE_TABLE}")
            cur.execute(has_source, (schema, STATE_TABLE))
            if cur.fetchone() is None:
                cur.execute(f"ALTER TABLE {self.sql} ADD COLUMN IF NOT EXISTS source_sha256 text")

    def stored(self, table: str, oid: int, rows: int, comment: str | None) -> Stored | None:
        """What is stored for ``table`` (name in the schema) if it still describes it, else None.

        It does while the table has ``oid`` and ``rows``; without a stored row, a legacy
        ``comment`` of the same row count is read instead (it has no source digest).
        """
        self.cur.execute(
            f"SELECT content_sha256, source_sha256 FROM {self.sql}"
            " WHERE table_name = %s AND table_oid = %s AND row_count = %s",
            (table, oid, rows),
        )
        stored = self.cur.fetchone()
        if stored is not None:
            return Stored(stored[0], stored[1])
        legacy = _LEGACY_COMMENT.fullmatch(comment or "")
        if legacy is not None and int(legacy["rows"]) == rows:
            return Stored(legacy["hash"], None)
        return None

    def save(self, table: str, table_sql: str, digest: str, rows: int, strategy: str, source: str | None) -> None:
        """Record that ``table`` (name in the schema; ``table_sql`` quoted) now holds ``rows`` with ``digest``,
        loaded from the source data of digest ``source`` (None: unknown)."""
        self.cur.execute(
            f"INSERT INTO {self.sql} (table_name, table_oid, content_sha256, row_count, strategy, loaded_at,"
            " source_sha256) VALUES (%s, to_regclass(%s), %s, %s, %s, now(), %s)"
            " ON CONFLICT (table_name) DO UPDATE SET table_oid = excluded.table_oid,"
            " content_sha256 = excluded.content_sha256, row_count = excluded.row_count,"
            " strategy = excluded.strategy, loaded_at = excluded.loaded_at, source_sha256 = excluded.source_sha256",
            (table, table_sql, digest, rows, strategy, source),
        )
