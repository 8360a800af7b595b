"""The locks a load takes, and how long it waits for them (private to ``flows.load``).

- :meth:`LockWaits.advisory`: a transaction-level advisory lock on the table's name,
  so that loaders of one table run one after the other. It is on no table, so
  waiting for it blocks no reader; the wait is bounded (``lock_timeout`` applies
  to advisory locks too), then ``TableBusyError`` names the session holding it.
- :meth:`LockWaits.bounded`: every wait for a lock a user's session holds (the write
  lock behind a user's writes, the swap's ``ACCESS EXCLUSIVE`` lock behind a
  reader, a read behind an ``ALTER TABLE``) is cut after ``lock_timeout`` and
  tried ``1 + lock_retries`` times in a savepoint, so no reader queues behind the
  load longer than that at a time; then ``TableBusyError`` names the blocking
  sessions.

Sessions are named as a database user finds them in ``pg_stat_activity``: pid,
user, application, state, transaction age; never their query text (which the
message's readers may not be allowed to see).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypeVar

import psycopg2
import psycopg2.errors

from flows.load.database import scrub
from flows.errors import TableBusyError


Need = Literal["load", "read", "write", "swap"]
"""What a step does to the table, which decides whose locks can make it wait ("load": another load's)."""

_MODES = "AccessShare RowShare RowExclusive ShareUpdateExclusive Share ShareRowExclusive Exclusive AccessExclusive"
_MODES_WEAKEST_FIRST = tuple(f"{m}Lock" for m in _MODES.split())
_BLOCKERS = {  # the table locks of sessions that can make a step wait
    "read": _MODES_WEAKEST_FIRST[-1:],
    "write": _MODES_WEAKEST_FIRST[1:],  # DELETE, INSERT, COMMENT: conflicting table locks, writers' row locks
    "swap": _MODES_WEAKEST_FIRST,
}
_RETRY_PAUSE = 0.2  # seconds between tries: readers queued behind the load go first
_T = TypeVar("_T")


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"countries-pipeline:{name}".encode()).digest()[:8], "big", signed=True)


_SESSIONS = (
    "SELECT pid, usename, application_name, state, extract(epoch FROM clock_timestamp() - xact_start)::float8"
    " FROM pg_stat_activity WHERE pid IN (SELECT pid FROM pg_locks WHERE {} AND pid <> pg_backend_pid()"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
    " ORDER BY xact_start NULLS LAST, pid"
)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def _describe_session(pid, user, application, state, open_seconds) -> str:
    """The session as a database user would find it in pg_stat_activity; never its query text (not the reader's)."""
    parts = [f'user "{user}"', *([f'application "{application}"'] if application else []), state or "state unknown"]
    if open_seconds is not None:
        parts.append(f"transaction open {_duration(open_seconds)}")
    return f"pid {pid} ({', '.join(parts)})"


