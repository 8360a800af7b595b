"""The source stage: every country of the asked regions from the REST Countries API.

- :mod:`~flows.source.dialects`: the API versions (v5, v3.1) and their regions, as data.
- :mod:`~flows.source.client`: the HTTP client (httpx) and the key guard (an ``httpx.Auth``).
- :mod:`~flows.source.request`: one GET, bounded and retried (tenacity), its failures as ``flows.errors``.
- :mod:`~flows.source.fetch`: one region's pages and the checks that they are what was asked.
- :mod:`~flows.source.budget`: the request budget shared by runs (a Prefect global concurrency limit).

Typical use (no Prefect needed)::

    async with make_client(api_key=key, trusted_base_urls=[os.environ.get("RESTCOUNTRIES_BASE_URL")]) as client:
        records = await fetch_region(client, "Northern Europe", dialect=get_dialect("v5"),
                                     paths=("names.official", "currencies.*.name", "population"))
"""

from flows.source.client import (
    DEADLINE_ENV,
    DEMO_KEY,
    HOSTED_ORIGIN,
    MAX_RESPONSE_ENV,
    ApiClient,
    check_key,
    fingerprint,
    make_client,
    parse_base_url,
    shown_url,
)
from flows.source.request import RequestStats, RetryPolicy
from flows.source.dialects import DIALECTS, REGIONS, SUBREGIONS, Dialect, canonical_region, expand_regions, get_dialect
from flows.source.fetch import check_source, fetch_region, one_error, unknown_regions

__all__ = [
    "DEADLINE_ENV",
    "DEMO_KEY",
    "DIALECTS",
    "HOSTED_ORIGIN",
    "MAX_RESPONSE_ENV",
    "REGIONS",
    "SUBREGIONS",
    "ApiClient",
    "Dialect",
    "RequestStats",
    "RetryPolicy",
    "canonical_region",
    "check_key",
    "check_source",
    "expand_regions",
    "fetch_region",
    "fingerprint",
    "get_dialect",
    "make_client",
    "parse_base_url",
    "shown_url",
    "one_error",
    "unknown_regions",
]
