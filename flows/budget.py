"""The API request budget: one Prefect rate limit shared by every run and worker.

REST Countries' free tier allows 500 requests a month, and scheduled runs on
several workers could burst at the same moment. Every HTTP request the flow
sends to the hosted (metered, keyed) API first takes a slot of the global concurrency limit ``restcountries-api``;
slots decay at ``per_second``, so across all runs and workers the API sees at
most ``burst`` requests at once and ``per_second`` requests a second after that.
Requests to a self-hosted v3.1 server take no slot: it has no quota to protect.

The limit lives on the Prefect server. ``blocks/create_blocks.py`` creates it;
the flow also creates it on first use (``ensure_rate_limit``) so a fresh server
works without the setup script. An existing limit is never changed by the flow,
so an operator's tuning (``prefect gcl update restcountries-api ...``) sticks.
"""

from __future__ import annotations

import logging

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.asyncio import rate_limit
from prefect.exceptions import ObjectNotFound

logger = logging.getLogger(__name__)

RATE_LIMIT_NAME = "restcountries-api"
DEFAULT_BURST = 10
DEFAULT_PER_SECOND = 2.0


async def ensure_rate_limit(
    *, burst: int = DEFAULT_BURST, per_second: float = DEFAULT_PER_SECOND, update: bool = False
) -> bool:
    """Create the ``restcountries-api`` rate limit if it does not exist.

    With ``update=True`` an existing limit is set to ``burst``/``per_second``
    (the setup script does this; the flow does not). Returns True when the
    limit was created or changed. Raises Prefect's errors when the API is
    unreachable.
    """
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
            return True
        if update and (existing.limit != burst or existing.slot_decay_per_second != per_second):
            await client.update_global_concurrency_limit(
                RATE_LIMIT_NAME,
                GlobalConcurrencyLimitUpdate(limit=burst, slot_decay_per_second=per_second),
            )
            logger.info("updated rate limit %s: burst %d, %.3g/s", RATE_LIMIT_NAME, burst, per_second)
            return True
        return False


async def take_request_slot() -> None:
    """Wait for one slot of the shared API rate limit (call before every HTTP request)."""
    await rate_limit(RATE_LIMIT_NAME, occupy=1, strict=True)
