"""Tests of flows.transform.unnest: the contract in its docstring, case by case, then properties.

The oracle below is a deliberately naive, recursive restatement of the row rules (lists
and maps give one row per element, siblings multiply, struct keys in first-seen order per
path); the properties compare ``unnest`` with it on arbitrary JSON-like records.
"""

from __future__ import annotations

import gc
import math
import time
import tracemalloc
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.errors import RowLimitExceededError, UnnestError
from flows.transform.unnest import DEFAULT_MAX_ROWS, unnest

FAROE = {
    "name": {
        "common": "Faroe Islands",
        "official": "Faroe Islands",
        "nativeName": {
            "dan": {"official": "Færøerne", "common": "Færøerne"},
            "fao": {"official": "Føroyar", "common": "Føroyar"},
        },
    },
    "currencies": {
        "DKK": {"name": "Danish krone", "symbol": "kr"},
        "FOK": {"name": "Faroese króna", "symbol": "kr"},
    },
    "population": 48865,
}
ANTARCTICA = {"name": {"official": "Antarctica"}, "currencies": {}, "population": 1000}
FLOW_COLUMNS = {
    "nation_official_name": "name.official",
    "currency_name": "currencies.*.name",
    "population": "population",
}


def rows(frame: pd.DataFrame) -> list[tuple]:
    """The frame's rows as tuples, every missing value as None."""
    return [
        tuple(None if _missing(v) else v for v in row)
        for row in frame.astype(object).itertuples(index=False, name=None)
    ]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def assert_flat(frame: pd.DataFrame) -> None:
    """RangeIndex from 0, and no dict or list (or tuple) in any cell."""
    assert isinstance(frame.index, pd.RangeIndex)
    assert frame.index.start == 0 and frame.index.step == 1
    for name in frame.columns:
        for value in frame[name].tolist():
            assert not isinstance(value, dict | list | tuple), (name, value)


# --- the acceptance example -------------------------------------------------------------------


def test_faroe_islands_gives_one_row_per_currency_with_the_selected_columns_in_order():
    frame = unnest([FAROE], columns=FLOW_COLUMNS)
    assert list(frame.columns) == ["nation_official_name", "currency_name", "population"]
    assert rows(frame) == [
        ("Faroe Islands", "Danish krone", 48865),
        ("Faroe Islands", "Faroese króna", 48865),
    ]
    assert isinstance(frame.index, pd.RangeIndex) and list(frame.index) == [0, 1]
    assert frame["population"].dtype == np.int64


def test_antarctica_without_currencies_keeps_one_row_with_null_currency():
    frame = unnest([ANTARCTICA], columns=FLOW_COLUMNS)
    assert rows(frame) == [("Antarctica", None, 1000)]
    both = unnest([FAROE, ANTARCTICA], columns=FLOW_COLUMNS)
    assert rows(both) == [
        ("Faroe Islands", "Danish krone", 48865),
        ("Faroe Islands", "Faroese króna", 48865),
        ("Antarctica", None, 1000),
    ]
    assert both["population"].dtype == np.int64


def test_currency_wildcard_reads_a_list_of_dicts_and_a_dict_keyed_by_code_alike():
    as_list = {
        "names": {"official": "Faroe Islands"},
        "currencies": [
            {"code": "DKK", "name": "Danish krone", "symbol": "kr"},
            {"code": "FOK", "name": "Faroese króna", "symbol": "kr"},
        ],
        "population": 48865,
    }
    as_map = {
        "names": {"official": "Faroe Islands"},
        "currencies": {"DKK": {"name": "Danish krone"}, "FOK": {"name": "Faroese króna"}},
        "population": 48865,
    }
    columns = {"n": "names.official", "c": "currencies.*.name", "p": "population"}
    expected = [("Faroe Islands", "Danish krone", 48865), ("Faroe Islands", "Faroese króna", 48865)]
    assert rows(unnest([as_list], columns)) == expected
    assert rows(unnest([as_map], columns)) == expected
    assert rows(unnest([as_list, as_map], columns)) == expected + expected


