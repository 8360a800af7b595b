"""HTTP plumbing of the REST Countries client (private; see ``flows.api``).

- :func:`make_client` / :class:`ApiClient`: one ``httpx.AsyncClient`` whose
  :class:`KeyAuth` adds the API key to a request only when the request goes to a
  trusted origin over https (or plain http to this machine), so no code path can
  send it anywhere else; redirects are never followed with it.
- :class:`Request`: one logical GET. Each attempt has a total deadline (connect,
  headers and the whole body) and a body size bound, and is streamed; transient
  failures are retried by ``tenacity`` (jittered exponential backoff,
  ``Retry-After`` honoured, bounded attempts and total time).
- :func:`raise_for_status`: the one place where an HTTP status becomes a
  ``flows.errors`` exception.

Every message is one line: the cause first, then what to do, then the request
as ``(GET …/subregion/Narnia)``. The query string is left out; the full URL is
on the exception's ``url``. Text that came from outside is one-lined, shortened
and has the API key masked, in case a server echoes it back.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import ipaddress
import json
import logging
import math
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn
from urllib.parse import quote, urlencode

import httpx
import tenacity

from flows.errors import (
    ApiError,
    AuthenticationError,
    BadResponseError,
    ConfigurationError,
    DeadlineExceededError,
    DemoKeyError,
    HostNotFoundError,
    PermanentApiError,
    QuotaExceededError,
    ResponseTooLargeError,
    TransientApiError,
    setting,
)

logger = logging.getLogger("flows.api")

HOSTED_ORIGIN = "https://api.restcountries.com"
"""The hosted API's origin: the API key is always allowed to go there."""

DEMO_KEY = "rc_live_demo"
"""The public demo key of REST Countries' docs: it answers every query with one fixed sample record."""

KEY_SIGNUP_URL = "https://restcountries.com"
KEY_ADVICE = "set RESTCOUNTRIES_API_KEY or the `restcountries-api-key` Secret block"

DEADLINE_ENV = "RESTCOUNTRIES_DEADLINE_SECONDS"
MAX_RESPONSE_ENV = "RESTCOUNTRIES_MAX_RESPONSE_MB"
DEFAULT_DEADLINE_SECONDS = 60.0
DEFAULT_MAX_RESPONSE_BYTES = 20_000_000

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_USER_AGENT = "countries-pipeline (+httpx)"
_MAX_QUOTE = 300
_ERROR_BODY_BYTES = 64_000  # how much of an error answer is read for its message
_REDIRECT_BODY_BYTES = 64_000
_REDIRECT_SECONDS = 10.0
_SLOW_ADVICE = f"try again later, or raise ${DEADLINE_ENV} if the API is just slow"


# --- where the key may go ------------------------------------------------------------


def origin(url: str | httpx.URL) -> str:
    """``scheme://host[:port]`` of ``url``, lower-case, default ports left out."""
    u = httpx.URL(url) if isinstance(url, str) else url
    port = "" if u.port is None else f":{u.port}"
    host = u.host if ":" not in u.host else f"[{u.host}]"
    return f"{u.scheme}://{host}{port}".lower()


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1``."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class KeyAuth(httpx.Auth):
    """Adds ``Authorization: Bearer <key>`` to a request only when :meth:`sends_to` its URL.

    The key goes to ``trusted_origins`` only (the hosted API's origin and the
    origins of the base URLs the operator configured), and over plain http only
    to this machine. Anything else gets the request without the key. httpx calls
    this for every request the client sends, so it holds for every code path.
    """

    def __init__(self, key: str, trusted_origins: Iterable[str]):
        self._key = key
        self.trusted_origins = frozenset(trusted_origins)

    def __repr__(self) -> str:
        return f"KeyAuth(key=***, trusted_origins={sorted(self.trusted_origins)})"

    def sends_to(self, url: str | httpx.URL) -> bool:
        """Whether the key is sent with a request to ``url``."""
        return withheld_reason(url, self.trusted_origins) is None

    def redact(self, text: str) -> str:
        """``text`` with the key masked as ``***`` (for quoting what a server said)."""
        return text.replace(self._key, "***")

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.sends_to(request.url):
            request.headers["Authorization"] = f"Bearer {self._key}"
        yield request


def withheld_reason(url: str | httpx.URL, trusted_origins: Iterable[str]) -> str | None:
    """Why the key is not sent to ``url`` (``"untrusted"`` or ``"plain-http"``), or None if it is."""
    u = httpx.URL(url) if isinstance(url, str) else url
    if origin(u) not in set(trusted_origins):
        return "untrusted"
    if u.scheme != "https" and not is_loopback(u.host):
        return "plain-http"
    return None


