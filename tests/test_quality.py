"""flows.transform.quality: the countries rules and the row-drop rule (pure, no database)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flows.transform import quality
from flows.errors import ConfigurationError, LoadError, QualityGateError
from flows.load.changes import check_min_row_fraction, check_row_drop
from flows.transform.quality import RowRule, validate_countries


def good() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "nation_official_name": pd.array(["Republic of Finland", "Åland Islands", "Narnia"], dtype="str"),
            "currency_name": pd.array(["Euro", None, "Lion"], dtype="str"),
            "population": np.array([5_500_000, 30_000, 0], dtype="int64"),
        }
    )


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(good(), id="str dtype"),
        pytest.param(good().astype({"nation_official_name": object, "currency_name": object}), id="object dtype"),
        pytest.param(good().astype({"population": "Int64"}), id="nullable Int64"),
        pytest.param(good().astype({"population": "int32"}), id="int32"),
    ],
)
def test_good_frames_pass(frame):
    assert validate_countries(frame) is None


def test_validation_does_not_modify_the_frame():
    frame = good()
    copy = frame.copy()
    validate_countries(frame)
    pd.testing.assert_frame_equal(frame, copy)


def _with(**changes) -> pd.DataFrame:
    frame = good()
    for column, values in changes.items():
        frame[column] = values
    return frame


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        pytest.param(
            good().drop(columns="currency_name"),
            "quality gate: the columns are [nation_official_name, population], expected exactly "
            "[nation_official_name, currency_name, population] in that order; the table was not changed",
            id="missing column",
        ),
        pytest.param(
            good()[["currency_name", "nation_official_name", "population"]],
            "quality gate: the columns are [currency_name, nation_official_name, population], "
            "expected exactly [nation_official_name, currency_name, population] in that order; "
            "the table was not changed",
            id="wrong order",
        ),
        pytest.param(
            good().assign(extra=1),
            "quality gate: the columns are [nation_official_name, currency_name, population, extra], "
            "expected exactly [nation_official_name, currency_name, population] in that order; "
            "the table was not changed",
            id="extra column",
        ),
        pytest.param(
            _with(nation_official_name=[1, 2, 3]),
            'quality gate: column "nation_official_name" has dtype int64, expected text (str); '
            "the table was not changed",
            id="name not text",
        ),
        pytest.param(
            _with(currency_name=pd.array(["Euro", 5, None], dtype=object)),
            'quality gate: column "currency_name" has dtype object, expected text (str); the table was not changed',
            id="currency mixed objects",
        ),
        pytest.param(
            _with(population=[1.0, 2.5, np.nan]),
            'quality gate: column "population" has dtype float64, expected an integer dtype; the table was not changed',
            id="population float",
        ),
        pytest.param(
            good().iloc[:0],
            "quality gate: the data has no rows; the table was not changed",
            id="no rows",
        ),
        pytest.param(
            _with(nation_official_name=pd.array([None, "Åland Islands", None], dtype="str")),
            "quality gate: 2 rows have no nation_official_name (e.g. row 0); the table was not changed",
            id="null names",
        ),
        pytest.param(
            _with(population=pd.array([5, None, 7], dtype="Int64")),
            'quality gate: 1 row has no population (e.g. "Åland Islands"); the table was not changed',
            id="null population",
        ),
        pytest.param(
            _with(population=np.array([-5, 10, -7], dtype="int64")).assign(
                nation_official_name=pd.array(["Narnia", "Finland", "Oz"], dtype="str")
            ),
            'quality gate: 2 rows have a negative population (e.g. "Narnia": -5); the table was not changed',
            id="negative population",
        ),
    ],
)
def test_each_rule_names_the_first_problem(frame, message):
    with pytest.raises(QualityGateError) as err:
        validate_countries(frame)
    assert str(err.value) == message
    assert isinstance(err.value, LoadError)


def test_rules_are_checked_in_order():
    # Both a null name and a negative population: the earlier rule is reported.
    frame = _with(
        nation_official_name=pd.array(["A", None, "C"], dtype="str"),
        population=np.array([1, 2, -3], dtype="int64"),
    )
    with pytest.raises(QualityGateError, match=r"1 row has no nation_official_name \(e\.g\. row 1\)"):
        validate_countries(frame)


def test_rules_are_data_and_easy_to_extend(monkeypatch):
    rule = RowRule(
        "a blank nation_official_name",
        lambda df: df["nation_official_name"].str.strip().eq("").fillna(False).astype(bool),
        lambda df, label: f"row {label}",
    )
    monkeypatch.setattr(quality, "ROW_RULES", [*quality.ROW_RULES, rule])
    frame = _with(nation_official_name=pd.array(["A", "  ", "C"], dtype="str"))
    expected = r"^quality gate: 1 row has a blank nation_official_name \(e\.g\. row 1\)"
    with pytest.raises(QualityGateError, match=expected):
        validate_countries(frame)


# --- row drop ---------------------------------------------------------------------------
# The promise (help text of min_row_fraction, README): "refuse a load smaller than this fraction
# of the current table". So new < fraction * previous is refused, exactly that fraction passes,
# no table or an empty table never refuses.


def test_row_drop_message_speaks_the_flow_and_the_command_line():
    with pytest.raises(QualityGateError) as err:
        check_row_drop(3, 16, 0.5, "northern_europe_countries")
    assert str(err.value) == (
        "new data has 3 rows, 19% of the 16 in northern_europe_countries, below min_row_fraction=0.5 "
        "(at least 8 rows); re-run with force=True if this is expected"
    )
    assert err.value.for_audience("cli") == (
        "new data has 3 rows, 19% of the 16 in northern_europe_countries, below --min-row-fraction 0.5 "
        "(at least 8 rows); re-run with --force if this is expected"
    )


@pytest.mark.parametrize(
    ("new", "previous", "fraction"),
    [
        pytest.param(8, 16, 0.5, id="exactly half of the table at 0.5"),
        pytest.param(71, 100, 0.2, id="71% kept at 0.2 (issue 9: was refused)"),
        pytest.param(90, 100, 0.9, id="exactly 0.9"),
        pytest.param(1, 10, 0.1, id="exactly 0.1 of 10 (decimal, not binary, fraction)"),
        pytest.param(7, 10, 0.7, id="exactly 0.7 of 10"),
        pytest.param(3, 10, 0.3, id="exactly 0.3 of 10"),
        pytest.param(20, 16, 0.5, id="growth"),
        pytest.param(16, 16, 1.0, id="same size at 1.0"),
        pytest.param(0, 16, 0.0, id="fraction 0 lets everything through"),
        pytest.param(3, None, 1.0, id="no table yet"),
        pytest.param(0, 0, 1.0, id="empty table"),
    ],
)
def test_row_drop_allowed(new, previous, fraction):
    assert check_row_drop(new, previous, fraction, "the table") is None


@pytest.mark.parametrize(
    ("new", "previous", "fraction", "shown", "needed"),
    [
        pytest.param(7, 16, 0.5, "44%", 8, id="one row short of half"),
        pytest.param(0, 16, 0.5, "0%", 8, id="nothing"),
        pytest.param(10, 100, 0.9, "10%", 90, id="a 90% drop at 0.9 (issue 9: was let through)"),
        pytest.param(89, 100, 0.9, "89%", 90, id="one row short of 0.9"),
        pytest.param(99, 200, 0.5, "49.5%", 100, id="rounds up to the limit: shown with one decimal"),
        pytest.param(15, 16, 1.0, "94%", 16, id="any shrinking at 1.0"),
        pytest.param(2, 3, 0.7, "67%", 3, id="0.7 of 3 is 2.1 rows"),
    ],
)
def test_row_drop_refused(new, previous, fraction, shown, needed):
    with pytest.raises(QualityGateError) as err:
        check_row_drop(new, previous, fraction, "the table")
    assert str(err.value) == (
        f"new data has {new} rows, {shown} of the {previous} in the table, below min_row_fraction={fraction} "
        f"(at least {needed} rows); re-run with force=True if this is expected"
    )


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), "0.5", True])
def test_row_drop_fraction_must_be_a_fraction(fraction):
    with pytest.raises(ConfigurationError, match=r"^min_row_fraction must be between 0 and 1") as err:
        check_min_row_fraction(fraction)
    assert err.value.for_audience("cli").startswith("--min-row-fraction must be between 0 and 1")


# --- a population given as text: exactly a whole number within bigint, in ASCII decimal ---------------


def _iceland(population) -> dict:
    return {"name": {"official": "Iceland"}, "currencies": {}, "population": population}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        pytest.param("1_000", "text, not a number", id="underscore"),
        pytest.param("١٢٣", "text, not a number", id="arabic-indic digits"),
        pytest.param("\uff11\uff12\uff13", "text, not a number", id="fullwidth digits"),
        pytest.param("inf", "text, not a number", id="infinity"),
        pytest.param("0x10", "text, not a number", id="hexadecimal"),
        pytest.param("9007199254740993.5", "not a whole number", id="fraction beyond float precision"),
        pytest.param("9223372036854775808", "outside bigint, at most 9223372036854775807", id="bigint max + 1"),
        pytest.param("1e400", "outside bigint, at most 9223372036854775807", id="huge exponent"),
    ],
)
def test_a_text_population_that_is_not_exactly_an_ascii_whole_number_is_refused(text, why):
    from flows.errors import InvalidRecordError
    from flows.transform.schema import check_records

    with pytest.raises(InvalidRecordError) as err:
        check_records([_iceland(text)], "v3.1")
    assert str(err.value) == (
        f'population of "Iceland" is "{text}" ({why}): expected a whole number within bigint; the table was not changed'
    )


@pytest.mark.parametrize(
    ("text", "number"),
    [
        pytest.param("9007199254740993.0", 9007199254740993, id="2**53 + 1 with a zero fraction, not rounded"),
        pytest.param("9223372036854775807", 2**63 - 1, id="bigint max"),
        pytest.param("-9223372036854775808", -(2**63), id="bigint min"),
        pytest.param("366425", 366425, id="plain"),
        pytest.param("1e3", 1000, id="exponent"),
    ],
)
def test_a_text_population_that_is_exactly_a_whole_number_becomes_that_number(text, number):
    from flows.transform.schema import check_records, to_frame_dtypes

    check_records([_iceland(text)], "v3.1")  # accepted
    frame = to_frame_dtypes(pd.DataFrame({"nation_official_name": ["Iceland"], "population": [text]}))
    assert str(frame["population"].dtype) == "Int64"
    assert int(frame["population"].iloc[0]) == number
