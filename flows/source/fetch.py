"""Every country of one region (:func:`fetch_region`), checked to be what was asked; a run's failures as one error."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from itertools import repeat
from typing import Any
from urllib.parse import quote, unquote, urlencode

import httpx

from flows.errors import (
    BadResponseError,
    ConfigurationError,
    CountriesError,
    DemoKeyError,
    DeprecatedApiError,
    ForeignRecordsError,
    KeyWithheldError,
    RegionsFailedError,
    TransientApiError,
    UnknownRegionError,
    WrongBaseUrlError,
    setting,
)
from flows.source.client import HOSTED_ORIGIN, USER_AGENT, ApiClient, check_base_url, demo_key_message, origin
from flows.source.dialects import (
    API_KEY_BLOCK,
    API_KEY_ENV,
    MISSING,
    REGION_FIELDS,
    SUBREGIONS,
    Dialect,
    canonical_region,
    values_at,
)
from flows.source.request import (
    Answer,
    Request,
    RequestStats,
    RetryPolicy,
    api_message,
    raise_for_status,
    read_bounded,
    send,
)

logger = logging.getLogger("flows.source")

_PAGE_SIZE = 100
_FALLBACK_MAX_PAGES = 1000  # only for a server whose pages carry no total
_SPARE_PAGES = 2  # pages allowed beyond what meta.total needs (countries added while paging)
_MAX_NAMED = 5  # foreign records named in a message


def check_source(client: ApiClient, *, dialect: Dialect, base_url: str | None) -> str:
    """The base URL to use (no trailing slash). Raises ``ConfigurationError`` for a base URL that is not http(s) or
    a v5 client without a key, ``KeyWithheldError`` when the client would not send the needed key there."""
    base = check_base_url(base_url or "") or dialect.default_base_url
    if not dialect.requires_key:
        return base
    if client.key_auth is None:
        raise no_key_error(dialect.name)
    reason = {
        "plain-http": f": it is never sent over plain http except to this machine (loopback); use https for "
        f"{setting('base_url')}",
        "proxied": f": plain http goes through the proxy of $HTTP_PROXY or $ALL_PROXY, and the key never goes over "
        f"plain http to a proxy; use https, or http://127.0.0.1 or http://localhost (always direct) for "
        f"{setting('base_url')}",
        "untrusted": f", an origin the operator has not trusted (the key goes only to {HOSTED_ORIGIN} and "
        f"configured base URLs): to trust it, set RESTCOUNTRIES_BASE_URL={base} on the worker (not in a run's job "
        f"variables; or in the shell for a local run), or save it with "
        f"`python blocks/create_blocks.py --base-url {base}`",
    }.get(client.key_auth.withheld_reason(base) or "")
    if reason is not None:
        raise KeyWithheldError(f"the API key was withheld from {origin(base)}{reason}")
    return base


def no_key_error(api: str) -> ConfigurationError:
    """The error for API version ``api``, which needs a key, when none is set."""
    return ConfigurationError(
        f"no REST Countries API key for {setting('api', api)}: set {API_KEY_ENV}, or save it in the "
        f"'{API_KEY_BLOCK}' Secret block with `{API_KEY_ENV}=... python blocks/create_blocks.py`; "
        f"a self-hosted server needs none: {setting('api', 'v3.1')} {setting('base_url')} http://HOST:PORT"
    )


def one_error(failures: Sequence[CountriesError], *, asked: int, dialect: Dialect) -> CountriesError:
    """The failed regions of one run as one error: ``WrongBaseUrlError`` when all ``asked`` answered HTTP 404, one
    ``UnknownRegionError`` for those that found no countries, a cause every region met said once, or else a
    ``RegionsFailedError`` listing each cause once with the requests that met it."""
    unknown = [f for f in failures if isinstance(f, UnknownRegionError)]
    errors = [f for f in failures if f not in unknown]
    if unknown and len(unknown) == asked and all(e.status == 404 for e in unknown):
        errors.insert(0, WrongBaseUrlError(
            f"the base URL looks wrong: every region asked for ({asked}) answered HTTP 404, e.g. GET "
            f"{httpx.URL(unknown[0].url or '')}; check the path in {setting('base_url')} (a {dialect.name} base "
            f"URL looks like {dialect.base_url_example})", url=unknown[0].url, status=404))  # fmt: skip
    elif len(unknown) > 1:
        errors.insert(0, UnknownRegionError(
            f"no countries of {', '.join(repr(e.region) for e in unknown)} at this API: the server may hold none, "
            f"or the path of {setting('base_url')} is wrong ({', '.join(e.request or '?' for e in unknown)})",
            status=unknown[0].status))  # fmt: skip
    elif unknown:
        errors.insert(0, unknown[0])
    requests: dict[str, list[str]] = {}
    for error in errors:
        cause, _, request = error.template.partition(" (GET ")
        requests.setdefault(cause, []).extend(["GET " + request.removesuffix(")")] if request else [])
    if len(requests) == 1:
        return errors[0]
    causes = [f"{cause} ({', '.join(found)})" if found else cause for cause, found in requests.items()]
    return RegionsFailedError(f"{len(failures)} of {asked} regions failed: " + "; ".join(causes))


async def fetch_region(
    client: ApiClient,
    region: str,
    *,
    dialect: Dialect,
    paths: Iterable[str],
    base_url: str | None = None,
    retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, shared safely
    stats: RequestStats | None = None,
    before_request: Callable[[], Awaitable[None]] | None = None,
) -> list[dict]:
    """Every country of ``region`` (a region or subregion, any case) as the API sent it, with the fields of source
    ``paths`` (``"currencies.*.name"``) plus region and subregion, in API order, never from a mixed snapshot.

    ``before_request`` is awaited before every HTTP request, retries included; ``stats`` counts them. Raises
    before any request what :func:`~flows.source.dialects.canonical_region` and :func:`check_source` raise
    (``ConfigurationError`` for ``'all'``); after, ``UnknownRegionError``, ``AuthenticationError``,
    ``DemoKeyError``, ``QuotaExceededError``, ``DeprecatedApiError``, ``ForeignRecordsError``,
    ``BadResponseError`` (HTML, wrong shape, broken paging), ``PermanentApiError``, what
    :func:`~flows.source.request.send` raises, and ``TransientApiError`` when the region's total changed twice.
    """
    if isinstance(region, str) and region.strip().casefold() == "all":
        raise ConfigurationError("Region name must be one region or subregion (expand 'all' first), got 'all'.")
    name = canonical_region(region)
    fields = dialect.request_fields(paths)
    base = check_source(client, dialect=dialect, base_url=base_url)
    stats = stats if stats is not None else RequestStats()
    path, query = dialect.route(name)
    params: dict[str, Any] = {**query, dialect.fields_param: ",".join(fields)}
    shown = "…" + unquote(path) + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")

    def request(offset: int) -> Request:
        if dialect.page_meta_at:
            params.update(limit=_PAGE_SIZE, offset=offset)
        # Commas stay literal (``fields=name,currencies``) as the API documents; spaces are %20.
        url = f"{base}{path}?{urlencode(params, safe=',', quote_via=quote)}"
        return Request(client, url, shown + (f", offset {offset}" if offset else ""))

    seen: list[int | None] = []  # the region's count of countries, as it changed

    async def walk() -> list[dict] | None:
        """The region's pages from the start; None when its count changed on the way."""
        out: list[dict] = []
        last: list[Any] = []
        bound = _FALLBACK_MAX_PAGES
        for page in itertools.count(1):
            req = request(len(out))
            if page > bound:
                need = f", more than its total of {seen[-1]} needs" if seen[-1] is not None else ""
                req.fail(BadResponseError, f"the API still said more countries follow after {page - 1} pages{need}: "
                         "its paging is broken; nothing was loaded")  # fmt: skip
            answer = await send(req, retry=retry, stats=stats, before_request=before_request)
            if 300 <= answer.status < 400 and dialect.legacy_prefix and path.startswith(dialect.legacy_prefix):
                await _legacy_redirect(req, dialect, base, answer)
            if not 200 <= answer.status < 300:
                raise_for_status(req, answer, name, fields, dialect)
            records, meta = _records_and_meta(req, dialect, answer)
            if meta is not None:
                total = meta.get("total") if isinstance(meta.get("total"), int) else None
                if not seen or total != seen[-1]:
                    seen.append(total)
                    if page > 1:
                        return None
                if page == 1 and total is not None and records:
                    bound = math.ceil(total / len(records)) + _SPARE_PAGES
                if records and records == last:
                    req.fail(BadResponseError, f"the API sent the same page of countries again at offset {len(out)}: "
                             "its paging ignores the offset; nothing was loaded")  # fmt: skip
                last = records
            _check_records(req, dialect, records, len(out), asked=name)
            out.extend(records)
            if meta is None or not meta["more"]:
                break
            if not records:
                req.fail(BadResponseError, "the API sent an empty page that says more follow: its paging is broken")
        if not out:
            req.fail(UnknownRegionError, f"no countries of {name!r} at this API (it answered an empty list): "
                     f"is {setting('base_url')} the {dialect.name} API you meant?", status=answer.status,
                     region=name, request=f"GET {req.shown}")  # fmt: skip
        return out

    for _ in range(2):
        records = await walk()
        if records is not None:
            return records
        went = ", then ".join(map(str, seen))
        logger.warning("%s: the API's count of countries changed while paging (%s)", name, went)
    request(0).fail(
        TransientApiError,
        f"the API's data for {name!r} changed while it was being read, twice (its count of countries went "
        f"{went}): nothing was taken from a mixed snapshot; try again later",
    )


