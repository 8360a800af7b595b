"""One GET to the API: bounded in time and size, retried by ``tenacity``, every failure one line.

:func:`send` returns the first answer not worth retrying; :func:`raise_for_status` raises the
``flows.errors`` exception of a final answer that is not 2xx. A message says the cause and what
to do, then the request (``(GET …/subregion/Caribbean)``) and, after retries, the tries and
seconds this request really spent.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import httpx
import tenacity

from flows.errors import (
    ApiError,
    AuthenticationError,
    BadResponseError,
    DeadlineExceededError,
    HostNotFoundError,
    NothingListeningError,
    PermanentApiError,
    QuotaExceededError,
    ResponseTooLargeError,
    TransientApiError,
    UnknownRegionError,
    setting,
)
from flows.source.client import DEADLINE_ENV, MAX_RESPONSE_ENV, ApiClient
from flows.source.dialects import KEY_ADVICE, Dialect

logger = logging.getLogger("flows.source")

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_REFUSED_TRIES = 3  # connection refused: a restarting server gets ~1 s, then the run says nothing listens there
_ERROR_BODY_BYTES = 64_000  # how much of an error answer is read for its message


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one request (a failed page 3 does not refetch pages 1-2).

    At most ``max_attempts`` tries, waiting a random time up to ``base_delay *
    2**(n-1)`` (at most ``max_delay``) after failed try ``n``, or what ``Retry-After``
    asks; no try or wait starts that would end after ``max_total_seconds`` (at
    least one deadline) from the first. A refused connection gets at most 3 tries.
    """

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_total_seconds: float = 60.0


@dataclass
class RequestStats:
    """HTTP requests the client attempted (``requests``), of which ``retries`` were retries."""

    requests: int = 0
    retries: int = 0


@dataclass(frozen=True)
class Answer:
    """A final answer: status, headers, and the JSON of a 2xx (``data``) or the head of another's ``body``."""

    status: int
    headers: httpx.Headers
    body: bytes = b""
    data: Any = None

    def message(self) -> str | None:
        """The API's error text in the body (JSON ``errors``/``message``, or plain text), if any."""
        try:
            return api_message(json.loads(self.body))
        except (ValueError, UnicodeDecodeError):
            text = self.body.decode("utf-8", "replace").strip()
            return None if not text or _looks_html(self.headers, self.body) else text


def api_message(body: Any) -> str | None:
    """The API's own error text in a decoded body: ``errors[].message`` or a top-level ``message``."""
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        parts = [str(e["message"]) if isinstance(e, dict) and "message" in e else str(e) for e in body["errors"]]
        return "; ".join(parts)
    return body["message"] if isinstance(body, dict) and isinstance(body.get("message"), str) else None


def _looks_html(headers: httpx.Headers, body: bytes) -> bool:
    return "html" in headers.get("content-type", "").lower() or body[:200].lstrip().lower().startswith(
        (b"<!doctype", b"<html")
    )


@dataclass(frozen=True)
class Request:
    """One logical GET: the full ``url`` (query included; it holds no secret) and how messages name it."""

    client: ApiClient
    url: str
    shown: str

    def fail(self, cls: type[ApiError], message: str, spent: str = "", **kwargs: Any) -> NoReturn:
        """Raise ``cls``: ``message`` (outside text in it went through :meth:`quote`), then ``(GET <shown>)``
        or ``(GET <shown>; <spent>)``, so that the same cause met by several requests reads alike."""
        where = f"(GET {self.shown}{'; ' + spent if spent else ''})"
        raise cls(re.sub(r"\s+", " ", f"{message} {where}").strip(), url=self.url, **kwargs)

    def quote(self, text: str | None) -> str:
        """Outside text made safe to embed: one line, at most 300 characters, the API key masked."""
        text = re.sub(r"\s+", " ", self.client.redact(text or "")).strip()
        return text if len(text) <= 300 else text[:297] + "..."


