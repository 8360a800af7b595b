"""The API's HTTP client (:func:`make_client`) and its key guard (:class:`KeyAuth`, which httpx calls for every
request); checks of base URLs and keys."""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import urllib.request
from collections.abc import Generator, Iterable
from typing import Any

import httpx

from flows.errors import ConfigurationError, DemoKeyError, setting
from flows.source.dialects import KEY_ADVICE

HOSTED_ORIGIN = "https://api.restcountries.com"  # the API key may always go there
DEMO_KEY = "rc_live_demo"  # the public demo key of REST Countries' docs: one fixed sample for every query
DEADLINE_ENV = "RESTCOUNTRIES_DEADLINE_SECONDS"
MAX_RESPONSE_ENV = "RESTCOUNTRIES_MAX_RESPONSE_MB"
USER_AGENT = "countries-pipeline (+httpx)"
DIRECT_LOOPBACK = ("localhost", "127.0.0.1", "::1")  # always reached directly, never through $HTTP_PROXY


def origin(url: str | httpx.URL) -> str:
    """``scheme://host[:port]`` of ``url``, lower-case, default ports left out."""
    u = httpx.URL(url)
    return str(httpx.URL(scheme=u.scheme, host=u.host, port=u.port))  # httpx lowers case, drops default ports


def is_loopback(host: str) -> bool:
    """True for exactly ``localhost`` and literal addresses in 127.0.0.0/8 or ``::1`` (not ``*.localhost``)."""
    host = host.strip("[]").lower()
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def shown_url(url: str | httpx.URL) -> str:
    """``url`` as a message may show it: without userinfo, query and fragment, which may hold secrets."""
    text = str(url).strip()
    try:
        u = httpx.URL(text)
        if u.scheme and u.host:
            return origin(u) + u.path
    except (httpx.InvalidURL, ValueError, TypeError):
        pass
    scheme, sep, rest = text.split("#", 1)[0].split("?", 1)[0].rpartition("://")
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}" if sep else rest


def parse_base_url(text: str) -> tuple[httpx.URL | None, str | None]:
    """``(url, None)`` for a usable http(s) base URL, else ``(None, problem)`` (never quoting the URL)."""
    try:
        u = httpx.URL(text)
    except (httpx.InvalidURL, ValueError, TypeError):
        return None, "is not a valid URL"
    problems = [
        (u.scheme not in ("http", "https"), "must start with http:// or https://"),
        (not u.host, "names no host"),
        ("%" in u.host or any(c.isspace() for c in u.host), "names an invalid host"),
        (u.userinfo, "must not contain credentials (the API key is a Secret block or RESTCOUNTRIES_API_KEY)"),
        (u.query or u.fragment or "?" in text or "#" in text, "must not have a query or fragment"),
        (u.port is not None and not 0 < u.port < 65536, "has an invalid port"),
    ]
    problem = next((p for bad, p in problems if bad), None)
    return (None, problem) if problem else (u, None)


def check_base_url(base_url: str) -> str:
    """``base_url`` stripped, without a trailing slash (empty stays empty). Raises ``ConfigurationError``
    unless it is an http(s) address; the message shows it without credentials, query and fragment."""
    url = base_url.strip()
    if not url:
        return ""
    _, problem = parse_base_url(url)
    if problem:
        raise ConfigurationError(
            f"{setting('base_url')} {shown_url(url)!r} {problem}: give the API's address, e.g. "
            "https://api.restcountries.com/countries/v5 or http://127.0.0.1:8080 for a self-hosted v3.1 server"
        )
    return url.rstrip("/")


class KeyAuth(httpx.Auth):
    """Adds ``Authorization: Bearer <key>`` to a request only when :meth:`withheld_reason` finds no reason."""

    def __init__(self, key: str, trusted: Iterable[str], *, plain_http_proxy: bool = False):
        self.key = key
        self.trusted_origins = frozenset(trusted)
        self.plain_http_proxy = plain_http_proxy

    def withheld_reason(self, url: str | httpx.URL) -> str | None:
        """Why the key is not sent to ``url`` (``"plain-http"`` to another machine, ``"proxied"`` plain http to a
        proxy, ``"untrusted"``), or None if it is."""
        u = httpx.URL(url)
        if u.scheme != "https":
            if not is_loopback(u.host):
                return "plain-http"
            if self.plain_http_proxy and u.host.lower() not in DIRECT_LOOPBACK:
                return "proxied"
        return None if origin(u) in self.trusted_origins else "untrusted"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.withheld_reason(request.url) is None:
            request.headers["Authorization"] = f"Bearer {self.key}"
        yield request


