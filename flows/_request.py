"""One logical GET to the REST Countries API: bounded in time and size, retried, decoded (private).

- :class:`Request`: a URL and query, how the request is named in messages, and
  :meth:`Request.send`. Each attempt is streamed and has a total deadline
  (connect, headers and the whole body) and a body size bound from the
  :class:`~flows._http.ApiClient`; failures worth retrying are retried by
  :func:`flows._retry.send_with_retries`.
- :class:`Answer`: a response read within those bounds; :func:`decode` turns a
  2xx answer into JSON; :func:`read_redirect_message` reads, without
  credentials, what the target of a redirect says.
- :func:`dns_failure`: whether a connection error is a host name that does not
  exist (permanent) or a lookup that may pass (transient).

Every message is one line: the cause first, then what to do, then the request
as ``(GET …/subregion/Narnia)`` (:meth:`Request.fail`). The query string is
left out; the full URL is on the exception's ``url``. Text that came from
outside is one-lined, shortened and has the API key masked
(:meth:`Request.quote`), in case a server echoes it back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote, urlencode

import httpx

from flows._http import DEADLINE_ENV, MAX_RESPONSE_ENV, USER_AGENT, ApiClient
from flows._retry import Hook, RequestStats, RetryableFailure, RetryPolicy, parse_retry_after, send_with_retries
from flows._statuses import TRANSIENT_STATUSES, api_message
from flows.errors import (
    ApiError,
    BadResponseError,
    ConfigurationError,
    HostNotFoundError,
    PermanentApiError,
    ResponseTooLargeError,
    setting,
)

__all__ = ["Answer", "Request", "decode", "dns_failure", "one_line", "read_redirect_message"]

logger = logging.getLogger("flows.api")

_MAX_QUOTE = 300
_ERROR_BODY_BYTES = 64_000  # how much of an error answer is read for its message
_REDIRECT_BODY_BYTES = 64_000
_REDIRECT_SECONDS = 10.0
_SLOW_ADVICE = f"try again later, or raise ${DEADLINE_ENV} if the API is just slow"


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` with whitespace runs collapsed to one space, optionally shortened to ``limit`` characters."""
    text = re.sub(r"\s+", " ", text).strip()
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _megabytes(n: int) -> str:
    return f"{n / 1e6:g} MB" if n >= 100_000 else f"{n} bytes"


@dataclass(frozen=True)
class Answer:
    """A response read within the bounds: status, headers and the (possibly empty) body."""

    status: int
    headers: httpx.Headers
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "") or "none"

    def looks_html(self) -> bool:
        head = self.body[:200].lstrip().lower()
        return "html" in self.content_type.lower() or head.startswith((b"<!doctype", b"<html"))

    def message(self) -> str | None:
        """The API's error text in the body (JSON ``errors``/``message``, or plain text), if any."""
        try:
            return api_message(json.loads(self.body))
        except (ValueError, UnicodeDecodeError):
            text = self.body.decode("utf-8", "replace").strip()
            if not text or self.looks_html():
                return None
            return text


def _resolver_error(exc: BaseException) -> socket.gaierror | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, socket.gaierror):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def dns_failure(exc: BaseException) -> tuple[bool, str] | None:
    """(permanent, resolver text) when ``exc`` comes from a failed host name lookup, else None.

    "Name or service not known" (EAI_NONAME) and "No address associated with
    hostname" (EAI_NODATA) say the name does not exist: permanent. "Temporary
    failure in name resolution" (EAI_AGAIN) and the rest may pass: transient.
    """
    gai = _resolver_error(exc)
    if gai is None:
        return None
    permanent = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
    text = gai.strerror or str(gai)
    return gai.errno in permanent, text