class _Retry(Exception):
    """One try failed in a way worth retrying; ``kind``: status, timeout, refused, network or body."""

    def __init__(self, failure: str, kind: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(failure)
        self.failure, self.kind, self.status, self.retry_after = failure, kind, status, retry_after


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date); None if absent/invalid."""
    if value is None or re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        return None if value is None else float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, (when.replace(tzinfo=when.tzinfo or UTC) - datetime.now(UTC)).total_seconds())


def _causes(exc: BaseException) -> Generator[BaseException, None, None]:
    """``exc`` and everything it was raised from, exception groups included."""
    seen, todo = set(), [exc]
    while todo:
        cur = todo.pop()
        if id(cur) not in seen:
            seen.add(id(cur))
            yield cur
            todo += [c for c in (cur.__cause__, cur.__context__) if c is not None]
            todo += list(getattr(cur, "exceptions", ()))


def dns_failure(exc: BaseException) -> tuple[bool, str] | None:
    """(permanent, resolver text) when ``exc`` comes from a failed host name lookup, else None.

    EAI_NONAME / EAI_NODATA say the name does not exist (permanent); the rest
    ("Temporary failure in name resolution") may pass.
    """
    gai = next((c for c in _causes(exc) if isinstance(c, socket.gaierror)), None)
    if gai is None:
        return None
    return gai.errno in {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}, gai.strerror or str(gai)


async def _try(req: Request, seconds: float, bound: str) -> Answer:
    """One try, cut after ``seconds``; ``_Retry`` when worth retrying, a ``flows.errors`` exception when final."""
    url = httpx.URL(req.url)
    try:
        async with asyncio.timeout(seconds), req.client.stream("GET", url) as response:
            status, headers = response.status_code, response.headers
            if status in TRANSIENT_STATUSES:
                said = req.quote(Answer(status, headers, await read_bounded(req, response, _ERROR_BODY_BYTES)).message())
                raise _Retry(f"HTTP {status}" + (f' "{said}"' if said else ""), "status", status=status,
                             retry_after=_retry_after(headers.get("Retry-After")))  # fmt: skip
            if response.is_redirect:
                return Answer(status, headers)  # never read, never followed with the key
            if not response.is_success:
                return Answer(status, headers, await read_bounded(req, response, _ERROR_BODY_BYTES))
            declared = headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > req.client.max_bytes:
                _too_large(req, f"it announced {int(declared) / 1e6:g} MB")
            body = await read_bounded(req, response, req.client.max_bytes, cut=False)
    except TimeoutError:
        raise _Retry(f"no complete answer {bound}", "timeout") from None
    except httpx.TimeoutException as exc:
        raise _Retry(f"{type(exc).__name__} {bound}", "timeout") from None
    except httpx.ConnectError as exc:
        dns = dns_failure(exc)
        if dns is not None and dns[0]:
            req.fail(HostNotFoundError, f"the host {url.host} cannot be resolved ({req.quote(dns[1])}): "
                                        f"check the URL ({setting('base_url')}) and the network")  # fmt: skip
        if dns is not None:
            raise _Retry(f"the host {url.host} cannot be resolved right now ({req.quote(dns[1])})", "network") from None
        refused = any(isinstance(c, ConnectionRefusedError) for c in _causes(exc))
        raise _Retry(f"connection failed: {req.quote(str(exc)) or type(exc).__name__}",
                     "refused" if refused else "network") from None  # fmt: skip
    except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
        raise _Retry(f"connection failed ({type(exc).__name__}: {req.quote(str(exc)) or 'no detail'})", "network") from None
    except httpx.TransportError as exc:
        req.fail(PermanentApiError, f"the request could not be sent ({type(exc).__name__}): check {setting('base_url')}")
    if _looks_html(headers, body):
        req.fail(BadResponseError, f"the API answered with HTML, not JSON (content-type {headers.get('content-type')}): "
                                   f"is {setting('base_url')} pointing at the API?", status=status)  # fmt: skip
    try:
        return Answer(status, headers, data=json.loads(body))  # the bytes are not kept: 14 MB a region at scale
    except (ValueError, UnicodeDecodeError) as exc:  # cut short on the way, most likely: worth another try
        where = f"{exc.msg}: byte {exc.pos} of {len(body)}" if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise _Retry(f"not valid JSON: {where}", "body", status=status) from None


async def read_bounded(req: Request, response: httpx.Response, limit: int, *, cut: bool = True) -> bytes:
    """At most ``limit`` bytes of the body; past that, ``cut`` keeps the head, else ResponseTooLargeError."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            if not cut:
                _too_large(req, "reading stopped there")
            chunks.append(chunk[: len(chunk) - (size - limit)])
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(req: Request, detail: str) -> NoReturn:
    bound = req.client.max_bytes
    req.fail(ResponseTooLargeError, f"the API's answer is larger than {f'{bound / 1e6:g} MB' if bound >= 100_000 else f'{bound} bytes'} "
             f"({detail}): check {setting('base_url')}, or raise ${MAX_RESPONSE_ENV} if the API really sends that much")  # fmt: skip


