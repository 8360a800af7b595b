"""The API request budget: the ``restcountries-api`` rate limit, shared by every run and worker.

REST Countries' free tier allows 500 requests a month and its edge about 20
requests per 10 s; scheduled runs on several workers could burst at once. The
budget is Prefect's global concurrency limit ``restcountries-api`` used as a
rate limit (``limit`` slots that decay at ``slot_decay_per_second``):

- A run takes one slot per region in *one* acquisition before its first
  requests (:func:`start_run`). Measured on a real Prefect server (issue 8,
  tests/benchmarks/bench_fetch.py): one acquisition per request serialises on
  the server's database and spreads a run's six requests over seconds; one per
  run keeps them within the 0.25 s target.
- Every further request (a retry, a second page) takes one more slot as it goes.

Requests to a self-hosted v3.1 server take none: it has no quota to protect.
``blocks/create_blocks.py`` creates the limit; :func:`start_run` also creates it
on first use, never changing an existing one (an operator's tuning sticks).
"""

from __future__ import annotations

import logging
import threading

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.asyncio import rate_limit
from prefect.exceptions import ObjectNotFound

logger = logging.getLogger(__name__)

RATE_LIMIT_NAME = "restcountries-api"
DEFAULT_BURST = 10
DEFAULT_PER_SECOND = 1.0  # with the burst of 10: at most 20 requests in any 10 s, what the API's edge allows


async def ensure_rate_limit(
    *, burst: int = DEFAULT_BURST, per_second: float = DEFAULT_PER_SECOND, update: bool = False
) -> int:
    """Create the ``restcountries-api`` rate limit if it does not exist; its slot count.

    With ``update=True`` an existing limit is set to ``burst``/``per_second`` (the
    setup script does this; the flow does not). Raises Prefect's errors when its
    API is unreachable.
    """
    async with get_client() as client:
        try:
            existing = await client.read_global_concurrency_limit_by_name(RATE_LIMIT_NAME)
        except ObjectNotFound:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=RATE_LIMIT_NAME, limit=burst, slot_decay_per_second=per_second)
            )
            logger.info("created rate limit %s: burst %d, %.3g/s", RATE_LIMIT_NAME, burst, per_second)
            return burst
        if update and (existing.limit, existing.slot_decay_per_second) != (burst, per_second):
            await client.update_global_concurrency_limit(
                RATE_LIMIT_NAME, GlobalConcurrencyLimitUpdate(limit=burst, slot_decay_per_second=per_second)
            )
            logger.info("updated rate limit %s: burst %d, %.3g/s", RATE_LIMIT_NAME, burst, per_second)
            return burst
        return existing.limit


class RunBudget:
    """What a run may send: ``prepaid`` requests go out at once, every further one takes a slot first.

    Pass :meth:`before_request` to ``fetch_region``. ``metered=False`` (a
    self-hosted server) never waits. ``sent`` counts the requests let through.
    """

    def __init__(self, prepaid: int = 0, *, metered: bool = True):
        self.prepaid, self.metered, self.sent = prepaid, metered, 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RunBudget(prepaid={self.prepaid}, metered={self.metered}, sent={self.sent})"

    async def before_request(self) -> None:
        """Await before every HTTP request of the run (retries included)."""
        if not self.metered:
            return
        with self._lock:
            self.sent += 1
            paid, self.prepaid = self.prepaid > 0, max(self.prepaid - 1, 0)
        if not paid:
            await rate_limit(RATE_LIMIT_NAME, occupy=1, strict=True)


async def start_run(requests: int, *, metered: bool = True) -> RunBudget:
    """Pay for a run's first ``requests`` requests (one per region) before they go out; one call per run.

    For a metered (hosted, keyed) API: makes sure the limit exists, then takes
    ``min(requests, limit)`` slots per acquisition (one, unless the run has more
    regions than the limit has slots), waiting while other runs' slots decay.
    ``metered=False`` returns a budget that never waits, without contacting the
    Prefect server. Raises Prefect's errors when its API is unreachable.
    """
    if not metered or requests <= 0:
        return RunBudget(metered=metered)
    limit = max(1, await ensure_rate_limit())
    for taken in range(0, requests, limit):
        await rate_limit(RATE_LIMIT_NAME, occupy=min(limit, requests - taken), strict=True)
    return RunBudget(prepaid=requests)
