"""The REST Countries HTTP client, and where it may send the API key (private; see ``flows.api``).

- :func:`make_client` / :class:`ApiClient`: one ``httpx.AsyncClient`` with the
  run's bounds (a deadline per request attempt, a response size bound) read
  from the arguments or the environment.
- :class:`KeyAuth`: adds the API key to a request only when the request goes
  to a trusted origin (the hosted API's, or a base URL the operator
  configured: :func:`trusted_origins`) over https, or plain http to this
  machine (:func:`withheld_reason`). httpx calls it for every request, so no
  code path can send the key anywhere else; redirects are never followed.
- :func:`fingerprint`: a hash of the key for cache keys, never the key.

Sending requests is :mod:`flows._request`'s job; turning a status into an
exception is :mod:`flows._statuses`'.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import ssl
from collections.abc import Generator, Iterable

import httpx

from flows.errors import ConfigurationError, DemoKeyError

__all__ = [
    "DEADLINE_ENV",
    "DEFAULT_DEADLINE_SECONDS",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEMO_KEY",
    "HOSTED_ORIGIN",
    "KEY_ADVICE",
    "MAX_RESPONSE_ENV",
    "USER_AGENT",
    "ApiClient",
    "KeyAuth",
    "demo_key_message",
    "fingerprint",
    "is_loopback",
    "make_client",
    "origin",
    "trusted_origins",
    "withheld_reason",
]

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
USER_AGENT = "countries-pipeline (+httpx)"


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


class _Transport(httpx.AsyncBaseTransport):
    """The client's connections: one pool for plain http, one for https, the latter made on first use.

    https gets httpx's default transport (certificate and host name verified
    against certifi's bundle, or ``$SSL_CERT_FILE``/``$SSL_CERT_DIR``). Loading
    that bundle takes tens of milliseconds, which a run against an http://
    server need not spend, so it is made on the first https request. The plain
    pool's TLS context trusts no certificate at all: http:// never uses it, and
    anything that did would fail verification.
    """

    def __init__(self, limits: httpx.Limits) -> None:
        self.limits = limits
        self.plain = httpx.AsyncHTTPTransport(limits=limits, verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        self.tls: httpx.AsyncHTTPTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "https":
            return await self.plain.handle_async_request(request)
        if self.tls is None:
            self.tls = httpx.AsyncHTTPTransport(limits=self.limits)  # verify=True
        return await self.tls.handle_async_request(request)

    async def aclose(self) -> None:
        await self.plain.aclose()
        if self.tls is not None:
            await self.tls.aclose()


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
    localhost). Redirects are not followed. https certificates are verified
    (httpx's defaults); the CA bundle is loaded on the first https request.

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
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=10, keepalive_expiry=30.0)
    http = httpx.AsyncClient(
        headers={"Accept": "application/json", "User-Agent": USER_AGENT},
        auth=key_auth,
        timeout=httpx.Timeout(deadline, connect=min(deadline, 10.0)),
        limits=limits,  # for the proxies of $HTTP(S)_PROXY, which httpx mounts itself
        transport=_Transport(limits),
        follow_redirects=False,
    )
    return ApiClient(http, key_auth=key_auth, deadline=float(deadline), max_bytes=max_bytes)


def demo_key_message(subject: str = "the demo key") -> str:
    """The one line for the demo key: it only returns a fixed sample, and where to get a real key."""
    return (
        f"{subject} only returns a fixed sample (one country for every query); get a key at "
        f"{KEY_SIGNUP_URL} and {KEY_ADVICE} to it"
    )