async def send(
    req: Request, *, retry: RetryPolicy, stats: RequestStats, before_request: Callable[[], Awaitable[None]] | None
) -> Answer:
    """The first answer to ``req`` that is not worth retrying (any status but 408, 429, 5xx; a 2xx with JSON).

    Each try awaits ``before_request`` (e.g. the run's request budget) and counts
    in ``stats``; retries are logged as warnings. Raises, with the true number of
    tries and seconds: ``TransientApiError`` (``DeadlineExceededError`` when the
    last try ran out of time) once the tries or the time run out, or at once when
    ``Retry-After`` asks for more time than is left; ``NothingListeningError``
    after 3 refused connections; ``BadResponseError`` for HTML, or a body that was
    no JSON on every try; ``HostNotFoundError``, ``ResponseTooLargeError`` at once.
    """
    total = max(retry.max_total_seconds, req.client.deadline)
    started = time.monotonic()

    async def one_try() -> Answer:
        if before_request is not None:
            await before_request()
        stats.requests += 1
        left = max(total - (time.monotonic() - started), 0.001)
        if left < req.client.deadline:
            return await _try(req, left, f"before the {total:g}s retry budget ran out")
        return await _try(req, req.client.deadline, f"within the {req.client.deadline:g}s deadline")

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retry) and exc.retry_after is not None:
            return exc.retry_after
        return tenacity.wait_random_exponential(multiplier=retry.base_delay, max=retry.max_delay)(state)

    def refused_enough(state: tenacity.RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        return getattr(exc, "kind", None) == "refused" and state.attempt_number >= _REFUSED_TRIES

    def log_retry(state: tenacity.RetryCallState) -> None:
        stats.retries += 1
        logger.warning("(GET %s) failed: %s; retrying in %.2fs (try %d of at most %d)", req.shown,
                       getattr(state.outcome.exception(), "failure", None), state.upcoming_sleep,
                       state.attempt_number + 1, retry.max_attempts)  # fmt: skip

    def give_up(state: tenacity.RetryCallState) -> NoReturn:
        exc = state.outcome.exception()
        assert isinstance(exc, _Retry)
        seconds = time.monotonic() - started
        tries = f"{state.attempt_number} tr{'ies' if state.attempt_number > 1 else 'y'} in {seconds:.1f}s"
        if exc.kind == "refused":
            u = httpx.URL(req.url)
            req.fail(NothingListeningError, f"nothing is listening at {u.host}:{u.port or {'https': 443}.get(u.scheme, 80)} "
                     f"(connection refused): start the API server there, or fix {setting('base_url')}", tries)  # fmt: skip
        if exc.kind == "body":
            req.fail(BadResponseError, f"the API's answer is {exc.failure}, on every try (cut short or malformed): "
                     f"check {setting('base_url')} and any proxy between here and the API", tries, status=exc.status)  # fmt: skip
        cls = DeadlineExceededError if exc.kind == "timeout" else TransientApiError
        if exc.retry_after is not None and state.attempt_number < retry.max_attempts and exc.retry_after > total - seconds:
            at = (datetime.now(UTC) + timedelta(seconds=exc.retry_after)).strftime("%Y-%m-%d %H:%M:%S UTC")
            message = (f"the API asked to retry after {exc.retry_after:.0f}s ({exc.failure}), more than the "
                       f"{max(total - seconds, 0):.0f}s left of this request's retry budget: try again after {at}")  # fmt: skip
        else:
            what = {"timeout": "the API did not answer in time", "status": "the API is unavailable or overloaded"}
            advice = f"try again later, or raise ${DEADLINE_ENV} if the API is just slow" if exc.kind == "timeout" else (
                f"try again in {exc.retry_after:.0f}s or later" if exc.retry_after else "try again later")  # fmt: skip
            message = f"{what.get(exc.kind, 'the API could not be reached')} ({exc.failure}): {advice}"
        req.fail(cls, message, tries, status=exc.status, retry_after=exc.retry_after)

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(retry.max_attempts) | tenacity.stop_before_delay(total) | refused_enough,
        wait=wait,
        retry=tenacity.retry_if_exception_type(_Retry),
        before_sleep=log_retry,
        retry_error_callback=give_up,
    )
    return await retrying(one_try)