class Request:
    """One logical GET: URL, query, how it is shown in messages, and what runs and reports it.

    ``shown`` is the short form used at the end of messages (e.g.
    ``…/subregion/Narnia``); the full URL is :attr:`full_url`, also set as
    ``url`` on every raised ``ApiError``. ``retry``, ``stats`` and
    ``before_request``: see :func:`flows._retry.send_with_retries`.
    """

    def __init__(
        self,
        client: ApiClient,
        url: str,
        params: Mapping[str, str | int],
        *,
        shown: str,
        retry: RetryPolicy,
        stats: RequestStats,
        before_request: Hook | None,
    ):
        self.client = client
        self.url = url
        # Commas stay literal (``fields=name,currencies``) as the API documents; spaces are %20.
        query = urlencode(dict(params), safe=",", quote_via=quote)
        self.full_url = f"{url}?{query}" if query else url
        self.shown = shown
        self.retry = retry
        self.stats = stats
        self.before_request = before_request

    # --- messages ---

    def where(self) -> str:
        return f"(GET {self.shown})"

    def error(self, cls: type[ApiError], message: str, **kwargs: Any) -> ApiError:
        """``cls``: ``message`` (cause first, then what to do), then ``(GET <shown>)``; ``url`` set.

        ``message`` is our own text; anything in it that came from outside
        (the API's words, exception texts) must have gone through :meth:`quote`.
        """
        return cls(one_line(f"{message} {self.where()}"), url=self.full_url, **kwargs)

    def fail(self, cls: type[ApiError], message: str, **kwargs: Any) -> NoReturn:
        """Raise :meth:`error` ``(cls, message, **kwargs)``."""
        raise self.error(cls, message, **kwargs)

    def quote(self, text: str | None) -> str:
        """Outside text made safe to embed: one line, shortened, the API key masked as ``***``."""
        return one_line(self.client.redact(text or ""), _MAX_QUOTE)

    def said(self, answer: Answer) -> str:
        """`` "the API's message"`` (with a leading space), or ``""``."""
        message = answer.message()
        return f' "{self.quote(message)}"' if message else ""

    # --- sending ---

    async def send(self) -> Answer:
        """The first answer that is not a transient failure, retrying those within the policy.

        Raises ``TransientApiError`` (``DeadlineExceededError`` when the last try
        ran out of time) once the attempts or the time run out, or at once when
        ``Retry-After`` asks for more time than is left; ``HostNotFoundError``
        when the host name does not exist; ``ResponseTooLargeError`` past the
        size bound; ``ConfigurationError`` for a URL httpx cannot send;
        ``PermanentApiError`` for a local protocol error.
        """
        return await send_with_retries(
            self._attempt,
            policy=self.retry,
            deadline=self.client.deadline,
            stats=self.stats,
            before_request=self.before_request,
            where=self.where(),
            error=self.error,
        )

    async def _attempt(self, seconds: float, bound: str) -> Answer:
        """One try, cut after ``seconds`` (``bound`` says which limit that is, for the message)."""
        try:
            async with asyncio.timeout(seconds):
                return await self._read()
        except TimeoutError as exc:
            raise RetryableFailure(
                f"no complete answer {bound}", timed_out=True, advice=_SLOW_ADVICE, cause=exc
            ) from None
        except httpx.TimeoutException as exc:
            raise RetryableFailure(
                f"{type(exc).__name__} {bound}", timed_out=True, advice=_SLOW_ADVICE, cause=exc
            ) from None
        except httpx.UnsupportedProtocol:
            raise ConfigurationError(
                f"The API URL {self.url!r} cannot be requested: {setting('base_url')} must start with "
                "http:// or https://."
            ) from None
        except httpx.ConnectError as exc:
            dns = dns_failure(exc)
            host = httpx.URL(self.url).host
            if dns is not None and dns[0]:
                self.fail(
                    HostNotFoundError,
                    f"the host {host} cannot be resolved ({self.quote(dns[1])}): "
                    f"check the URL ({setting('base_url')}) and the network",
                )
            if dns is not None:
                raise RetryableFailure(
                    f"the host {host} cannot be resolved right now ({self.quote(dns[1])})",
                    advice="check the network, or try again later",
                    cause=exc,
                ) from None
            raise RetryableFailure(
                f"connection failed: {self.quote(str(exc)) or type(exc).__name__}", cause=exc
            ) from None
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            raise RetryableFailure(
                f"connection failed ({type(exc).__name__}: {self.quote(str(exc)) or 'no detail'})", cause=exc
            ) from None
        except httpx.DecodingError as exc:
            self.fail(
                BadResponseError,
                f"the API's answer cannot be decoded ({type(exc).__name__}: "
                f"{self.quote(str(exc))}): is {setting('base_url')} pointing at the API?",
            )
        except httpx.TransportError as exc:
            self.fail(
                PermanentApiError, f"the request could not be sent ({type(exc).__name__}): check {setting('base_url')}"
            )

    async def _read(self) -> Answer:
        logger.debug("GET %s", self.full_url)
        limit = self.client.max_bytes
        async with self.client.http.stream("GET", self.full_url) as response:
            status = response.status_code
            if status in TRANSIENT_STATUSES:
                answer = Answer(status, response.headers, await self._body(response, _ERROR_BODY_BYTES, cut=True))
                message = answer.message()
                raise RetryableFailure(
                    f"HTTP {status}" + (f' "{self.quote(message)}"' if message else ""),
                    status=status,
                    retry_after=parse_retry_after(response.headers.get("Retry-After")),
                )
            if 300 <= status < 400:
                return Answer(status, response.headers, b"")  # never read, never followed with the key
            if not 200 <= status < 300:
                return Answer(status, response.headers, await self._body(response, _ERROR_BODY_BYTES, cut=True))
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                self._too_large(f"it announced {_megabytes(int(declared))}")
            return Answer(status, response.headers, await self._body(response, limit))

    async def _body(self, response: httpx.Response, limit: int, *, cut: bool = False) -> bytes:
        """At most ``limit`` bytes of the body; past that, ``cut`` keeps the head, else ResponseTooLargeError."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                if cut:
                    chunks.append(chunk[: len(chunk) - (size - limit)])
                    break
                self._too_large("reading stopped there")
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, detail: str) -> NoReturn:
        self.fail(
            ResponseTooLargeError,
            f"the API's answer is larger than {_megabytes(self.client.max_bytes)} ({detail}): check "
            f"{setting('base_url')}, or raise ${MAX_RESPONSE_ENV} if the API really sends that much",
        )


def decode(req: Request, answer: Answer) -> Any:
    """The JSON body of a 2xx ``answer``; ``BadResponseError`` if it is HTML, empty or not JSON."""
    if answer.looks_html():
        req.fail(
            BadResponseError,
            f"the API answered with HTML, not JSON (content-type {answer.content_type}): "
            f"is {setting('base_url')} pointing at the API?",
            status=answer.status,
        )
    if not answer.body.strip():
        req.fail(
            BadResponseError,
            f"the API answered HTTP {answer.status} with an empty body, not JSON: "
            f"is {setting('base_url')} pointing at the API?",
            status=answer.status,
        )
    try:
        return json.loads(answer.body)
    except (ValueError, UnicodeDecodeError) as exc:
        where = (
            f"{exc.msg}: byte {exc.pos} of {len(answer.body)}"
            if isinstance(exc, json.JSONDecodeError)
            else type(exc).__name__
        )
        req.fail(
            BadResponseError,
            f"the API's answer is not valid JSON ({where}; content-type "
            f"{answer.content_type}), probably cut short: try again, and check {setting('base_url')} "
            "if it persists",
            status=answer.status,
        )


async def read_redirect_message(req: Request, answer: Answer) -> str | None:
    """The ``errors[].message`` of the page a 3xx ``answer`` points to, read safely; None if unreadable.

    None too when that page is not the API's ``errors`` body (a JSON object
    with an ``errors`` list), e.g. the countries a server that moved answers with.

    One GET of the ``Location`` (resolved against the request URL), by a fresh
    client with no credentials, no cookies and no further redirects, within
    10 s (or the request deadline if shorter) and 64 kB. Any failure gives None.
    """
    location = answer.headers.get("Location")
    if not location:
        return None
    try:
        target = httpx.URL(req.url).join(location)
    except (httpx.InvalidURL, ValueError):
        return None
    if target.scheme not in ("http", "https"):
        return None
    seconds = min(_REDIRECT_SECONDS, req.client.deadline)
    try:
        async with (
            asyncio.timeout(seconds),
            httpx.AsyncClient(
                headers={"Accept": "application/json", "User-Agent": USER_AGENT},
                follow_redirects=False,
                timeout=seconds,
            ) as bare,
            bare.stream("GET", target) as response,
        ):
            if not 200 <= response.status_code < 300:
                return None
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > _REDIRECT_BODY_BYTES:
                    return None
    except (httpx.HTTPError, TimeoutError, OSError):
        return None
    try:
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not (isinstance(decoded, dict) and isinstance(decoded.get("errors"), list)):
        return None  # not the API's errors body (e.g. the data a moved server answers with)
    message = api_message(decoded)
    return req.quote(message) if message else None
