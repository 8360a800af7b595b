"""The REST Countries API described as data: its versions (:class:`Dialect`) and its regions.

A :class:`Dialect` says what the generic client needs to talk to one API
version: where it lives, whether it needs a key, how a region or subregion
becomes a URL, how a source path becomes a field selection, how pages are
walked and where the records sit in a body. Which fields to fetch is the
caller's (the table schema knows them).

:data:`SUBREGIONS` are the regions and subregions both versions document;
:func:`canonical_region` checks a name against them before any request.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from flows.errors import ConfigurationError, UnknownRegionNameError, setting

KEY_ADVICE = "set RESTCOUNTRIES_API_KEY or the `restcountries-api-key` Secret block"

SUBREGIONS: Mapping[str, tuple[str, ...]] = {
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
"""Each region the API documents (v5 and v3.1 alike) with its subregions (UN M49 names, as the API spells them)."""

REGIONS: tuple[str, ...] = tuple(SUBREGIONS)
_CANONICAL = {n.casefold(): n for n in (*REGIONS, *(s for subs in SUBREGIONS.values() for s in subs))}
ALL = "all"
WILDCARD = "*"


def canonical_region(name: str) -> str:
    """The API's spelling of region or subregion ``name`` (any case, blanks around ignored).

    ``"northern europe"`` -> ``"Northern Europe"``, so both share one fetch and
    one cache entry. Raises ``UnknownRegionNameError`` (a ``ConfigurationError``)
    for any other name, with a "did you mean" suggestion when one is close.
    """
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


def is_region(name: str) -> bool:
    """Whether canonical ``name`` is a region (else a subregion)."""
    return name in SUBREGIONS


def expand_regions(names: Sequence[str]) -> list[str]:
    """The canonical region/subregion names to fetch, in order, each once; checked before any request.

    ``"all"`` (any case) stands for every region in :data:`REGIONS`. Raises
    ``ConfigurationError`` for no names or a blank one, ``UnknownRegionNameError``
    for a name the API does not document (naming every unknown one, each with
    its suggestion).
    """
    if isinstance(names, str):
        names = [names]
    if not names or any(not isinstance(n, str) or not n.strip() for n in names):
        raise ConfigurationError(
            f"Region names must be non-blank text, got {list(names)!r}: name a region such as 'Europe', "
            "a subregion such as 'Northern Europe', or 'all'."
        )
    out: list[str] = []
    unknown: list[str] = []
    for raw in names:
        if raw.strip().casefold() == ALL:
            out.extend(n for n in REGIONS if n not in out)
        elif raw.strip().casefold() in _CANONICAL:
            out.extend(n for n in [_CANONICAL[raw.strip().casefold()]] if n not in out)
        else:
            unknown.append(raw.strip())
    if unknown:
        raise _unknown(unknown)
    return out


@dataclass(frozen=True)
class Dialect:
    """One REST Countries API version, as data.

    URLs: ``base_url + region_route`` (``{name}`` replaced by the quoted name)
    plus ``region_query`` (``{name}`` replaced by the plain name); subregions
    likewise. Fields: :meth:`request_fields` turns source paths into values of
    ``fields_param`` (``"to_wildcard"`` keeps a path up to its first ``*``, v5;
    ``"top_level"`` its first segment, v3.1), plus ``region_fields`` so every
    record's region can be checked. Paging (when ``limit_param`` is set):
    ``limit_param=page_size`` and ``offset_param``, walking while
    ``<page_meta_at>.<more_key>`` is true; ``<page_meta_at>.<total_key>`` is how
    many records the region has. Records: the list at ``records_at`` (``None``:
    the body is the list). ``demo_flag_at``: where a demo-key answer says so.
    ``key_path`` names a country.
    """

    name: str
    default_base_url: str
    requires_key: bool
    key_path: str
    fields_param: str
    field_selection: Literal["to_wildcard", "top_level"]
    region_route: str
    subregion_route: str
    records_at: str | None
    base_url_example: str
    region_fields: tuple[str, str] = ("region", "subregion")
    region_query: Mapping[str, str] = field(default_factory=dict)
    subregion_query: Mapping[str, str] = field(default_factory=dict)
    page_meta_at: str | None = None
    more_key: str = "more"
    total_key: str = "total"
    limit_param: str | None = None
    offset_param: str | None = None
    page_size: int = 100
    demo_flag_at: str | None = None
    legacy_prefix: str | None = None
    errors_body_advice: str = ""

    @property
    def paginated(self) -> bool:
        return self.limit_param is not None

    def request_fields(self, paths: Iterable[str]) -> tuple[str, ...]:
        """The fields to request for source ``paths`` plus :attr:`region_fields`, each once, in order.

        Raises ``ConfigurationError`` for no paths, a blank path or segment, or one starting with ``*``.
        """
        out: list[str] = []
        for path in check_paths(paths):
            parts = path.split(".")
            kept = parts[:1] if self.field_selection == "top_level" else parts[: (parts + [WILDCARD]).index(WILDCARD)]
            out.append(".".join(kept))
        return tuple(dict.fromkeys([*out, *self.region_fields]))

    def route(self, name: str) -> tuple[str, dict[str, str]]:
        """(path, query) of canonical region or subregion ``name``."""
        route, query = (
            (self.region_route, self.region_query) if is_region(name) else (self.subregion_route, self.subregion_query)
        )
        return route.format(name=quote(name, safe="")), {k: v.format(name=name) for k, v in query.items()}

    def __hash__(self) -> int:  # the mapping fields are not hashable; the name identifies a dialect
        return hash((self.name, self.default_base_url))


def check_paths(paths: Iterable[str]) -> tuple[str, ...]:
    """``paths`` as a tuple after checking each is a dotted source path (``a.b``, ``a.*.b``)."""
    out = (paths,) if isinstance(paths, str) else tuple(paths)
    if not out:
        raise ConfigurationError("No source paths given: name the fields to fetch, e.g. 'names.official'.")
    for path in out:
        parts = path.split(".") if isinstance(path, str) else [""]
        if any(not p.strip() for p in parts) or parts[0] == WILDCARD:
            raise ConfigurationError(
                f"Invalid source path {path!r}: use dotted names such as 'names.official' or 'currencies.*.name'."
            )
    return out


V5 = Dialect(
    name="v5",
    default_base_url="https://api.restcountries.com/countries/v5",
    base_url_example="https://api.restcountries.com/countries/v5, ending in /countries/v5",
    requires_key=True,
    key_path="names.official",
    fields_param="response_fields",
    field_selection="to_wildcard",
    region_route="",
    region_query={"region": "{name}"},
    subregion_route="/subregion/{name}",
    records_at="data.objects",
    page_meta_at="data.meta",
    limit_param="limit",
    offset_param="offset",
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
    field_selection="top_level",
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


MISSING: Any = object()
"""What :func:`get_path` returns for a path that is not there."""


def get_path(obj: Any, path: str) -> Any:
    """The value at dotted ``path`` in nested dicts, or :data:`MISSING`."""
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return MISSING
        cur = cur[part]
    return cur