def raise_for_status(req: Request, answer: Answer, name: str, fields: Sequence[str], dialect: Dialect) -> NoReturn:
    """Raise the ``flows.errors`` exception of a final answer that is not 2xx (transient statuses never get here).

    401 ``AuthenticationError``, 403 ``QuotaExceededError``, 404 ``UnknownRegionError``
    (region ``name``; ``PermanentApiError`` when the API names an unknown field),
    400, 3xx and the rest ``PermanentApiError``.
    """
    status, message = answer.status, answer.message()
    said = f' "{req.quote(message)}"' if message else ""
    if status == 401:
        req.fail(AuthenticationError, f"the API key was refused (HTTP 401{said}): {KEY_ADVICE} to a valid key",
                 status=status)  # fmt: skip
    if status == 403:
        req.fail(QuotaExceededError, f"the API refused the request (HTTP 403{said}): the plan's request quota is "
                 "used up or a requested field needs a premium plan; wait for the quota to reset or upgrade the plan",
                 status=status)  # fmt: skip
    if status == 404 and any(w in (message or "").lower() for w in ("propert", "field")):
        req.fail(PermanentApiError, f"the API does not know a requested field (HTTP 404{said}; asked for "
                 f"{','.join(fields)}): the {dialect.name} schema may have changed, check {setting('api')}",
                 status=404)  # fmt: skip
    if status == 404:
        req.fail(UnknownRegionError, f"no countries of {name!r} at this API (HTTP 404{said}): the server may hold "
                 f"none, or the path of {setting('base_url')} is wrong (a {dialect.name} base URL looks like "
                 f"{dialect.base_url_example})",
                 status=404, region=name, request=f"GET {req.shown}")  # fmt: skip
    if status == 400:
        req.fail(PermanentApiError, f"the API rejected a request parameter (HTTP 400{said}): check the region "
                 "name, or report this if the API changed", status=status)  # fmt: skip
    if 300 <= status < 400:
        req.fail(PermanentApiError, f"the API redirected the request (HTTP {status} to "
                 f"{req.quote(answer.headers.get('Location', '?'))}), and the client does not follow redirects: "
                 f"point {setting('base_url')} at the final API address", status=status)  # fmt: skip
    req.fail(PermanentApiError, f"the API answered HTTP {status}{said}, and retrying will not help: check "
             f"{setting('base_url')} and {setting('api')}", status=status)  # fmt: skip