def trusted_origins(base_urls: Iterable[str | None]) -> frozenset[str]:
    """The hosted API's origin plus the origins of ``base_urls`` (blank entries ignored).

    Raises ``ConfigurationError`` for an entry that is not an http(s) URL.
    """
    out = {HOSTED_ORIGIN}
    for raw in base_urls:
        if raw is None or not str(raw).strip():
            continue
        text = str(raw).strip()
        try:
            u = httpx.URL(text)
        except httpx.InvalidURL:
            u = None
        if u is None or u.scheme not in ("http", "https") or not u.host:
            raise ConfigurationError(
                f"The trusted API base URL {text!r} is not an http(s) URL: fix RESTCOUNTRIES_BASE_URL or "
                "save it again with `python blocks/create_blocks.py --base-url URL`."
            )
        out.add(origin(u))
    return frozenset(out)


def fingerprint(key: str | None) -> str:
    """A short SHA-256 hex digest of ``key`` (``"no-key"`` for none): for cache keys, never the key itself."""
    if key is None or not str(key).strip():
        return "no-key"
    return hashlib.sha256(b"restcountries-api-key\0" + str(key).strip().encode()).hexdigest()[:16]


# --- the client ----------------------------------------------------------------------------


def _secret_value(api_key: object) -> str | None:
    if api_key is None:
        return None
    getter = getattr(api_key, "get_secret_value", None)  # pydantic SecretStr, Prefect Secret values
    value = getter() if callable(getter) else api_key
    if not isinstance(value, str):
        raise ConfigurationError("The REST Countries API key must be text.")
    return value.strip() or None


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"${name} must be a positive number, got {raw!r}: fix or unset it.")
    return value


class ApiClient:
    """An HTTP client for the REST Countries API; use ``async with`` (see :func:`make_client`).

    ``http`` is the ``httpx.AsyncClient`` (its ``auth`` is the :class:`KeyAuth`,
    or None without a key); ``deadline`` bounds one request attempt (seconds,
    connect + headers + whole body); ``max_bytes`` bounds one response body.
    """

    def __init__(self, http: httpx.AsyncClient, *, key_auth: KeyAuth | None, deadline: float, max_bytes: int):
        self.http = http
        self.key_auth = key_auth
        self.deadline = deadline
        self.max_bytes = max_bytes

    def __repr__(self) -> str:
        return f"ApiClient(key_auth={self.key_auth!r}, deadline={self.deadline:g}, max_bytes={self.max_bytes})"

    @property
    def has_key(self) -> bool:
        return self.key_auth is not None

    def sends_key_to(self, url: str) -> bool:
        """Whether a request to ``url`` carries the API key."""
        return self.key_auth is not None and self.key_auth.sends_to(url)

    def redact(self, text: str) -> str:
        """``text`` with the API key masked as ``***``."""
        return text if self.key_auth is None else self.key_auth.redact(text)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def make_client(
    *,
    api_key: str | None = None,
    trusted_base_urls: Iterable[str | None] = (),
    deadline: float | None = None,
    max_bytes: int | None = None,
) -> ApiClient:
    """An :class:`ApiClient` for the REST Countries API; the caller closes it (``async with``).

    The key (a non-blank ``api_key``; a ``SecretStr``-like object is accepted) is
    sent as ``Authorization: Bearer`` only to ``https://api.restcountries.com``
    and to the origins of ``trusted_base_urls`` (the base URLs the operator
    configured), and over plain http only to loopback (127.0.0.0/8, ::1,
    localhost). Redirects are not followed.

    ``deadline``: seconds one request attempt may take in total (connect,
    headers, whole body); default ``$RESTCOUNTRIES_DEADLINE_SECONDS`` or 60.
    ``max_bytes``: the largest response body read; default
    ``$RESTCOUNTRIES_MAX_RESPONSE_MB`` megabytes (10**6 bytes) or 20 MB.

    Raises ``ConfigurationError`` for a non-positive deadline or size, a bad
    environment value, a trusted URL that is not http(s), or a key that cannot
    be sent in a header (never quoting the key); ``DemoKeyError`` for the
    public demo key ``rc_live_demo``.
    """
    if deadline is None:
        deadline = _env_number(DEADLINE_ENV, DEFAULT_DEADLINE_SECONDS)
    if max_bytes is None:
        max_bytes = int(_env_number(MAX_RESPONSE_ENV, DEFAULT_MAX_RESPONSE_BYTES / 1e6) * 1e6)
    if not isinstance(deadline, (int, float)) or not deadline > 0 or not math.isfinite(deadline):
        raise ConfigurationError(f"The API request deadline must be a positive number of seconds, got {deadline!r}.")
    if not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ConfigurationError(f"The API response size bound must be a positive number of bytes, got {max_bytes!r}.")
    origins = trusted_origins(trusted_base_urls)
    key = _secret_value(api_key)
    key_auth = None
    if key is not None:
        if not key.isprintable() or not key.isascii() or any(c.isspace() for c in key):
            raise ConfigurationError(
                "The REST Countries API key contains spaces, control or non-ASCII characters; "
                f"{KEY_ADVICE} to the key exactly as issued."
            )
        if key == DEMO_KEY:
            raise DemoKeyError(demo_key_message("the API key is the public demo key rc_live_demo, which"))
        key_auth = KeyAuth(key, origins)
    http = httpx.AsyncClient(
        headers={"Accept": "application/json", "User-Agent": _USER_AGENT},
        auth=key_auth,
        timeout=httpx.Timeout(deadline, connect=min(deadline, 10.0)),
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=10, keepalive_expiry=30.0),
        follow_redirects=False,
    )
    return ApiClient(http, key_auth=key_auth, deadline=float(deadline), max_bytes=max_bytes)


