"""The REST Countries API versions described as data (private; see ``flows.api``).

A :class:`Dialect` says everything the generic client needs to talk to one API
version: where it lives, whether it needs a key, how a region or subregion
becomes a URL, how a source path becomes a field selection, how pages are
walked, and where the records sit in a response body. Which fields to fetch is
not part of a dialect: the caller passes the source paths it needs (the table
schema knows them) and the dialect turns them into its request parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from flows._http import KEY_ADVICE
from flows.errors import ConfigurationError, setting

REGIONS: tuple[str, ...] = ("Africa", "Americas", "Antarctic", "Asia", "Europe", "Oceania")
"""The regions the API knows; any other name is treated as a subregion (e.g. "Northern Europe")."""

ALL = "all"
WILDCARD = "*"


@dataclass(frozen=True)
class Dialect:
    """One REST Countries API version, as data.

    URLs: ``base_url + region_route`` (with ``{name}`` replaced by the quoted
    region name) plus ``region_query`` (``{name}`` replaced by the plain name);
    subregions likewise with ``subregion_route``/``subregion_query``.

    Fields: :meth:`request_fields` turns source paths (``"names.official"``,
    ``"currencies.*.name"``) into the values of ``fields_param``:
    ``field_selection="to_wildcard"`` keeps a path's dotted prefix up to its
    first ``*`` (v5 ``response_fields``), ``"top_level"`` its first segment
    (v3.1 ``fields``). ``region_fields`` (the record's region and subregion) are
    always requested as well, so the client can check that every record belongs
    to what was asked for.

    Pagination (when ``limit_param`` is set): ``limit_param=page_size`` and
    ``offset_param``, walking while ``<page_meta_at>.<more_key>`` is true.
    Records: the list at ``records_at`` in the body (``None``: the body itself
    is the list). ``demo_flag_at``: where a demo-key answer says it is one.
    ``key_path`` names a country (for de-duplication and messages).
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
    region_fields: tuple[str, str] = ("region", "subregion")
    region_query: Mapping[str, str] = field(default_factory=dict)
    subregion_query: Mapping[str, str] = field(default_factory=dict)
    page_meta_at: str | None = None
    more_key: str = "more"
    limit_param: str | None = None
    offset_param: str | None = None
    page_size: int = 100
    demo_flag_at: str | None = None
    legacy_prefix: str | None = None
    errors_body_advice: str = ""

    @property
    def paginated(self) -> bool:
        return self.limit_param is not None

    def request_field(self, path: str) -> str:
        """The value of ``fields_param`` that makes the server send source ``path``."""
        parts = path.split(".")
        if self.field_selection == "top_level":
            return parts[0]
        kept = parts[: parts.index(WILDCARD)] if WILDCARD in parts else parts
        return ".".join(kept)

    def request_fields(self, paths: Iterable[str]) -> tuple[str, ...]:
        """The fields to request for ``paths`` plus :attr:`region_fields`, each once, in order.

        Raises ``ConfigurationError`` for no paths, a blank path or segment, or a
        path that starts with ``*``.
        """
        paths = check_paths(paths)
        out: list[str] = []
        for item in [*(self.request_field(p) for p in paths), *self.region_fields]:
            if item not in out:
                out.append(item)
        return tuple(out)

    def __hash__(self) -> int:  # the mapping fields are not hashable; the name identifies a dialect
        return hash((self.name, self.default_base_url))


def check_paths(paths: Iterable[str]) -> tuple[str, ...]:
    """``paths`` as a tuple after checking each is a dotted source path (``a.b``, ``a.*.b``)."""
    if isinstance(paths, str):
        paths = (paths,)
    out = tuple(paths)
    if not out:
        raise ConfigurationError("No source paths given: name the fields to fetch, e.g. 'names.official'.")
    for path in out:
        parts = path.split(".") if isinstance(path, str) else [""]
        if any(not p.strip() for p in parts) or parts[0] == WILDCARD:
            raise ConfigurationError(
                f"Invalid source path {path!r}: use dotted names such as 'names.official' or 'currencies.*.name'."
            )
    return out


def required_paths(paths: Iterable[str]) -> tuple[str, ...]:
    """The paths every record must have: those without a ``*`` (``currencies.*.name`` may be absent)."""
    return tuple(p for p in check_paths(paths) if WILDCARD not in p.split("."))


V5 = Dialect(
    name="v5",
    default_base_url="https://api.restcountries.com/countries/v5",
    requires_key=True,
    key_path="names.official",
    fields_param="response_fields",
    field_selection="to_wildcard",
    region_route="",
    region_query={"region": "{name}"},
    subregion_route="/subregion/{name}",
    records_at="data.objects",
    page_meta_at="data.meta",
    more_key="more",
    limit_param="limit",
    offset_param="offset",
    page_size=100,
    demo_flag_at="data._demo",
    errors_body_advice=f"check the API's status and changelog, and that {setting('base_url')} points at the v5 API",
)

V31 = Dialect(
    name="v3.1",
    default_base_url="https://restcountries.com",
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
