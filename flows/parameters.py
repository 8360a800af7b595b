"""The flow's parameters checked without any network, for the flow, the UI and the command line.

``check_parameters`` is the first thing a run does and the first thing the
command line does, before any server starts or any request is sent: a mistake
costs nothing. Its errors name the parameter the way the reader knows it
(``flows.errors.setting``: ``base_url`` in the UI, ``--base-url`` on the
command line).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flows import load as tables
from flows import source as restcountries
from flows.source import parse_base_url, shown_url
from flows.errors import ConfigurationError, InvalidTableNameError, setting
from flows.transform.schema import DEFAULT_REGIONS, default_table

__all__ = ["DEFAULT_REGIONS", "check_base_url", "check_parameters", "default_table"]

def check_base_url(base_url: str) -> str:
    """``base_url`` stripped, without a trailing slash; ``ConfigurationError`` unless it is an http(s) address.

    Parsed by ``httpx.URL``, as the client will send it. Empty stays empty (the
    configured default applies). The message shows the URL without its
    credentials, query and fragment, which may hold secrets.
    """
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


def check_parameters(
    *,
    regions: Sequence[str],
    table: str,
    db_block: str,
    api: str,
    base_url: str,
    force: bool,
    min_row_fraction: float,
    cache_minutes: float,
    strategy: str = "rows",
) -> dict[str, Any]:
    """Check the flow's parameters without touching the network; return them normalised.

    The ranges and choices (``min_row_fraction``, ``cache_minutes``, ``strategy``, ``api``) are the flow
    signature's, which Prefect and the command line validate before this runs; this checks what a type
    cannot say: region names, the table name, the block name, the base URL.

    Returns the same keys with: ``regions`` as the distinct names to fetch
    (``"all"`` expanded, regions in their canonical case), ``table`` derived from
    the regions when empty (see :func:`default_table`), ``base_url`` stripped
    (empty stays empty: the configured default applies later). Raises
    ``ConfigurationError`` (``InvalidTableNameError`` for a table name) with one
    line naming the parameter, what was wrong and what to do.
    """
    names = restcountries.expand_regions(regions)
    table_name = (table or "").strip() or default_table([r.strip() for r in regions])
    try:
        tables.parse_table_name(table_name)
    except InvalidTableNameError as exc:
        raise InvalidTableNameError(f"{setting('table')}: {exc}") from None
    restcountries.get_dialect(api)
    if not isinstance(db_block, str) or not db_block.strip():
        raise ConfigurationError(f"{setting('db_block')} is empty: name a SqlAlchemyConnector block, e.g. countries-db")
    return {
        "regions": names,
        "table": table_name,
        "db_block": db_block.strip(),
        "api": api.strip(),
        "base_url": check_base_url(base_url or ""),
        "force": bool(force),
        "min_row_fraction": float(min_row_fraction),
        "cache_minutes": float(cache_minutes),
        "strategy": strategy,
    }