def demo_key_message(subject: str = "the demo key") -> str:
    """The one line for the demo key: it only returns a fixed sample, and where to get a real key."""
    return (
        f"{subject} only returns a fixed sample (one country for every query); get a key at "
        f"{KEY_SIGNUP_URL} and {KEY_ADVICE} to it"
    )


# --- text --------------------------------------------------------------------------------


def one_line(text: str, secret: str | None = None, limit: int | None = None) -> str:
    """``text`` with whitespace runs collapsed to one space, ``secret`` masked, optionally shortened."""
    if secret:
        text = text.replace(secret, "***")
    text = re.sub(r"\s+", " ", text).strip()
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def api_message(body: Any) -> str | None:
    """The API's own error text in a decoded body: ``errors[].message`` or a top-level ``message``."""
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            parts = []
            for err in errors:
                if isinstance(err, dict) and err.get("message") is not None:
                    parts.append(str(err["message"]))
                elif isinstance(err, str):
                    parts.append(err)
            if parts:
                return "; ".join(parts)
            return json.dumps(errors)
        if isinstance(body.get("message"), str):
            return body["message"]
    return None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
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
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def _megabytes(n: int) -> str:
    return f"{n / 1e6:g} MB" if n >= 100_000 else f"{n} bytes"


# --- one answer ----------------------------------------------------------------------------


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


class _Failed(Exception):
    """One attempt failed in a way worth retrying (internal; becomes a TransientApiError)."""

    def __init__(self, failure: str, *, status: int | None = None, retry_after: float | None = None,
                 timed_out: bool = False, advice: str = "try again later", cause: BaseException | None = None):
        super().__init__(failure)
        self.failure = failure
        self.advice = advice
        self.status = status
        self.retry_after = retry_after
        self.timed_out = timed_out
        self.cause = cause


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


Hook = Callable[[], Awaitable[None]]


