"""The REST Countries API versions described as data (private; see ``flows.api``).

A :class:`Dialect` says everything the generic client needs to talk to one API
version: where it lives, whether it needs a key, how a region or subregion
becomes a URL, how fields are selected server-side, how pages are walked, where
the records sit in a response body, and where the output columns are in a record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.errors import ConfigurationError

REGIONS: tuple[str, ...] = ("Africa", "Americas", "Antarctic", "Asia", "Europe", "Oceania")
"""The regions the API knows; any other name is treated as a subregion (e.g. "Northern Europe")."""

ALL = "all"


@dataclass(frozen=True)
class Dialect:
    """One REST Countries API version, as data.

    URLs: ``base_url + region_route`` (with ``{name}`` replaced by the quoted
    region name) plus ``region_query`` (``{name}`` replaced by the plain name);
    subregions likewise with ``subregion_route``/``subregion_query``. Field
    selection: ``fields_param=",".join(fields)``. Pagination (when
    ``limit_param`` is set): ``limit_param=page_size`` and ``offset_param``,
    walking while ``<page_meta_at>.<more_key>`` is true. Records: the list at
    ``records_at`` in the body (``None``: the body itself is the list); every
    record must have each of ``required_paths`` (``currencies`` is not one: a
    country with no currency may omit it, and keeps one row with a null currency).
    """

    name: str
    default_base_url: str
    requires_key: bool
    record_paths: Mapping[str, str]
    key_path: str
    fields: tuple[str, ...]
    fields_param: str
    region_route: str
    subregion_route: str
    records_at: str | None
    required_paths: tuple[str, ...]
    region_query: Mapping[str, str] = field(default_factory=dict)
    subregion_query: Mapping[str, str] = field(default_factory=dict)
    page_meta_at: str | None = None
    more_key: str = "more"
    limit_param: str | None = None
    offset_param: str | None = None
    page_size: int = 100
    empty_is_unknown_region: bool = True
    errors_body_advice: str = ""

    @property
    def paginated(self) -> bool:
        return self.limit_param is not None

    def __hash__(self) -> int:  # the mapping fields are not hashable; the name identifies a dialect
        return hash((self.name, self.default_base_url))


V5 = Dialect(
    name="v5",
    default_base_url="https://api.restcountries.com/countries/v5",
    requires_key=True,
    record_paths={
        "nation_official_name": "names.official",
        "currency_name": "currencies.*.name",
        "population": "population",
    },
    key_path="names.official",
    fields=("names.official", "currencies", "population"),
    fields_param="response_fields",
    region_route="",
    region_query={"region": "{name}"},
    subregion_route="/subregion/{name}",
    records_at="data.objects",
    page_meta_at="data.meta",
    more_key="more",
    limit_param="limit",
    offset_param="offset",
    page_size=100,
    required_paths=("names.official", "population"),
    errors_body_advice="check the API's status and changelog, and that --base-url points at the v5 API",
)

V31 = Dialect(
    name="v3.1",
    default_base_url="https://restcountries.com",
    requires_key=False,
    record_paths={
        "nation_official_name": "name.official",
        "currency_name": "currencies.*.name",
        "population": "population",
    },
    key_path="name.official",
    fields=("name", "currencies", "population"),
    fields_param="fields",
    region_route="/v3.1/region/{name}",
    subregion_route="/v3.1/subregion/{name}",
    records_at=None,
    required_paths=("name.official", "population"),
    errors_body_advice=(
        "switch to the v5 API with `--api v5` and set an API key (RESTCOUNTRIES_API_KEY or the "
        "`restcountries-api-key` Secret block), or point `--base-url` at a self-hosted v3.1 server"
    ),
)

DIALECTS: Mapping[str, Dialect] = {V5.name: V5, V31.name: V31}


def get_dialect(name: str) -> Dialect:
    """The dialect called ``name`` (``"v5"`` or ``"v3.1"``, surrounding blanks ignored).

    Raises ``ConfigurationError`` naming the valid dialects for any other name.
    """
    key = name.strip() if isinstance(name, str) else name
    try:
        return DIALECTS[key]
    except (KeyError, TypeError):
        valid = ", ".join(DIALECTS)
        raise ConfigurationError(f"Unknown REST Countries API version {name!r}: use one of {valid}.") from None


def expand_regions(names: Sequence[str]) -> list[str]:
    """The region/subregion names to fetch, in order, each once.

    Blanks around names are stripped; ``"all"`` (any case) stands for every
    region in :data:`REGIONS`; a name equal to a region in another case is
    written as the region; duplicates (case-insensitive) keep their first place.
    Raises ``ConfigurationError`` for no names, a blank name or a non-string.
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ConfigurationError(
            f"No region given: name one or more of {', '.join(REGIONS)}, a subregion such as "
            "'Northern Europe', or 'all'."
        )
    out: list[str] = []
    seen: set[str] = set()
    for raw in names:
        if not isinstance(raw, str) or not raw.strip():
            raise ConfigurationError(
                f"Region names must be non-blank text, got {raw!r}: name a region such as 'Europe', "
                "a subregion such as 'Northern Europe', or 'all'."
            )
        name = raw.strip()
        expanded = REGIONS if name.casefold() == ALL else (canonical_region(name) or name,)
        for item in expanded:
            if item.casefold() not in seen:
                seen.add(item.casefold())
                out.append(item)
    return out


def canonical_region(name: str) -> str | None:
    """The region in :data:`REGIONS` equal to ``name`` ignoring case, or None (a subregion)."""
    folded = name.strip().casefold()
    for region in REGIONS:
        if region.casefold() == folded:
            return region
    return None


_MISSING: Any = object()


def get_path(obj: Any, path: str) -> Any:
    """The value at dotted ``path`` in nested dicts, or the sentinel ``MISSING``."""
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


MISSING = _MISSING
