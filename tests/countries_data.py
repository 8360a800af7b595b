"""Fixture data for the test suite: REST Countries records written out literally.

``COUNTRIES`` holds full v3.1-style records (the shape the open-source
REST Countries server returns): ``name`` with ``common``/``official`` and a
``nativeName`` map keyed by language code, ``currencies`` keyed by currency
code, ``population``, ``region``, ``subregion``, ``capital``, ``languages``,
``tld`` and the ``cca2``/``cca3`` codes.

It contains all 16 Northern European countries with their real currencies
and populations, a handful from every other region and European subregion,
and the Antarctic region (Antarctica itself has no currencies: ``{}``).

- :func:`v31_records` returns deep copies of the v3.1 records.
- :func:`to_v5` / :func:`v5_records` build v5-shaped records (``names.official``,
  ``currencies`` as a list of ``{"code", "name", "symbol"}`` or, for the other
  published schema, an object keyed by currency code) from the same data.
- :func:`synthetic_countries` generates N reproducible v3.1 records spread over
  the regions, for benchmarks and scale tests.

The test suite's expected tables (``tests/expected.py``) are written by hand,
not derived from this module.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterable
from typing import Any, Literal

EUR = {"EUR": {"name": "Euro", "symbol": "€"}}
GBP = {"GBP": {"name": "British pound", "symbol": "£"}}
DKK = {"DKK": {"name": "Danish krone", "symbol": "kr"}}
NOK = {"NOK": {"name": "Norwegian krone", "symbol": "kr"}}
USD = {"USD": {"name": "United States dollar", "symbol": "$"}}
AUD = {"AUD": {"name": "Australian dollar", "symbol": "$"}}
INR = {"INR": {"name": "Indian rupee", "symbol": "₹"}}


def _c(
    common: str,
    official: str,
    native: dict[str, tuple[str, str]],
    *,
    cca2: str,
    cca3: str,
    currencies: dict[str, dict[str, str]],
    population: int,
    region: str,
    subregion: str | None,
    capital: list[str],
    languages: dict[str, str],
    tld: list[str],
) -> dict[str, Any]:
    """One v3.1 record; ``native`` maps language code -> (official, common)."""
    record: dict[str, Any] = {
        "name": {
            "common": common,
            "official": official,
            "nativeName": {lang: {"official": o, "common": c} for lang, (o, c) in native.items()},
        },
        "tld": tld,
        "cca2": cca2,
        "cca3": cca3,
        "currencies": copy.deepcopy(currencies),
        "capital": capital,
        "region": region,
        "languages": languages,
        "population": population,
    }
    if subregion is not None:
        record["subregion"] = subregion
    return record


_NE = "Northern Europe"

NORTHERN_EUROPE: list[dict[str, Any]] = [
    _c(
        "Åland Islands",
        "Åland Islands",
        {"swe": ("Landskapet Åland", "Åland")},
        cca2="AX",
        cca3="ALA",
        currencies=EUR,
        population=29458,
        region="Europe",
        subregion=_NE,
        capital=["Mariehamn"],
        languages={"swe": "Swedish"},
        tld=[".ax"],
    ),
    _c(
        "Denmark",
        "Kingdom of Denmark",
        {"dan": ("Kongeriget Danmark", "Danmark")},
        cca2="DK",
        cca3="DNK",
        currencies=DKK,
        population=5831404,
        region="Europe",
        subregion=_NE,
        capital=["Copenhagen"],
        languages={"dan": "Danish"},
        tld=[".dk"],
    ),
    _c(
        "Estonia",
        "Republic of Estonia",
        {"est": ("Eesti Vabariik", "Eesti")},
        cca2="EE",
        cca3="EST",
        currencies=EUR,
        population=1331057,
        region="Europe",
        subregion=_NE,
        capital=["Tallinn"],
        languages={"est": "Estonian"},
        tld=[".ee"],
    ),
    _c(
        "Faroe Islands",
        "Faroe Islands",
        {"dan": ("Færøerne", "Færøerne"), "fao": ("Føroyar", "Føroyar")},
        cca2="FO",
        cca3="FRO",
        currencies={"DKK": {"name": "Danish krone", "symbol": "kr"}, "FOK": {"name": "Faroese króna", "symbol": "kr"}},
        population=48865,
        region="Europe",
        subregion=_NE,
        capital=["Tórshavn"],
        languages={"dan": "Danish", "fao": "Faroese"},
        tld=[".fo"],
    ),
    _c(
        "Finland",
        "Republic of Finland",
        {"fin": ("Suomen tasavalta", "Suomi"), "swe": ("Republiken Finland", "Finland")},
        cca2="FI",
        cca3="FIN",
        currencies=EUR,
        population=5530719,
        region="Europe",
        subregion=_NE,
        capital=["Helsinki"],
        languages={"fin": "Finnish", "swe": "Swedish"},
        tld=[".fi"],
    ),
    _c(
        "Guernsey",
        "Bailiwick of Guernsey",
        {
            "eng": ("Bailiwick of Guernsey", "Guernsey"),
            "fra": ("Bailliage de Guernesey", "Guernesey"),
            "nfr": ("Dgèrnésiais", "Dgèrnésiais"),
        },
        cca2="GG",
        cca3="GGY",
        currencies={"GBP": {"name": "British pound", "symbol": "£"}, "GGP": {"name": "Guernsey pound", "symbol": "£"}},
        population=62999,
        region="Europe",
        subregion=_NE,
        capital=["St. Peter Port"],
        languages={"eng": "English", "fra": "French", "nfr": "Guernésiais"},
        tld=[".gg"],
    ),
    _c(
        "Iceland",
        "Iceland",
        {"isl": ("Ísland", "Ísland")},
        cca2="IS",
        cca3="ISL",
        currencies={"ISK": {"name": "Icelandic króna", "symbol": "kr"}},
        population=366425,
        region="Europe",
        subregion=_NE,
        capital=["Reykjavik"],
        languages={"isl": "Icelandic"},
        tld=[".is"],
    ),
    _c(
        "Ireland",
        "Republic of Ireland",
        {"eng": ("Republic of Ireland", "Ireland"), "gle": ("Poblacht na hÉireann", "Éire")},
        cca2="IE",
        cca3="IRL",
        currencies=EUR,
        population=4994724,
        region="Europe",
        subregion=_NE,
        capital=["Dublin"],
        languages={"eng": "English", "gle": "Irish"},
        tld=[".ie"],
    ),
    _c(
        "Isle of Man",
        "Isle of Man",
        {"eng": ("Isle of Man", "Isle of Man"), "glv": ("Ellan Vannin or Mannin", "Mannin")},
        cca2="IM",
        cca3="IMN",
        currencies={"GBP": {"name": "British pound", "symbol": "£"}, "IMP": {"name": "Manx pound", "symbol": "£"}},
        population=85032,
        region="Europe",
        subregion=_NE,
        capital=["Douglas"],
        languages={"eng": "English", "glv": "Manx"},
        tld=[".im"],
    ),
    _c(
        "Jersey",
        "Bailiwick of Jersey",
        {
            "eng": ("Bailiwick of Jersey", "Jersey"),
            "fra": ("Bailliage de Jersey", "Jersey"),
            "nrf": ("Bailliage dé Jèrri", "Jèrri"),
        },
        cca2="JE",
        cca3="JEY",
        currencies={"GBP": {"name": "British pound", "symbol": "£"}, "JEP": {"name": "Jersey pound", "symbol": "£"}},
        population=100800,
        region="Europe",
        subregion=_NE,
        capital=["Saint Helier"],
        languages={"eng": "English", "fra": "French", "nrf": "Jèrriais"},
        tld=[".je"],
    ),
    _c(
        "Latvia",
        "Republic of Latvia",
        {"lav": ("Latvijas Republikas", "Latvija")},
        cca2="LV",
        cca3="LVA",
        currencies=EUR,
        population=1901548,
        region="Europe",
        subregion=_NE,
        capital=["Riga"],
        languages={"lav": "Latvian"},
        tld=[".lv"],
    ),
    _c(
        "Lithuania",
        "Republic of Lithuania",
        {"lit": ("Lietuvos Respublikos", "Lietuva")},
        cca2="LT",
        cca3="LTU",
        currencies=EUR,
        population=2794700,
        region="Europe",
        subregion=_NE,
        capital=["Vilnius"],
        languages={"lit": "Lithuanian"},
        tld=[".lt"],
    ),
    _c(
        "Norway",
        "Kingdom of Norway",
        {
            "nno": ("Kongeriket Noreg", "Noreg"),
            "nob": ("Kongeriket Norge", "Norge"),
            "smi": ("Norgga gonagasriika", "Norgga"),
        },
        cca2="NO",
        cca3="NOR",
        currencies=NOK,
        population=5379475,
        region="Europe",
        subregion=_NE,
        capital=["Oslo"],
        languages={"nno": "Norwegian Nynorsk", "nob": "Norwegian Bokmål", "smi": "Sami"},
        tld=[".no"],
    ),
    _c(
        "Svalbard and Jan Mayen",
        "Svalbard og Jan Mayen",
        {"nor": ("Svalbard og Jan Mayen", "Svalbard og Jan Mayen")},
        cca2="SJ",
        cca3="SJM",
        currencies=NOK,
        population=2562,
        region="Europe",
        subregion=_NE,
        capital=["Longyearbyen"],
        languages={"nor": "Norwegian"},
        tld=[".sj"],
    ),
    _c(
        "Sweden",
        "Kingdom of Sweden",
        {"swe": ("Konungariket Sverige", "Sverige")},
        cca2="SE",
        cca3="SWE",
        currencies={"SEK": {"name": "Swedish krona", "symbol": "kr"}},
        population=10353442,
        region="Europe",
        subregion=_NE,
        capital=["Stockholm"],
        languages={"swe": "Swedish"},
        tld=[".se"],
    ),
    _c(
        "United Kingdom",
        "United Kingdom of Great Britain and Northern Ireland",
        {"eng": ("United Kingdom of Great Britain and Northern Ireland", "United Kingdom")},
        cca2="GB",
        cca3="GBR",
        currencies=GBP,
        population=67215293,
        region="Europe",
        subregion=_NE,
        capital=["London"],
        languages={"eng": "English"},
        tld=[".uk"],
    ),
]

OTHER_EUROPE: list[dict[str, Any]] = [
    _c(
        "Germany",
        "Federal Republic of Germany",
        {"deu": ("Bundesrepublik Deutschland", "Deutschland")},
        cca2="DE",
        cca3="DEU",
        currencies=EUR,
        population=83240525,
        region="Europe",
        subregion="Western Europe",
        capital=["Berlin"],
        languages={"deu": "German"},
        tld=[".de"],
    ),
    _c(
        "France",
        "French Republic",
        {"fra": ("République française", "France")},
        cca2="FR",
        cca3="FRA",
        currencies=EUR,
        population=67391582,
        region="Europe",
        subregion="Western Europe",
        capital=["Paris"],
        languages={"fra": "French"},
        tld=[".fr"],
    ),
    _c(
        "Switzerland",
        "Swiss Confederation",
        {
            "fra": ("Confédération suisse", "Suisse"),
            "gsw": ("Schweizerische Eidgenossenschaft", "Schweiz"),
            "ita": ("Confederazione Svizzera", "Svizzera"),
            "roh": ("Confederaziun svizra", "Svizra"),
        },
        cca2="CH",
        cca3="CHE",
        currencies={"CHF": {"name": "Swiss franc", "symbol": "Fr."}},
        population=8654622,
        region="Europe",
        subregion="Western Europe",
        capital=["Bern"],
        languages={"fra": "French", "gsw": "Swiss German", "ita": "Italian", "roh": "Romansh"},
        tld=[".ch"],
    ),
    _c(
        "Spain",
        "Kingdom of Spain",
        {"spa": ("Reino de España", "España")},
        cca2="ES",
        cca3="ESP",
        currencies=EUR,
        population=47351567,
        region="Europe",
        subregion="Southern Europe",
        capital=["Madrid"],
        languages={"spa": "Spanish"},
        tld=[".es"],
    ),
    _c(
        "Italy",
        "Italian Republic",
        {"ita": ("Repubblica italiana", "Italia")},
        cca2="IT",
        cca3="ITA",
        currencies=EUR,
        population=59554023,
        region="Europe",
        subregion="Southern Europe",
        capital=["Rome"],
        languages={"ita": "Italian"},
        tld=[".it"],
    ),
    _c(
        "Poland",
        "Republic of Poland",
        {"pol": ("Rzeczpospolita Polska", "Polska")},
        cca2="PL",
        cca3="POL",
        currencies={"PLN": {"name": "Polish złoty", "symbol": "zł"}},
        population=37950802,
        region="Europe",
        subregion="Central Europe",
        capital=["Warsaw"],
        languages={"pol": "Polish"},
        tld=[".pl"],
    ),
    _c(
        "Ukraine",
        "Ukraine",
        {"ukr": ("Україна", "Україна")},
        cca2="UA",
        cca3="UKR",
        currencies={"UAH": {"name": "Ukrainian hryvnia", "symbol": "₴"}},
        population=44134693,
        region="Europe",
        subregion="Eastern Europe",
        capital=["Kyiv"],
        languages={"ukr": "Ukrainian"},
        tld=[".ua", ".укр"],
    ),
]

AFRICA: list[dict[str, Any]] = [
    _c(
        "Nigeria",
        "Federal Republic of Nigeria",
        {"eng": ("Federal Republic of Nigeria", "Nigeria"), "yor": ("Orílẹ̀-èdè Olómìnira Àpapọ̀ Nàìjíríà", "Nàìjíríà")},
        cca2="NG",
        cca3="NGA",
        currencies={"NGN": {"name": "Nigerian naira", "symbol": "₦"}},
        population=206139587,
        region="Africa",
        subregion="Western Africa",
        capital=["Abuja"],
        languages={"eng": "English", "yor": "Yoruba"},
        tld=[".ng"],
    ),
    _c(
        "Senegal",
        "Republic of Senegal",
        {"fra": ("République du Sénégal", "Sénégal")},
        cca2="SN",
        cca3="SEN",
        currencies={"XOF": {"name": "West African CFA franc", "symbol": "Fr"}},
        population=16743930,
        region="Africa",
        subregion="Western Africa",
        capital=["Dakar"],
        languages={"fra": "French"},
        tld=[".sn"],
    ),
    _c(
        "Kenya",
        "Republic of Kenya",
        {"eng": ("Republic of Kenya", "Kenya"), "swa": ("Republic of Kenya", "Kenya")},
        cca2="KE",
        cca3="KEN",
        currencies={"KES": {"name": "Kenyan shilling", "symbol": "Sh"}},
        population=53771300,
        region="Africa",
        subregion="Eastern Africa",
        capital=["Nairobi"],
        languages={"eng": "English", "swa": "Swahili"},
        tld=[".ke"],
    ),
    _c(
        "Egypt",
        "Arab Republic of Egypt",
        {"ara": ("جمهورية مصر العربية", "مصر")},
        cca2="EG",
        cca3="EGY",
        currencies={"EGP": {"name": "Egyptian pound", "symbol": "£"}},
        population=102334403,
        region="Africa",
        subregion="Northern Africa",
        capital=["Cairo"],
        languages={"ara": "Arabic"},
        tld=[".eg", ".مصر"],
    ),
    _c(
        "South Africa",
        "Republic of South Africa",
        {"afr": ("Republiek van Suid-Afrika", "South Africa"), "eng": ("Republic of South Africa", "South Africa")},
        cca2="ZA",
        cca3="ZAF",
        currencies={"ZAR": {"name": "South African rand", "symbol": "R"}},
        population=59308690,
        region="Africa",
        subregion="Southern Africa",
        capital=["Pretoria", "Bloemfontein", "Cape Town"],
        languages={"afr": "Afrikaans", "eng": "English"},
        tld=[".za"],
    ),
]

AMERICAS: list[dict[str, Any]] = [
    _c(
        "United States",
        "United States of America",
        {"eng": ("United States of America", "United States")},
        cca2="US",
        cca3="USA",
        currencies=USD,
        population=329484123,
        region="Americas",
        subregion="North America",
        capital=["Washington D.C."],
        languages={"eng": "English"},
        tld=[".us"],
    ),
    _c(
        "Canada",
        "Canada",
        {"eng": ("Canada", "Canada"), "fra": ("Canada", "Canada")},
        cca2="CA",
        cca3="CAN",
        currencies={"CAD": {"name": "Canadian dollar", "symbol": "$"}},
        population=38005238,
        region="Americas",
        subregion="North America",
        capital=["Ottawa"],
        languages={"eng": "English", "fra": "French"},
        tld=[".ca"],
    ),
    _c(
        "Mexico",
        "United Mexican States",
        {"spa": ("Estados Unidos Mexicanos", "México")},
        cca2="MX",
        cca3="MEX",
        currencies={"MXN": {"name": "Mexican peso", "symbol": "$"}},
        population=128932753,
        region="Americas",
        subregion="North America",
        capital=["Mexico City"],
        languages={"spa": "Spanish"},
        tld=[".mx"],
    ),
    _c(
        "Panama",
        "Republic of Panama",
        {"spa": ("República de Panamá", "Panamá")},
        cca2="PA",
        cca3="PAN",
        currencies={
            "PAB": {"name": "Panamanian balboa", "symbol": "B/."},
            "USD": {"name": "United States dollar", "symbol": "$"},
        },
        population=4314768,
        region="Americas",
        subregion="Central America",
        capital=["Panama City"],
        languages={"spa": "Spanish"},
        tld=[".pa"],
    ),
    _c(
        "Brazil",
        "Federative Republic of Brazil",
        {"por": ("República Federativa do Brasil", "Brasil")},
        cca2="BR",
        cca3="BRA",
        currencies={"BRL": {"name": "Brazilian real", "symbol": "R$"}},
        population=212559409,
        region="Americas",
        subregion="South America",
        capital=["Brasília"],
        languages={"por": "Portuguese"},
        tld=[".br"],
    ),
    _c(
        "Ecuador",
        "Republic of Ecuador",
        {"spa": ("República del Ecuador", "Ecuador")},
        cca2="EC",
        cca3="ECU",
        currencies=USD,
        population=17643060,
        region="Americas",
        subregion="South America",
        capital=["Quito"],
        languages={"spa": "Spanish"},
        tld=[".ec"],
    ),
]

ASIA: list[dict[str, Any]] = [
    _c(
        "Japan",
        "Japan",
        {"jpn": ("日本", "日本")},
        cca2="JP",
        cca3="JPN",
        currencies={"JPY": {"name": "Japanese yen", "symbol": "¥"}},
        population=125836021,
        region="Asia",
        subregion="Eastern Asia",
        capital=["Tokyo"],
        languages={"jpn": "Japanese"},
        tld=[".jp", ".みんな"],
    ),
    _c(
        "India",
        "Republic of India",
        {"eng": ("Republic of India", "India"), "hin": ("भारत गणराज्य", "भारत")},
        cca2="IN",
        cca3="IND",
        currencies=INR,
        population=1380004385,
        region="Asia",
        subregion="Southern Asia",
        capital=["New Delhi"],
        languages={"eng": "English", "hin": "Hindi", "tam": "Tamil"},
        tld=[".in"],
    ),
    _c(
        "Bhutan",
        "Kingdom of Bhutan",
        {"dzo": ("འབྲུག་རྒྱལ་ཁབ་", "འབྲུག་ཡུལ་")},
        cca2="BT",
        cca3="BTN",
        currencies={
            "BTN": {"name": "Bhutanese ngultrum", "symbol": "Nu."},
            "INR": {"name": "Indian rupee", "symbol": "₹"},
        },
        population=771612,
        region="Asia",
        subregion="Southern Asia",
        capital=["Thimphu"],
        languages={"dzo": "Dzongkha"},
        tld=[".bt"],
    ),
    _c(
        "Singapore",
        "Republic of Singapore",
        {"eng": ("Republic of Singapore", "Singapore"), "zho": ("新加坡共和国", "新加坡")},
        cca2="SG",
        cca3="SGP",
        currencies={"SGD": {"name": "Singapore dollar", "symbol": "$"}},
        population=5685807,
        region="Asia",
        subregion="South-Eastern Asia",
        capital=["Singapore"],
        languages={"eng": "English", "msa": "Malay", "tam": "Tamil", "zho": "Chinese"},
        tld=[".sg"],
    ),
]

OCEANIA: list[dict[str, Any]] = [
    _c(
        "Australia",
        "Commonwealth of Australia",
        {"eng": ("Commonwealth of Australia", "Australia")},
        cca2="AU",
        cca3="AUS",
        currencies=AUD,
        population=25687041,
        region="Oceania",
        subregion="Australia and New Zealand",
        capital=["Canberra"],
        languages={"eng": "English"},
        tld=[".au"],
    ),
    _c(
        "New Zealand",
        "New Zealand",
        {"eng": ("New Zealand", "New Zealand"), "mri": ("Aotearoa", "Aotearoa")},
        cca2="NZ",
        cca3="NZL",
        currencies={"NZD": {"name": "New Zealand dollar", "symbol": "$"}},
        population=5084300,
        region="Oceania",
        subregion="Australia and New Zealand",
        capital=["Wellington"],
        languages={"eng": "English", "mri": "Māori", "nzs": "New Zealand Sign Language"},
        tld=[".nz"],
    ),
    _c(
        "Fiji",
        "Republic of Fiji",
        {"eng": ("Republic of Fiji", "Fiji"), "fij": ("Matanitu Tugalala o Viti", "Viti")},
        cca2="FJ",
        cca3="FJI",
        currencies={"FJD": {"name": "Fijian dollar", "symbol": "$"}},
        population=896444,
        region="Oceania",
        subregion="Melanesia",
        capital=["Suva"],
        languages={"eng": "English", "fij": "Fijian"},
        tld=[".fj"],
    ),
    _c(
        "Tuvalu",
        "Tuvalu",
        {"eng": ("Tuvalu", "Tuvalu"), "tvl": ("Tuvalu", "Tuvalu")},
        cca2="TV",
        cca3="TUV",
        currencies={
            "AUD": {"name": "Australian dollar", "symbol": "$"},
            "TVD": {"name": "Tuvaluan dollar", "symbol": "$"},
        },
        population=11792,
        region="Oceania",
        subregion="Polynesia",
        capital=["Funafuti"],
        languages={"eng": "English", "tvl": "Tuvaluan"},
        tld=[".tv"],
    ),
    _c(
        "Kiribati",
        "Independent and Sovereign Republic of Kiribati",
        {
            "eng": ("Independent and Sovereign Republic of Kiribati", "Kiribati"),
            "gil": ("Ribaberiki Kiribati", "Kiribati"),
        },
        cca2="KI",
        cca3="KIR",
        currencies={
            "AUD": {"name": "Australian dollar", "symbol": "$"},
            "KID": {"name": "Kiribati dollar", "symbol": "$"},
        },
        population=119446,
        region="Oceania",
        subregion="Micronesia",
        capital=["South Tarawa"],
        languages={"eng": "English", "gil": "Gilbertese"},
        tld=[".ki"],
    ),
]

ANTARCTIC: list[dict[str, Any]] = [
    # Antarctica: no currencies (``{}``) and no subregion, as in REST Countries.
    _c(
        "Antarctica",
        "Antarctica",
        {},
        cca2="AQ",
        cca3="ATA",
        currencies={},
        population=1000,
        region="Antarctic",
        subregion=None,
        capital=[],
        languages={},
        tld=[".aq"],
    ),
    _c(
        "Bouvet Island",
        "Bouvet Island",
        {"nor": ("Bouvetøya", "Bouvetøya")},
        cca2="BV",
        cca3="BVT",
        currencies={},
        population=0,
        region="Antarctic",
        subregion=None,
        capital=[],
        languages={"nor": "Norwegian"},
        tld=[".bv"],
    ),
    _c(
        "South Georgia",
        "South Georgia and the South Sandwich Islands",
        {"eng": ("South Georgia and the South Sandwich Islands", "South Georgia")},
        cca2="GS",
        cca3="SGS",
        currencies={"SHP": {"name": "Saint Helena pound", "symbol": "£"}},
        population=30,
        region="Antarctic",
        subregion=None,
        capital=["King Edward Point"],
        languages={"eng": "English"},
        tld=[".gs"],
    ),
    _c(
        "French Southern and Antarctic Lands",
        "Territory of the French Southern and Antarctic Lands",
        {
            "fra": (
                "Territoire des Terres australes et antarctiques françaises",
                "Terres australes et antarctiques françaises",
            )
        },
        cca2="TF",
        cca3="ATF",
        currencies=EUR,
        population=400,
        region="Antarctic",
        subregion=None,
        capital=["Port-aux-Français"],
        languages={"fra": "French"},
        tld=[".tf"],
    ),
]

COUNTRIES: list[dict[str, Any]] = [
    *NORTHERN_EUROPE,
    *OTHER_EUROPE,
    *AFRICA,
    *AMERICAS,
    *ASIA,
    *OCEANIA,
    *ANTARCTIC,
]
"""Every fixture country, v3.1 shape. Treat as read-only; use :func:`v31_records` for copies."""

REGION_NAMES: tuple[str, ...] = ("Africa", "Americas", "Antarctic", "Asia", "Europe", "Oceania")


def v31_records(countries: Iterable[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Deep copies of the v3.1 records (default: :data:`COUNTRIES`)."""
    return copy.deepcopy(list(COUNTRIES if countries is None else countries))


