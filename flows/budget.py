"""The API request budget: bursts to the hosted API stay bounded across runs and workers.

REST Countries' free tier allows 500 requests a month, its edge reportedly
about 20 requests per 10 s, and scheduled runs on several workers could burst
at the same moment. Two limiters share the work:

- **Across runs and workers**: the Prefect global concurrency limit
  ``restcountries-api`` (a rate limit: ``limit`` slots that decay at
  ``slot_decay_per_second``). A run takes its slots in *one* acquisition, before
  its first requests go out (:func:`start_run`): one slot per region request, at
  most ``limit`` per acquisition. Acquiring once per run (rather than once per
  request) matters on a real Prefect server, where concurrent acquisitions
  serialise on its database and spread a run's requests over seconds.
- **Within a process**: retries and extra pages (requests beyond the ones paid
  for) wait on a per-process limiter (:data:`LOCAL_BURST` at once, then
  :data:`LOCAL_PER_SECOND` a second), which needs no server round trip.

Requests to a self-hosted v3.1 server take no slot: it has no quota to protect.

The limit lives on the Prefect server. ``blocks/create_blocks.py`` creates it;
:func:`start_run` also creates it on first use so a fresh server works without
the setup script. An existing limit is never changed by the flow, so an
operator's tuning (``prefect gcl update restcountries-api ...``) sticks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.asyncio import rate_limit
from prefect.exceptions import ObjectNotFound

logger = logging.getLogger(__name__)

RATE_LIMIT_NAME = "restcountries-api"
DEFAULT_BURST = 10
DEFAULT_PER_SECOND = 1.0  # with the burst of 10: at most 20 requests in any 10 s, what the API's edge allows
LOCAL_BURST = 5
LOCAL_PER_SECOND = 1.0


async def _read_or_create(burst: int, per_second: float) -> tuple[int, bool]:
    """(the limit's slot count, whether it was created now)."""
    async with get_client() as client:
        try:
            existing = await client.read_global_concurrency_limit_by_name(RATE_LIMIT_NAME)
        except ObjectNotFound:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(
                    name=RATE_LIMIT_NAME, limit=burst, slot_decay_per_second=per_second, active=True
                )
            )
            logger.info("created rate limit %s: burst %d, %.3g/s", RATE_LIMIT_NAME, burst, per_second)
            return burst, True
        return existing.limit, False


async def ensure_rate_limit(
    *, burst: int = DEFAULT_BURST, per_second: float = DEFAULT_PER_SECOND, update: bool = False
) -> bool:
    """Create the ``restcountries-api`` rate limit if it does not exist.

    With ``update=True`` an existing limit is set to ``burst``/``per_second``
    (the setup script does this; the flow does not). Returns True when the
    limit was created or changed. Raises Prefect's errors when the API is
    unreachable.
    """
    _, created = await _read_or_create(burst, per_second)
    if created or not update:
        return created
    async with get_client() as client:
        existing = await client.read_global_concurrency_limit_by_name(RATE_LIMIT_NAME)
        if existing.limit != burst or existing.slot_decay_per_second != per_second:
            await client.update_global_concurrency_limit(
                RATE_LIMIT_NAME,
                GlobalConcurrencyLimitUpdate(limit=burst, slot_decay_per_second=per_second),
            )
            logger.info("updated rate limit %s: burst %d, %.3g/s", RATE_LIMIT_NAME, burst, per_second)
            return True
    return False


class LocalLimiter:
    """A per-process rate limiter (GCRA): ``burst`` requests at once, then ``per_second``.

    Thread-safe and not bound to an event loop, so one instance serves every
    run in the process, whatever loop it runs on.
    """

    def __init__(self, burst: int = LOCAL_BURST, per_second: float = LOCAL_PER_SECOND):
        if burst < 1 or per_second <= 0:
            raise ValueError("burst must be >= 1 and per_second > 0")
        self.burst = burst
        self.per_second = per_second
        self._lock = threading.Lock()
        self._tat = 0.0  # theoretical arrival time of the next request

    def reserve(self) -> float:
        """Take the next place; the seconds to wait before sending."""
        interval = 1.0 / self.per_second
        with self._lock:
            now = time.monotonic()
            tat = max(self._tat, now)
            self._tat = tat + interval
            return max(0.0, tat - now - (self.burst - 1) * interval)

    async def wait(self) -> None:
        """Wait for this process's next request place."""
        delay = self.reserve()
        if delay > 0:
            await asyncio.sleep(delay)


LOCAL_LIMITER = LocalLimiter()
"""The per-process limiter for retries and extra pages."""


class RunBudget:
    """What a run may send: ``prepaid`` requests go out at once, every further one waits on ``limiter``.

    Pass :meth:`before_request` to ``flows.api.fetch_region``. ``metered=False``
    (a self-hosted server) never waits. ``sent`` counts the requests let through.
    """

    def __init__(self, prepaid: int = 0, *, metered: bool = True, limiter: LocalLimiter = LOCAL_LIMITER):
        self.prepaid = prepaid
        self.metered = metered
        self.limiter = limiter
        self.sent = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RunBudget(prepaid={self.prepaid}, metered={self.metered}, sent={self.sent})"

    async def before_request(self) -> None:
        """Await before every HTTP request of the run (retries included)."""
        if not self.metered:
            return
        with self._lock:
            self.sent += 1
            if self.prepaid > 0:
                self.prepaid -= 1
                return
        await self.limiter.wait()


async def start_run(requests: int, *, metered: bool = True) -> RunBudget:
    """Pay for a run's first ``requests`` requests (one per region) before they go out; one call per run.

    For a metered (hosted, keyed) API: makes sure the ``restcountries-api``
    rate limit exists, then takes ``min(requests, limit)`` slots in a single
    acquisition (more acquisitions only when a run has more regions than the
    limit has slots), waiting while other runs' slots have not decayed yet.
    The returned budget lets those requests go at once and sends every later
    one (retries, extra pages) through the per-process limiter.
    ``metered=False`` returns a budget that never waits, without contacting
    the Prefect server. Raises Prefect's errors when its API is unreachable.
    """
    if not metered or requests <= 0:
        return RunBudget(prepaid=0, metered=metered)
    limit, _ = await _read_or_create(DEFAULT_BURST, DEFAULT_PER_SECOND)
    limit = max(1, limit)
    remaining = requests
    while remaining > 0:
        slots = min(remaining, limit)
        await rate_limit(RATE_LIMIT_NAME, occupy=slots, strict=True)
        remaining -= slots
    return RunBudget(prepaid=requests)
