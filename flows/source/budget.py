"""The API request budget: the ``restcountries-api`` rate limit (a Prefect global concurrency limit) every run and
worker shares. A run pays for its first request per region at once (:func:`start_run`: one acquisition per request
serialises on the Prefect server's database, see tests/benchmarks/bench_fetch.py), then one slot per request."""

from __future__ import annotations

import math

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.asyncio import rate_limit
from prefect.exceptions import ObjectNotFound

RATE_LIMIT_NAME = "restcountries-api"
DEFAULT_BURST = 10
DEFAULT_PER_SECOND = 1.0  # with the burst of 10: at most 20 requests in any 10 s, what the API's edge allows


async def ensure_rate_limit(
    *, burst: int = DEFAULT_BURST, per_second: float = DEFAULT_PER_SECOND, update: bool = False
) -> tuple[int, bool]:
    """Create the limit (``burst`` slots decaying at ``per_second``) if missing, or with ``update=True`` set it to
    them: its slots, and True when it was created or changed. Raises Prefect's errors when its API is unreachable."""
    wanted = {"limit": burst, "slot_decay_per_second": per_second}
    async with get_client() as client:
        try:
            found = await client.read_global_concurrency_limit_by_name(RATE_LIMIT_NAME)
        except ObjectNotFound:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=RATE_LIMIT_NAME, **wanted))
            return burst, True
        if update and (found.limit, found.slot_decay_per_second) != (burst, per_second):
            await client.update_global_concurrency_limit(RATE_LIMIT_NAME, GlobalConcurrencyLimitUpdate(**wanted))
            return burst, True
        return found.limit, False


class RunBudget:
    """What a run may send: ``prepaid`` requests go out at once, every further one takes a slot first."""

    def __init__(self, prepaid: float = 0):
        self.prepaid = prepaid

    async def before_request(self) -> None:
        """Await before every HTTP request of the run (retries included)."""
        paid, self.prepaid = self.prepaid > 0, max(self.prepaid - 1, 0)
        if not paid:
            await rate_limit(RATE_LIMIT_NAME, occupy=1, strict=True)


async def start_run(requests: int, *, metered: bool = True) -> RunBudget:
    """The run's budget, its first ``requests`` requests paid for (waiting while other runs' slots decay); with
    ``metered=False`` (a self-hosted server) one that never waits. Raises Prefect's errors when unreachable."""
    if not metered:
        return RunBudget(prepaid=math.inf)
    slots, _ = await ensure_rate_limit()
    limit = max(1, slots)
    for taken in range(0, requests, limit):
        await rate_limit(RATE_LIMIT_NAME, occupy=min(limit, requests - taken), strict=True)
    return RunBudget(prepaid=requests)