def to_v5(record: dict[str, Any], *, currencies: Literal["list", "object"] = "list") -> dict[str, Any]:
    """One v3.1 record in the v5 shape.

    ``names.common`` / ``names.official`` / ``names.native``; ``currencies`` as a
    list of ``{"code", "name", "symbol"}`` (``currencies="list"``, the documented
    form) or as an object keyed by currency code (``"object"``, the other
    published schema); ``population``, ``region``, ``subregion`` (``None`` when
    there is none), ``capitals``, ``languages`` (list of ``{"code", "name"}``),
    ``tlds`` and ``codes``.
    """
    if currencies not in ("list", "object"):
        raise ValueError(f"currencies must be 'list' or 'object', not {currencies!r}")
    cur = record.get("currencies", {})
    if not isinstance(cur, dict):  # a malformed value (tests of the data contract) passes through as it is
        cur_out: Any = copy.deepcopy(cur)
    elif currencies == "list":
        cur_out = [{"code": code, "name": c.get("name"), "symbol": c.get("symbol")} for code, c in cur.items()]
    else:
        cur_out = {code: {"name": c.get("name"), "symbol": c.get("symbol")} for code, c in cur.items()}
    name = record["name"]
    return {
        "names": {
            "common": name["common"],
            "official": name["official"],
            "native": copy.deepcopy(name.get("nativeName", {})),
        },
        "codes": {"alpha2": record.get("cca2"), "alpha3": record.get("cca3")},
        "region": record["region"],
        "subregion": record.get("subregion"),
        "capitals": list(record.get("capital", [])),
        "languages": [{"code": k, "name": v} for k, v in record.get("languages", {}).items()],
        "tlds": list(record.get("tld", [])),
        "population": record["population"],
        "currencies": cur_out,
    }