def test_key_segment_selects_the_map_key_or_the_list_position():
    record = {"currencies": {"DKK": {"name": "Danish krone"}, "FOK": {"name": "Faroese króna"}}}
    frame = unnest([record], {"code": "currencies.*~", "name": "currencies.*.name"})
    assert rows(frame) == [("DKK", "Danish krone"), ("FOK", "Faroese króna")]
    listed = {"tld": [".fo", ".dk"]}
    assert rows(unnest([listed], ["tld.*~", "tld.*"])) == [(0, ".fo"), (1, ".dk")]


# --- full unnest: dicts, lists, maps ------------------------------------------------------------


def test_nested_dicts_become_dotted_columns_in_first_seen_order():
    records = [{"a": {"b": 1, "c": {"d": "x"}}, "e": True}, {"a": {"c": {"d": "y", "f": 2.5}}, "g": None}]
    frame = unnest(records)
    assert list(frame.columns) == ["a.b", "a.c.d", "a.c.f", "e", "g"]
    assert rows(frame) == [(1, "x", None, True, None), (None, "y", 2.5, None, None)]


def test_list_of_scalars_gives_one_row_per_element_named_with_a_star():
    frame = unnest([{"id": 1, "tld": [".fo", ".dk"]}, {"id": 2, "tld": [".se"]}])
    assert list(frame.columns) == ["id", "tld.*"]
    assert rows(frame) == [(1, ".fo"), (1, ".dk"), (2, ".se")]


def test_list_of_dicts_gives_one_row_per_dict():
    frame = unnest([{"id": 1, "blocs": [{"acronym": "EU", "name": "European Union"}, {"acronym": "EFTA"}]}])
    assert list(frame.columns) == ["id", "blocs.*.acronym", "blocs.*.name"]
    assert rows(frame) == [(1, "EU", "European Union"), (1, "EFTA", None)]


def test_sibling_lists_multiply_first_one_varying_slowest():
    frame = unnest([{"a": [1, 2], "b": ["x", "y", "z"], "c": 0}])
    assert list(frame.columns) == ["a.*", "b.*", "c"]
    assert rows(frame) == [
        (1, "x", 0), (1, "y", 0), (1, "z", 0),
        (2, "x", 0), (2, "y", 0), (2, "z", 0),
    ]  # fmt: skip


def test_sibling_lists_in_nested_dicts_and_lists_in_lists():
    record = {"p": {"a": [1, 2]}, "q": [{"b": ["x"]}, {"b": ["y", "z"]}]}
    frame = unnest([record])
    assert list(frame.columns) == ["p.a.*", "q.*.b.*"]
    assert rows(frame) == [(1, "x"), (1, "y"), (1, "z"), (2, "x"), (2, "y"), (2, "z")]


def test_empty_lists_and_dicts_keep_the_row_with_nulls():
    records = [
        {"id": 1, "tld": [], "meta": {}, "blocs": [{"x": 1}]},
        {"id": 2, "tld": [".a"], "meta": {"k": "v"}, "blocs": []},
    ]
    frame = unnest(records)
    assert list(frame.columns) == ["id", "tld.*", "meta.k", "blocs.*.x"]
    assert rows(frame) == [(1, None, None, 1), (2, ".a", "v", None)]


def test_only_empty_containers_give_a_row_and_no_columns():
    frame = unnest([{}, {"a": []}, {"b": {}}])
    assert frame.shape == (3, 0)
    assert isinstance(frame.index, pd.RangeIndex)


def test_nulls_are_scalars_at_their_path_and_missing_keys_give_null():
    frame = unnest([{"a": None, "b": 1}, {"b": 2}])
    assert list(frame.columns) == ["a", "b"]
    assert rows(frame) == [(None, 1), (None, 2)]


def test_mixed_types_at_one_path_each_go_to_their_own_column():
    records = [{"v": 5}, {"v": {"x": 1}}, {"v": [7, 8]}, {"v": None}, {}]
    frame = unnest(records)
    assert list(frame.columns) == ["v", "v.x", "v.*"]
    assert rows(frame) == [
        (5, None, None),
        (None, 1, None),
        (None, None, 7),
        (None, None, 8),
        (None, None, None),
        (None, None, None),
    ]


def test_mixed_types_inside_one_list():
    frame = unnest([{"a": [1, {"x": 2}, [3, 4], None, "s"]}])
    assert list(frame.columns) == ["a.*", "a.*.x", "a.*.*"]
    assert rows(frame) == [
        (1, None, None),
        (None, 2, None),
        (None, None, 3),
        (None, None, 4),
        (None, None, None),
        ("s", None, None),
    ]


