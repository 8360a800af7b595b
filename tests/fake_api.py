"""A real HTTP fake of the REST Countries API on 127.0.0.1 (no mocks).

:class:`FakeRestCountries` runs a stdlib ``ThreadingHTTPServer`` in a background
thread on a free port and speaks both dialects:

* **v5** under ``{url}/countries/v5``: ``Authorization: Bearer <api_key>``
  (401 ``errors`` body when missing/invalid), ``GET /countries/v5?region=Europe``,
  ``GET /countries/v5/subregion/{name}``, ``response_fields`` (server-side
  projection of dotted paths; an unknown property -> 404 ``errors`` body; a
  premium field -> 403), ``limit`` (1..100, else 400; pages of at most ``max_limit``) / ``offset``
  pagination with ``{"data": {"objects": [...], "meta": {total, count, limit,
  offset, more}}}``. Currencies are a list of ``{code, name, symbol}``
  (``v5_currencies="list"``) or a code-keyed object (``"object"``).
* **v3.1** at the server root: ``/v3.1/region/{name}``, ``/v3.1/subregion/{name}``,
  ``/v3.1/all`` (``fields`` required, at most 10) with ``fields`` projection,
  404 when nothing matches. ``legacy_v31=True`` answers every v3.1 call with 200 and
  the deprecation body ``{"success": false, "data": null, "errors": [...]}``.
* **The hosted legacy API as it behaves today**: ``legacy_redirect=URL`` answers every
  v3.1 path with ``301`` to ``URL``; ``files={path: body}`` serves static files, so a
  second server can play the other origin (``files-03.restcountries.com``) that holds
  :data:`LEGACY_BODY`. :func:`legacy_hosted` starts both.
* **The demo key**: a request with ``Authorization: Bearer <demo_key>`` (default
  ``rc_live_demo``) gets 200 with one fixed record (Canada, all fields) under
  ``data.objects`` and a ``data._demo`` notice, whatever it asked.

Observation: :attr:`FakeRestCountries.requests` (a thread-safe log of
:class:`RequestRecord`: method, path, query, whether an Authorization header
was sent -- never its value), :meth:`count`, :attr:`max_in_flight` and
:meth:`max_overlap` (how many requests were being served at the same time).

Fault injection: :meth:`FakeRestCountries.inject` queues :class:`Fault` s per
path glob; each matching request consumes one. See :class:`Fault` for the kinds,
among them a body trickled a byte at a time, an oversize body generated lazily
(with or without ``Content-Length``), and records of another region mixed in.

:class:`ForwardProxy` is a tiny plain-http forward proxy (``$HTTP_PROXY``) that
sends each request on to the fake server mapped to its host name, and logs
whether an Authorization header passed through it.

Control over HTTP (for other processes using the standalone server):
``GET /_fake/requests``, ``POST /_fake/faults`` (JSON ``{"pattern": ..., "faults":
[{"kind": ..., ...}], "times": 1}``), ``POST /_fake/reset``, ``POST /_fake/latency``
(``{"seconds": 0.5}``). These paths are not logged.

Standalone: ``python -m tests.fake_api --port 8765 [--api-key K] [--latency 0.5]
[--max-limit 100] [--v5-currencies object] [--legacy-v31] [--legacy-redirect URL]
[--synthetic N --seed S]``;
prints one line ``fake REST Countries listening on http://127.0.0.1:8765`` and
serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import email.utils
import fnmatch
import http.client
import json
import logging
import select
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from dataclasses import field as dataclass_field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from tests.countries_data import COUNTRIES, synthetic_countries, to_v5

logger = logging.getLogger(__name__)

DEFAULT_API_KEY = "fake-restcountries-key-0123456789"
DEPRECATION_MESSAGE = (
    "This API version has been deprecated. Please visit "
    "https://restcountries.com/docs/countries/legacy-api-deprecation to migrate to our new version (v5)."
)
"""The hosted legacy API's message, word for word as it reads today."""
LEGACY_BODY: dict[str, Any] = {"success": False, "data": None, "errors": [{"message": DEPRECATION_MESSAGE}]}
"""The static file every hosted v3.1 call is redirected to (``countries.00/legacy.json``)."""
LEGACY_FILE_PATH = "/countries.00/legacy.json"
DEMO_KEY = "rc_live_demo"
DEMO_NOTICE = "This is a demo key: every query returns the same sample. Get your own key at https://restcountries.com"
V5_PREFIX = "/countries/v5"
V31_MAX_FIELDS = 10
V5_HARD_LIMIT = 100  # the real API rejects a larger `limit` with 400

