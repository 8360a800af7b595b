"""HTTP plumbing of the REST Countries client (private; see ``flows.api``).

- :class:`RetryPolicy` / :class:`RequestStats` and :func:`make_client`.
- :func:`get_json`: one logical GET with bounded, jittered, ``Retry-After``-aware
  retries of transient failures; every other status becomes the matching
  ``flows.errors`` exception; the body is decoded as JSON or a
  ``BadResponseError`` says why it could not be.

Messages are one line, name the URL (which never holds a secret: the key
travels in the ``Authorization`` header) and are scrubbed of the API key in
case a server echoes it back.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn
from urllib.parse import quote, urlencode

import httpx

from flows.errors import (
    ApiError,
    AuthenticationError,
    BadResponseError,
    ConfigurationError,
    PermanentApiError,
    QuotaExceededError,
    TransientApiError,
)

logger = logging.getLogger("flows.api")

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
KEY_ADVICE = "set RESTCOUNTRIES_API_KEY or the `restcountries-api-key` Secret block"
_USER_AGENT = "countries-pipeline (+httpx)"
_MAX_QUOTE = 300


@dataclass(frozen=True)
class RetryPolicy:
    """Per-request retries inside the client, so a failed page 3 does not refetch pages 1-2.

    At most ``max_attempts`` tries per request, waiting ``base_delay * 2**(n-1)``
    (capped at ``max_delay``, shortened by up to ``jitter`` of itself at random)
    between tries, or exactly what ``Retry-After`` asks; giving up as soon as
    the next wait would end after ``max_total_seconds`` from the first try.
    """

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0
    max_total_seconds: float = 60.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}.")
        if min(self.base_delay, self.max_delay, self.max_total_seconds) < 0:
            raise ConfigurationError("RetryPolicy delays and max_total_seconds must be >= 0.")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError(f"RetryPolicy.jitter must be between 0 and 1, got {self.jitter}.")

    def backoff(self, attempt: int) -> float:
        """The wait after failed try number ``attempt`` (1-based) when the server named none."""
        delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return delay * (1 - random.uniform(0, self.jitter))  # noqa: S311 - jitter, not crypto


@dataclass
class RequestStats:
    """HTTP requests the client attempted (``requests``), of which ``retries`` were retries."""

    requests: int = 0
    retries: int = 0


def _secret_value(api_key: object) -> str | None:
    if api_key is None:
        return None
    getter = getattr(api_key, "get_secret_value", None)  # pydantic SecretStr, Prefect Secret values
    value = getter() if callable(getter) else api_key
    if not isinstance(value, str):
        raise ConfigurationError("The REST Countries API key must be text.")
    return value.strip() or None


def make_client(*, api_key: str | None = None, timeout: float = 30.0) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for the REST Countries API; the caller closes it (``async with``).

    Sends ``Authorization: Bearer <api_key>`` when a non-blank key is given
    (a ``SecretStr``-like object is accepted too); httpx masks that header in
    reprs. ``timeout`` (seconds) bounds each read/write/pool wait, connecting
    is bounded by ``min(timeout, 10)``. Redirects are not followed on purpose:
    a redirect means ``--base-url`` is wrong and is reported as such.
    Raises ``ConfigurationError`` for a non-positive timeout or a key that
    cannot be sent in a header (the key itself is never quoted).
    """
    if not timeout or timeout <= 0:
        raise ConfigurationError(f"The API timeout must be a positive number of seconds, got {timeout!r}.")
    headers = {"Accept": "application/json", "User-Agent": _USER_AGENT}
    key = _secret_value(api_key)
    if key is not None:
        if not key.isprintable() or not key.isascii() or any(c.isspace() for c in key):
            raise ConfigurationError(
                "The REST Countries API key contains spaces, control or non-ASCII characters; "
                f"{KEY_ADVICE} to the key exactly as issued."
            )
        headers["Authorization"] = f"Bearer {key}"
    return httpx.AsyncClient(
        headers=headers,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=10, keepalive_expiry=30.0),
        follow_redirects=False,
    )