def test_tuples_and_mappings_count_as_lists_and_dicts():
    from types import MappingProxyType

    frame = unnest([{"a": (1, 2), "m": MappingProxyType({"k": "v"})}])
    assert list(frame.columns) == ["a.*", "m.k"]
    assert rows(frame) == [(1, "v"), (2, "v")]


def test_records_may_be_any_mapping():
    from types import MappingProxyType

    assert rows(unnest([MappingProxyType({"a": 1}), {"a": 2}])) == [(1,), (2,)]


def test_other_objects_are_scalars():
    stamp = pd.Timestamp("2024-01-01")
    frame = unnest([{"when": stamp, "s": {1, 2}}])
    assert frame["when"].iloc[0] == stamp
    assert frame["s"].iloc[0] == {1, 2}


def test_row_order_is_record_order_then_explosion_order():
    records = [{"id": i, "xs": list(range(i))} for i in range(4)]
    frame = unnest(records)
    assert rows(frame) == [(0, None), (1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]


# --- data-keyed maps ------------------------------------------------------------------------------


COUNTRIES = [
    {"cca3": "FRO", "currencies": {"DKK": {"name": "Danish krone"}, "FOK": {"name": "Faroese króna"}},
     "flags": {"png": "fro.png", "svg": "fro.svg"}},
    {"cca3": "FRA", "currencies": {"EUR": {"name": "Euro"}}, "flags": {"png": "fra.png", "svg": "fra.svg"}},
    {"cca3": "USA", "currencies": {"USD": {"name": "United States dollar"}},
     "flags": {"png": "usa.png", "svg": "usa.svg", "alt": "Stars"}},
    {"cca3": "ATA", "currencies": {}, "flags": {"png": "ata.png", "svg": "ata.svg"}},
]  # fmt: skip


def test_data_keyed_maps_are_detected_and_their_key_kept():
    frame = unnest(COUNTRIES)
    assert list(frame.columns) == [
        "cca3", "currencies.*~", "currencies.*.name", "flags.png", "flags.svg", "flags.alt",
    ]  # fmt: skip
    assert rows(frame[["cca3", "currencies.*~", "currencies.*.name"]]) == [
        ("FRO", "DKK", "Danish krone"),
        ("FRO", "FOK", "Faroese króna"),
        ("FRA", "EUR", "Euro"),
        ("USA", "USD", "United States dollar"),
        ("ATA", None, None),
    ]


def test_maps_false_turns_detection_off_and_true_makes_every_dict_a_map():
    assert "currencies.EUR.name" in unnest(COUNTRIES, maps=False).columns
    frame = unnest([{"a": {"x": 1, "y": 2}}], maps=True)
    assert rows(frame) == [("x", 1), ("y", 2)]


def test_one_record_alone_shows_no_variation_so_its_dicts_stay_plain():
    assert "currencies.DKK.name" in unnest([FAROE]).columns


def test_a_key_present_in_more_than_half_of_the_dicts_means_a_plain_dict():
    records = [{"d": {"a": 1, "x": 1}}, {"d": {"a": 2, "y": 2}}, {"d": {"a": 3}}]
    assert list(unnest(records).columns) == ["d.a", "d.x", "d.y"]
    varied = [{"d": {"a": 1}}, {"d": {"b": 2}}, {"d": {"c": 3, "a": 4}}, {"d": {"e": 5}}]
    assert list(unnest(varied).columns) == ["d.*~", "d.*"]


def test_map_decision_uses_the_first_batch_where_the_path_holds_a_dict():
    records = [{"id": 0}, {"id": 1}, {"id": 2, "c": {"DKK": 1}}, {"id": 3, "c": {"EUR": 2}}]
    frame = unnest(records, batch_size=2)
    assert list(frame.columns) == ["id", "c.*~", "c.*"]
    # Decided on one dict (batch of 1): a plain dict, kept so for the rest of the call.
    assert "c.DKK" in unnest(records, batch_size=1).columns


# --- selection --------------------------------------------------------------------------------


def test_selected_columns_in_mapping_order_and_renamed():
    frame = unnest([FAROE], {"pop": "population", "official": "name.official"})
    assert list(frame.columns) == ["pop", "official"]
    assert rows(frame) == [(48865, "Faroe Islands")]


def test_columns_as_a_list_of_paths_are_named_by_themselves():
    frame = unnest([FAROE], ["population", "currencies.*~"])
    assert list(frame.columns) == ["population", "currencies.*~"]
    assert rows(frame) == [(48865, "DKK"), (48865, "FOK")]


def test_two_names_for_one_path_both_get_it():
    frame = unnest([FAROE], {"a": "population", "b": "population"})
    assert rows(frame) == [(48865, 48865)]


def test_unselected_branches_are_not_walked_and_do_not_multiply_rows():
    class Untouchable(list):
        def __iter__(self):
            raise AssertionError("walked an unselected branch")

        def __len__(self):
            raise AssertionError("walked an unselected branch")

    record = {
        "name": {"official": "X", "nativeName": Untouchable()},
        "huge": list(range(100_000)),
        "population": 1,
    }
    frame = unnest([record], {"n": "name.official", "p": "population"}, max_rows=1)
    assert rows(frame) == [("X", 1)]


def test_selected_path_found_nowhere_gives_an_all_null_column():
    frame = unnest([{"a": 1}, {"a": 2}], {"a": "a", "missing": "b.c", "codes": "d.*~"})
    assert rows(frame) == [(1, None, None), (2, None, None)]


def test_selected_path_holding_a_dict_or_list_gives_null_there():
    records = [{"a": 1}, {"a": {"x": 1}}, {"a": [1, 2]}]
    frame = unnest(records, ["a"])
    assert rows(frame) == [(1,), (None,), (None,)]


def test_selected_key_segment_applied_to_a_list_gives_null():
    frame = unnest([{"c": [{"name": "Euro"}]}], ["c.name"])
    assert rows(frame) == [(None,)]


def test_selected_path_and_its_parent_together():
    frame = unnest([{"a": {"b": 1}}, {"a": 5}], ["a", "a.b"])
    assert rows(frame) == [(None, 1), (5, None)]


def test_sibling_selected_lists_multiply_and_missing_list_keeps_the_row():
    records = [{"a": [1, 2], "b": ["x"]}, {"a": [3]}, {"b": []}]
    frame = unnest(records, ["a.*", "b.*"])
    assert rows(frame) == [(1, "x"), (2, "x"), (3, None), (None, None)]


def test_wildcard_on_the_record_itself_reads_it_as_a_map():
    frame = unnest([{"x": 1, "y": 2}], ["*~", "*"])
    assert rows(frame) == [("x", 1), ("y", 2)]


def test_custom_separator():
    frame = unnest([{"a.b": {"c": 1}}], sep="/")
    assert list(frame.columns) == ["a.b/c"]
    assert rows(unnest([{"a.b": {"c": 1}}], ["a.b/c"], sep="/")) == [(1,)]


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"a": 1}, 5], "record 1 is a int, expected a dict"),
        ([{"a": 1}, {"b": 2}, ["x"]], "record 2 is a list, expected a dict"),
        ([None], "record 0 is a NoneType, expected a dict"),
        ({"a": 1}, "got a single dict; wrap one record in a list"),
        ("abc", "got a single str"),
        (5, "records must be an iterable of dicts, got int"),
    ],
)
def test_non_dict_records_are_refused_naming_the_record(records, message):
    with pytest.raises(UnnestError, match=message):
        unnest(records)


