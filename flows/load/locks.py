"""The locks a load takes, its bounded waits for them, and the loads in progress (private to ``flows.load``).

A busy message names the blocking sessions as ``pg_stat_activity`` shows them, never their query text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import psycopg2
import psycopg2.errors

from flows.load.database import scrub
from flows.errors import TableBusyError


Need = Literal["load", "read", "write", "swap"]  # what a step does: whose locks can make it wait ("load": a load's)

_MODES = "AccessShare RowShare RowExclusive ShareUpdateExclusive Share ShareRowExclusive Exclusive AccessExclusive"
_MODES_WEAKEST_FIRST = [f"{m}Lock" for m in _MODES.split()]
_BLOCKERS = {  # the table locks of sessions that can make a step wait
    "read": _MODES_WEAKEST_FIRST[-1:],
    "write": _MODES_WEAKEST_FIRST[1:],  # DELETE, INSERT, COMMENT: conflicting table locks, writers' row locks
    "swap": _MODES_WEAKEST_FIRST,
}
_RETRY_PAUSE = 0.2  # seconds between tries: readers queued behind the load go first


def _lock_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"countries-pipeline:{name}".encode()).digest()[:8], "big", signed=True)


_SESSIONS = (
    "SELECT pid, usename, application_name, state, extract(epoch FROM clock_timestamp() - xact_start)::float8"
    " FROM pg_stat_activity WHERE pid IN (SELECT pid FROM pg_locks WHERE {} AND pid <> pg_backend_pid()"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
    " ORDER BY xact_start NULLS LAST, pid"
)


def _describe_session(pid, user, application, state, open_seconds) -> str:
    parts = [f'user "{user}"', *([f'application "{application}"'] if application else []), state or "state unknown"]
    if open_seconds is not None:  # "12.5s", or "1:02:03"
        shown = f"{open_seconds:.1f}s" if open_seconds < 60 else str(datetime.timedelta(seconds=round(open_seconds)))
        parts.append(f"transaction open {shown}")
    return f"pid {pid} ({', '.join(parts)})"


@dataclasses.dataclass(frozen=True)
class LockWaits:
    """Waits for locks on ``table`` in the transaction on ``cur``: each at most ``timeout`` seconds, tried
    ``1 + retries`` times; ``url``'s password is kept out of messages."""

    cur: psycopg2.extensions.cursor
    table: str
    url: Any
    timeout: float
    retries: int

    def apply_limit(self) -> None:
        """From here on, every lock wait of the transaction is cut after ``timeout``."""
        self.cur.execute(f"SET LOCAL lock_timeout = '{max(1, round(self.timeout * 1000))}ms'")

    def advisory(self) -> None:
        """Take the transaction's advisory lock of the table's name: loads of one table run one at a time."""
        key = _lock_key(self.table)
        self.apply_limit()
        self.bounded(key, "load", lambda: self.cur.execute("SELECT pg_advisory_xact_lock(%s)", (key,)))

    def bounded(self, oid: int, need: Need, action: Callable[[], Any]) -> Any:
        """``action()`` in a savepoint, tried ``1 + retries`` times; then ``TableBusyError`` naming the sessions
        whose locks on the table ``oid`` can block ``need`` (``"load"``: ``oid`` is the advisory lock's key)."""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(_RETRY_PAUSE)
            self.cur.execute("SAVEPOINT countries_pipeline_lock")
            try:
                result = action()
            except psycopg2.errors.LockNotAvailable:
                self.cur.execute("ROLLBACK TO SAVEPOINT countries_pipeline_lock")
                continue
            self.cur.execute("RELEASE SAVEPOINT countries_pipeline_lock")
            return result
        raise TableBusyError(self._busy(oid, need))

    def _busy(self, oid: int, need: Need) -> str:
        if need == "load":
            held = ("locktype = 'advisory' AND granted AND classid = ((%s >> 32) & 4294967295)::oid"
                    " AND objid = (%s & 4294967295)::oid AND objsubid = 1", (oid, oid))  # fmt: skip
        else:
            held = "locktype = 'relation' AND relation = %s AND mode = ANY(%s)", (oid, _BLOCKERS[need])
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
            "the table was not changed",
            self.url,
        )


@dataclasses.dataclass(eq=False)
class Running:
    """A load in progress on ``connection``."""

    connection: psycopg2.extensions.connection
    interrupted: bool = False
    committing: bool = False
    done: threading.Event = dataclasses.field(default_factory=threading.Event)


_running: set[Running] = set()
_committed: list[tuple[float, Any]] = []  # (time.monotonic() of the commit, result): for interrupt_loads
_guard = threading.RLock()  # re-entrant: a second signal's handler can run inside the first's, on the same thread
_refusing = threading.Event()  # set by interrupt_loads, cleared by resume_loads


def interrupt_loads(timeout: float = 10.0, since: float = 0.0) -> list | None:
    """Cancel every load of this process not yet committing, and every one that starts before :func:`resume_loads`
    (each rolls back, raises ``LoadInterruptedError``); wait at most ``timeout`` seconds for the commits under way.
    Return the results committed at or after ``since`` (monotonic), or None if a commit had not ended."""
    _refusing.set()
    with _guard:  # from here on no load begins its commit
        running = list(_running)
        for load in running:
            load.interrupted = not load.committing
    for load in running:
        if load.interrupted:
            with contextlib.suppress(psycopg2.Error):  # a round trip, outside the lock; ended meanwhile: closed
                load.connection.cancel()
    deadline = time.monotonic() + timeout
    ended = all([load.done.wait(max(0.0, deadline - time.monotonic())) for load in running if load.committing])
    with _guard:
        return [result for moment, result in _committed if moment >= since] if ended else None


def resume_loads() -> None:
    """Let loads commit again after :func:`interrupt_loads`."""
    _refusing.clear()


@contextlib.contextmanager
def running_loads(connection: psycopg2.extensions.connection) -> Iterator[Running]:
    """Register a load on ``connection`` for :func:`interrupt_loads` while the block runs."""
    load = Running(connection, interrupted=_refusing.is_set())
    with _guard:
        _running.add(load)
    try:
        yield load
    finally:
        with _guard:
            _running.discard(load)
        load.done.set()


def commit(load: Running, result: Any, interrupted: Exception) -> None:
    """Commit ``load``'s transaction unless it was interrupted (then raise ``interrupted``); record ``result``."""
    with _guard:
        if load.interrupted or _refusing.is_set():
            raise interrupted
        load.committing = True
    load.connection.commit()
    with _guard:
        _committed.append((time.monotonic(), result))
