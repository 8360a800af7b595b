"""The source stage: every country of the asked regions from the REST Countries API.

- :mod:`~flows.source.dialects`: the API versions (v5, v3.1) and their regions, as data.
- :mod:`~flows.source.client`: the HTTP client (httpx) and the key guard (an ``httpx.Auth``).
- :mod:`~flows.source.request`: one GET, bounded and retried (tenacity), its failures as ``flows.errors``.
- :mod:`~flows.source.fetch`: one region's pages, the checks that they are what was asked, a run's failures.
- :mod:`~flows.source.budget`: the request budget shared by runs (a Prefect global concurrency limit).

Typical use (no Prefect needed)::

    async with make_client(api_key=key, trusted_base_urls=[os.environ.get("RESTCOUNTRIES_BASE_URL")]) as client:
        records = await fetch_region(client, "Northern Europe", dialect=get_dialect("v5"),
                                     paths=("names.official", "currencies.*.name", "population"))
"""

from flows.source.client import ApiClient, check_key, fingerprint, make_client, parse_base_url, shown_url
from flows.source.dialects import expand_regions, get_dialect
from flows.source.fetch import check_source, fetch_region, one_error
from flows.source.request import RequestStats

__all__ = [
    "ApiClient",
    "RequestStats",
    "check_key",
    "check_source",
    "expand_regions",
    "fetch_region",
    "fingerprint",
    "get_dialect",
    "make_client",
    "one_error",
    "parse_base_url",
    "shown_url",
]
