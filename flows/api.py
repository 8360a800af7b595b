"""The async REST Countries client: every country of some regions, only the fields we need.

Two API versions are described as data (:class:`Dialect`, :data:`DIALECTS`):

- ``v5`` (default): ``https://api.restcountries.com/countries/v5``, bearer key,
  ``?region=`` / ``/subregion/{name}``, ``response_fields``, ``limit=100`` /
  ``offset`` pages until ``meta.more`` is false.
- ``v3.1``: a self-hosted open-source server (the hosted one is retired and
  answers every call with an ``errors`` body): ``/v3.1/region/{name}``,
  ``/v3.1/subregion/{name}``, ``fields=``, one JSON list per call.

Typical use (no Prefect needed)::

    async with make_client(api_key=key) as client:
        records = await fetch_regions(client, ["Northern Europe"], dialect=get_dialect("v5"))

Records are passed through as the API sent them (only the requested fields),
after checking that each has the fields the dialect requires. The client
never prints and never logs or raises the API key; every raised error is a
``flows.errors.CountriesError`` with a one-line message naming the URL and
what to do. Transient failures are retried per request (:class:`RetryPolicy`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NoReturn
from urllib.parse import quote

import httpx

from flows._dialects import (
    DIALECTS,
    MISSING,
    REGIONS,
    Dialect,
    canonical_region,
    expand_regions,
    get_dialect,
    get_path,
)
from flows._http import KEY_ADVICE, Request, RequestStats, RetryPolicy, api_message, client_secret, make_client
from flows.errors import (
    BadResponseError,
    ConfigurationError,
    DeprecatedApiError,
    PermanentApiError,
    UnknownRegionError,
)

__all__ = [
    "DIALECTS",
    "REGIONS",
    "Dialect",
    "RequestStats",
    "RetryPolicy",
    "dedupe_records",
    "expand_regions",
    "fetch_region",
    "fetch_regions",
    "get_dialect",
    "make_client",
]

logger = logging.getLogger(__name__)

BeforeRequest = Callable[[], Awaitable[None]]

_UNKNOWN_REGION_ADVICE = (
    f"regions are {', '.join(REGIONS)} (or 'all'); anything else is looked up as a subregion, "
    "named like 'Northern Europe'"
)
# Guards against a server whose `more` never turns false.
_MAX_PAGES = 1000


def _base_url(dialect: Dialect, base_url: str | None) -> str:
    base = (base_url or dialect.default_base_url).strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ConfigurationError(f"The API base URL {base!r} must start with http:// or https://.")
    return base


def _route(dialect: Dialect, name: str) -> tuple[str, dict[str, str], bool]:
    """(path, query, is_region) for one region or subregion name."""
    region = canonical_region(name)
    route, query = (
        (dialect.region_route, dialect.region_query)
        if region is not None
        else (dialect.subregion_route, dialect.subregion_query)
    )
    plain = region or name
    path = route.format(name=quote(plain, safe=""))
    return path, {k: v.format(name=plain) for k, v in query.items()}, region is not None


def _unknown_region(req: Request, name: str, why: str, status: int | None) -> NoReturn:
    req.fail(
        UnknownRegionError,
        f"GET {req.full_url} {why}: the API knows no region or subregion named {name!r}; "
        f"{_UNKNOWN_REGION_ADVICE} (if every name fails, check --base-url).",
        status=status,
    )


def _require_key(client: httpx.AsyncClient, dialect: Dialect) -> None:
    if dialect.requires_key and client_secret(client) is None:
        raise ConfigurationError(
            f"The {dialect.name} REST Countries API needs an API key and none is set: {KEY_ADVICE} "
            "(or use `--api v3.1` with `--base-url` pointing at a self-hosted v3.1 server)."
        )


def _on_404(req: Request, dialect: Dialect, name: str) -> Callable[[str | None], NoReturn]:
    def handle(message: str | None) -> NoReturn:
        text = (message or "").lower()
        if "propert" in text or "field" in text:
            req.fail(
                PermanentApiError,
                f"GET {req.full_url} was rejected with HTTP 404 ({req.quote(message)}): the API does not "
                f"know a requested field ({', '.join(dialect.fields)}); the {dialect.name} schema may have "
                "changed, check --api.",
                status=404,
            )
        _unknown_region(req, name, "returned HTTP 404" + (f" ({req.quote(message)})" if message else ""), 404)

    return handle


def _records_and_meta(req: Request, dialect: Dialect, body: Any) -> tuple[list[Any], dict[str, Any] | None]:
    """The record list (and the page meta, when paginated) of one decoded body; BadResponseError if misshapen."""
    if dialect.records_at is None:
        if not isinstance(body, list):
            req.fail(
                BadResponseError,
                f"GET {req.full_url} returned a JSON {_kind(body)} where a list of countries was expected: "
                f"is --base-url pointing at a {dialect.name} server (or should --api be different)?",
            )
        return body, None
    records = get_path(body, dialect.records_at)
    if not isinstance(records, list):
        top = sorted(body)[:5] if isinstance(body, dict) else _kind(body)
        req.fail(
            BadResponseError,
            f"GET {req.full_url} returned JSON without a list at '{dialect.records_at}' (got {req.quote(str(top))}): "
            f"is --base-url pointing at the {dialect.name} API (or should --api be different)?",
        )
    meta = get_path(body, dialect.page_meta_at) if dialect.page_meta_at else None
    if dialect.paginated and not (isinstance(meta, dict) and isinstance(meta.get(dialect.more_key), bool)):
        req.fail(
            BadResponseError,
            f"GET {req.full_url} returned no '{dialect.page_meta_at}.{dialect.more_key}' pagination flag: "
            f"is --base-url pointing at the {dialect.name} API?",
        )
    return records, meta


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def _check_records(req: Request, dialect: Dialect, records: list[Any], first_index: int) -> None:
    for i, record in enumerate(records, start=first_index):
        if not isinstance(record, dict):
            req.fail(BadResponseError, f"GET {req.full_url} returned a {_kind(record)} as country #{i}, "
                     "not an object: the API's schema changed or --api does not match the server.")
        missing = [p for p in dialect.required_paths if get_path(record, p) is MISSING]
        if missing:
            name = get_path(record, dialect.key_path)
            who = repr(req.quote(name)) if isinstance(name, str) else f"#{i}"
            req.fail(BadResponseError, f"GET {req.full_url} returned country {who} without the requested "
                     f"field(s) {', '.join(missing)}: the API's schema changed or --api does not match the server.")


async def fetch_region(
    client: httpx.AsyncClient,
    region: str,
    *,
    dialect: Dialect,
    base_url: str | None = None,
    retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, shared safely
    stats: RequestStats | None = None,
    before_request: BeforeRequest | None = None,
) -> list[dict]:
    """Every country of one region (see :data:`REGIONS`) or subregion, with only the dialect's fields.

    ``region`` matching a region name (any case) uses the region endpoint, any
    other name the subregion endpoint. All pages are fetched, each exactly once
    (``limit`` is the dialect's page size, 100 for v5, so a region of up to 100
    countries costs one request). ``base_url`` defaults to the dialect's; a
    trailing slash is fine. ``before_request`` is awaited before every HTTP
    request, retries included (e.g. a rate limit); ``stats`` counts them.

    Returns the records in API order. Raises ``ConfigurationError`` (blank name,
    ``'all'``, bad base URL, v5 without an API key -- before any request),
    ``UnknownRegionError`` (404 or no countries), ``AuthenticationError`` (401),
    ``QuotaExceededError`` (403), ``DeprecatedApiError`` (an ``errors`` body
    with a 2xx status), ``BadResponseError`` (not JSON, wrong shape, missing
    fields), ``PermanentApiError`` (other 4xx), ``TransientApiError`` (429/5xx/
    timeouts/connection errors after the retries ran out).
    """
    if not isinstance(region, str) or not region.strip():
        raise ConfigurationError(f"Region name must be non-blank text, got {region!r}.")
    name = region.strip()
    if name.casefold() == "all":
        raise ConfigurationError("'all' is not one region: pass it to fetch_regions() or expand_regions().")
    _require_key(client, dialect)
    stats = stats if stats is not None else RequestStats()
    base = _base_url(dialect, base_url)
    path, query, _ = _route(dialect, name)
    url = base + path
    params: dict[str, str | int] = {**query, dialect.fields_param: ",".join(dialect.fields)}

    out: list[dict] = []
    offset = 0
    for page in range(_MAX_PAGES):
        if dialect.paginated:
            assert dialect.offset_param is not None and dialect.limit_param is not None
            params[dialect.limit_param] = dialect.page_size
            params[dialect.offset_param] = offset
        req = Request(client, url, params, retry=retry, stats=stats, before_request=before_request)
        response = await req.send()
        req.raise_for_status(response, on_404=_on_404(req, dialect, name))
        body = req.decode(response)
        if isinstance(body, dict) and (body.get("errors") or body.get("success") is False):
            message = api_message(body) or "no message"
            req.fail(
                DeprecatedApiError,
                f"GET {req.full_url} answered HTTP {response.status_code} with an error instead of data: "
                f"\"{req.quote(message)}\"; {dialect.errors_body_advice}.",
                status=response.status_code,
            )
        records, meta = _records_and_meta(req, dialect, body)
        _check_records(req, dialect, records, len(out))
        out.extend(records)
        logger.debug("GET %s: %d countries (page %d)", req.full_url, len(records), page + 1)
        if meta is None or not meta[dialect.more_key]:
            break
        if not records:
            req.fail(BadResponseError, f"GET {req.full_url} returned an empty page that says more follow: "
                     "the API's pagination is broken, try again later.")
        offset += len(records)
    else:
        raise BadResponseError(
            f"GET {url} still said more pages follow after {_MAX_PAGES} pages: the API's pagination is broken.",
            url=url,
        )
    if not out and dialect.empty_is_unknown_region:
        _unknown_region(req, name, "returned no countries", response.status_code)
    logger.info("Fetched %d countries of %s from the %s API", len(out), name, dialect.name)
    return out


def _key(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return json.dumps(value, sort_keys=True, default=str)
    return value


def dedupe_records(records: Iterable[dict], dialect: Dialect) -> list[dict]:
    """``records`` with each country once: the first record per ``dialect.key_path`` value, order kept.

    Records without a value at the key path cannot be identified and are all kept.
    """
    seen: set[Any] = set()
    out: list[dict] = []
    for record in records:
        value = get_path(record, dialect.key_path)
        if value is MISSING or value is None:
            out.append(record)
            continue
        key = _key(value)
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


async def fetch_regions(
    client: httpx.AsyncClient,
    regions: Sequence[str],
    *,
    dialect: Dialect,
    base_url: str | None = None,
    retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, shared safely
    stats: RequestStats | None = None,
    before_request: BeforeRequest | None = None,
) -> list[dict]:
    """Every country of ``regions`` (``'all'`` allowed, see :func:`expand_regions`), each country once.

    The regions are fetched concurrently (``asyncio.gather``), then
    de-duplicated with :func:`dedupe_records` (first occurrence kept, in the
    order of ``regions``). If one region fails, the others are cancelled and
    that region's error is raised (see :func:`fetch_region` for the errors).
    """
    names = expand_regions(regions)
    _require_key(client, dialect)
    _base_url(dialect, base_url)  # fail once, before starting any region
    tasks = [
        asyncio.ensure_future(
            fetch_region(client, name, dialect=dialect, base_url=base_url, retry=retry, stats=stats,
                         before_request=before_request)
        )
        for name in names
    ]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    records = dedupe_records((r for result in results for r in result), dialect)
    logger.info("Fetched %d distinct countries of %s", len(records), ", ".join(names))
    return records