def fingerprint(key: str | None) -> str:
    """A short SHA-256 hex digest of ``key`` (``"no-key"`` for none): for cache keys, never the key itself."""
    if key is None or not str(key).strip():
        return "no-key"
    return hashlib.sha256(b"restcountries-api-key\0" + str(key).strip().encode()).hexdigest()[:16]


def demo_key_message(subject: str = "the demo key") -> str:
    """The one line for the demo key: it only returns a fixed sample, and where to get a real key."""
    return (
        f"{subject} only returns a fixed sample (one country for every query); get a key at "
        f"https://restcountries.com and {KEY_ADVICE} to it"
    )


def check_key(key: str, what: str = "the API key") -> None:
    """``ConfigurationError`` for a key no header can carry (never quoting it), ``DemoKeyError`` for the demo key."""
    if not key.isprintable() or not key.isascii() or any(c.isspace() for c in key):
        raise ConfigurationError(
            f"{what[0].upper()}{what[1:]} contains spaces, control or non-ASCII characters; "
            f"{KEY_ADVICE} to the key exactly as issued."
        )
    if key == DEMO_KEY:
        raise DemoKeyError(demo_key_message(f"{what} is the public demo key {DEMO_KEY}, which"))


class ApiClient(httpx.AsyncClient):
    """The API's ``httpx.AsyncClient``: ``key_auth`` (its :class:`KeyAuth`, None without a key), ``deadline``
    (seconds one try may take: connect, headers, whole body) and ``max_bytes`` (one body's bound)."""

    def __init__(self, key_auth: KeyAuth | None, deadline: float, max_bytes: int, **kwargs: Any):
        super().__init__(auth=key_auth, **kwargs)
        self.key_auth, self.deadline, self.max_bytes = key_auth, deadline, max_bytes


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"${name} must be a positive number, got {raw!r}: fix or unset it.")
    return value


def make_client(
    *, api_key: str | None = None, trusted_base_urls: Iterable[str | None] = (), deadline: float | None = None,
    max_bytes: int | None = None,
) -> ApiClient:  # fmt: skip
    """An :class:`ApiClient` the caller closes (``async with``).

    The key goes only to :data:`HOSTED_ORIGIN` and the origins of ``trusted_base_urls``, over plain http only to
    loopback with no proxy between; plain http to :data:`DIRECT_LOOPBACK` always goes direct. ``deadline``
    defaults to ``$RESTCOUNTRIES_DEADLINE_SECONDS`` or 60 s, ``max_bytes`` to ``$RESTCOUNTRIES_MAX_RESPONSE_MB``
    or 20 MB. Raises ``ConfigurationError`` for a bad environment value, trusted URL or key (never quoting it),
    ``DemoKeyError`` for the demo key.
    """
    deadline = _env_number(DEADLINE_ENV, 60.0) if deadline is None else deadline
    max_bytes = int(_env_number(MAX_RESPONSE_ENV, 20.0) * 1e6) if max_bytes is None else max_bytes
    origins = {HOSTED_ORIGIN}
    for raw in (str(b).strip() for b in trusted_base_urls if b is not None and str(b).strip()):
        u, problem = parse_base_url(raw)
        if u is None:
            raise ConfigurationError(
                f"The trusted API base URL {shown_url(raw)!r} {problem}: fix RESTCOUNTRIES_BASE_URL or "
                "save it again with `python blocks/create_blocks.py --base-url URL`."
            )
        origins.add(origin(u))
    key_auth = None
    if api_key and api_key.strip():
        check_key(api_key.strip())
        proxies = urllib.request.getproxies()  # what httpx reads too
        key_auth = KeyAuth(api_key.strip(), origins, plain_http_proxy=bool(proxies.get("http") or proxies.get("all")))
    return ApiClient(
        key_auth,
        float(deadline),
        max_bytes,
        headers={"Accept": "application/json", "User-Agent": USER_AGENT},
        timeout=httpx.Timeout(deadline, connect=min(deadline, 10.0)),
        limits=httpx.Limits(max_connections=20, max_keepalive_connections=10, keepalive_expiry=30.0),
        # No `transport=`: httpx then mounts the proxies of the environment itself. Loopback stays direct.
        mounts={f"all://{h if ':' not in h else f'[{h}]'}": None for h in DIRECT_LOOPBACK},
        follow_redirects=False,
    )