def v5_records(
    countries: Iterable[dict[str, Any]] | None = None, *, currencies: Literal["list", "object"] = "list"
) -> list[dict[str, Any]]:
    """:func:`to_v5` of every record (default: :data:`COUNTRIES`)."""
    return [to_v5(r, currencies=currencies) for r in (COUNTRIES if countries is None else countries)]


_SUBREGIONS: dict[str, tuple[str | None, ...]] = {
    "Africa": ("Northern Africa", "Western Africa", "Eastern Africa", "Middle Africa", "Southern Africa"),
    "Americas": ("North America", "Central America", "Caribbean", "South America"),
    "Antarctic": (None,),
    "Asia": ("Central Asia", "Eastern Asia", "South-Eastern Asia", "Southern Asia", "Western Asia"),
    "Europe": ("Northern Europe", "Western Europe", "Southern Europe", "Eastern Europe", "Central Europe"),
    "Oceania": ("Australia and New Zealand", "Melanesia", "Micronesia", "Polynesia"),
}
_CURRENCY_POOL: tuple[tuple[str, str, str], ...] = (
    ("EUR", "Euro", "€"),
    ("USD", "United States dollar", "$"),
    ("GBP", "British pound", "£"),
    ("XOF", "West African CFA franc", "Fr"),
    ("XCD", "Eastern Caribbean dollar", "$"),
    ("AUD", "Australian dollar", "$"),
    ("CHF", "Swiss franc", "Fr."),
    ("INR", "Indian rupee", "₹"),
)


