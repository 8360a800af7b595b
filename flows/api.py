"""The async REST Countries client: every country of a region, only the fields asked for.

Two API versions are described as data (:class:`Dialect`, :data:`DIALECTS`):

- ``v5`` (default): ``https://api.restcountries.com/countries/v5``, bearer key,
  ``?region=`` / ``/subregion/{name}``, ``response_fields``, ``limit=100`` /
  ``offset`` pages until ``meta.more`` is false.
- ``v3.1``: a self-hosted open-source server (the hosted one is deprecated and
  redirects every call to a static error file): ``/v3.1/region/{name}``,
  ``/v3.1/subregion/{name}``, ``fields=``, one JSON list per call.

Typical use (no Prefect needed)::

    async with make_client(api_key=key, trusted_base_urls=[os.environ.get("RESTCOUNTRIES_BASE_URL")]) as client:
        check_source(client, dialect=get_dialect("v5"), base_url=None)
        records = await fetch_region(client, "Northern Europe", dialect=get_dialect("v5"),
                                     paths=("names.official", "currencies.*.name", "population"))

Records are passed through as the API sent them: the requested fields plus
the record's region and subregion, after checking that each has the required
fields and belongs to what was asked. The key goes only where
:func:`make_client` allows; it is never printed, logged or raised. Every
raised error is a ``flows.errors.CountriesError`` with a one-line message:
the cause, what to do, then the request (``(GET …/subregion/Narnia)``).
Transient failures are retried per request (:class:`RetryPolicy`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn
from urllib.parse import quote, unquote

import httpx

from flows._dialects import (
    DIALECTS,
    MISSING,
    REGIONS,
    Dialect,
    canonical_region,
    check_paths,
    expand_regions,
    get_dialect,
    get_path,
    required_paths,
)
from flows._http import (
    DEADLINE_ENV,
    DEFAULT_DEADLINE_SECONDS,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEMO_KEY,
    HOSTED_ORIGIN,
    KEY_ADVICE,
    MAX_RESPONSE_ENV,
    ApiClient,
    check_key,
    demo_key_message,
    fingerprint,
    make_client,
    origin,
    parse_base_url,
    shown_url,
)
from flows._request import Answer, Request, decode, read_redirect_message
from flows._retry import Hook, RequestStats, RetryPolicy
from flows._statuses import api_message, raise_for_status
from flows.errors import (
    BadResponseError,
    ConfigurationError,
    DemoKeyError,
    DeprecatedApiError,
    ForeignRecordsError,
    KeyWithheldError,
    PermanentApiError,
    UnknownRegionError,
    setting,
)

__all__ = [
    "DEADLINE_ENV",
    "DEFAULT_DEADLINE_SECONDS",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEMO_KEY",
    "DIALECTS",
    "HOSTED_ORIGIN",
    "MAX_RESPONSE_ENV",
    "REGIONS",
    "ApiClient",
    "Dialect",
    "RequestStats",
    "RetryPolicy",
    "check_key",
    "check_source",
    "expand_regions",
    "fetch_region",
    "fingerprint",
    "get_dialect",
    "make_client",
    "unknown_regions",
]

logger = logging.getLogger(__name__)

_UNKNOWN_REGION_ADVICE = (
    f"regions are {', '.join(REGIONS)} (or 'all'), anything else is looked up as a subregion, "
    f"named like 'Northern Europe'; if every name fails, check {setting('base_url')}"
)
_LEGACY_HOST = "restcountries.com"  # the hosted v3.1 API, deprecated: it redirects every call
_MAX_PAGES = 1000  # guards against a server whose `more` never turns false
_MAX_NAMED = 5  # foreign records named in a message


def resolve_base_url(dialect: Dialect, base_url: str | None) -> str:
    """``base_url`` (or the dialect's default) without a trailing slash.

    ``ConfigurationError`` (one line, never quoting a query, fragment or
    credentials) unless ``httpx.URL`` reads it as an http(s) URL with a host and
    no query, fragment or credentials.
    """
    base = (base_url or dialect.default_base_url).strip().rstrip("/")
    _, problem = parse_base_url(base)
    if problem is not None:
        raise ConfigurationError(f"The API base URL {shown_url(base)!r} {problem}: fix {setting('base_url')}.")
    return base


def check_source(client: ApiClient, *, dialect: Dialect, base_url: str | None) -> str:
    """The base URL to use, once it is clear the client may fetch from it; raises before any request.

    Raises ``ConfigurationError`` for a base URL that is not http(s) or a v5
    client without a key, and ``KeyWithheldError`` when the dialect needs the
    key but the client would not send it to that origin (not trusted, or plain
    http to another machine). A keyless dialect (v3.1) fetches from any origin,
    with the key withheld where it does not belong.
    """
    base = resolve_base_url(dialect, base_url)
    if not dialect.requires_key:
        return base
    if not client.has_key:
        raise ConfigurationError(
            f"The {dialect.name} REST Countries API needs an API key and none is set: {KEY_ADVICE} "
            f"(or use {setting('api', 'v3.1')} with {setting('base_url')} pointing at a self-hosted v3.1 server)."
        )
    assert client.key_auth is not None
    reason = client.key_auth.withheld_reason(base)
    where = origin(base)
    if reason == "plain-http":
        raise KeyWithheldError(
            f"the API key was withheld from {where}: it is never sent over plain http except to this machine "
            f"(loopback); use https for {setting('base_url')}"
        )
    if reason == "proxied":
        raise KeyWithheldError(
            f"the API key was withheld from {where}: plain http goes through the proxy of $HTTP_PROXY or "
            f"$ALL_PROXY, and the key never goes over plain http to a proxy; use https, or "
            f"http://127.0.0.1 or http://localhost (always direct) for {setting('base_url')}"
        )
    if reason == "untrusted":
        raise KeyWithheldError(
            f"the API key was withheld from {where}, an origin the operator has not trusted (the key goes only "
            f"to {HOSTED_ORIGIN} and configured base URLs): to trust it, set RESTCOUNTRIES_BASE_URL={base} on "
            f"the worker (not in a run's job variables; or in the shell for a local run), or save it with "
            f"`python blocks/create_blocks.py --base-url {base}`"
        )
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


def _shown(path: str, query: dict[str, str], offset: int) -> str:
    """How a request is named at the end of a message: ``…/subregion/Narnia``, ``…?region=Europe, offset 100``."""
    text = "…" + unquote(path)
    if query:
        text += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return text + (f", offset {offset}" if offset else "")


def _unknown_region(req: Request, name: str, why: str, status: int | None) -> NoReturn:
    req.fail(
        UnknownRegionError,
        f"unknown region {name!r}: the API knows no region or subregion of that name ({why}); {_UNKNOWN_REGION_ADVICE}",
        status=status,
        region=name,
        request=f"GET {req.shown}",
    )


def unknown_regions(errors: Sequence[UnknownRegionError]) -> UnknownRegionError:
    """One error for several unknown regions of one run, naming each once, the advice once.

    One error is returned as it is.
    """
    if len(errors) == 1:
        return errors[0]
    names = ", ".join(repr(e.region) for e in errors)
    requests = ", ".join(e.request or "?" for e in errors)
    return UnknownRegionError(
        f"unknown regions {names}: the API knows no region or subregion of these names; "
        f"{_UNKNOWN_REGION_ADVICE} ({requests})",
        status=errors[0].status,
    )


def _on_404(req: Request, name: str, fields: Sequence[str], dialect: Dialect):
    def handle(answer: Answer) -> NoReturn:
        message = answer.message()
        text = (message or "").lower()
        if "propert" in text or "field" in text:
            req.fail(
                PermanentApiError,
                f'the API does not know a requested field (HTTP 404 "{req.quote(message)}"; asked for '
                f"{','.join(fields)}): the {dialect.name} schema may have changed, check {setting('api')}",
                status=404,
            )
        _unknown_region(req, name, "HTTP 404" + (f' "{req.quote(message)}"' if message else ""), 404)

    return handle


async def _legacy_redirect(req: Request, dialect: Dialect, base: str, answer: Answer) -> None:
    """A 3xx of a legacy (v3.1) path: ``DeprecatedApiError`` if it is the deprecated hosted API; else return.

    It is when the redirect's target answers with the API's ``errors`` body
    (quoted), or when ``base`` is the hosted legacy API's host (restcountries.com)
    even if the target cannot be read. Any other redirect (a self-hosted server
    that moved) is left to the generic redirect message.
    """
    message = await read_redirect_message(req, answer)
    if message is None and httpx.URL(base).host != _LEGACY_HOST:
        return
    location = req.quote(answer.headers.get("Location", "")) or "no Location"
    said = f' and says "{message}"' if message else ""
    req.fail(
        DeprecatedApiError,
        f"the {dialect.name} API is deprecated: the server redirects the call (HTTP {answer.status} to "
        f"{location}){said}; {dialect.errors_body_advice}",
        status=answer.status,
    )


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def _records_and_meta(req: Request, dialect: Dialect, body: Any) -> tuple[list[Any], dict[str, Any] | None]:
    """The record list (and the page meta, when paginated) of one decoded body; BadResponseError if misshapen."""
    if dialect.records_at is None:
        if not isinstance(body, list):
            req.fail(
                BadResponseError,
                f"the API answered with a JSON {_kind(body)} where a list of countries was expected: is "
                f"{setting('base_url')} pointing at a {dialect.name} server (or should {setting('api')} differ)?",
            )
        return body, None
    records = get_path(body, dialect.records_at)
    if not isinstance(records, list):
        top = sorted(body)[:5] if isinstance(body, dict) else _kind(body)
        req.fail(
            BadResponseError,
            f"the API's answer has no list at '{dialect.records_at}' (got {req.quote(str(top))}): is "
            f"{setting('base_url')} pointing at the {dialect.name} API (or should {setting('api')} differ)?",
        )
    meta = get_path(body, dialect.page_meta_at) if dialect.page_meta_at else None
    if dialect.paginated and not (isinstance(meta, dict) and isinstance(meta.get(dialect.more_key), bool)):
        req.fail(
            BadResponseError,
            f"the API's answer has no '{dialect.page_meta_at}.{dialect.more_key}' pagination flag: is "
            f"{setting('base_url')} pointing at the {dialect.name} API?",
        )
    return records, meta


def _name_of(req: Request, dialect: Dialect, record: Any, index: int) -> str:
    name = get_path(record, dialect.key_path)
    return repr(req.quote(name)) if isinstance(name, str) else f"#{index}"


def _check_records(
    req: Request,
    dialect: Dialect,
    records: list[Any],
    first_index: int,
    *,
    required: Sequence[str],
    asked: str,
    is_region: bool,
) -> None:
    """Every record an object with the ``required`` paths, and of region (or subregion) ``asked``."""
    region_field, subregion_field = dialect.region_fields
    where_field = region_field if is_region else subregion_field
    foreign: list[str] = []
    for i, record in enumerate(records, start=first_index):
        if not isinstance(record, dict):
            req.fail(
                BadResponseError,
                f"the API sent a {_kind(record)} as country #{i}, not an object: the "
                f"API's schema changed or {setting('api')} does not match the server",
            )
        missing = [p for p in required if get_path(record, p) is MISSING]
        if missing:
            req.fail(
                BadResponseError,
                f"country {_name_of(req, dialect, record, i)} lacks the requested "
                f"field(s) {', '.join(missing)}: the API's schema changed or {setting('api')} does not "
                "match the server",
            )
        value = record.get(where_field)
        if not isinstance(value, str) or value.casefold() != asked.casefold():
            places = (
                " / ".join(req.quote(str(record.get(f))) for f in (region_field, subregion_field) if record.get(f))
                or "no region"
            )
            foreign.append(f"{_name_of(req, dialect, record, i)} ({places})")
    if foreign:
        more = f" and {len(foreign) - _MAX_NAMED} more" if len(foreign) > _MAX_NAMED else ""
        req.fail(
            ForeignRecordsError,
            f"the API answered for {asked!r} with {len(foreign)} countr{'y' if len(foreign) == 1 else 'ies'} "
            f"from elsewhere: {', '.join(foreign[:_MAX_NAMED])}{more}; nothing was loaded: check "
            f"{setting('base_url')} and the API key",
        )


async def fetch_region(
    client: ApiClient,
    region: str,
    *,
    dialect: Dialect,
    paths: Iterable[str],
    base_url: str | None = None,
    retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, shared safely
    stats: RequestStats | None = None,
    before_request: Hook | None = None,
    required: Iterable[str] | None = None,
) -> list[dict]:
    """Every country of one region (see :data:`REGIONS`) or subregion, with the fields of ``paths``.

    ``paths`` are the source paths the caller needs (``"names.official"``,
    ``"currencies.*.name"``, ``"population"``); the dialect requests the fields
    that carry them plus the record's region and subregion (same request, no
    extra quota). ``required`` are the paths every record must have (default:
    every path without ``*``; one with ``*`` may be absent: a country with no
    currency keeps its row).

    ``region`` matching a region name (any case) uses the region endpoint, any
    other name the subregion endpoint. All pages are fetched, each exactly once
    (v5 asks 100 a page, so a region of up to 100 countries costs one request).
    ``base_url`` defaults to the dialect's; a trailing slash is fine.
    ``before_request`` is awaited before every HTTP request, retries included
    (e.g. the run's request budget); ``stats`` counts them.

    Returns the records in API order. Raises, before any request:
    ``ConfigurationError`` (blank name, ``'all'``, bad base URL or paths, v5
    without a key), ``KeyWithheldError`` (v5 at an origin the key does not go
    to). After: ``UnknownRegionError`` (404 or no countries),
    ``AuthenticationError`` (401), ``DemoKeyError`` (a demo-key answer),
    ``QuotaExceededError`` (403), ``DeprecatedApiError`` (an ``errors`` body, or
    a redirect of a v3.1 path to one, or any at restcountries.com), ``ForeignRecordsError`` (countries of another
    region), ``ResponseTooLargeError`` (body past the client's bound),
    ``BadResponseError`` (not JSON, wrong shape, missing fields),
    ``HostNotFoundError`` (the host name does not exist),
    ``PermanentApiError`` (other 4xx, 3xx), ``TransientApiError`` (429/5xx,
    timeouts incl. ``DeadlineExceededError``, connection errors, after the
    retries ran out).
    """
    if not isinstance(region, str) or not region.strip():
        raise ConfigurationError(f"Region name must be non-blank text, got {region!r}.")
    name = region.strip()
    if name.casefold() == "all":
        raise ConfigurationError("'all' is not one region: expand it first with expand_regions().")
    paths = tuple(paths)
    fields = dialect.request_fields(paths)
    if required is None:
        required = required_paths(paths)
    else:
        required = tuple(required)
        required = check_paths(required) if required else ()
    base = check_source(client, dialect=dialect, base_url=base_url)
    stats = stats if stats is not None else RequestStats()
    path, query, is_region = _route(dialect, name)
    url = base + path
    asked = canonical_region(name) or name
    params: dict[str, str | int] = {**query, dialect.fields_param: ",".join(fields)}

    out: list[dict] = []
    offset = 0
    for page in range(_MAX_PAGES):
        if dialect.paginated:
            assert dialect.offset_param is not None and dialect.limit_param is not None
            params[dialect.limit_param] = dialect.page_size
            params[dialect.offset_param] = offset
        req = Request(
            client,
            url,
            params,
            shown=_shown(path, query, offset),
            retry=retry,
            stats=stats,
            before_request=before_request,
        )
        answer = await req.send()
        if 300 <= answer.status < 400 and dialect.legacy_prefix and path.startswith(dialect.legacy_prefix):
            await _legacy_redirect(req, dialect, base, answer)
        raise_for_status(req, answer, on_404=_on_404(req, name, fields, dialect))
        body = decode(req, answer)
        if dialect.demo_flag_at and get_path(body, dialect.demo_flag_at) is not MISSING:
            notice = get_path(body, dialect.demo_flag_at)
            said = f' ("{req.quote(str(notice))}")' if isinstance(notice, str) and notice.strip() else ""
            req.fail(
                DemoKeyError,
                demo_key_message(f"the API answered with its demo sample{said}: the demo key"),
                status=answer.status,
            )
        if isinstance(body, dict) and (body.get("errors") or body.get("success") is False):
            message = api_message(body) or "no message"
            req.fail(
                DeprecatedApiError,
                f'the API answered HTTP {answer.status} with an error instead of data: "{req.quote(message)}"; '
                f"{dialect.errors_body_advice}",
                status=answer.status,
            )
        records, meta = _records_and_meta(req, dialect, body)
        _check_records(req, dialect, records, len(out), required=required, asked=asked, is_region=is_region)
        out.extend(records)
        logger.debug("%s: %d countries (page %d)", req.where(), len(records), page + 1)
        if meta is None or not meta[dialect.more_key]:
            break
        if not records:
            req.fail(
                BadResponseError,
                "the API sent an empty page that says more follow: its pagination is broken, try again later",
            )
        offset += len(records)
    else:
        req.fail(
            BadResponseError, f"the API still said more pages follow after {_MAX_PAGES} pages: its pagination is broken"
        )
    if not out:
        _unknown_region(req, name, "no countries", answer.status)
    logger.info("Fetched %d countries of %s from the %s API", len(out), name, dialect.name)
    return out
