"""One GET to the API, bounded in time and size and retried (tenacity): :func:`send`, :func:`raise_for_status`.

Every failure is one ``flows.errors`` line: the cause, what to do, then the request
(``(GET …/subregion/Caribbean)``) and, after retries, the tries and seconds it took.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

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
E = TypeVar("E", bound=BaseException)

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_REFUSED_TRIES = 3  # connection refused: a restarting server gets ~1 s, then the run says nothing listens there
_ERROR_BODY_BYTES = 64_000  # how much of an error answer is read for its message


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one request: at most ``max_attempts`` tries, random exponential waits from ``base_delay`` up to
    ``max_delay`` (or what ``Retry-After`` asks), all within ``max_total_seconds`` (at least one deadline)."""

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
        auth, text = self.client.key_auth, text or ""
        text = re.sub(r"\s+", " ", text if auth is None else text.replace(auth.key, "***")).strip()
        return text if len(text) <= 300 else text[:297] + "..."


@dataclass
class _Retry(Exception):
    """One try failed in a way worth retrying; ``kind``: a key of :data:`_GIVE_UP`."""

    failure: str
    kind: str
    status: int | None = None
    retry_after: float | None = None


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date); None if absent/invalid."""
    if value is None or re.fullmatch(r"\s*\d+(\.\d+)?\s*", value):
        return None if value is None else float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, (when.replace(tzinfo=when.tzinfo or UTC) - datetime.now(UTC)).total_seconds())


def _cause(exc: BaseException, kind: type[E]) -> E | None:
    """The first ``kind`` among ``exc`` and what it was raised from, exception groups included."""
    todo = [exc]
    while todo:
        cur = todo.pop()
        if isinstance(cur, kind):
            return cur
        todo += [c for c in (cur.__cause__ or cur.__context__, *getattr(cur, "exceptions", ())) if c is not None]
    return None


def dns_failure(exc: BaseException) -> tuple[bool, str] | None:
    """(permanent, resolver text) when ``exc`` comes from a failed host name lookup (permanent: the name does not
    exist, EAI_NONAME / EAI_NODATA), else None."""
    gai = _cause(exc, socket.gaierror)
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
                raise _Retry(f"HTTP {status}" + (f' "{said}"' if said else ""), "status", status,
                             _retry_after(headers.get("Retry-After")))  # fmt: skip
            if response.is_redirect:
                return Answer(status, headers)  # never read, never followed with the key
            if not response.is_success:
                return Answer(status, headers, await read_bounded(req, response, _ERROR_BODY_BYTES))
            declared = headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > req.client.max_bytes:
                _too_large(req, f"it announced {int(declared) / 1e6:g} MB")
            body = await read_bounded(req, response, req.client.max_bytes, cut=False)
    except (TimeoutError, httpx.TimeoutException) as exc:
        what = "no complete answer" if isinstance(exc, TimeoutError) else type(exc).__name__
        raise _Retry(f"{what} {bound}", "timeout") from None
    except httpx.ConnectError as exc:
        dns = dns_failure(exc)
        if dns is not None and dns[0]:
            req.fail(HostNotFoundError, f"the host {url.host} cannot be resolved ({req.quote(dns[1])}): "
                                        f"check the URL ({setting('base_url')}) and the network")  # fmt: skip
        if dns is not None:
            raise _Retry(f"the host {url.host} cannot be resolved right now ({req.quote(dns[1])})", "network") from None
        raise _Retry(f"connection failed: {req.quote(str(exc)) or type(exc).__name__}",
                     "network" if _cause(exc, ConnectionRefusedError) is None else "refused") from None  # fmt: skip
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
        raise _Retry(f"not valid JSON: {where}", "body", status) from None


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


_GIVE_UP = {  # the last failure's kind -> (error, message)
    "refused": (NothingListeningError, "nothing is listening at {host_port} (connection refused): start the API "
                "server there, or fix {base_url}"),
    "body": (BadResponseError, "the API's answer is {failure}, on every try (cut short or malformed): check "
             "{base_url} and any proxy between here and the API"),
    "timeout": (DeadlineExceededError, "the API did not answer in time ({failure}): try again later, or raise $"
                + DEADLINE_ENV + " if the API is just slow"),
    "status": (TransientApiError, "the API is unavailable or overloaded ({failure}): {again}"),
    "network": (TransientApiError, "the API could not be reached ({failure}): {again}"),
}  # fmt: skip
_TOO_LATE = ("the API asked to retry after {retry_after:.0f}s ({failure}), more than the {left:.0f}s left of this "
             "request's retry budget: try again after {at}")  # fmt: skip


async def send(
    req: Request, *, retry: RetryPolicy, stats: RequestStats, before_request: Callable[[], Awaitable[None]] | None
) -> Answer:
    """The first answer to ``req`` not worth retrying (any status but 408, 429, 5xx; a 2xx with JSON).

    Each try awaits ``before_request`` and counts in ``stats``; retries are logged as warnings. Raises
    with the tries and seconds spent: ``TransientApiError`` (``DeadlineExceededError`` after a timeout)
    when tries or time run out, or at once when ``Retry-After`` asks for more than is left;
    ``NothingListeningError`` after 3 refused connections; ``BadResponseError`` for HTML or no JSON on
    every try; ``HostNotFoundError`` and ``ResponseTooLargeError`` at once.
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

    backoff = tenacity.wait_random_exponential(multiplier=retry.base_delay, max=retry.max_delay)

    def wait(state: tenacity.RetryCallState) -> float:
        asked = state.outcome.exception().retry_after
        return backoff(state) if asked is None else asked

    def log_retry(state: tenacity.RetryCallState) -> None:
        stats.retries += 1
        logger.warning("(GET %s) failed: %s; retrying in %.2fs (try %d of at most %d)", req.shown,
                       state.outcome.exception().failure, state.upcoming_sleep,
                       state.attempt_number + 1, retry.max_attempts)  # fmt: skip

    def give_up(state: tenacity.RetryCallState) -> NoReturn:
        exc, tries, seconds = state.outcome.exception(), state.attempt_number, time.monotonic() - started
        cls, template = _GIVE_UP[exc.kind]
        if exc.retry_after is not None and tries < retry.max_attempts and exc.retry_after > total - seconds:
            template = _TOO_LATE
        u = httpx.URL(req.url)
        message = template.format(
            failure=exc.failure,
            base_url=setting("base_url"),
            host_port=f"{u.host}:{u.port or {'https': 443}.get(u.scheme, 80)}",
            again=f"try again in {exc.retry_after:.0f}s or later" if exc.retry_after else "try again later",
            retry_after=exc.retry_after,
            left=max(total - seconds, 0),
            at=(datetime.now(UTC) + timedelta(seconds=exc.retry_after or 0)).strftime("%Y-%m-%d %H:%M:%S UTC"),
        )
        extra = {"retry_after": exc.retry_after} if issubclass(cls, TransientApiError) else {}
        req.fail(cls, message, f"{tries} tr{'ies' if tries > 1 else 'y'} in {seconds:.1f}s", status=exc.status, **extra)

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(retry.max_attempts)
        | tenacity.stop_before_delay(total)
        | (lambda state: state.outcome.exception().kind == "refused" and state.attempt_number >= _REFUSED_TRIES),
        wait=wait,
        retry=tenacity.retry_if_exception_type(_Retry),
        before_sleep=log_retry,
        retry_error_callback=give_up,
    )
    return await retrying(one_try)