async def _legacy_redirect(req: Request, dialect: Dialect, base: str, answer: Answer) -> None:
    """``DeprecatedApiError`` for a 3xx of a legacy route whose target (read without the key) answers with the API's
    ``errors`` body, or that comes from restcountries.com; else return."""
    message = None
    try:
        target = httpx.URL(req.url).join(answer.headers.get("Location", ""))
        bare = httpx.AsyncClient(headers={"User-Agent": USER_AGENT})
        async with asyncio.timeout(min(10.0, req.client.deadline)), bare, bare.stream("GET", target) as response:
            body = await read_bounded(req, response, 64_000)
            message = api_message(json.loads(body)) if response.is_success else None
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError):  # TimeoutError is an OSError
        pass
    if message is None and httpx.URL(base).host != "restcountries.com":
        return
    said = f' and says "{req.quote(message)}"' if message else ""
    req.fail(DeprecatedApiError, f"the {dialect.name} API is deprecated: the server redirects the call (HTTP "
             f"{answer.status} to {req.quote(answer.headers.get('Location')) or 'no Location'}){said}; "
             f"{dialect.errors_body_advice}", status=answer.status)  # fmt: skip


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _records_and_meta(req: Request, dialect: Dialect, answer: Answer) -> tuple[list[Any], dict[str, Any] | None]:
    """The record list (and the page meta, when paged) of a 2xx answer; the errors of a demo or errors body."""
    body = answer.data
    notice = values_at([body], dialect.demo_flag_at)[0] if dialect.demo_flag_at else MISSING
    if notice is not MISSING:
        said = f' ("{req.quote(str(notice))}")' if isinstance(notice, str) and notice.strip() else ""
        req.fail(DemoKeyError, demo_key_message(f"the API answered with its demo sample{said}: the demo key"),
                 status=answer.status)  # fmt: skip
    if isinstance(body, dict) and (body.get("errors") or body.get("success") is False):
        req.fail(DeprecatedApiError, f'the API answered HTTP {answer.status} with an error instead of data: '
                 f'"{req.quote(api_message(body) or "no message")}"; {dialect.errors_body_advice}',
                 status=answer.status)  # fmt: skip
    records = body if dialect.records_at is None else values_at([body], dialect.records_at)[0]
    if not isinstance(records, list):
        got = _kind(body) if dialect.records_at is None or not isinstance(body, dict) else str(sorted(body)[:5])
        where = "is a JSON {} where a list of countries was expected" if dialect.records_at is None else (
            f"has no list at '{dialect.records_at}' (got {{}})")  # fmt: skip
        req.fail(BadResponseError, f"the API's answer {where.format(req.quote(got))}: is "
                 f"{setting('base_url')} pointing at a {dialect.name} server (or should {setting('api')} differ)?")  # fmt: skip
    meta = values_at([body], dialect.page_meta_at)[0] if dialect.page_meta_at else None
    if dialect.page_meta_at and not (isinstance(meta, dict) and isinstance(meta.get("more"), bool)):
        req.fail(BadResponseError, f"the API's answer has no '{dialect.page_meta_at}.more' paging "
                 f"flag: is {setting('base_url')} pointing at the {dialect.name} API?")  # fmt: skip
    return records, meta


