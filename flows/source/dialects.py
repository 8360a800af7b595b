"""The REST Countries API as data: its versions (:class:`Dialect`, :func:`get_dialect`) and documented regions."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any
from urllib.parse import quote

from flows.errors import ConfigurationError, UnknownRegionNameError, setting

API_KEY_ENV = "RESTCOUNTRIES_API_KEY"  # where the API key is read, then from the Secret block API_KEY_BLOCK
API_KEY_BLOCK = "restcountries-api-key"
KEY_ADVICE = f"set {API_KEY_ENV} or the `{API_KEY_BLOCK}` Secret block"

SUBREGIONS: Mapping[str, tuple[str, ...]] = {  # each documented region's subregions, as the API spells them
    "Africa": ("Eastern Africa", "Middle Africa", "Northern Africa", "Southern Africa", "Western Africa"),
    "Americas": ("Caribbean", "Central America", "North America", "South America"),
    "Antarctic": (),
    "Asia": ("Central Asia", "Eastern Asia", "South-Eastern Asia", "Southern Asia", "Western Asia"),
    "Europe": (
        "Central Europe",
        "Eastern Europe",
        "Northern Europe",
        "Southeast Europe",
        "Southern Europe",
        "Western Europe",
    ),
    "Oceania": ("Australia and New Zealand", "Melanesia", "Micronesia", "Polynesia"),
}

REGIONS: tuple[str, ...] = tuple(SUBREGIONS)
REGION_FIELDS = ("region", "subregion")  # requested with every record, so that its region can be checked
_CANONICAL = {n.casefold(): n for n in (*REGIONS, *(s for subs in SUBREGIONS.values() for s in subs))}


def canonical_region(name: str) -> str:
    """The API's spelling of region or subregion ``name`` (any case, blanks around ignored); else
    ``UnknownRegionNameError`` with a "did you mean" suggestion when one is close."""
    folded = name.strip().casefold() if isinstance(name, str) else ""
    if folded in _CANONICAL:
        return _CANONICAL[folded]
    raise _unknown([name])


def _unknown(names: list[str]) -> UnknownRegionNameError:
    shown = []
    for name in names:
        close = difflib.get_close_matches(str(name).strip().casefold(), list(_CANONICAL), n=1, cutoff=0.75)
        shown.append(f"{name!r}" + (f" (did you mean {_CANONICAL[close[0]]!r}?)" if close else ""))
    return UnknownRegionNameError(
        f"unknown region{'s' if len(names) > 1 else ''} {', '.join(shown)}: the API knows the regions "
        f"{', '.join(REGIONS)} (or 'all') and their subregions, e.g. 'Northern Europe', 'Western Africa', "
        f"'South America'; fix {setting('regions')}",
        region=names[0],
    )


def expand_regions(names: Sequence[str]) -> list[str]:
    """The canonical region/subregion names to fetch, in order, each once; ``"all"`` (any case) is every region.
    Raises ``ConfigurationError`` for no or blank names, ``UnknownRegionNameError`` naming every unknown one."""
    names = [names] if isinstance(names, str) else list(names)
    if not names or any(not isinstance(n, str) or not n.strip() for n in names):
        raise ConfigurationError(
            f"{setting('regions')} must name regions in non-blank text, got {names!r}: name a region such as "
            "'Europe', a subregion such as 'Northern Europe', or 'all'"
        )
    folded = [n.strip().casefold() for n in names]
    unknown = [n.strip() for n, f in zip(names, folded, strict=True) if f != "all" and f not in _CANONICAL]
    if unknown:
        raise _unknown(unknown)
    return list(dict.fromkeys(n for f in folded for n in (REGIONS if f == "all" else [_CANONICAL[f]])))


@dataclass(frozen=True)
class Dialect:
    """One REST Countries API version: its routes and query (``{name}``: a region), the list of records at
    ``records_at`` (None: the body), paged by ``limit`` and ``offset`` while ``<page_meta_at>.more`` is
    true (``.total`` counts the records), the demo-key flag, a country's name path, the legacy route prefix."""

    name: str
    default_base_url: str
    base_url_example: str
    requires_key: bool
    key_path: str
    fields_param: str
    region_route: str
    subregion_route: str
    records_at: str | None
    errors_body_advice: str
    top_level_fields: bool = False
    region_query: tuple[tuple[str, str], ...] = ()
    page_meta_at: str | None = None
    demo_flag_at: str | None = None
    legacy_prefix: str | None = None

    def request_fields(self, paths: Iterable[str]) -> tuple[str, ...]:
        """The fields to request for dotted source ``paths`` (``a.b``, ``a.*.b``), each once, in order."""
        kept = [p.split(".")[:1] if self.top_level_fields else p.split(".*")[0].split(".") for p in paths]
        return tuple(dict.fromkeys([*(".".join(k) for k in kept), *REGION_FIELDS]))

    def route(self, name: str) -> tuple[str, dict[str, str]]:
        """(path, query) of canonical region or subregion ``name``."""
        is_region = name in SUBREGIONS
        route = self.region_route if is_region else self.subregion_route
        query = {k: v.format(name=name) for k, v in self.region_query} if is_region else {}
        return route.format(name=quote(name, safe="")), query


V5 = Dialect(
    name="v5",
    default_base_url="https://api.restcountries.com/countries/v5",
    base_url_example="https://api.restcountries.com/countries/v5, ending in /countries/v5",
    requires_key=True,
    key_path="names.official",
    fields_param="response_fields",
    region_route="",
    region_query=(("region", "{name}"),),
    subregion_route="/subregion/{name}",
    records_at="data.objects",
    page_meta_at="data.meta",
    demo_flag_at="data._demo",
    errors_body_advice=f"check the API's status and changelog, and that {setting('base_url')} points at the v5 API",
)

V31 = Dialect(
    name="v3.1",
    default_base_url="https://restcountries.com",
    base_url_example="http://HOST:PORT, the server's root without /v3.1",
    requires_key=False,
    key_path="name.official",
    fields_param="fields",
    top_level_fields=True,
    region_route="/v3.1/region/{name}",
    subregion_route="/v3.1/subregion/{name}",
    records_at=None,
    legacy_prefix="/v3.1/",
    errors_body_advice=(
        f"use {setting('api', 'v5')} with an API key ({KEY_ADVICE}), "
        f"or point {setting('base_url')} at a self-hosted v3.1 server"
    ),
)

DIALECTS: Mapping[str, Dialect] = {V5.name: V5, V31.name: V31}


def get_dialect(name: str) -> Dialect:
    """The dialect called ``name`` (``"v5"`` or ``"v3.1"``, blanks around ignored); else ``ConfigurationError``."""
    try:
        return DIALECTS[name.strip()]
    except (KeyError, AttributeError):
        raise ConfigurationError(f"Unknown REST Countries API version {name!r}: use one of {', '.join(DIALECTS)}.") from None


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()
"""What :func:`values_at` gives where a record has no value at a path (null is None)."""


def values_at(records: list[Any], path: str) -> list[Any]:
    """The values at dotted ``path`` in ``records``: without ``*`` one per record (:data:`MISSING` where there
    is none); ``*`` stands for every element of a list or value of a dict, and no MISSING comes from below it."""
    values = records
    for part in path.split("."):
        if part == "*":
            values = list(
                chain.from_iterable(v.values() if type(v) is dict else v if type(v) is list else () for v in values)
            )
        else:
            values = [v.get(part, MISSING) if type(v) is dict else MISSING for v in values]
    if "*" in path:
        values = [v for v in values if v is not MISSING]
    return values