_FINAL = {  # a final status -> (error, message)
    400: (PermanentApiError, "the API rejected a request parameter (HTTP 400{said}): check the region name, or "
          "report this if the API changed"),
    401: (AuthenticationError, "the API key was refused (HTTP 401{said}): " + KEY_ADVICE + " to a valid key"),
    403: (QuotaExceededError, "the API refused the request (HTTP 403{said}): the plan's request quota is used up "
          "or a requested field needs a premium plan; wait for the quota to reset or upgrade the plan"),
}  # fmt: skip


def raise_for_status(req: Request, answer: Answer, name: str, fields: Sequence[str], dialect: Dialect) -> NoReturn:
    """Raise the error of a final answer that is not 2xx: 401 ``AuthenticationError``, 403 ``QuotaExceededError``,
    404 ``UnknownRegionError`` (region ``name``; ``PermanentApiError`` for an unknown field), else
    ``PermanentApiError``."""
    status, message = answer.status, answer.message()
    said = f' "{req.quote(message)}"' if message else ""
    if status in _FINAL:
        req.fail(_FINAL[status][0], _FINAL[status][1].format(said=said), status=status)
    if status == 404 and any(w in (message or "").lower() for w in ("propert", "field")):
        req.fail(PermanentApiError, f"the API does not know a requested field (HTTP 404{said}; asked for "
                 f"{','.join(fields)}): the {dialect.name} schema may have changed, check {setting('api')}",
                 status=404)  # fmt: skip
    if status == 404:
        req.fail(UnknownRegionError, f"no countries of {name!r} at this API (HTTP 404{said}): the server may hold "
                 f"none, or the path of {setting('base_url')} is wrong (a {dialect.name} base URL looks like "
                 f"{dialect.base_url_example})",
                 status=404, region=name, request=f"GET {req.shown}")  # fmt: skip
    if 300 <= status < 400:
        req.fail(PermanentApiError, f"the API redirected the request (HTTP {status} to "
                 f"{req.quote(answer.headers.get('Location', '?'))}), and the client does not follow redirects: "
                 f"point {setting('base_url')} at the final API address", status=status)  # fmt: skip
    req.fail(PermanentApiError, f"the API answered HTTP {status}{said}, and retrying will not help: check "
             f"{setting('base_url')} and {setting('api')}", status=status)  # fmt: skip