def _check_records(req: Request, dialect: Dialect, records: list[Any], first: int, *, asked: str) -> None:
    """Every record an object of region (or subregion) ``asked``; ``BadResponseError``/``ForeignRecordsError`` if not."""
    where = REGION_FIELDS[0 if asked in SUBREGIONS else 1]
    if set(map(type, records)) - {dict}:
        i, record = next((i, r) for i, r in enumerate(records, start=first) if not isinstance(r, dict))
        req.fail(BadResponseError, f"the API sent a {_kind(record)} as country #{i}, not an object: the "
                 f"API's schema changed or {setting('api')} does not match the server")  # fmt: skip
    if not set(map(dict.get, records, repeat(where))) - {asked}:  # 0.03 s at 200,000 records, one by one 0.6 s
        return
    foreign = [r for r in records if not (isinstance(r.get(where), str) and r[where].casefold() == asked.casefold())]
    if foreign:
        named = [
            f"{_name(req, dialect, r, first)} ("
            + (" / ".join(req.quote(str(r.get(f))) for f in REGION_FIELDS if r.get(f)) or "no region") + ")"
            for r in foreign[:_MAX_NAMED]
        ]
        more = f" and {len(foreign) - _MAX_NAMED} more" if len(foreign) > _MAX_NAMED else ""
        req.fail(ForeignRecordsError, f"the API answered for {asked!r} with {len(foreign)} countr"
                 f"{'y' if len(foreign) == 1 else 'ies'} from elsewhere: {', '.join(named)}{more}; nothing was "
                 f"loaded: check {setting('base_url')} and the API key")  # fmt: skip


def _name(req: Request, dialect: Dialect, record: Any, index: int) -> str:
    name = values_at([record], dialect.key_path)[0]
    return repr(req.quote(name)) if isinstance(name, str) else f"#{index}"