def test_non_dict_record_in_a_later_batch_is_named_by_its_index_in_the_input():
    records = [{"a": i} for i in range(5)] + [[1]]
    with pytest.raises(UnnestError, match="record 5 is a list"):
        unnest(records, batch_size=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"columns": {"x": "a..b"}}, "empty segment"),
        ({"columns": {"x": ""}}, "empty segment"),
        ({"columns": {"x": "a.*~.b"}}, "'\\*~' may only end a path"),
        ({"columns": {"x": 5}}, "is not a string"),
        ({"columns": {1: "a"}}, "column names must be strings"),
        ({"columns": "a.b"}, "not the string"),
        ({"columns": ["a", "a"]}, "lists the path 'a' twice"),
        ({"columns": {"x": "a"}, "maps": True}, "maps= applies only to a full unnest"),
        ({"maps": {"a": True}}, "maps must be True, False or None"),
        ({"sep": ""}, "sep must be"),
        ({"sep": "*"}, "sep must be"),
        ({"max_rows": -1}, "max_rows must be"),
        ({"max_rows": 1.5}, "max_rows must be"),
        ({"batch_size": 0}, "batch_size must be"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(UnnestError, match=message):
        unnest([{"a": {"b": 1}}], **kwargs)


def test_two_paths_flattening_to_one_name_are_refused_with_advice():
    with pytest.raises(UnnestError, match=r"column name 'a\.b'.*pass a sep="):
        unnest([{"a.b": 1, "a": {"b": 2}}])
    assert list(unnest([{"a.b": 1, "a": {"b": 2}}], sep="/").columns) == ["a.b", "a/b"]


def test_error_messages_are_one_line():
    for call in (lambda: unnest([1]), lambda: unnest([{"a": [1, 2]}], max_rows=1)):
        with pytest.raises(UnnestError) as info:
            call()
        assert "\n" not in str(info.value)


# --- the row limit ------------------------------------------------------------------------------


def test_row_limit_refuses_an_astronomical_product_fast_and_without_allocating():
    record = {f"list{i}": list(range(10)) for i in range(20)}  # 10**20 rows
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(RowLimitExceededError) as info:
            unnest([record])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 5
    assert peak < 5 * 2**20
    message = str(info.value)
    assert "100,000,000,000,000,000,000 rows" in message
    assert f"max_rows={DEFAULT_MAX_ROWS:,}" in message
    assert "select fewer list/map paths with columns= or raise max_rows" in message


def test_row_limit_counts_across_records_and_batches():
    records = [{"a": [1, 2]} for _ in range(3)]
    assert len(unnest(records, max_rows=6, batch_size=1)) == 6
    with pytest.raises(RowLimitExceededError, match="at least 6 rows, more than max_rows=5"):
        unnest(records, max_rows=5, batch_size=1)
    with pytest.raises(RowLimitExceededError, match="at least 6 rows, more than max_rows=5"):
        unnest(records, max_rows=5)


def test_row_limit_applies_to_selected_lists_only():
    record = {f"list{i}": list(range(10)) for i in range(20)}
    frame = unnest([record], ["list0.*", "list1.*"], max_rows=100)
    assert len(frame) == 100


# --- depth and streaming --------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [50, 1000])
def test_deep_nested_dicts_do_not_recurse(depth):
    record: dict = {"leaf": 1}
    for i in range(depth):
        record = {f"k{i % 3}": record, "n": i}
    frame = unnest([record, record])
    assert len(frame) == 2
    leaf = [name for name in frame.columns if name.endswith(".leaf")]
    assert len(leaf) == 1 and leaf[0].count(".") == depth
    assert frame[leaf[0]].tolist() == [1, 1]


@pytest.mark.parametrize("depth", [50, 1000])
def test_deep_nested_lists_do_not_recurse(depth):
    value: Any = ["x", "y"]
    for _ in range(depth):
        value = [value, {"z": 1}]
    frame = unnest([{"deep": value}])
    deepest = "deep" + ".*" * (depth + 1)
    assert frame[deepest].dropna().tolist() == ["x", "y"]
    assert len(frame) == depth + 2
    # Selected, '*' also reads the innermost {"z": 1} as a map: its value is at that depth too.
    assert rows(unnest([{"deep": value}], [deepest])) == [("x",), ("y",), (1,)] + [(None,)] * (depth - 1)


def test_records_are_streamed_in_batches_not_held():
    class Tracked(list):
        pass

    alive: set[int] = set()
    made = 0

    def records():
        nonlocal made
        for i in range(20):
            gc.collect()
            assert max(alive, default=-1) - min(alive, default=0) < 2 * 5, sorted(alive)
            value = Tracked([i])
            alive.add(i)
            weakref.finalize(value, alive.discard, i)
            made += 1
            yield {"i": i, "v": value}

    frame = unnest(records(), batch_size=5)
    assert made == 20
    assert frame["v.*"].tolist() == list(range(20))


def test_generator_input_works_like_a_list():
    records = [FAROE, ANTARCTICA]
    pd.testing.assert_frame_equal(unnest(iter(records)), unnest(records))


def test_no_records_give_an_empty_frame():
    assert unnest([]).shape == (0, 0)
    frame = unnest([], FLOW_COLUMNS)
    assert list(frame.columns) == list(FLOW_COLUMNS)
    assert len(frame) == 0 and isinstance(frame.index, pd.RangeIndex)


# --- dtypes -----------------------------------------------------------------------------------


def test_dtypes_follow_pandas_inference_of_the_values():
    records = [
        {"i": 1, "f": 1.5, "b": True, "s": "a", "mixed": 1, "none": None, "ni": 1, "nb": True, "ns": "x"},
        {"i": 2, "f": 2, "b": False, "s": "b", "mixed": "x", "none": None},
    ]
    frame = unnest(records)
    dtypes = {name: str(dtype) for name, dtype in frame.dtypes.items()}
    assert dtypes == {
        "i": "int64",
        "f": "float64",
        "b": "bool",
        "s": "str",
        "mixed": "object",
        "none": "object",
        "ni": "float64",
        "nb": "object",
        "ns": "str",
    }


def test_ints_with_nulls_that_a_float_cannot_hold_stay_exact():
    big = 2**53 + 1  # its float is exactly 2**53: the check must include the bound
    frame = unnest([{"x": big}, {"y": 1}])
    assert frame["x"].dtype == object
    assert frame["x"].tolist()[0] == big
    small = unnest([{"x": 5}, {"y": 1}])
    assert small["x"].dtype == np.float64


def test_dtypes_are_the_same_whatever_the_batching():
    records = [{"a": i, "b": None if i % 3 else "s", "c": [i, i + 0.5]} for i in range(10)]
    whole = unnest(records)
    for size in (1, 2, 3, 7):
        pd.testing.assert_frame_equal(unnest(records, batch_size=size), whole)


# --- properties against the oracle ------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "d"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False),
    st.text(max_size=3),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(KEYS, inner, max_size=3),
    ),
    max_leaves=8,
)
RECORDS = st.lists(st.dictionaries(KEYS, VALUES, max_size=4), max_size=5)


