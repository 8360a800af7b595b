"""The flow's parameters checked without any network, first thing in a run and on the command line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flows.errors import ConfigurationError, InvalidTableNameError, setting
from flows.load import parse_table_name
from flows.source import check_base_url, expand_regions, get_dialect
from flows.transform.schema import DEFAULT_REGIONS, default_table, target_table

__all__ = ["DEFAULT_REGIONS", "check_base_url", "check_parameters", "default_table", "target_table"]


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
    if not isinstance(db_block, str) or not db_block.strip():
        raise ConfigurationError(f"{setting('db_block')} is empty: name a SqlAlchemyConnector block, e.g. countries-db")
    return {
        **rest,
        "regions": names,
        "table": table,
        "db_block": db_block.strip(),
        "api": get_dialect(api).name,
        "base_url": check_base_url(base_url or ""),
    }
