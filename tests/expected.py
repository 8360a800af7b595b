"""The exact tables the pipeline must produce from the test suite's fixture data.

Written out by hand, not derived from the fixture data by product code, so a
bug in the transform cannot hide behind an expectation computed the same way.
"""

from __future__ import annotations

# (nation_official_name, currency_name, population), sorted by name then currency:
# the 16 Northern European countries; four of them have two currencies -> 20 rows.
EXPECTED_NORTHERN_EUROPE: list[tuple[str, str | None, int]] = [
    ("Bailiwick of Guernsey", "British pound", 62999),
    ("Bailiwick of Guernsey", "Guernsey pound", 62999),
    ("Bailiwick of Jersey", "British pound", 100800),
    ("Bailiwick of Jersey", "Jersey pound", 100800),
    ("Faroe Islands", "Danish krone", 48865),
    ("Faroe Islands", "Faroese króna", 48865),
    ("Iceland", "Icelandic króna", 366425),
    ("Isle of Man", "British pound", 85032),
    ("Isle of Man", "Manx pound", 85032),
    ("Kingdom of Denmark", "Danish krone", 5831404),
    ("Kingdom of Norway", "Norwegian krone", 5379475),
    ("Kingdom of Sweden", "Swedish krona", 10353442),
    ("Republic of Estonia", "Euro", 1331057),
    ("Republic of Finland", "Euro", 5530719),
    ("Republic of Ireland", "Euro", 4994724),
    ("Republic of Latvia", "Euro", 1901548),
    ("Republic of Lithuania", "Euro", 2794700),
    ("Svalbard og Jan Mayen", "Norwegian krone", 2562),
    ("United Kingdom of Great Britain and Northern Ireland", "British pound", 67215293),
    ("Åland Islands", "Euro", 29458),
]

NORTHERN_EUROPE_COUNTRIES = 16
