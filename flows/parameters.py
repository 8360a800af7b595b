"""The flow's parameters checked without any network, first thing in a run and on the command line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flows.errors import ConfigurationError, InvalidTableNameError, setting
from flows.load import parse_table_name
from flows.source import expand_regions, get_dialect, parse_base_url, shown_url
from flows.transform.schema import DEFAULT_REGIONS, default_table, target_table

__all__ = ["DEFAULT_REGIONS", "check_base_url", "check_parameters", "default_table", "target_table"]


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


def check_parameters(
    *, regions: Sequence[str], table: str, db_block: str, api: str, base_url: str, **rest: Any
) -> dict[str, Any]:
    """The parameters by name, normalised: ``regions`` the distinct names to fetch, ``table`` the table to load
    (:func:`target_table`), text stripped; ``rest`` (the flow signature's ranges and choices) as given. Raises
    ``ConfigurationError`` (``InvalidTableNameError`` for the table) naming the parameter."""
    names = expand_regions(regions)
    table = target_table(table, regions)
    try:
        parse_table_name(table)
    except InvalidTableNameError as exc:
        raise InvalidTableNameError(f"{setting('table')}: {exc}") from None
    get_dialect(api)
    if not isinstance(db_block, str) or not db_block.strip():
        raise ConfigurationError(f"{setting('db_block')} is empty: name a SqlAlchemyConnector block, e.g. countries-db")
    return {
        **rest,
        "regions": names,
        "table": table,
        "db_block": db_block.strip(),
        "api": api.strip(),
        "base_url": check_base_url(base_url or ""),
    }