FaultKind = Literal[
    "ok",  # answer normally (lets a queue skip requests, e.g. fail only page 3)
    "status",  # answer `status` (with optional Retry-After and errors body)
    "latency",  # wait `seconds`, then answer normally
    "held",  # wait until the test sets `release` (a threading.Event), then answer normally
    "hang",  # never answer (until the client gives up or the server stops)
    "drop",  # close the connection without any response
    "truncated",  # 200 with the normal JSON body cut in half
    "html",  # 200 text/html page
    "non_list",  # 200 with the wrong shape: v3.1 an object, v5 a bare list (wrong envelope)
    "missing_field",  # 200 normal body, but `field` removed from the first record
    "errors_body",  # 200 with an `errors` array (like the retired hosted API)
    "trickle",  # 200 normal body, Content-Length sent, then one byte every `seconds`
    "oversize",  # 200 JSON body of `size` bytes generated lazily (with or without Content-Length)
    "foreign",  # 200 normal body plus the records of `region` (same fields)
    "grow",  # a new country joins the requested region (or subregion) first, then the normal answer
]


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, consumed by one matching request.

    Build with the class methods: ``Fault.ok()``, ``Fault.status(503, retry_after=2)``,
    ``Fault.status(429, retry_after=datetime(...))``, ``Fault.latency(1.5)``,
    ``Fault.held(event)``, ``Fault.hang()``, ``Fault.drop()``, ``Fault.bad_body("truncated" | "html" |
    "non_list" | "errors_body")``, ``Fault.missing_field("population")``,
    ``Fault.trickle(0.5)``, ``Fault.oversize(200_000_000, declare_length=False)``,
    ``Fault.foreign("Americas")``.
    """

    kind: FaultKind
    status_code: int = 200
    retry_after: str | None = None  # the literal Retry-After header value
    message: str | None = None  # the errors body message (status / errors_body)
    seconds: float = 0.0  # latency; trickle: the pause before each byte
    field: str = "population"  # missing_field: a top-level key removed from the first record
    size: int = 0  # oversize: body length in bytes
    declare_length: bool = True  # oversize: send Content-Length (else the body ends when the connection closes)
    region: str = "Americas"  # foreign: the region whose records are mixed in
    release: threading.Event | None = dataclass_field(default=None, compare=False)  # held: answered once it is set

    @classmethod
    def status(
        cls, code: int, *, retry_after: float | str | datetime | None = None, message: str | None = None
    ) -> Fault:
        """Answer ``code`` with an ``errors`` body; ``retry_after`` as seconds, HTTP date or literal."""
        if isinstance(retry_after, datetime):
            ra: str | None = email.utils.format_datetime(retry_after, usegmt=True)
        elif isinstance(retry_after, (int, float)):
            ra = str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
        else:
            ra = retry_after
        return cls("status", status_code=code, retry_after=ra, message=message)

    @classmethod
    def ok(cls) -> Fault:
        """Answer normally: ``inject(p, Fault.ok(), Fault.ok(), Fault.status(503))`` fails the third."""
        return cls("ok")

    @classmethod
    def latency(cls, seconds: float) -> Fault:
        """Wait ``seconds`` before answering normally."""
        return cls("latency", seconds=seconds)

    @classmethod
    def held(cls, release: threading.Event) -> Fault:
        """Answer normally once ``release`` is set (the test decides when, not a clock)."""
        return cls("held", release=release)

    @classmethod
    def hang(cls) -> Fault:
        """Never answer; the client must time out. Does not block server shutdown."""
        return cls("hang")

    @classmethod
    def drop(cls) -> Fault:
        """Close the connection without sending a response."""
        return cls("drop")

    @classmethod
    def bad_body(
        cls, kind: Literal["truncated", "html", "non_list", "errors_body"], message: str | None = None
    ) -> Fault:
        """A 200 response with a broken body of the given kind."""
        if kind not in ("truncated", "html", "non_list", "errors_body"):
            raise ValueError(f"unknown bad body kind {kind!r}")
        return cls(kind, message=message)

    @classmethod
    def missing_field(cls, field: str = "population") -> Fault:
        """A 200 normal response whose first record lacks the top-level key ``field``."""
        return cls("missing_field", field=field)

    @classmethod
    def trickle(cls, seconds_per_byte: float) -> Fault:
        """200 with the normal body and its ``Content-Length``, sent one byte every ``seconds_per_byte``."""
        return cls("trickle", seconds=seconds_per_byte)

    @classmethod
    def oversize(cls, size: int, *, declare_length: bool = True) -> Fault:
        """200 with a valid JSON body of exactly ``size`` bytes (mostly blanks), generated while it is sent.

        With ``declare_length=False`` no ``Content-Length`` is sent and the body ends when
        the server closes the connection, so only counting while reading can stop it.
        """
        return cls("oversize", size=size, declare_length=declare_length)

    @classmethod
    def foreign(cls, region: str = "Americas") -> Fault:
        """200 with the normal records followed by those of ``region`` (same requested fields)."""
        return cls("foreign", region=region)

    @classmethod
    def grow(cls) -> Fault:
        """Add one country to the requested region or subregion, then answer normally: v5 ``meta.total`` grows."""
        return cls("grow")

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Fault:
        """From JSON: ``{"kind": "status", "status_code": 503, "retry_after": "2", ...}``."""
        return cls(**spec)


@dataclass
class RequestRecord:
    """One received request. ``authorization`` says whether the header was sent (never its value).

    Logged as soon as the request is read (before any latency, fault or answer),
    so a client that has seen the outcome always finds its request in the log.
    ``status`` is None while in flight and when no response was sent (drop, hang);
    ``finished`` is None while in flight.
    """

    method: str
    path: str  # decoded path, without the query
    query: dict[str, list[str]]
    authorization: bool
    fault: str | None
    started: float  # time.monotonic()
    status: int | None = None
    finished: float | None = None
    bytes_sent: int = 0  # body bytes written to the client

    @property
    def authorized(self) -> bool:
        """Alias of ``authorization``: an Authorization header was sent."""
        return self.authorization

    def param(self, name: str) -> str | None:
        """The first value of query parameter ``name``, or None."""
        values = self.query.get(name)
        return values[0] if values else None


def _errors_body(message: str) -> dict[str, Any]:
    return {"errors": [{"message": message}]}


def _file_bytes(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


_MISSING = object()


def _project(obj: Any, paths: Sequence[list[str]]) -> Any:
    """Keep only the dotted ``paths`` (already split) of ``obj``; lists are projected element-wise."""
    if isinstance(obj, list):
        return [_project(item, paths) for item in obj]
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    groups: dict[str, list[list[str]]] = {}
    for p in paths:
        groups.setdefault(p[0], []).append(p[1:])
    for key, rests in groups.items():
        if key not in obj:
            continue
        if any(not r for r in rests):
            out[key] = copy.deepcopy(obj[key])
        else:
            out[key] = _project(obj[key], rests)
    return out


def _has_path(obj: Any, parts: list[str]) -> bool:
    if not parts:
        return True
    if isinstance(obj, list):
        return any(_has_path(item, parts) for item in obj)
    if isinstance(obj, dict) and parts[0] in obj:
        return _has_path(obj[parts[0]], parts[1:])
    return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    fake: FakeRestCountries


class FakeRestCountries:
    """A fake REST Countries server (v5 and v3.1) on 127.0.0.1; see the module docstring.

    Use as a context manager (``with FakeRestCountries() as api: ...``) or call
    :meth:`start` / :meth:`stop`. Options:

    - ``countries``: v3.1-style full records to serve (default: ``tests.countries_data.COUNTRIES``).
    - ``api_key``: the valid v5 bearer key.
    - ``port``: 0 picks a free port.
    - ``latency``: seconds added before every API response (settable later: :attr:`latency`).
    - ``max_limit``: the most v5 records served per page (100 like the real API). A ``limit``
      above 100 is always a 400; one above a lower ``max_limit`` is clamped to it (``meta.limit``
      says so), so a client asking for 100 walks several pages of little data.
    - ``default_limit``: the v5 page size when ``limit`` is not sent.
    - ``v5_currencies``: ``"list"`` (documented) or ``"object"`` (code-keyed).
    - ``legacy_v31``: every v3.1 call answers 200 with the deprecation ``errors`` body.
    - ``legacy_redirect``: every v3.1 call answers ``301`` with this ``Location`` (the hosted API today).
    - ``files``: static files by path (``bytes``, ``str`` or a JSON-able object), served with 200 to
      anyone; every other path of such a server answers as the API does.
    - ``demo_key``: the bearer key answered with the demo sample (None: no demo key).
    - ``premium_fields``: v5 ``response_fields`` that answer 403 (premium plan needed).
    - ``paging``: ``"ignore_offset"`` serves the first v5 page whatever the offset and always says
      ``more``; ``"always_more"`` honours the offset but always says ``more`` (broken paging).
    - ``quota``: after this many authenticated v5 requests, answer 403 quota exceeded.
    """

    def __init__(
        self,
        countries: Iterable[dict[str, Any]] | None = None,
        *,
        api_key: str = DEFAULT_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        max_limit: int = 100,
        default_limit: int = 10,
        v5_currencies: Literal["list", "object"] = "list",
        legacy_v31: bool = False,
        legacy_redirect: str | None = None,
        files: dict[str, Any] | None = None,
        demo_key: str | None = DEMO_KEY,
        premium_fields: Iterable[str] = ("gini", "economy.gdp"),
        quota: int | None = None,
        paging: Literal["ok", "ignore_offset", "always_more"] = "ok",
    ):
        self.api_key = api_key
        self.host = host
        self.latency = latency
        self.max_limit = max_limit
        self.default_limit = default_limit
        self.v5_currencies = v5_currencies
        self.legacy_v31 = legacy_v31
        self.legacy_redirect = legacy_redirect
        self.files = {path: _file_bytes(body) for path, body in (files or {}).items()}
        self.demo_key = demo_key
        self.premium_fields = frozenset(premium_fields)
        self.quota = quota
        self.paging = paging
        self._countries = copy.deepcopy(list(COUNTRIES if countries is None else countries))
        self._v5_records = [to_v5(c, currencies=v5_currencies) for c in self._countries]
        self._requested_port = port
        self._lock = threading.Lock()
        self._log: list[RequestRecord] = []
        self._faults: list[tuple[str, list[Fault]]] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._v5_authenticated = 0
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------

    def start(self) -> FakeRestCountries:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        server = _Server((self.host, self._requested_port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-restcountries", daemon=True
        )
        self._thread.start()
        logger.debug("fake REST Countries listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving: wake hanging/latent handlers, close open connections, join the thread."""
        server = self._server
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeRestCountries:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The server root, e.g. ``http://127.0.0.1:54321`` (also the v3.1 base URL)."""
        return f"http://{self.host}:{self.port}"

    @property
    def v5_base_url(self) -> str:
        return f"{self.url}{V5_PREFIX}"

    @property
    def v31_base_url(self) -> str:
        return self.url

    # --- fault injection ----------------------------------------------------------

    def inject(self, pattern: str, *faults: Fault, times: int = 1) -> None:
        """Queue ``faults`` (each repeated ``times``) for requests whose path matches glob ``pattern``.

        Patterns are :mod:`fnmatch` globs on the decoded path without the query,
        e.g. ``"*"``, ``"/countries/v5*"``, ``"/v3.1/subregion/*"``. A request
        consumes the next fault of the first pattern (in injection order) whose
        queue is not empty and which matches; the other queues are untouched.
        """
        if not faults:
            raise ValueError("give at least one Fault")
        queued = [f for f in faults for _ in range(times)]
        with self._lock:
            for pat, queue in self._faults:
                if pat == pattern:
                    queue.extend(queued)
                    return
            self._faults.append((pattern, queued))

    def pending_faults(self) -> int:
        """How many injected faults have not been consumed yet."""
        with self._lock:
            return sum(len(q) for _, q in self._faults)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for pattern, queue in self._faults:
                if queue and fnmatch.fnmatchcase(path, pattern):
                    return queue.pop(0)
        return None

    # --- observation ----------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot (copies) of the request log, in arrival order."""
        with self._lock:
            return [replace(r) for r in self._log]

    def count(self, pattern: str = "*") -> int:
        """How many requests were served whose path matches glob ``pattern``."""
        return sum(1 for r in self.requests if fnmatch.fnmatchcase(r.path, pattern))

    def counts_by_path(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.requests:
            out[r.path] = out.get(r.path, 0) + 1
        return out

    @property
    def max_in_flight(self) -> int:
        """The most requests that were being handled at the same moment."""
        with self._lock:
            return self._max_in_flight

    def max_overlap(self) -> int:
        """The most logged requests whose [started, finished] intervals overlap at one instant."""
        events: list[tuple[float, int]] = []
        for r in self.requests:
            events.append((r.started, 1))
            events.append((float("inf") if r.finished is None else r.finished, -1))
        events.sort(key=lambda e: (e[0], e[1]))  # ends before starts at equal times
        best = cur = 0
        for _, delta in events:
            cur += delta
            best = max(best, cur)
        return best

    def reset(self) -> None:
        """Clear the request log, the in-flight maximum, the quota counter and all faults."""
        with self._lock:
            self._log.clear()
            self._faults.clear()
            self._max_in_flight = self._in_flight
            self._v5_authenticated = 0

    # --- internals used by the handler ------------------------------------------------

    def _enter(self, conn: socket.socket, record: RequestRecord) -> None:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._connections.add(conn)
            self._log.append(record)

    def _leave(self, record: RequestRecord, status: int | None) -> None:
        with self._lock:
            self._in_flight -= 1
            record.status = status
            record.finished = time.monotonic()

    def _count_sent(self, record: RequestRecord, n: int) -> None:
        with self._lock:
            record.bytes_sent += n

    def _region_records(
        self, path: str, query: dict[str, list[str]], authorization: str | None, region: str
    ) -> list[dict[str, Any]]:
        """The records of ``region`` as the request at ``path`` would get them (same fields)."""
        if path == V5_PREFIX or path.startswith(V5_PREFIX + "/"):
            q = {**query, "region": [region], "offset": ["0"]}
            _, body = self._v5("", q, authorization)
            return body["data"]["objects"] if isinstance(body, dict) and "data" in body else []
        _, body = self._v31(f"/region/{region}", query)
        return body if isinstance(body, list) else []

    def _grow(self, path: str, query: dict[str, list[str]]) -> None:
        """One new country in the region or subregion ``path``/``query`` asks for (a renamed copy of its first)."""
        name = (query.get("region") or [path.rsplit("/", 1)[-1]])[-1].lower()
        with self._lock:
            first = next(c for c in self._countries if name in (c["region"].lower(), (c.get("subregion") or "").lower()))
            new = copy.deepcopy(first)
            new["name"]["official"] = new["name"]["common"] = f"New Country {len(self._countries)}"
            self._countries.append(new)
            self._v5_records.append(to_v5(new, currencies=self.v5_currencies))

    def _forget_connection(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops; True if it is stopping."""
        if seconds <= 0:
            return self._stopping.is_set()
        return self._stopping.wait(seconds)

    # --- the API ---------------------------------------------------------------------

    def _respond(self, path: str, query: dict[str, list[str]], authorization: str | None) -> tuple[int, Any]:
        """The normal (fault-free) answer to a GET: (status, JSON body)."""
        if path == V5_PREFIX or path.startswith(V5_PREFIX + "/"):
            return self._v5(path[len(V5_PREFIX) :], query, authorization)
        if path.startswith("/v3.1/") or path == "/v3.1":
            return self._v31(path[len("/v3.1") :], query)
        return 404, {"status": 404, "message": "Not Found"}

    def _v5(self, sub: str, query: dict[str, list[str]], authorization: str | None) -> tuple[int, Any]:
        if authorization is None or not authorization.startswith("Bearer "):
            return 401, _errors_body("Missing API key: send 'Authorization: Bearer <key>'.")
        if self.demo_key is not None and authorization[len("Bearer ") :] == self.demo_key:
            return 200, self._demo_answer()
        if authorization[len("Bearer ") :] != self.api_key:
            return 401, _errors_body("Invalid API key.")
        with self._lock:
            self._v5_authenticated += 1
            used = self._v5_authenticated
        if self.quota is not None and used > self.quota:
            return 403, _errors_body(f"Monthly request quota of {self.quota} requests exceeded.")
        allowed = {"region", "response_fields", "limit", "offset"}
        unknown = sorted(set(query) - allowed)
        if unknown:
            return 400, _errors_body(f"Unknown query parameter '{unknown[0]}'.")

        def one(name: str) -> str | None:
            vals = query.get(name)
            return vals[-1] if vals else None

        try:
            limit = int(one("limit") or min(self.default_limit, self.max_limit))
            offset = int(one("offset") or 0)
        except ValueError:
            return 400, _errors_body("'limit' and 'offset' must be integers.")
        if not 1 <= limit <= V5_HARD_LIMIT:
            return 400, _errors_body(f"'limit' must be between 1 and {V5_HARD_LIMIT}.")
        limit = min(limit, self.max_limit)  # a smaller page size, to exercise paging with little data
        if offset < 0:
            return 400, _errors_body("'offset' must be >= 0.")

        records = self._v5_records
        region = one("region")
        if sub in ("", "/"):
            if region is not None:
                records = [r for r in records if r["region"].lower() == region.lower()]
        elif sub.startswith("/subregion/"):
            name = sub[len("/subregion/") :]
            if region is not None:
                return 400, _errors_body("'region' cannot be combined with /subregion.")
            records = [r for r in records if (r.get("subregion") or "").lower() == name.lower()]
        else:
            return 404, _errors_body(f"No route for '{V5_PREFIX}{sub}'.")

        fields_raw = one("response_fields")
        if fields_raw is not None:
            fields = [f.strip() for f in fields_raw.split(",") if f.strip()]
            if not fields:
                return 400, _errors_body("'response_fields' is empty.")
            for f in fields:
                if f in self.premium_fields:
                    return 403, _errors_body(f"The field '{f}' requires a premium plan.")
            split = [f.split(".") for f in fields]
            for f, parts in zip(fields, split, strict=True):
                if not any(_has_path(r, parts) for r in self._v5_records):
                    return 404, _errors_body(f"Unknown property '{f}'.")
            records = [_project(r, split) for r in records]
        else:
            records = copy.deepcopy(records)

        total = len(records)
        if self.paging == "ignore_offset":
            offset = 0
        page = records[offset : offset + limit]
        meta = {
            "total": total,
            "count": len(page),
            "limit": limit,
            "offset": offset,
            "more": offset + len(page) < total or self.paging != "ok",
        }
        return 200, {"data": {"objects": page, "meta": meta}}

    def _demo_answer(self) -> dict[str, Any]:
        """What the demo key gets for any query: Canada, whole, and a notice."""
        canada = next((r for r in self._v5_records if r["names"]["common"] == "Canada"), None)
        if canada is None:
            canada = to_v5(next(c for c in COUNTRIES if c["name"]["common"] == "Canada"), currencies=self.v5_currencies)
        meta = {"total": 1, "count": 1, "limit": 10, "offset": 0, "more": False}
        return {"data": {"objects": [copy.deepcopy(canada)], "meta": meta, "_demo": DEMO_NOTICE}}

    def _v31(self, sub: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        if self.legacy_v31:
            return 200, {"success": False, "data": None, "errors": [{"message": DEPRECATION_MESSAGE}]}
        fields_raw = query.get("fields", [None])[-1]
        fields = [f.strip() for f in fields_raw.split(",") if f.strip()] if fields_raw else []
        if len(fields) > V31_MAX_FIELDS:
            return 400, {"status": 400, "message": f"Too many fields: at most {V31_MAX_FIELDS} are allowed."}
        if sub == "/all":
            if not fields:
                return 400, {"status": 400, "message": "'fields' query not specified"}
            records = self._countries
        elif sub.startswith("/region/"):
            name = sub[len("/region/") :].lower()
            records = [r for r in self._countries if r["region"].lower() == name]
        elif sub.startswith("/subregion/"):
            name = sub[len("/subregion/") :].lower()
            records = [r for r in self._countries if (r.get("subregion") or "").lower() == name]
        else:
            return 404, {"status": 404, "message": "Not Found"}
        if not records:
            return 404, {"status": 404, "message": "Not Found"}
        if fields:
            return 200, [{k: copy.deepcopy(r[k]) for k in fields if k in r} for r in records]
        return 200, copy.deepcopy(records)


_HTML_PAGE = (
    "<!DOCTYPE html><html><head><title>Welcome</title></head>"
    "<body><h1>It works!</h1><p>This is not the API.</p></body></html>"
)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    server_version = "FakeRestCountries/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fake api: " + format, *args)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.fake._forget_connection(self.connection)

    # --- control endpoints ---

    def _control(self, method: str, path: str) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            payload = json.loads(raw) if raw else {}
            if method == "GET" and path == "/_fake/requests":
                self._send_json(200, [asdict(r) for r in fake.requests])
            elif method == "POST" and path == "/_fake/faults":
                faults = [Fault.from_dict(f) for f in payload["faults"]]
                fake.inject(payload["pattern"], *faults, times=int(payload.get("times", 1)))
                self._send_json(200, {"pending": fake.pending_faults()})
            elif method == "POST" and path == "/_fake/reset":
                fake.reset()
                self._send_json(200, {"ok": True})
            elif method == "POST" and path == "/_fake/latency":
                fake.latency = float(payload["seconds"])
                self._send_json(200, {"latency": fake.latency})
            else:
                self._send_json(404, {"message": "unknown control endpoint"})
        except (KeyError, TypeError, ValueError) as exc:
            self._send_json(400, {"message": f"bad control request: {exc}"})

    def do_POST(self) -> None:
        path = unquote(urlsplit(self.path).path)
        if path.startswith("/_fake/"):
            self._control("POST", path)
        else:
            self._send_json(405, {"message": "Method Not Allowed"})

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        if path.startswith("/_fake/"):
            self._control("GET", path)
            return
        fake = self.server.fake
        query = parse_qs(split.query, keep_blank_values=True)
        authorization = self.headers.get("Authorization")
        fault = fake._take_fault(path)
        record = RequestRecord(
            method="GET",
            path=path,
            query=query,
            authorization=authorization is not None,
            fault=None if fault is None else fault.kind,
            started=time.monotonic(),
        )
        self._record = record
        fake._enter(self.connection, record)
        status: int | None = None
        try:
            status = self._serve(fake, path, query, authorization, fault)
        finally:
            fake._leave(record, status)

    def _serve(
        self,
        fake: FakeRestCountries,
        path: str,
        query: dict[str, list[str]],
        authorization: str | None,
        fault: Fault | None,
    ) -> int | None:
        """Answer one API GET (with ``fault`` applied); the status sent, or None if none was."""
        if fake._sleep(fake.latency):
            return self._drop()
        if fault is not None:
            if fault.kind == "hang":
                self._wait_for_disconnect(fake)
                return self._drop()
            if fault.kind == "drop":
                return self._drop()
            if fault.kind == "latency" and fake._sleep(fault.seconds):
                return self._drop()
            if fault.kind == "held" and fault.release is not None:
                while not fault.release.wait(0.05):  # the test releases it; a stopping server drops it
                    if fake._stopping.is_set():
                        return self._drop()
            if fault.kind == "status":
                headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                if 300 <= fault.status_code < 400:
                    headers["Location"] = fault.message or f"{fake.url}/elsewhere"
                message = fault.message or f"Injected HTTP {fault.status_code}."
                self._send_json(fault.status_code, _errors_body(message), headers)
                return fault.status_code
            if fault.kind == "html":
                self._send_bytes(200, _HTML_PAGE.encode(), "text/html; charset=utf-8")
                return 200
            if fault.kind == "errors_body":
                message = fault.message or DEPRECATION_MESSAGE
                self._send_json(200, {"success": False, "data": None, "errors": [{"message": message}]})
                return 200
            if fault.kind == "grow":
                fake._grow(path, query)
            if fault.kind == "oversize":
                return self._send_oversize(fake, fault)
        if path in fake.files:
            self._send_bytes(200, fake.files[path], "application/json")
            return 200
        if fake.legacy_redirect is not None and (path == "/v3.1" or path.startswith("/v3.1/")):
            self._send_bytes(301, b"", "text/html", {"Location": fake.legacy_redirect})
            return 301
        status, body = fake._respond(path, query, authorization)
        if fault is not None and status == 200:
            records = body["data"]["objects"] if isinstance(body, dict) and "data" in body else body
            if fault.kind == "truncated":
                raw = json.dumps(body).encode()
                self._send_bytes(200, raw[: max(1, len(raw) // 2)], "application/json")
                return 200
            if fault.kind == "non_list":
                body = records if isinstance(body, dict) else {"countries": body}
            if fault.kind == "missing_field" and records:
                records[0].pop(fault.field, None)
            if fault.kind == "foreign":
                records.extend(fake._region_records(path, query, authorization, fault.region))
            if fault.kind == "trickle":
                return self._send_trickle(fake, json.dumps(body, ensure_ascii=False).encode(), fault.seconds)
        self._send_json(status, body)
        return status

    def _send_trickle(self, fake: FakeRestCountries, raw: bytes, seconds: float) -> int | None:
        """200 with ``raw`` announced in full, then written a byte at a time, ``seconds`` apart."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.flush()
            for i in range(len(raw)):
                if fake._sleep(seconds):
                    return self._drop()
                self.wfile.write(raw[i : i + 1])
                self.wfile.flush()
                self._sent(1)
        except OSError:  # the client gave up
            self.close_connection = True
        return 200

    def _send_oversize(self, fake: FakeRestCountries, fault: Fault) -> int | None:
        """200 with a valid JSON body of ``fault.size`` bytes, generated chunk by chunk as it is sent."""
        head = b'{"data": {"objects": ['
        tail = b'], "meta": {"total": 0, "count": 0, "limit": 100, "offset": 0, "more": false}}}'
        blanks = max(0, fault.size - len(head) - len(tail))
        chunk = b" " * 65536
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if fault.declare_length:
                self.send_header("Content-Length", str(len(head) + blanks + len(tail)))
            else:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(head)
            self._sent(len(head))
            while blanks > 0 and not fake._stopping.is_set():
                piece = chunk[: min(blanks, len(chunk))]
                self.wfile.write(piece)
                self._sent(len(piece))
                blanks -= len(piece)
            self.wfile.write(tail)
            self._sent(len(tail))
            self.wfile.flush()
        except OSError:  # the client stopped reading
            self.close_connection = True
        return 200

    def _sent(self, n: int) -> None:
        self.server.fake._count_sent(self._record, n)

    def _wait_for_disconnect(self, fake: FakeRestCountries) -> None:
        """Block until the client closes the connection or the server stops."""
        conn = self.connection
        while not fake._stopping.is_set():
            readable, _, _ = select.select([conn], [], [], 0.05)
            if not readable:
                continue
            try:
                if not conn.recv(1, socket.MSG_PEEK):
                    return  # the client hung up
            except OSError:
                return
            fake._stopping.wait(0.05)  # the client sent more bytes; keep hanging

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        return None

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(body, ensure_ascii=False).encode(), "application/json", headers)

    def _send_bytes(self, status: int, raw: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(raw)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)
            self.wfile.flush()
            self._sent(len(raw))
        except OSError:
            self.close_connection = True


class ForwardProxy:
    """A tiny plain-http forward proxy on 127.0.0.1 (what ``$HTTP_PROXY`` names), for tests.

    It takes absolute-form requests (``GET http://countries.example.org/v3.1/...``)
    and forwards each to the ``upstreams`` address of the request's host, as a
    corporate proxy would after resolving the name: ``{"countries.example.org":
    "127.0.0.1:54321"}``. A host it has no upstream for gets 502. It answers
    ``CONNECT`` with 405 (no https tunnels). :attr:`seen` logs ``(method,
    target, whether an Authorization header came)`` for every request, never a
    header's value. Use as a context manager; :attr:`url` is its address.
    """

    def __init__(self, upstreams: dict[str, str]):
        self.upstreams = {host.lower(): address for host, address in upstreams.items()}
        self._lock = threading.Lock()
        self._seen: list[tuple[str, str, bool]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def seen(self) -> list[tuple[str, str, bool]]:
        with self._lock:
            return list(self._seen)

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ForwardProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("forward proxy: " + format, *args)

            def _note(self) -> None:
                with proxy._lock:
                    proxy._seen.append((self.command, self.path, self.headers.get("Authorization") is not None))

            def _answer(self, status: int, raw: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
                self.send_response(status)
                skip = {"content-length", "connection", "transfer-encoding", "keep-alive"}
                for k, v in headers:
                    if k.lower() not in skip:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_CONNECT(self) -> None:
                self._note()
                self._answer(405, b"no tunnels here")

            def do_GET(self) -> None:
                self._note()
                target = urlsplit(self.path)
                upstream = proxy.upstreams.get((target.hostname or "").lower())
                if not target.scheme or upstream is None:
                    self._answer(502, b"unknown upstream")
                    return
                host, _, port = upstream.rpartition(":")
                path = target.path + (f"?{target.query}" if target.query else "")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                try:
                    conn.request("GET", path or "/", headers=headers)
                    response = conn.getresponse()
                    self._answer(response.status, response.read(), response.getheaders())
                except OSError:
                    self._answer(502, b"upstream failed")
                finally:
                    conn.close()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="forward-proxy", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.fake_api``: serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tests.fake_api", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="the valid v5 bearer key")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every response")
    parser.add_argument("--max-limit", type=int, default=100, help="most v5 records per page")
    parser.add_argument("--v5-currencies", choices=("list", "object"), default="list")
    parser.add_argument("--legacy-v31", action="store_true", help="answer v3.1 with the deprecation body")
    parser.add_argument(
        "--legacy-redirect",
        metavar="URL",
        default=None,
        help="answer every v3.1 path with 301 to URL (the hosted API today)",
    )
    parser.add_argument("--synthetic", type=int, default=None, metavar="N", help="serve N synthetic countries")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    countries = synthetic_countries(args.synthetic, args.seed) if args.synthetic is not None else None
    fake = FakeRestCountries(
        countries,
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        latency=args.latency,
        max_limit=args.max_limit,
        v5_currencies=args.v5_currencies,
        legacy_v31=args.legacy_v31,
        legacy_redirect=args.legacy_redirect,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    with fake:
        print(f"fake REST Countries listening on {fake.url}", flush=True)  # the CLI's one output line
        stop.wait()
    return 0


@contextlib.contextmanager
def running(**options: Any) -> Iterator[FakeRestCountries]:
    """``with running(max_limit=5) as api:`` -- a started :class:`FakeRestCountries`."""
    with FakeRestCountries(**options) as fake:
        yield fake


@contextlib.contextmanager
def legacy_hosted(**options: Any) -> Iterator[tuple[FakeRestCountries, FakeRestCountries]]:
    """``with legacy_hosted() as (api, files):`` -- the hosted v3.1 API as it behaves today.

    ``files`` (another origin, like ``files-03.restcountries.com``) serves
    :data:`LEGACY_BODY` at :data:`LEGACY_FILE_PATH`; ``api`` answers every v3.1
    path with ``301`` to it. ``options`` go to ``api``.
    """
    with (
        FakeRestCountries(files={LEGACY_FILE_PATH: LEGACY_BODY}) as files,
        FakeRestCountries(legacy_redirect=files.url + LEGACY_FILE_PATH, **options) as api,
    ):
        yield api, files


__all__ = [
    "DEFAULT_API_KEY",
    "DEMO_KEY",
    "DEMO_NOTICE",
    "DEPRECATION_MESSAGE",
    "LEGACY_BODY",
    "LEGACY_FILE_PATH",
    "FakeRestCountries",
    "Fault",
    "ForwardProxy",
    "RequestRecord",
    "legacy_hosted",
    "running",
]

if __name__ == "__main__":
    raise SystemExit(main())
