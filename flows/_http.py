"""The REST Countries HTTP client, and where it may send the API key (private; see ``flows.api``).

- :func:`make_client` / :class:`ApiClient`: one ``httpx.AsyncClient`` with the
  run's bounds (a deadline per request attempt, a response size bound) read
  from the arguments or the environment.
- :class:`KeyAuth`: adds the API key to a request only when the request goes
  to a trusted origin (the hosted API's, or a base URL the operator
  configured: :func:`trusted_origins`) over https, or plain http straight to
  this machine, through no proxy (:func:`withheld_reason`). httpx calls it for
  every request, so no code path can send the key anywhere else; redirects are
  never followed.
- :func:`parse_base_url` / :func:`shown_url`: a base URL checked with
  ``httpx.URL``, and a URL as messages may show it (no userinfo, query or
  fragment).
- :func:`fingerprint`: a hash of the key for cache keys, never the key.

Sending requests is :mod:`flows._request`'s job; turning a status into an
exception is :mod:`flows._statuses`'.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import urllib.request
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
    "check_key",
    "demo_key_message",
    "fingerprint",
    "is_loopback",
    "make_client",
    "origin",
    "parse_base_url",
    "shown_url",
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
    """True for exactly ``localhost`` and literal addresses in 127.0.0.0/8 or ``::1``.

    Other names, ``*.localhost`` included, are not: some resolvers send them to DNS.
    """
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


DIRECT_LOOPBACK = ("localhost", "127.0.0.1", "::1")
"""Loopback hosts the client always reaches directly: an ``$HTTP_PROXY`` never sees plain http to them."""


def env_proxies_plain_http() -> bool:
    """Whether the environment names a proxy for plain http (``$HTTP_PROXY`` or ``$ALL_PROXY``, any case).

    httpx reads the same variables (through ``urllib.request.getproxies``).
    """
    found = urllib.request.getproxies()
    return bool(found.get("http") or found.get("all"))


def shown_url(url: str | httpx.URL) -> str:
    """``url`` as a message may show it: without userinfo, query and fragment, which may hold secrets."""
    text = str(url).strip()
    try:
        u = httpx.URL(text)
    except (httpx.InvalidURL, ValueError, TypeError):
        u = None
    if u is not None and u.scheme and u.host:
        host = u.host if ":" not in u.host else f"[{u.host}]"
        port = "" if u.port is None else f":{u.port}"
        return f"{u.scheme}://{host}{port}{u.path}"
    text = text.split("#", 1)[0].split("?", 1)[0]
    scheme, sep, rest = text.rpartition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        text = f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"
    return text


def parse_base_url(text: str) -> tuple[httpx.URL | None, str | None]:
    """``(url, None)`` for a usable http(s) base URL, else ``(None, problem)``; parsed by ``httpx.URL``.

    ``problem`` completes "the base URL ... " and never quotes the URL.
    """
    try:
        u = httpx.URL(text)
    except (httpx.InvalidURL, ValueError, TypeError):
        return None, "is not a valid URL"
    if u.scheme not in ("http", "https"):
        return None, "must start with http:// or https://"
    if not u.host:
        return None, "names no host"
    if "%" in u.host or any(c.isspace() for c in u.host):
        return None, "names an invalid host"
    if u.userinfo:
        return None, "must not contain credentials (the API key is a Secret block or RESTCOUNTRIES_API_KEY)"
    if u.query or u.fragment or "?" in text or "#" in text:
        return None, "must not have a query or fragment"
    if u.port is not None and not 0 < u.port < 65536:
        return None, "has an invalid port"
    return u, None


class KeyAuth(httpx.Auth):
    """Adds ``Authorization: Bearer <key>`` to a request only when :meth:`withheld_reason` is None.

    The key goes to ``trusted_origins`` only (the hosted API's origin and the
    origins of the base URLs the operator configured), and over plain http only
    straight to this machine (no proxy in between: ``plain_http_proxy`` says
    whether the client sends plain http through one). Anything else gets the
    request without the key. httpx calls this for every request the client
    sends, so it holds for every code path.
    """

    def __init__(self, key: str, trusted_origins: Iterable[str], *, plain_http_proxy: bool = False):
        self._key = key
        self.trusted_origins = frozenset(trusted_origins)
        self.plain_http_proxy = plain_http_proxy

    def __repr__(self) -> str:
        return (
            f"KeyAuth(key=***, trusted_origins={sorted(self.trusted_origins)}, "
            f"plain_http_proxy={self.plain_http_proxy})"
        )

    def withheld_reason(self, url: str | httpx.URL) -> str | None:
        """Why the key is not sent with a request to ``url`` (see :func:`withheld_reason`), or None if it is."""
        return withheld_reason(url, self.trusted_origins, plain_http_proxy=self.plain_http_proxy)

    def redact(self, text: str) -> str:
        """``text`` with the key masked as ``***`` (for quoting what a server said)."""
        return text.replace(self._key, "***")

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.withheld_reason(request.url) is None:
            request.headers["Authorization"] = f"Bearer {self._key}"
        yield request


def withheld_reason(
    url: str | httpx.URL, trusted_origins: Iterable[str], *, plain_http_proxy: bool = False
) -> str | None:
    """Why the key is not sent to ``url``, or None if it is.

    ``"plain-http"``: http to another machine; ``"proxied"``: http to a
    loopback address that the client sends through the proxy of the
    environment (``plain_http_proxy``; only :data:`DIRECT_LOOPBACK` hosts are
    always reached directly); ``"untrusted"``: an origin not in
    ``trusted_origins``. Plain http is checked first: trusting such an origin
    would not help.
    """
    u = httpx.URL(url) if isinstance(url, str) else url
    if u.scheme != "https":
        if not is_loopback(u.host):
            return "plain-http"
        if plain_http_proxy and u.host.lower() not in DIRECT_LOOPBACK:
            return "proxied"
    if origin(u) not in set(trusted_origins):
        return "untrusted"
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
        u, problem = parse_base_url(text)
        if u is None:
            raise ConfigurationError(
                f"The trusted API base URL {shown_url(text)!r} {problem}: fix RESTCOUNTRIES_BASE_URL or "
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
    localhost) with no proxy in between. Redirects are not followed. https
    certificates are verified (httpx's defaults). The proxies of the
    environment (``$HTTPS_PROXY``, ``$HTTP_PROXY``, ``$ALL_PROXY``,
    ``$NO_PROXY``) are used as httpx uses them, except that plain http to
    ``localhost``, ``127.0.0.1`` and ``[::1]`` always goes direct; the key never
    goes over plain http to a proxy.

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
    plain_http_proxy = env_proxies_plain_http()
    key = _secret_value(api_key)
    key_auth = None
    if key is not None:
        check_key(key)
        key_auth = KeyAuth(key, origins, plain_http_proxy=plain_http_proxy)
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=10, keepalive_expiry=30.0)
    http = httpx.AsyncClient(
        headers={"Accept": "application/json", "User-Agent": USER_AGENT},
        auth=key_auth,
        timeout=httpx.Timeout(deadline, connect=min(deadline, 10.0)),
        limits=limits,
        # No `transport=`: httpx then mounts the proxies of the environment itself. Loopback stays direct.
        mounts={f"all://{h if ':' not in h else f'[{h}]'}": None for h in DIRECT_LOOPBACK},
        follow_redirects=False,
    )
    return ApiClient(http, key_auth=key_auth, deadline=float(deadline), max_bytes=max_bytes)


def check_key(key: str, what: str = "the API key") -> None:
    """Refuse a key no request can use, before any request; ``what`` names where it came from.

    Raises ``ConfigurationError`` for one that cannot be sent in a header (spaces,
    control or non-ASCII characters; never quoting it), ``DemoKeyError`` for the
    public demo key ``rc_live_demo``.
    """
    if not key.isprintable() or not key.isascii() or any(c.isspace() for c in key):
        raise ConfigurationError(
            f"{what[0].upper()}{what[1:]} contains spaces, control or non-ASCII characters; "
            f"{KEY_ADVICE} to the key exactly as issued."
        )
    if key == DEMO_KEY:
        raise DemoKeyError(demo_key_message(f"{what} is the public demo key {DEMO_KEY}, which"))


def demo_key_message(subject: str = "the demo key") -> str:
    """The one line for the demo key: it only returns a fixed sample, and where to get a real key."""
    return (
        f"{subject} only returns a fixed sample (one country for every query); get a key at "
        f"{KEY_SIGNUP_URL} and {KEY_ADVICE} to it"
    )