class Request:
    """One logical GET: URL, query, how it is shown in messages, and what runs and reports it.

    ``shown`` is the short form used at the end of messages (e.g.
    ``…/subregion/Narnia``); the full URL is :attr:`full_url`, also set as
    ``url`` on every raised ``ApiError``.
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
        self.params = dict(params)
        # Commas stay literal (``fields=name,currencies``) as the API documents; spaces are %20.
        query = urlencode(self.params, safe=",", quote_via=quote)
        self.full_url = f"{url}?{query}" if query else url
        self.shown = shown
        self.retry = retry
        self.stats = stats
        self.before_request = before_request

    # --- messages ---

    def where(self) -> str:
        return f"(GET {self.shown})"

    def fail(self, cls: type[ApiError], message: str, **kwargs: Any) -> NoReturn:
        """Raise ``cls``: ``message`` (cause first, then what to do), then ``(GET <shown>)``.

        ``message`` is our own text; anything in it that came from outside
        (the API's words, exception texts) must have gone through :meth:`quote`.
        """
        raise cls(one_line(f"{message} {self.where()}"), url=self.full_url, **kwargs)

    def quote(self, text: str | None) -> str:
        """Outside text made safe to embed: one line, shortened, the API key masked as ``***``."""
        return one_line(self.client.redact(text or ""), None, _MAX_QUOTE)

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
        policy = self.retry
        total = max(policy.max_total_seconds, self.client.deadline)
        started = time.monotonic()

        async def attempt() -> Answer:
            if self.before_request is not None:
                await self.before_request()
            self.stats.requests += 1
            left = max(total - (time.monotonic() - started), 0.001)
            if left < self.client.deadline:
                return await self._attempt(left, f"before the {total:g}s retry budget ran out")
            return await self._attempt(self.client.deadline, f"within the {self.client.deadline:g}s deadline")

        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(policy.max_attempts) | tenacity.stop_before_delay(total),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(_Failed),
            before_sleep=self._log_retry,
            retry_error_callback=self._give_up,
        )
        return await retrying(attempt)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Failed) and exc.retry_after is not None:
            return exc.retry_after
        backoff = tenacity.wait_random_exponential(multiplier=self.retry.base_delay, max=self.retry.max_delay)
        return backoff(state)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        self.stats.retries += 1
        exc = state.outcome.exception() if state.outcome is not None else None
        logger.warning(
            "%s failed: %s; retrying in %.2fs (attempt %d of %d)",
            self.where(), getattr(exc, "failure", exc), state.upcoming_sleep, state.attempt_number + 1,
            self.retry.max_attempts,
        )

    def _give_up(self, state: tenacity.RetryCallState) -> NoReturn:
        exc = state.outcome.exception() if state.outcome is not None else None
        assert isinstance(exc, _Failed)
        tries = state.attempt_number
        total = max(self.retry.max_total_seconds, self.client.deadline)
        left = total - (state.seconds_since_start or 0.0)
        cls = DeadlineExceededError if exc.timed_out else TransientApiError
        if exc.retry_after is not None and tries < self.retry.max_attempts:
            at = (datetime.now(UTC) + timedelta(seconds=exc.retry_after)).strftime("%Y-%m-%d %H:%M:%S UTC")
            message = (
                f"the API asked to retry after {exc.retry_after:.0f}s ({exc.failure}), more than the "
                f"{max(left, 0):.0f}s left of the retry budget: try again after {at}"
            )
        else:
            what = ("the API did not answer in time" if exc.timed_out
                    else "the API is unavailable or overloaded" if exc.status is not None
                    else "the API could not be reached")
            times = f"{tries} tries" if tries > 1 else "1 try"
            then = f"try again in {exc.retry_after:.0f}s or later" if exc.retry_after else exc.advice
            message = f"{what} ({exc.failure}; {times} in {state.seconds_since_start or 0:.0f}s): {then}"
        err = cls(one_line(f"{message} {self.where()}"), url=self.full_url, status=exc.status,
                  retry_after=exc.retry_after)
        raise err from exc.cause

    async def _attempt(self, seconds: float, bound: str) -> Answer:
        """One try, cut after ``seconds`` (``bound`` says which limit that is, for the message)."""
        try:
            async with asyncio.timeout(seconds):
                return await self._read()
        except TimeoutError as exc:
            raise _Failed(f"no complete answer {bound}", timed_out=True, advice=_SLOW_ADVICE, cause=exc) from None
        except httpx.TimeoutException as exc:
            raise _Failed(f"{type(exc).__name__} {bound}", timed_out=True, advice=_SLOW_ADVICE, cause=exc) from None
        except httpx.UnsupportedProtocol:
            raise ConfigurationError(
                f"The API URL {self.url!r} cannot be requested: {setting('base_url')} must start with "
                "http:// or https://."
            ) from None
        except httpx.ConnectError as exc:
            dns = dns_failure(exc)
            host = httpx.URL(self.url).host
            if dns is not None and dns[0]:
                self.fail(HostNotFoundError, f"the host {host} cannot be resolved ({self.quote(dns[1])}): "
                          f"check the URL ({setting('base_url')}) and the network")
            if dns is not None:
                raise _Failed(f"the host {host} cannot be resolved right now ({self.quote(dns[1])})",
                              advice="check the network, or try again later", cause=exc) from None
            raise _Failed(f"connection failed: {self.quote(str(exc)) or type(exc).__name__}", cause=exc) from None
        except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
            raise _Failed(f"connection failed ({type(exc).__name__}: {self.quote(str(exc)) or 'no detail'})",
                          cause=exc) from None
        except httpx.DecodingError as exc:
            self.fail(BadResponseError, f"the API's answer cannot be decoded ({type(exc).__name__}: "
                      f"{self.quote(str(exc))}): is {setting('base_url')} pointing at the API?")
        except httpx.TransportError as exc:
            self.fail(PermanentApiError, f"the request could not be sent ({type(exc).__name__}): "
                      f"check {setting('base_url')}")

    async def _read(self) -> Answer:
        logger.debug("GET %s", self.full_url)
        limit = self.client.max_bytes
        async with self.client.http.stream("GET", self.full_url) as response:
            status = response.status_code
            if status in TRANSIENT_STATUSES:
                answer = Answer(status, response.headers, await self._body(response, _ERROR_BODY_BYTES, cut=True))
                message = answer.message()
                raise _Failed(
                    f"HTTP {status}" + (f' "{self.quote(message)}"' if message else ""),
                    status=status, retry_after=parse_retry_after(response.headers.get("Retry-After")),
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


# --- status -> exception -------------------------------------------------------------------


def raise_for_status(req: Request, answer: Answer, *, on_404: Callable[[Answer], NoReturn]) -> None:
    """Return for 2xx; otherwise raise the ``flows.errors`` exception of ``answer.status``.

    401 ``AuthenticationError``, 403 ``QuotaExceededError``, 404 ``on_404(answer)``
    (the dialect knows whether it means an unknown region), 400 and every other
    status ``PermanentApiError``. Transient statuses never get here (see
    :meth:`Request.send`); 3xx are handled by the caller before this.
    """
    status = answer.status
    if 200 <= status < 300:
        return
    said = req.said(answer)
    if status == 401:
        req.fail(AuthenticationError, f"the API key was refused (HTTP 401{said}): {KEY_ADVICE} to a valid key",
                 status=status)
    if status == 403:
        req.fail(QuotaExceededError, f"the API refused the request (HTTP 403{said}): the plan's request quota "
                 "is used up or a requested field needs a premium plan; wait for the quota to reset or upgrade "
                 "the plan", status=status)
    if status == 404:
        on_404(answer)
    if status == 400:
        req.fail(PermanentApiError, f"the API rejected a request parameter (HTTP 400{said}): check the region "
                 "name, or report this if the API changed", status=status)
    if 300 <= status < 400:
        location = req.quote(answer.headers.get("Location", "?"))
        req.fail(PermanentApiError, f"the API redirected the request (HTTP {status} to {location}), and the "
                 f"client does not follow redirects: point {setting('base_url')} at the final API address",
                 status=status)
    req.fail(PermanentApiError, f"the API answered HTTP {status}{said}, and retrying will not help: check "
             f"{setting('base_url')} and {setting('api')}", status=status)


def decode(req: Request, answer: Answer) -> Any:
    """The JSON body of a 2xx ``answer``; ``BadResponseError`` if it is HTML, empty or not JSON."""
    if answer.looks_html():
        req.fail(BadResponseError, f"the API answered with HTML, not JSON (content-type {answer.content_type}): "
                 f"is {setting('base_url')} pointing at the API?", status=answer.status)
    if not answer.body.strip():
        req.fail(BadResponseError, f"the API answered HTTP {answer.status} with an empty body, not JSON: "
                 f"is {setting('base_url')} pointing at the API?", status=answer.status)
    try:
        return json.loads(answer.body)
    except (ValueError, UnicodeDecodeError) as exc:
        where = (f"{exc.msg}: byte {exc.pos} of {len(answer.body)}" if isinstance(exc, json.JSONDecodeError)
                 else type(exc).__name__)
        req.fail(BadResponseError, f"the API's answer is not valid JSON ({where}; content-type "
                 f"{answer.content_type}), probably cut short: try again, and check {setting('base_url')} "
                 "if it persists", status=answer.status)


async def read_redirect_message(req: Request, answer: Answer) -> str | None:
    """The ``errors[].message`` of the page a 3xx ``answer`` points to, read safely; None if unreadable.

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
        async with asyncio.timeout(seconds), httpx.AsyncClient(
            headers={"Accept": "application/json", "User-Agent": _USER_AGENT},
            follow_redirects=False, timeout=seconds,
        ) as bare, bare.stream("GET", target) as response:
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
        message = api_message(json.loads(body))
    except (ValueError, UnicodeDecodeError):
        return None
    return req.quote(message) if message else None


__all__ = [
    "DEADLINE_ENV",
    "DEMO_KEY",
    "HOSTED_ORIGIN",
    "KEY_ADVICE",
    "MAX_RESPONSE_ENV",
    "Answer",
    "ApiClient",
    "KeyAuth",
    "Request",
    "RequestStats",
    "RetryPolicy",
    "decode",
    "fingerprint",
    "make_client",
    "one_line",
    "origin",
    "raise_for_status",
    "read_redirect_message",
    "trusted_origins",
    "withheld_reason",
]
