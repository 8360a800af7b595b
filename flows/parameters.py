"""The flow's parameters checked without any network, for the flow, the UI and the command line.

``check_parameters`` is the first thing a run does and the first thing the
command line does, before any server starts or any request is sent: a mistake
costs nothing. Its errors name the parameter the way the reader knows it
(``flows.errors.setting``: ``base_url`` in the UI, ``--base-url`` on the
command line).
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from flows import load as tables
from flows import source as restcountries
from flows.source import parse_base_url, shown_url
from flows.errors import ConfigurationError, InvalidTableNameError, setting

DEFAULT_REGIONS = ["Northern Europe"]


def default_table(regions: Sequence[str]) -> str:
    """The table a run loads when none is named: the regions' names, then ``_countries``.

    ``["Northern Europe"]`` -> ``northern_europe_countries``; ``["all"]`` ->
    ``all_countries`` (also when other regions are named with ``"all"``: it
    takes them all); ``["Europe", "Asia"]`` -> ``europe_asia_countries``.
    Names are folded to lower-case ASCII letters, digits and underscores; a name
    longer than PostgreSQL's 63 bytes is shortened and keeps a hash of the whole.
    """
    if any(str(region).strip().casefold() == "all" for region in regions):
        regions = ["all"]
    parts = []
    for region in regions:
        ascii_name = unicodedata.normalize("NFKD", str(region)).encode("ascii", "ignore").decode()
        part = re.sub(r"[^a-z0-9]+", "_", ascii_name.casefold()).strip("_")
        if part and part not in parts:
            parts.append(part)
    name = "_".join(parts or ["regions"]) + "_countries"
    if name[0].isdigit():
        name = "r_" + name
    if len(name) > 63:
        digest = hashlib.sha256("|".join(map(str, regions)).encode()).hexdigest()[:8]
        name = f"{name[:44].rstrip('_')}_{digest}_countries"
    return name


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
    if isinstance(min_row_fraction, bool) or not (
        isinstance(min_row_fraction, int | float) and 0 <= min_row_fraction <= 1
    ):
        raise ConfigurationError(
            f"{setting('min_row_fraction')} must be between 0 and 1 (a fraction of the current table's rows), "
            f"got {min_row_fraction!r}"
        )
    if isinstance(cache_minutes, bool) or not (
        isinstance(cache_minutes, int | float) and 0 <= cache_minutes < math.inf
    ):
        raise ConfigurationError(
            f"{setting('cache_minutes')} must be 0 (always fetch) or a positive number of minutes, "
            f"got {cache_minutes!r}"
        )
    if strategy not in tables.STRATEGIES:
        raise ConfigurationError(
            f"{setting('strategy')} must be one of {', '.join(tables.STRATEGIES)}, got {strategy!r}"
        )
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
