"""flows.transform.schema on records fetched from the fake API: one record per country, checks at scale."""

from __future__ import annotations

import copy

import httpx
import pytest

from flows.errors import ConflictingRecordsError, InvalidRecordError
from flows.transform import schema
from tests.countries_data import COUNTRIES, synthetic_countries, v31_records
from tests.fake_api import FakeRestCountries

FIELDS = "name,currencies,population"


def fetched(api: FakeRestCountries, *regions: str) -> list[tuple[str, list[dict]]]:
    """(region, records) pairs as the v3.1 server answers them (regions, or subregions when they contain a space)."""
    out = []
    for region in regions:
        kind = "subregion" if " " in region else "region"
        response = httpx.get(f"{api.v31_base_url}/v3.1/{kind}/{region}", params={"fields": FIELDS}, timeout=10)
        response.raise_for_status()
        out.append((region, response.json()))
    return out


def test_overlapping_regions_keep_each_country_once():
    with FakeRestCountries() as api:
        pairs = fetched(api, "Europe", "Northern Europe")
    europe = len(pairs[0][1])
    assert len(pairs[1][1]) == 16 and europe > 16  # Northern Europe lies inside Europe
    records = schema.each_country_once(pairs, "v3.1")
    assert records == pairs[0][1]  # the Europe fetch, nothing twice
    assert schema.count_distinct(records, schema.KEY, "v3.1") == europe


def _narnia(region: str, population: int, currencies: dict) -> dict:
    record = copy.deepcopy(COUNTRIES[0])
    record["name"]["official"] = "Kingdom of Narnia"
    record.update(region=region, population=population, currencies=currencies)
    record.pop("subregion", None)
    return record


def test_a_country_given_differently_by_two_regions_is_refused_naming_both():
    countries = [
        *v31_records(),
        _narnia("Europe", 1_000, {"NRL": {"name": "Narnian lion", "symbol": "L"}}),
        _narnia("Asia", 2_000, {"CLM": {"name": "Calormene crescent", "symbol": "C"}}),
    ]
    with FakeRestCountries(countries) as api:
        pairs = fetched(api, "Africa", "Asia", "Europe")
    with pytest.raises(ConflictingRecordsError) as info:
        schema.each_country_once(pairs, "v3.1")
    assert str(info.value) == (
        '"Kingdom of Narnia" differs between Asia and Europe (currencies, population): '
        "each country must have one record; the table was not changed"
    )
    assert isinstance(info.value, InvalidRecordError)


def test_same_name_with_the_same_record_in_two_regions_is_kept_once():
    narnia = {"NRL": {"name": "Narnian lion", "symbol": "L"}}
    countries = [*v31_records(), _narnia("Europe", 1_000, narnia), _narnia("Asia", 1_000, narnia)]
    with FakeRestCountries(countries) as api:
        pairs = fetched(api, "Asia", "Europe")
    records = schema.each_country_once(pairs, "v3.1")
    names = [r["name"]["official"] for r in records]
    assert names.count("Kingdom of Narnia") == 1
    assert len(names) == len(set(names))


def _projected(countries: list[dict]) -> list[dict]:
    return [{k: c[k] for k in ("name", "currencies", "population")} for c in countries]


def test_the_checks_at_scale_find_one_bad_value_among_many():
    records = _projected(synthetic_countries(20_000))
    schema.check_records(records, "v3.1")  # no bad value: no error
    records[12_345]["population"] = 30654.7
    records[15_000]["currencies"] = {"EUR": {"symbol": "€"}}
    with pytest.raises(InvalidRecordError) as info:
        schema.check_records(records, "v3.1")
    name = records[12_345]["name"]["official"]
    assert str(info.value) == (
        f'population of "{name}" is 30654.7 (not a whole number): expected a whole number within bigint '
        "(2 values break the table's rules; this is the first); the table was not changed"
    )


def test_count_distinct_counts_values_below_a_wildcard():
    records = [
        {"name": {"official": "A"}, "currencies": {"EUR": {"name": "Euro"}, "X": {"name": None}}},
        {"name": {"official": "B"}, "currencies": [{"name": "Euro"}, {"name": "Lion"}]},
        {"name": {"official": "B"}, "currencies": None},
        {"name": "not a dict"},
    ]
    assert schema.count_distinct(records, schema.KEY, "v3.1") == 2
    assert schema.count_distinct(records, schema.column("currency_name"), "v3.1") == 2
