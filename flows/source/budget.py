"""The API request budget: the ``restcountries-api`` rate limit (a Prefect global concurrency limit), shared by
every run and worker.

REST Countries' free tier allows 500 requests a month and its edge about 20 requests per 10 s. A run takes one
slot per region in one acquisition before its first requests (:func:`start_run`: one acquisition per request
serialises on the Prefect server's database, see tests/benchmarks/bench_fetch.py); every further request (a
retry, a second page) takes one more slot as it goes. Runs against a self-hosted v3.1 server take none.
"""

from __future__ import annotations

import math
import threading

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.asyncio import rate_limit
from prefect.exceptions import ObjectNotFound

RATE_LIMIT_NAME = "restcountries-api"
DEFAULT_BURST = 10
DEFAULT_PER_SECOND = 1.0  # with the burst of 10: at most 20 requests in any 10 s, what the API's edge allows


async def ensure_rate_limit(
    *, burst: int = DEFAULT_BURST, per_second: float = DEFAULT_PER_SECOND, update: bool = False
) -> int:
    """The limit's slots, after creating it with ``burst`` slots that decay at ``per_second`` if it does not exist.

    With ``update=True`` (the setup script) an existing limit is set to them too; without (the flow), an
    operator's tuning sticks. Raises Prefect's errors when its API is unreachable.
    """
    wanted = {"limit": burst, "slot_decay_per_second": per_second}
    async with get_client() as client:
        try:
            found = await client.read_global_concurrency_limit_by_name(RATE_LIMIT_NAME)
        except ObjectNotFound:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=RATE_LIMIT_NAME, **wanted))
            return burst
        if update and (found.limit, found.slot_decay_per_second) != (burst, per_second):
            await client.update_global_concurrency_limit(RATE_LIMIT_NAME, GlobalConcurrencyLimitUpdate(**wanted))
            return burst
        return found.limit


class RunBudget:
    """What a run may send: ``prepaid`` requests go out at once, every further one takes a slot first.

    Pass :meth:`before_request` to ``fetch_region``.
    """

    def __init__(self, prepaid: float = 0):
        self.prepaid = prepaid
        self._lock = threading.Lock()

    async def before_request(self) -> None:
        """Await before every HTTP request of the run (retries included)."""
        with self._lock:
            paid, self.prepaid = self.prepaid > 0, max(self.prepaid - 1, 0)
        if not paid:
            await rate_limit(RATE_LIMIT_NAME, occupy=1, strict=True)


async def start_run(requests: int, *, metered: bool = True) -> RunBudget:
    """Pay for a run's first ``requests`` requests (one per region) before they go out; one call per run.

    Makes sure the limit exists, then takes ``min(requests, limit)`` slots per acquisition, waiting
    while other runs' slots decay. ``metered=False`` (a self-hosted server) returns a budget that never
    waits, without contacting the Prefect server. Raises Prefect's errors when its API is unreachable.
    """
    if not metered:
        return RunBudget(prepaid=math.inf)
    limit = max(1, await ensure_rate_limit())
    for taken in range(0, requests, limit):
        await rate_limit(RATE_LIMIT_NAME, occupy=min(limit, requests - taken), strict=True)
    return RunBudget(prepaid=requests)