def synthetic_countries(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` reproducible, unique v3.1-style countries spread round-robin over the six regions.

    Official names are ``"Synthetic Republic of <region> <i>"`` (unique); each
    has one to three currencies (a few local ones, some shared), a population,
    a subregion of its region (none in the Antarctic), a capital, a language and a tld.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not cryptography
    out: list[dict[str, Any]] = []
    for i in range(n):
        region = REGION_NAMES[i % len(REGION_NAMES)]
        subregion = rng.choice(_SUBREGIONS[region])
        code3 = f"S{i:05d}"[-3:] if i < 1000 else f"{i:X}"[-3:]
        currencies: dict[str, dict[str, str]] = {}
        for code, cname, symbol in rng.sample(_CURRENCY_POOL, rng.randint(0, 2)):
            currencies[code] = {"name": cname, "symbol": symbol}
        if rng.random() < 0.7 or not currencies:
            currencies[f"X{i % 100:02d}"] = {"name": f"Synthetic {i} dollar", "symbol": "¤"}
        common = f"Synthland {region} {i}"
        official = f"Synthetic Republic of {region} {i}"
        out.append(
            _c(
                common,
                official,
                {"eng": (official, common)},
                cca2=f"{i % 676:03d}"[-2:],
                cca3=code3,
                currencies=currencies,
                population=rng.randint(0, 200_000_000),
                region=region,
                subregion=subregion,
                capital=[f"Capital {i}"],
                languages={"eng": "English"},
                tld=[f".s{i}"],
            )
        )
    return out