@dataclasses.dataclass(frozen=True)
class LockWaits:
    """Waits for locks on ``table`` inside the loader's transaction on ``cur``.

    ``timeout``: seconds one wait may take (``lock_timeout``); ``retries``: tries
    after the first; ``url``: the database's, to keep its password out of messages.
    """

    cur: psycopg2.extensions.cursor
    table: str
    url: Any
    timeout: float
    retries: int

    def apply_limit(self) -> None:
        """From here on, every lock wait of the transaction is cut after ``timeout`` (``LockNotAvailable``)."""
        self.cur.execute(f"SET LOCAL lock_timeout = '{max(1, round(self.timeout * 1000))}ms'")

    def advisory(self) -> None:
        """Take the transaction-level advisory lock of the table's name (held until commit or rollback)."""
        key = _lock_key(self.table)
        self.apply_limit()
        self.bounded(key, "load", lambda: self.cur.execute("SELECT pg_advisory_xact_lock(%s)", (key,)))

    def bounded(self, oid: int, need: Need, action: Callable[[], _T]) -> _T:
        """``action()`` in a savepoint, each try waiting at most ``timeout`` for a lock.

        Tried ``1 + retries`` times, then ``TableBusyError`` naming the sessions whose
        locks on the table ``oid`` can block ``need`` (``"load"``: ``oid`` is the advisory lock's key).
        """
        for attempt in range(self.retries + 1):
            self.cur.execute("SAVEPOINT countries_pipeline_lock")
            try:
                result = action()
            except psycopg2.errors.LockNotAvailable:
                self.cur.execute("ROLLBACK TO SAVEPOINT countries_pipeline_lock")
                if attempt == self.retries:
                    raise TableBusyError(self._busy(oid, need)) from None
                time.sleep(_RETRY_PAUSE)
                continue
            self.cur.execute("RELEASE SAVEPOINT countries_pipeline_lock")
            return result
        raise AssertionError("unreachable")

    def _busy(self, oid: int, need: Need) -> str:
        if need == "load":
            held = ("locktype = 'advisory' AND granted AND classid = ((%s >> 32) & 4294967295)::oid"
                    " AND objid = (%s & 4294967295)::oid AND objsubid = 1", (oid, oid))  # fmt: skip
        else:
            held = "locktype = 'relation' AND relation = %s AND mode = ANY(%s)", (oid, list(_BLOCKERS[need]))
        self.cur.execute(_SESSIONS.format(held[0]), held[1])
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
        each = f"{self.retries + 1} tries to lock it, each waiting" if self.retries else "1 try to lock it, waiting"
        return scrub(
            f"table {self.table} is busy: {each} up to {self.timeout:g}s, failed; {blocked}; "
            "the previous table is unchanged",
            self.url,
        )


# --- loads in progress, and interrupting them ---------------------------------------------


@dataclasses.dataclass(eq=False)
class Running:
    """A load in progress: its connection (to cancel), whether it was interrupted or is committing."""

    connection: psycopg2.extensions.connection
    interrupted: bool = False
    committing: bool = False
    result: Any = None
    done: threading.Event = dataclasses.field(default_factory=threading.Event)


_running: set[Running] = set()
_committed: list[tuple[float, Any]] = []  # (time.monotonic() of the commit, result): for interrupt_loads
_guard = threading.Lock()


def interrupt_loads(timeout: float = 10.0, since: float = 0.0) -> list:
    """Stop every load in progress in this process; return every load this process committed.

    A load that has not started its commit is interrupted: its running statement is
    cancelled (``connection.cancel()``, thread-safe), it rolls back and raises
    ``LoadInterruptedError``. A load already committing finishes. Waits at most
    ``timeout`` seconds in all for them to end, then returns the results of the loads
    this process committed at or after ``since`` (``time.monotonic()``), those that
    finished before the signal included: a run interrupted after its load, while it
    reports, changed the table, and the caller says so. For a SIGINT/SIGTERM handler.
    """
    with _guard:
        running = list(_running)
        for load in running:
            if not load.committing:
                load.interrupted = True
                load.connection.cancel()
    deadline = time.monotonic() + timeout
    for load in running:
        load.done.wait(max(0.0, deadline - time.monotonic()))
    with _guard:
        return [result for moment, result in _committed if moment >= since]


@contextlib.contextmanager
def running_loads(connection: psycopg2.extensions.connection) -> Iterator[Running]:
    """Register a load on ``connection`` for :func:`interrupt_loads` while the block runs."""
    load = Running(connection)
    with _guard:
        _running.add(load)
    try:
        yield load
    finally:
        with _guard:
            _running.discard(load)
        load.done.set()


def commit(load: Running, result: Any, interrupted: Callable[[], Exception]) -> None:
    """Commit ``load``'s transaction unless it was interrupted (then raise ``interrupted()``); keep ``result``."""
    with _guard:
        if load.interrupted:
            raise interrupted()
        load.committing = True
    load.connection.commit()
    load.result = result
    with _guard:
        _committed.append((time.monotonic(), result))