def _oracle(records: list[dict], maps: bool) -> tuple[list[dict], dict]:
    """Rows as {path tuple: value}, recursively; struct keys in first-seen order per path."""
    order: dict[tuple, dict] = {}

    def learn(value: Any, path: tuple, top: bool) -> None:
        if isinstance(value, dict):
            if top or not maps:
                keys = order.setdefault(path, {})
                for key, item in value.items():
                    keys.setdefault(key, None)
                    learn(item, (*path, key), False)
            else:
                for item in value.values():
                    learn(item, (*path, "*"), False)
        elif isinstance(value, list):
            for item in value:
                learn(item, (*path, "*"), False)

    def expand(value: Any, path: tuple, top: bool) -> list[dict]:
        if isinstance(value, dict) and (top or not maps):
            out: list[dict] = [{}]
            for key in order[path]:
                if key in value:
                    below = expand(value[key], (*path, key), False)
                    out = [{**left, **right} for left in out for right in below]
            return out
        if isinstance(value, dict | list):
            entries = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
            out = []
            for key, item in entries:
                for row in expand(item, (*path, "*"), False):
                    out.append({(*path, "*~"): key, **row} if isinstance(value, dict) else row)
            return out or [{}]
        return [{path: value}]

    for record in records:
        learn(record, (), True)
    out = [row for record in records for row in expand(record, (), True)]
    return out, order


