"""The source stage: every country of the asked regions from the REST Countries API. Typical use::

    async with make_client(api_key=key) as client:
        records = await fetch_region(client, "Northern Europe", dialect=get_dialect("v5"), paths=["population"])
"""

from flows.source.client import ApiClient, check_base_url, check_key, fingerprint, make_client
from flows.source.dialects import expand_regions, get_dialect
from flows.source.fetch import check_source, fetch_region, no_key_error, one_error
from flows.source.request import RequestStats

__all__ = [
    "ApiClient",
    "RequestStats",
    "check_base_url",
    "check_key",
    "check_source",
    "expand_regions",
    "fetch_region",
    "fingerprint",
    "get_dialect",
    "make_client",
    "no_key_error",
    "one_error",
]
