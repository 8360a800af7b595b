"""Retries of one request: the policy, the loop (``tenacity``) and the message once they run out.

An attempt that fails in a way worth retrying (a transient status, a timeout,
a connection failure) raises :class:`RetryableFailure`; :func:`send_with_retries`
tries again after a jittered exponential backoff, or exactly what
``Retry-After`` asks, within :class:`RetryPolicy`'s bounds, and ends with a
``TransientApiError`` (``DeadlineExceededError`` when the last try ran out of
time) that says what failed, how often, and when to try again. This is the
client's only retry layer; it retries one request, so a failed page 3 does not
refetch pages 1-2.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NoReturn, TypeVar

import tenacity

from flows.errors import ApiError, ConfigurationError, DeadlineExceededError, TransientApiError

__all__ = ["Hook", "RequestStats", "RetryPolicy", "RetryableFailure", "parse_retry_after", "send_with_retries"]

logger = logging.getLogger("flows.api")

Hook = Callable[[], Awaitable[None]]
"""Awaited before every HTTP request, retries included (e.g. the run's request budget)."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one request inside the client, so a failed page 3 does not refetch pages 1-2.

    At most ``max_attempts`` tries, waiting a random time up to ``base_delay *
    2**(n-1)`` (capped at ``max_delay``; "full jitter") after failed try ``n``, or
    exactly what ``Retry-After`` asks. No try starts (and no wait begins) that
    would end after ``max_total_seconds`` (at least one request deadline) from
    the first; each try is also cut at that point.
    """

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_total_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}.")
        if min(self.base_delay, self.max_delay, self.max_total_seconds) < 0:
            raise ConfigurationError("RetryPolicy delays and max_total_seconds must be >= 0.")


@dataclass
class RequestStats:
    """HTTP requests the client attempted (``requests``), of which ``retries`` were retries."""

    requests: int = 0
    retries: int = 0


class RetryableFailure(Exception):
    """One attempt failed in a way worth retrying; becomes a ``TransientApiError`` once the retries run out.

    ``failure``: what happened (our words; outside text already quoted safely);
    ``advice``: what to do if it persists; ``status``: the HTTP status, if any;
    ``retry_after``: seconds the server asked to wait; ``timed_out``: the
    attempt ran out of time; ``cause``: the exception to chain.
    """

    def __init__(
        self,
        failure: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        timed_out: bool = False,
        advice: str = "try again later",
        cause: BaseException | None = None,
    ):
        super().__init__(failure)
        self.failure = failure
        self.advice = advice
        self.status = status
        self.retry_after = retry_after
        self.timed_out = timed_out
        self.cause = cause


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date); None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


async def send_with_retries(
    attempt: Callable[[float, str], Awaitable[_T]],
    *,
    policy: RetryPolicy,
    deadline: float,
    stats: RequestStats,
    before_request: Hook | None,
    where: str,
    error: Callable[..., ApiError],
) -> _T:
    """The first result of ``attempt(seconds, bound)`` that is not a :class:`RetryableFailure`.

    Each try awaits ``before_request``, counts in ``stats.requests`` and calls
    ``attempt`` with the seconds it may take (``deadline``, or what is left of
    the policy's total time if less) and ``bound``, the words for that limit in
    a message. Anything ``attempt`` raises other than a ``RetryableFailure``
    propagates at once. Retries count in ``stats.retries`` and are logged as
    warnings naming the request (``where``).

    Once the tries or the time run out, or at once when ``Retry-After`` asks
    for more time than is left, raises ``error(cls, message, status=...,
    retry_after=...)``: ``DeadlineExceededError`` when the last try ran out of
    time, else ``TransientApiError``, chained to the last failure's cause.
    """
    total = max(policy.max_total_seconds, deadline)
    started = time.monotonic()

    async def one_try() -> _T:
        if before_request is not None:
            await before_request()
        stats.requests += 1
        left = max(total - (time.monotonic() - started), 0.001)
        if left < deadline:
            return await attempt(left, f"before the {total:g}s retry budget ran out")
        return await attempt(deadline, f"within the {deadline:g}s deadline")

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, RetryableFailure) and exc.retry_after is not None:
            return exc.retry_after
        backoff = tenacity.wait_random_exponential(multiplier=policy.base_delay, max=policy.max_delay)
        return backoff(state)

    def log_retry(state: tenacity.RetryCallState) -> None:
        stats.retries += 1
        exc = state.outcome.exception() if state.outcome is not None else None
        logger.warning(
            "%s failed: %s; retrying in %.2fs (attempt %d of %d)",
            where,
            getattr(exc, "failure", exc),
            state.upcoming_sleep,
            state.attempt_number + 1,
            policy.max_attempts,
        )

    def give_up(state: tenacity.RetryCallState) -> NoReturn:
        exc = state.outcome.exception() if state.outcome is not None else None
        assert isinstance(exc, RetryableFailure)
        tries = state.attempt_number
        left = total - (state.seconds_since_start or 0.0)
        cls = DeadlineExceededError if exc.timed_out else TransientApiError
        if exc.retry_after is not None and tries < policy.max_attempts:
            at = (datetime.now(UTC) + timedelta(seconds=exc.retry_after)).strftime("%Y-%m-%d %H:%M:%S UTC")
            message = (
                f"the API asked to retry after {exc.retry_after:.0f}s ({exc.failure}), more than the "
                f"{max(left, 0):.0f}s left of the retry budget: try again after {at}"
            )
        else:
            what = (
                "the API did not answer in time"
                if exc.timed_out
                else "the API is unavailable or overloaded"
                if exc.status is not None
                else "the API could not be reached"
            )
            times = f"{tries} tries" if tries > 1 else "1 try"
            then = f"try again in {exc.retry_after:.0f}s or later" if exc.retry_after else exc.advice
            message = f"{what} ({exc.failure}; {times} in {state.seconds_since_start or 0:.0f}s): {then}"
        raise error(cls, message, status=exc.status, retry_after=exc.retry_after) from exc.cause

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(policy.max_attempts) | tenacity.stop_before_delay(total),
        wait=wait,
        retry=tenacity.retry_if_exception_type(RetryableFailure),
        before_sleep=log_retry,
        retry_error_callback=give_up,
    )
    return await retrying(one_try)