def _expected_series(values: list) -> pd.Series:
    """pandas' inference, except that ints a float64 cannot hold keep the column object."""
    series = pd.Series(values)
    if series.dtype == np.float64 and any(type(v) is int and float(v) != v for v in values):
        return pd.Series(values, dtype=object)
    return series


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=RECORDS, maps=st.booleans(), batch_size=st.sampled_from([1, 2, 1000]))
def test_property_matches_the_oracle_row_for_row(records, maps, batch_size):
    frame = unnest(records, maps=maps, batch_size=batch_size)
    expected, _ = _oracle(records, maps)
    paths = {".".join(map(str, path)) for row in expected for path in row}
    assert set(frame.columns) == paths
    assert len(frame) == len(expected)
    assert_flat(frame)
    for name in frame.columns:
        want = _expected_series([row.get(tuple(name.split(".")), None) for row in expected])
        pd.testing.assert_series_equal(
            frame[name].reset_index(drop=True), want, check_names=False, check_index_type=False
        )


def _leaves(value: Any, path: tuple, out: list) -> None:
    stack = [(value, path)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            stack.extend((item, (*path, key)) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((item, (*path, "*")) for item in value)
        else:
            out.append((path, value))


def _matches(column: str, path: tuple) -> bool:
    """Whether a column name is this leaf's path, some dict keys read as a map level (``*``)."""
    parts = column.split(".")
    return len(parts) == len(path) and all(part in (segment, "*") for part, segment in zip(parts, path, strict=True))


@settings(max_examples=120, deadline=None)
@given(records=RECORDS)
def test_property_every_leaf_appears_in_the_column_of_its_path(records):
    frame = unnest(records)
    assert_flat(frame)
    leaves: list = []
    for record in records:
        _leaves(record, (), leaves)
    columns = {name: frame[name].astype(object).tolist() for name in frame.columns}
    for path, value in leaves:
        cells = [c for name in columns if _matches(name, path) for c in columns[name]]
        assert cells, (path, list(columns))
        if value is None:
            assert any(_missing(c) for c in cells)
        else:
            assert any(c == value and type(c) in (type(value), float) for c in cells), (path, value)


@settings(max_examples=100, deadline=None)
@given(records=RECORDS)
def test_property_selecting_a_column_of_the_full_unnest_gives_its_values(records):
    full = unnest(records)
    for name in full.columns:
        alone = unnest(records, [name])
        want = [v for v in full[name].astype(object).tolist() if not _missing(v)]
        got = [v for v in alone[name].astype(object).tolist() if not _missing(v)]
        if "*" in name:
            # A selected '*' also reads a dict held where the full unnest saw plain dicts,
            # and '*~' also gives list positions: a selection can only find more.
            assert all(any(w == g for g in got) for w in want), name
        else:
            assert len(alone) <= len(full)
            assert {repr(v) for v in got} == {repr(v) for v in want}, name


def test_a_path_holding_dicts_in_one_batch_and_other_kinds_in_the_next():
    records = [
        {"s": {"x": 1}, "m": {"K1": 1}},
        {"s": {"x": 2}, "m": {"K2": 2}},
        {"s": "abc", "m": "abc"},
        {"s": [3], "m": [4]},
        {"s": 5, "m": {"K3": 5}},
        {"s": {"x": 6, "y": 7}, "m": None},
        {"s": {"y": 8, "x": 9}, "m": {}},
    ]
    frame = unnest(records, batch_size=2)
    # First seen: s.* (third record, second batch) before s.y (sixth record, third batch).
    assert list(frame.columns) == ["s", "s.x", "s.*", "s.y", "m", "m.*~", "m.*"]
    assert rows(frame) == [
        (None, 1, None, None, None, "K1", 1),
        (None, 2, None, None, None, "K2", 2),
        ("abc", None, None, None, "abc", None, None),
        (None, None, 3, None, None, None, 4),
        (5, None, None, None, None, "K3", 5),
        (None, 6, None, 7, None, None, None),
        (None, 9, None, 8, None, None, None),
    ]
    pd.testing.assert_frame_equal(frame, unnest(records)[list(frame.columns)])


def test_string_columns_equal_pandas_own_string_columns():
    records = [{"s": f"v{i}", "t": [f"a{i}", f"b{i}"]} for i in range(5)]
    frame = unnest(records, batch_size=2)
    pd.testing.assert_series_equal(frame["s"], pd.Series([f"v{i // 2}" for i in range(10)], name="s"))
    assert frame["t.*"].tolist() == [x for i in range(5) for x in (f"a{i}", f"b{i}")]
    assert frame["s"].dtype == pd.Series(["x"]).dtype
    assert frame["s"].str.upper().iloc[0] == "V0"


@pytest.mark.parametrize("batch_size", [1, 2, 1000])
def test_a_string_column_that_later_gets_other_values_keeps_none_for_its_nulls(batch_size):
    records = [{"a": "x"}, {}, {"a": None}, {"a": float("nan")}, {"a": 1}, {"b": 2}]
    frame = unnest(records, batch_size=batch_size)
    expected = pd.Series(["x", None, None, float("nan"), 1, None], name="a")
    pd.testing.assert_series_equal(frame["a"], expected)
    strings = unnest([*records[:4], {"a": "y"}], batch_size=batch_size)
    pd.testing.assert_series_equal(strings["a"], pd.Series(["x", None, None, float("nan"), "y"], name="a"))


def test_a_huge_int_among_floats_stays_object_as_pandas_infers():
    frame = unnest([{"a": [2**64, 0.0]}])
    assert frame["a.*"].dtype == object
    assert frame["a.*"].tolist() == [2**64, 0.0]


def test_dict_subclasses_are_read_without_running_their_missing_hook():
    from collections import defaultdict

    records = [{"d": {"a": 1, "b": 2}}, {"d": {"a": 3, "b": 4}}]
    odd = defaultdict(int, {"a": 5, "z": 6})  # as many keys as last batch's dicts, one other
    frame = unnest([*records, {"d": odd}], batch_size=2)
    assert dict(odd) == {"a": 5, "z": 6}  # untouched: no "b" added by a lookup
    assert rows(frame) == [(1, 2, None), (3, 4, None), (5, None, 6)]


# --- one column's kind changing from batch to batch -------------------------------------------

MISSING = object()  # the record has no such key


@pytest.mark.parametrize(
    "values",
    [
        [1, 2, 3],
        [1, 2, 3, "x"],
        [1, 2, 3, MISSING],
        [MISSING, 1, 2],
        [1, None, 2],
        [1, 2, 3.5],
        [1.5, 2.5, 3],
        [1.5, MISSING, 2.5],
        [1.5, float("nan"), 2.5],
        [1, 2, 2**70],
        [1, 2**53 + 1, MISSING],
        [2**60, MISSING],
        [1, 2, True],
        [True, True, False],
        [True, False, None],
        [True, False, MISSING],
        [True, "x"],
        [1.5, "x", None],
        ["x", 1.5],
    ],
)
@pytest.mark.parametrize("batch_size", [1, 2, 1000])
def test_a_column_whose_values_change_kind_between_batches_is_what_pandas_infers(values, batch_size):
    records = [{"id": i} if v is MISSING else {"id": i, "a": v} for i, v in enumerate(values)]
    frame = unnest(records, batch_size=batch_size)
    expected = _expected_series([None if v is MISSING else v for v in values])
    pd.testing.assert_series_equal(frame["a"], expected, check_names=False)
    if expected.dtype == object:  # the values themselves: an int stays an int, a bool a bool
        assert [type(v) for v in frame["a"]] == [type(v) for v in expected]


# --- no global state ------------------------------------------------------------------------------


def test_the_garbage_collector_is_left_as_it_is_during_the_call():
    """Prefect runs tasks in threads: a library must not flip process-wide switches."""
    before = (gc.isenabled(), gc.get_threshold(), gc.get_freeze_count())
    seen = []

    def records():
        for i in range(5_000):
            if i % 1_000 == 0:  # read by unnest batch by batch: this runs inside the call
                seen.append((gc.isenabled(), gc.get_threshold(), gc.get_freeze_count()))
            yield {"i": i, "tags": ["a", "b"][: i % 3], "d": {"x": i, "s": str(i)}, "m": {f"k{i % 7}": i}}

    frame = unnest(records())
    assert len(frame) > 5_000
    assert set(seen) == {before}
    assert (gc.isenabled(), gc.get_threshold(), gc.get_freeze_count()) == before


def test_calls_in_several_threads_at_once_give_what_they_give_alone():
    def records(seed: int) -> list[dict]:
        return [
            {
                "id": i,
                "name": {"official": f"n{seed}-{i}", "common": None if i % 5 == 0 else f"c{i}"},
                "tld": [f".{seed}{j}" for j in range(i % 3)],
                "currencies": {f"C{(i + j) % 9}": {"name": f"cur{j}", "rate": j * 0.5} for j in range(i % 3)},
                "population": i * seed if i % 11 else None,
            }
            for i in range(3_000)
        ]

    inputs = [records(seed) for seed in range(1, 5)]
    alone = [unnest(r) for r in inputs] + [unnest(r, FLOW_COLUMNS) for r in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(unnest, inputs * 2, [None] * len(inputs) + [FLOW_COLUMNS] * len(inputs)))
    assert len(together) == len(alone)
    for got, want in zip(together, alone, strict=True):
        pd.testing.assert_frame_equal(got, want)