def client_secret(client: httpx.AsyncClient) -> str | None:
    """The bearer token the client sends, for scrubbing messages (never for output)."""
    auth = client.headers.get("Authorization")
    if auth and auth.startswith("Bearer "):
        return auth[len("Bearer ") :] or None
    return None


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


def _response_message(response: httpx.Response) -> str | None:
    try:
        return api_message(response.json())
    except ValueError:
        text = response.text.strip()
        if not text or _looks_html(response):
            return None
        return text


def _looks_html(response: httpx.Response) -> bool:
    ctype = response.headers.get("content-type", "").lower()
    head = response.content[:200].lstrip().lower()
    return "html" in ctype or head.startswith((b"<!doctype", b"<html"))


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


class Request:
    """One logical GET: URL, query, and what is needed to run and report it."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        params: Mapping[str, str | int],
        *,
        retry: RetryPolicy,
        stats: RequestStats,
        before_request: Callable[[], Awaitable[None]] | None,
    ):
        self.client = client
        # Commas stay literal (``fields=name,currencies``) as the API documents; spaces are %20.
        query = urlencode(dict(params), safe=",", quote_via=quote)
        self.full_url = f"{url}?{query}" if query else url
        self.retry = retry
        self.stats = stats
        self.before_request = before_request
        self.secret = client_secret(client)

    def fail(self, cls: type[ApiError], message: str, **kwargs: Any) -> NoReturn:
        """Raise ``cls`` with a one-line message and this request's URL.

        ``message`` is our own text; anything in it that came from outside
        (the API's words, exception texts) must have gone through :meth:`quote`.
        """
        raise cls(one_line(message), url=self.full_url, **kwargs)

    def quote(self, text: str | None) -> str:
        """Outside text made safe to embed: one line, shortened, the API key masked as ``***``."""
        return one_line(text or "", self.secret, _MAX_QUOTE)

    async def send(self) -> httpx.Response:
        """The first non-transient response, after retrying transient failures within the policy.

        Raises ``TransientApiError`` when the attempts or the time budget run out
        (or ``Retry-After`` asks for more time than is left), ``ConfigurationError``
        for a URL httpx cannot send, ``PermanentApiError`` for a local protocol error.
        """
        policy = self.retry
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        attempt = 0
        while True:
            attempt += 1
            if self.before_request is not None:
                await self.before_request()
            if deadline is None:
                deadline = loop.time() + policy.max_total_seconds
            self.stats.requests += 1
            if attempt > 1:
                self.stats.retries += 1
            status: int | None = None
            retry_after: float | None = None
            logger.debug("GET %s (attempt %d)", self.full_url, attempt)
            try:
                response = await self.client.get(self.full_url)
            except httpx.UnsupportedProtocol as exc:
                raise ConfigurationError(
                    one_line(f"Cannot request {self.full_url}: {self.quote(str(exc))}; --base-url must "
                             "start with http:// or https://.")
                ) from None
            except httpx.TimeoutException as exc:
                failure = f"timed out ({type(exc).__name__}, timeout {self._timeout_text()})"
                cause: Exception | None = exc
            except (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError) as exc:
                failure = f"connection failed ({type(exc).__name__}: {self.quote(str(exc)) or 'no detail'})"
                cause = exc
            except httpx.DecodingError as exc:
                self.fail(BadResponseError, f"GET {self.full_url} returned a body that cannot be decoded "
                          f"({type(exc).__name__}: {self.quote(str(exc))}): is --base-url pointing at the API?")
            except httpx.TransportError as exc:
                self.fail(PermanentApiError, f"GET {self.full_url} could not be sent ({type(exc).__name__}); "
                          "check --base-url and the API key.")
            else:
                if response.status_code not in TRANSIENT_STATUSES:
                    return response
                status = response.status_code
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                message = _response_message(response)
                failure = f"HTTP {status}" + (f" ({self.quote(message)})" if message else "")
                cause = None

            now = loop.time()
            remaining = deadline - now
            if attempt >= policy.max_attempts:
                self._give_up(
                    f"GET {self.full_url} failed {attempt} times, last with {failure}; "
                    "the API is unavailable or overloaded, try again "
                    + (f"in {retry_after:.0f}s or later." if retry_after else "later."),
                    status, retry_after, cause,
                )
            if retry_after is not None:
                if retry_after > remaining:
                    at = (datetime.now(UTC) + timedelta(seconds=retry_after)).strftime("%Y-%m-%d %H:%M:%S UTC")
                    self._give_up(
                        f"GET {self.full_url} failed with {failure} and asked to retry after "
                        f"{retry_after:.0f}s, more than the {max(remaining, 0):.0f}s left of the retry budget; "
                        f"try again after {at}.",
                        status, retry_after, cause,
                    )
                delay = retry_after
            else:
                delay = policy.backoff(attempt)
                if delay > remaining:
                    self._give_up(
                        f"GET {self.full_url} failed {attempt} times within the "
                        f"{policy.max_total_seconds:g}s retry budget, last with {failure}; try again later.",
                        status, retry_after, cause,
                    )
            logger.warning(
                "GET %s failed: %s; retrying in %.2fs (attempt %d of %d)",
                self.full_url, failure, delay, attempt + 1, policy.max_attempts,
            )
            await asyncio.sleep(delay)

    def _timeout_text(self) -> str:
        t = self.client.timeout
        return f"{t.read:g}s" if t.read is not None else "none"

    def _give_up(self, message: str, status: int | None, retry_after: float | None, cause: Exception | None) -> NoReturn:
        err = TransientApiError(one_line(message), url=self.full_url, status=status,
                                retry_after=retry_after)
        raise err from cause

    def decode(self, response: httpx.Response) -> Any:
        """The JSON body of a 2xx ``response``; ``BadResponseError`` if it is HTML, empty or not JSON."""
        ctype = response.headers.get("content-type", "") or "none"
        if _looks_html(response):
            self.fail(
                BadResponseError,
                f"GET {self.full_url} returned HTML, not JSON (content-type {ctype}): "
                "is --base-url pointing at the API?",
                status=response.status_code,
            )
        if not response.content.strip():
            self.fail(BadResponseError, f"GET {self.full_url} returned an empty body (HTTP "
                      f"{response.status_code}), not JSON: is --base-url pointing at the API?",
                      status=response.status_code)
        try:
            return json.loads(response.content)
        except (ValueError, UnicodeDecodeError) as exc:
            where = f"{exc.msg}: byte {exc.pos} of {len(response.content)}" if isinstance(
                exc, json.JSONDecodeError) else type(exc).__name__
            self.fail(
                BadResponseError,
                f"GET {self.full_url} returned invalid JSON ({where}; content-type {ctype}), "
                "probably a truncated response: try again, and check --base-url if it persists.",
                status=response.status_code,
            )

    def raise_for_status(self, response: httpx.Response, *, on_404: Callable[[str | None], NoReturn]) -> None:
        """Map a non-2xx, non-transient ``response`` to the matching permanent error (no retry)."""
        status = response.status_code
        if 200 <= status < 300:
            return
        message = _response_message(response)
        said = f" ({self.quote(message)})" if message else ""
        url = self.full_url
        if status == 401:
            self.fail(AuthenticationError, f"GET {url} was refused with HTTP 401{said}: the API key is "
                      f"missing or invalid; {KEY_ADVICE} to a valid key.", status=status)
        if status == 403:
            self.fail(QuotaExceededError, f"GET {url} was refused with HTTP 403{said}: the plan's request "
                      "quota is used up or a requested field needs a premium plan; wait for the quota to "
                      "reset or upgrade the plan.", status=status)
        if status == 404:
            on_404(message)
        if status == 400:
            self.fail(PermanentApiError, f"GET {url} was rejected with HTTP 400{said}: a request parameter "
                      "is invalid; check the region name, or report this if the API changed.", status=status)
        if 300 <= status < 400:
            location = response.headers.get("Location", "?")
            self.fail(PermanentApiError, f"GET {url} was redirected (HTTP {status}) to {self.quote(location)}: "
                      "point --base-url at the final API address.", status=status)
        self.fail(PermanentApiError, f"GET {url} failed with HTTP {status}{said}; retrying will not help: "
                  "check --base-url and --api.", status=status)
