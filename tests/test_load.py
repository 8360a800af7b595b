"""flows.load against a real embedded PostgreSQL (fixtures ``pg`` and ``database_url``); no mocks."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import traceback
import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
import psycopg2
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flows.load as load
from flows.errors import (
    ConfigurationError,
    DatabaseUnreachableError,
    InvalidTableNameError,
    LoadError,
    QualityGateError,
)
from flows.load import LoadResult, TableName, content_hash, parse_table_name, replace_table
from tests.conftest import free_port

CANARY = "CANARY-pw-7f3a9Zq"


# --- helpers ----------------------------------------------------------------------


def countries(n: int, seed: int = 0, prefix: str = "Country") -> pd.DataFrame:
    """A countries-shaped frame: str, str (with a NULL), int64."""
    rng = np.random.default_rng(seed)
    currencies = np.array(["Euro", "Danish krone", "Føroyar króna", "Åland mark", None], dtype=object)
    return pd.DataFrame(
        {
            "nation_official_name": pd.array([f"{prefix} {seed}-{i}" for i in range(n)], dtype="str"),
            "currency_name": pd.array(currencies[rng.integers(0, len(currencies), n)].tolist(), dtype="str"),
            "population": rng.integers(0, 10**9, n).astype("int64"),
        }
    )


def as_tuples(df: pd.DataFrame) -> list[tuple]:
    """Rows as Python tuples with None for missing values (what psycopg2 returns)."""
    out = df.astype(object).where(df.notna(), None)
    return [tuple(None if pd.isna(v) else v for v in row) for row in out.itertuples(index=False)]


def read_table(engine: sa.Engine, table: str = "countries") -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY ctid").all()]


def relation_state(engine: sa.Engine, table: str = "countries") -> tuple:
    """(oid, relfilenode, catalog-row xmin, comment, row xmins) — all change if the table is rewritten."""
    with engine.connect() as conn:
        rel = conn.execute(
            sa.text(
                "SELECT oid, relfilenode, xmin::text, obj_description(oid, 'pg_class') FROM pg_class"
                " WHERE oid = to_regclass(:t)"
            ),
            {"t": table},
        ).one()
        xmins = conn.exec_driver_sql(f"SELECT array_agg(xmin::text ORDER BY ctid) FROM {table}").scalar_one()
    return (*rel, tuple(xmins))


def relnames(engine: sa.Engine, schema: str = "public") -> list[str]:
    with engine.connect() as conn:
        return sorted(
            conn.execute(
                sa.text(
                    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = :s AND c.relkind = 'r'"
                ),
                {"s": schema},
            ).scalars()
        )


def column_types(engine: sa.Engine, table: str, schema: str = "public") -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT column_name, data_type FROM information_schema.columns"
                    " WHERE table_schema = :s AND table_name = :t ORDER BY ordinal_position"
                ),
                {"s": schema, "t": table},
            )
        ]


def dbapi_connect(pg, database_url: str):
    """An autocommit psycopg2 connection (use with ``contextlib.closing``: psycopg2's own
    ``with conn`` opens a transaction, which would hold locks until the block ends)."""
    conn = psycopg2.connect(host=pg.socket_dir, dbname=sa.make_url(database_url).database, user=pg.user)
    conn.autocommit = True
    return conn


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(database_url)
    try:
        yield eng
    finally:
        eng.dispose()


# --- first load, replace, unchanged ------------------------------------------------


def test_first_load_creates_table_with_types_and_exact_contents(engine):
    df = countries(25)

    result = replace_table(engine, df, "countries")

    assert result == LoadResult(
        table="public.countries",
        rows=25,
        previous_rows=None,
        changed=True,
        content_hash=content_hash(df),
        seconds=result.seconds,
    )
    assert column_types(engine, "countries") == [
        ("nation_official_name", "text"),
        ("currency_name", "text"),
        ("population", "bigint"),
    ]
    assert read_table(engine) == as_tuples(df)
    assert any(row[1] is None for row in read_table(engine))  # the NULL currency survived as NULL


def test_replace_with_different_data_leaves_exact_contents_and_no_leftovers(engine):
    replace_table(engine, countries(20, seed=1), "countries")
    new = countries(15, seed=2, prefix="Nation")

    result = replace_table(engine, new, "countries")

    assert (result.changed, result.rows, result.previous_rows) == (True, 15, 20)
    assert read_table(engine) == as_tuples(new)
    assert relnames(engine) == ["countries"]  # no staging or old table left behind
    with engine.connect() as conn:
        comment = conn.exec_driver_sql(
            "SELECT obj_description('countries'::regclass, 'pg_class')"
        ).scalar_one()
    digest = content_hash(new)  # 15 rows: the head digest covers them all
    assert comment == (
        f"countries-pipeline content-sha256={digest} rows=15 head-sha256={digest} head-rows=4096"
    )


def test_unchanged_data_is_not_rewritten(engine):
    df = countries(30)
    first = replace_table(engine, df, "countries")
    before = relation_state(engine)

    again = replace_table(engine, df.copy(), "countries")

    assert again.changed is False
    assert again.content_hash == first.content_hash
    assert (again.rows, again.previous_rows) == (30, 30)
    assert relation_state(engine) == before  # same relation, same file, same catalog row, same row versions


def test_a_changed_value_is_detected_and_loaded(engine):
    df = countries(30)
    replace_table(engine, df, "countries")
    before = relation_state(engine)
    changed = df.copy()
    changed.loc[29, "population"] += 1

    result = replace_table(engine, changed, "countries")

    assert result.changed is True
    assert relation_state(engine)[0] != before[0]
    assert read_table(engine)[29][2] == int(df.loc[29, "population"]) + 1


def test_zero_rows_first_load_creates_an_empty_table(engine):
    result = replace_table(engine, countries(0), "countries")

    assert (result.rows, result.changed) == (0, True)
    assert read_table(engine) == []
    assert [t for _, t in column_types(engine, "countries")] == ["text", "text", "bigint"]


# --- values round-trip -------------------------------------------------------------

AWKWARD = [
    None,
    "",
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "back\\slash",
    "\\N",
    "\\.",
    'double "quotes"',
    "single 'quotes'",
    "Åland",
    "Føroyar",
    "日本国",
    "🇫🇴 flag",
    "None",
    "nan",
    "NULL",
    "  spaces  ",
    "semi; DROP TABLE countries; --",
]


def test_awkward_text_values_round_trip_exactly(engine):
    n = len(AWKWARD)
    df = pd.DataFrame(
        {
            "nation_official_name": pd.array(AWKWARD, dtype=object),
            "currency_name": pd.array(list(reversed(AWKWARD)), dtype="str"),
            "population": np.arange(n, dtype="int64"),
        }
    )

    replace_table(engine, df, "countries")

    rows = read_table(engine)
    assert [r[0] for r in rows] == AWKWARD  # None stays NULL, "" stays "", "\\N" stays the text \N
    assert [r[1] for r in rows] == list(reversed(AWKWARD))
    assert [r[2] for r in rows] == list(range(n))


def test_other_dtypes_get_default_types_and_round_trip(engine):
    df = pd.DataFrame(
        {
            "f": [1.5, np.nan, float("inf"), -0.0, 1e-300, 0.1],
            "b": [True, False, True, True, False, False],
            "nb": pd.array([True, None, False, True, None, False], dtype="boolean"),
            "i": pd.array([1, None, -(2**63), 2**63 - 1, 0, 7], dtype="Int64"),
            "ts": pd.to_datetime(
                [
                    "2024-01-02 03:04:05.123456",
                    None,
                    "1970-01-01",
                    "2038-01-19",
                    "2000-02-29",
                    "2024-06-30 23:59",
                ],
                format="ISO8601",
            ),
            "tz": pd.to_datetime(["2024-01-02 03:04:05+02:00"] * 5 + [None], utc=True).tz_convert(
                "Europe/Helsinki"
            ),
        }
    )

    replace_table(engine, df, "mixed")

    assert [t for _, t in column_types(engine, "mixed")] == [
        "double precision",
        "boolean",
        "boolean",
        "bigint",
        "timestamp with time zone",
        "timestamp with time zone",
    ]
    rows = read_table(engine, "mixed")
    assert [r[0] for r in rows] == [1.5, None, float("inf"), -0.0, 1e-300, 0.1]
    assert str(rows[3][0]) == "-0.0"
    assert [r[1] for r in rows] == [True, False, True, True, False, False]
    assert [r[2] for r in rows] == [True, None, False, True, None, False]
    assert [r[3] for r in rows] == [1, None, -(2**63), 2**63 - 1, 0, 7]
    expected_ts = [None if pd.isna(t) else t.tz_localize("UTC").to_pydatetime() for t in df["ts"]]
    assert [r[4] for r in rows] == expected_ts  # naive datetimes are taken as UTC
    assert [r[5] for r in rows] == [None if pd.isna(t) else t.to_pydatetime() for t in df["tz"]]


def test_column_types_override_defaults(engine):
    df = countries(5)

    types = {"population": "numeric(12, 0)", "currency_name": "varchar(40)"}

    replace_table(engine, df, "countries", column_types=types)

    assert column_types(engine, "countries") == [
        ("nation_official_name", "text"),
        ("currency_name", "character varying"),
        ("population", "numeric"),
    ]
    assert [int(r[2]) for r in read_table(engine)] == df["population"].tolist()


@pytest.mark.parametrize(
    ("types", "needle"),
    [
        ({"population": "bigint); DROP TABLE x; --"}, "not a plain SQL type"),
        ({"population": "text, extra text"}, "not a plain SQL type"),
        ({"nope": "text"}, "does not have"),
    ],
)
def test_bad_column_types_are_refused_before_touching_the_database(types, needle):
    nowhere = sa.create_engine(f"postgresql+psycopg2://u:{CANARY}@/db?host=/nonexistent-socket-dir")
    with pytest.raises(ConfigurationError, match=r"column_types") as err:
        replace_table(nowhere, countries(3), "countries", column_types=types)
    assert needle in str(err.value)
    assert not isinstance(err.value, LoadError)


def test_awkward_column_names_are_quoted(engine):
    names = ["has space", 'quo"te', "colon:x", "per%cent", "Upper"]
    df = pd.DataFrame([["a", "b", "c", "d", 1]], columns=names)

    replace_table(engine, df, "odd")

    assert [c for c, _ in column_types(engine, "odd")] == names
    assert read_table(engine, "odd") == [("a", "b", "c", "d", 1)]


TEXT_VALUES = st.lists(
    st.one_of(
        st.none(),
        st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00")),
    ),
    min_size=1,
    max_size=12,
)


def test_any_text_round_trips_property(engine):
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(TEXT_VALUES)
    def check(values: list[str | None]) -> None:
        df = pd.DataFrame({"v": pd.array(values, dtype=object), "k": np.arange(len(values), dtype="int64")})
        replace_table(engine, df, "prop", force=True)
        assert read_table(engine, "prop") == [(v, k) for k, v in enumerate(values)]

    check()


def test_text_with_nul_character_is_refused_and_old_table_kept(engine):
    old = countries(10)
    replace_table(engine, old, "countries")
    bad = countries(10, seed=5)
    bad.loc[7, "nation_official_name"] = "nul\x00inside"

    with pytest.raises(LoadError, match=r'column "nation_official_name" contains a NUL character'):
        replace_table(engine, bad, "countries")

    assert read_table(engine) == as_tuples(old)


# --- content hash -------------------------------------------------------------------


def test_content_hash_is_stable_and_ignores_the_index():
    df = countries(50)
    shuffled_index = df.set_index(pd.Index(np.arange(50)[::-1] * 3))
    assert content_hash(df) == content_hash(df.copy()) == content_hash(shuffled_index)
    assert len(content_hash(df)) == 64


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda d: d.assign(population=d["population"] + 1), id="value"),
        pytest.param(lambda d: d.iloc[::-1].reset_index(drop=True), id="row order"),
        pytest.param(lambda d: d.rename(columns={"population": "pop"}), id="column name"),
        pytest.param(lambda d: d[["currency_name", "nation_official_name", "population"]], id="column order"),
        pytest.param(lambda d: d.assign(population=d["population"].astype("float64")), id="sql type"),
        pytest.param(lambda d: d.iloc[:-1], id="row count"),
    ],
)
def test_content_hash_changes_with_content(mutate):
    df = countries(20)
    assert content_hash(mutate(df.copy())) != content_hash(df)


@pytest.mark.parametrize("text", ["", "None", "nan", "\\N", "NULL"])
def test_content_hash_tells_null_from_any_string(text):
    with_null = pd.DataFrame({"a": pd.array([None, "x"], dtype=object)})
    with_text = pd.DataFrame({"a": pd.array([text, "x"], dtype=object)})
    assert content_hash(with_null) != content_hash(with_text)


def test_content_hash_follows_column_types():
    df = countries(5)
    assert content_hash(df, {"population": "numeric"}) != content_hash(df)
    assert content_hash(df, {"population": "bigint"}) == content_hash(df)


# --- table names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected", "sql"),
    [
        ("countries", TableName(None, "countries"), '"countries"'),
        ("northern_europe", TableName(None, "northern_europe"), '"northern_europe"'),
        ("analytics.countries", TableName("analytics", "countries"), '"analytics"."countries"'),
        ("_t$1", TableName(None, "_t$1"), '"_t$1"'),
        ("Analytics.Countries", TableName("analytics", "countries"), '"analytics"."countries"'),
        ("a" * 63, TableName(None, "a" * 63), '"' + "a" * 63 + '"'),
    ],
)
def test_valid_table_names(name, expected, sql):
    parsed = parse_table_name(name)
    assert parsed == expected
    assert parsed.sql == sql
    assert str(parsed) == name.lower()


@pytest.mark.parametrize(
    "name",
    [
        "x; drop table y",
        "a.b.c",
        "",
        "1abc",
        'quo"te',
        "a" * 64,
        "has space",
        "s.",
        ".t",
        "tab\tle",
        "é",
        "a-b",
    ],
)
def test_invalid_table_names_are_refused_before_touching_the_database(name):
    nowhere = sa.create_engine(f"postgresql+psycopg2://u:{CANARY}@/db?host=/nonexistent-socket-dir")
    with pytest.raises(InvalidTableNameError) as err:
        replace_table(nowhere, countries(2), name)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("invalid table name ")
    assert "letters, digits and underscores" in message
    with pytest.raises(InvalidTableNameError):
        parse_table_name(name)


def test_invalid_table_name_message_names_the_problem():
    with pytest.raises(InvalidTableNameError) as err:
        parse_table_name("x; drop table y")
    assert str(err.value) == (
        'invalid table name "x; drop table y": "x; drop table y" is not a plain identifier; '
        "use letters, digits and underscores, optionally schema-qualified like analytics.countries"
    )


def test_schema_qualified_load_and_case_folding(engine):
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA analytics")
    df = countries(4)

    result = replace_table(engine, df, "Analytics.Countries")

    assert result.table == "analytics.countries"
    assert relnames(engine, "analytics") == ["countries"]
    assert relnames(engine, "public") == []
    assert read_table(engine, "analytics.countries") == as_tuples(df)


def test_missing_schema_is_refused(engine):
    expected = r'schema "nope" does not exist: create it first \(CREATE SCHEMA "nope"\)'
    with pytest.raises(LoadError, match=expected):
        replace_table(engine, countries(3), "nope.countries")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT to_regnamespace('nope')").scalar_one() is None


def test_a_view_of_that_name_is_not_replaced(engine):
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE VIEW countries AS SELECT 1 AS x")
    with pytest.raises(LoadError, match=r"not a plain table"):
        replace_table(engine, countries(3), "countries")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT * FROM countries").all() == [(1,)]


# --- zero downtime ---------------------------------------------------------------------

SIGNATURE_SQL = (
    "SELECT count(*), md5(coalesce(string_agg(concat_ws('|', nation_official_name,"
    " coalesce(currency_name, '<null>'), population::text), E'\\n' ORDER BY nation_official_name), ''))"
    " FROM countries"
)


def test_readers_see_old_or_new_table_never_an_error_or_a_partial_one(engine, pg, database_url):
    dataset_a = countries(400, seed=1, prefix="Alpha")
    dataset_b = countries(650, seed=2, prefix="Beta")
    signatures = {}
    with contextlib.closing(dbapi_connect(pg, database_url)) as probe, probe.cursor() as cur:
        for label, df in (("a", dataset_a), ("b", dataset_b)):
            replace_table(engine, df, "countries")
            assert read_table(engine) == as_tuples(df)
            cur.execute(SIGNATURE_SQL)
            signatures[cur.fetchone()] = label
    assert len(signatures) == 2

    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[list[tuple]] = [[] for _ in range(4)]

    def reader(slot: int) -> None:
        try:
            conn = dbapi_connect(pg, database_url)
        except psycopg2.Error as exc:
            errors.append(exc)
            return
        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.execute(SIGNATURE_SQL)
                    seen[slot].append(cur.fetchone())
        except Exception as exc:  # noqa: BLE001 - every reader failure is recorded and fails the test
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    results = []
    try:
        for i in range(50):
            dataset = dataset_a if i % 2 == 0 else dataset_b
            results.append(replace_table(engine, dataset, "countries", force=True))
    finally:
        stop.set()
        for t in threads:
            t.join()

    assert errors == []
    assert all(r.changed for r in results)  # 50 real swaps
    reads = [sig for slot in seen for sig in slot]
    assert set(reads) <= set(signatures)  # every read saw one whole dataset, never a partial or empty one
    assert set(reads) == set(signatures)  # and the readers did see both
    assert all(len(slot) > 0 for slot in seen)
    assert relnames(engine) == ["countries"]


def test_concurrent_loaders_of_one_table_are_serialised(engine):
    datasets = [countries(100, seed=s) for s in range(4)]
    errors: list[BaseException] = []
    results: list[LoadResult] = []

    def loader(k: int) -> None:
        try:
            for i in range(8):
                results.append(replace_table(engine, datasets[(k + i) % 4], "countries"))
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on
            errors.append(exc)

    threads = [threading.Thread(target=loader, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert len(results) == 24
    assert read_table(engine) in [as_tuples(d) for d in datasets]
    assert relnames(engine) == ["countries"]


def test_privileges_of_the_old_table_are_carried_over(engine):
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" NOLOGIN')
    try:
        replace_table(engine, countries(5, seed=1), "countries")
        with engine.begin() as conn:
            conn.exec_driver_sql(f'GRANT SELECT ON countries TO "{role}"')

        replace_table(engine, countries(5, seed=2), "countries")

        with engine.connect() as conn:
            can = conn.execute(sa.text("SELECT has_table_privilege(:r, 'countries', 'SELECT')"), {"r": role})
            assert can.scalar_one() is True
            can = conn.execute(sa.text("SELECT has_table_privilege(:r, 'countries', 'INSERT')"), {"r": role})
            assert can.scalar_one() is False
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
            conn.exec_driver_sql(f'DROP ROLE "{role}"')


# --- failures leave the old table exactly as it was ---------------------------------------


def test_bad_value_for_the_type_fails_copy_and_keeps_the_old_table(engine):
    old = countries(40, seed=1)
    replace_table(engine, old, "countries")
    before = relation_state(engine)
    bad = countries(40, seed=2)
    bad["population"] = bad["population"].astype(object)
    bad.loc[39, "population"] = "about 5 million"

    with pytest.raises(LoadError) as err:
        replace_table(engine, bad, "countries", column_types={"population": "bigint"})

    message = str(err.value)
    assert 'invalid input syntax for type bigint: "about 5 million"' in message
    assert "line 40, column population" in message
    assert message.endswith("the previous table is unchanged")
    assert "\n" not in message
    assert relation_state(engine) == before
    assert read_table(engine) == as_tuples(old)
    assert relnames(engine) == ["countries"]


def test_connection_killed_during_copy_keeps_the_old_table(engine, pg, database_url, monkeypatch):
    old = countries(30, seed=1)
    replace_table(engine, old, "countries")
    before = relation_state(engine)
    killed: list[int] = []

    def kill_loader_mid_copy(chunks_sent: int) -> None:
        if chunks_sent != 2:  # COPY is running and the server has two chunks of rows
            return
        with contextlib.closing(dbapi_connect(pg, database_url)) as admin, admin.cursor() as cur:
            cur.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND state = 'active' AND query LIKE 'COPY %%' AND pid <> pg_backend_pid()"
            )
            pids = [row[0] for row in cur.fetchall()]
            assert len(pids) == 1
            cur.execute("SELECT pg_terminate_backend(%s, 10000)", (pids[0],))  # waits until it has exited
            assert cur.fetchone()[0] is True
            killed.append(pids[0])

    monkeypatch.setattr(load, "_COPY_CHUNK_ROWS", 5)
    monkeypatch.setattr(load, "_copy_read_hook", kill_loader_mid_copy)

    with pytest.raises(LoadError) as err:
        replace_table(engine, countries(50, seed=2), "countries")

    assert len(killed) == 1
    message = str(err.value)
    assert message.startswith("loading public.countries failed: ")
    assert "terminat" in message or "closed" in message
    assert message.endswith("the previous table is unchanged")
    assert relation_state(engine) == before
    assert read_table(engine) == as_tuples(old)
    assert relnames(engine) == ["countries"]

    monkeypatch.setattr(load, "_copy_read_hook", None)
    new = countries(50, seed=3)
    # the engine recovered: the dead connection was discarded, not handed out again
    assert replace_table(engine, new, "countries").changed
    assert read_table(engine) == as_tuples(new)


def test_dependent_view_makes_the_swap_fail_cleanly(engine):
    old = countries(10, seed=1)
    replace_table(engine, old, "countries")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE VIEW big_countries AS SELECT * FROM countries WHERE population > 1000")

    with pytest.raises(LoadError, match=r"cannot drop table countries because other objects depend on it"):
        replace_table(engine, countries(10, seed=2), "countries")

    assert read_table(engine) == as_tuples(old)
    assert relnames(engine) == ["countries"]


# --- row-drop gate ----------------------------------------------------------------------


def test_row_drop_gate_refuses_a_big_drop_and_writes_nothing(engine):
    old = countries(16, seed=1)
    replace_table(engine, old, "northern_europe_countries")
    before = relation_state(engine, "northern_europe_countries")

    with pytest.raises(QualityGateError) as err:
        replace_table(engine, countries(3, seed=2), "northern_europe_countries")

    assert str(err.value) == (
        "new data has 3 rows, 81% fewer than the 16 in northern_europe_countries; "
        "re-run with force=True if this is expected"
    )
    assert relation_state(engine, "northern_europe_countries") == before


def test_row_drop_gate_lets_force_and_small_drops_through(engine):
    replace_table(engine, countries(16, seed=1), "countries")

    half = replace_table(engine, countries(8, seed=2), "countries")  # exactly 50% fewer: allowed
    forced = replace_table(engine, countries(1, seed=3), "countries", force=True)

    assert (half.changed, half.previous_rows, half.rows) == (True, 16, 8)
    assert (forced.changed, forced.previous_rows, forced.rows) == (True, 8, 1)
    assert read_table(engine) == as_tuples(countries(1, seed=3))


def test_row_drop_gate_honours_min_row_fraction(engine):
    replace_table(engine, countries(10, seed=1), "countries")
    with pytest.raises(QualityGateError, match=r"new data has 8 rows, 20% fewer than the 10 in countries"):
        replace_table(engine, countries(8, seed=2), "countries", min_row_fraction=0.1)
    with pytest.raises(ConfigurationError, match=r"min_row_fraction must be between 0 and 1"):
        replace_table(engine, countries(8, seed=2), "countries", min_row_fraction=50)


def test_first_load_is_not_gated(engine):
    result = replace_table(engine, countries(1), "countries", min_row_fraction=0.0)
    assert (result.changed, result.previous_rows) == (True, None)


# --- database unreachable ----------------------------------------------------------------


def _assert_secret_free(err: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    message = str(err)
    assert CANARY not in message
    assert CANARY not in repr(err)
    assert CANARY not in "".join(traceback.format_exception(err))
    assert CANARY not in caplog.text
    assert "\n" not in message
    assert "check the countries-db block" in message
    assert "PostgreSQL is running" in message
    return message


def test_unreachable_socket_directory(caplog):
    caplog.set_level(logging.DEBUG)
    empty_dir = tempfile.mkdtemp(prefix="no-postgres-")
    engine = sa.create_engine(f"postgresql+psycopg2://loader:{CANARY}@/countries_db?host={empty_dir}")

    with pytest.raises(DatabaseUnreachableError) as err:
        replace_table(engine, countries(3), "countries")

    message = _assert_secret_free(err.value, caplog)
    assert f"socket directory {empty_dir}" in message
    assert 'database "countries_db"' in message
    assert 'user "loader"' in message


def test_unreachable_closed_tcp_port(caplog):
    caplog.set_level(logging.DEBUG)
    port = free_port()  # nothing listens on it
    engine = sa.create_engine(f"postgresql+psycopg2://loader:{CANARY}@127.0.0.1:{port}/countries_db")

    with pytest.raises(DatabaseUnreachableError) as err:
        replace_table(engine, countries(3), "countries")

    message = _assert_secret_free(err.value, caplog)
    assert f"host 127.0.0.1 port {port}" in message
    assert 'database "countries_db" at' in message


def test_missing_database_is_unreachable(pg, caplog):
    caplog.set_level(logging.DEBUG)
    engine = sa.create_engine(f"postgresql+psycopg2://{pg.user}:{CANARY}@/no_such_db?host={pg.socket_dir}")

    with pytest.raises(DatabaseUnreachableError) as err:
        replace_table(engine, countries(3), "countries")

    message = _assert_secret_free(err.value, caplog)
    assert 'database "no_such_db" does not exist' in message


def test_role_that_may_not_log_in_is_unreachable(pg, engine, database_url, caplog):
    caplog.set_level(logging.DEBUG)
    role = f"nologin_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" NOLOGIN')
    try:
        database = sa.make_url(database_url).database
        denied = sa.create_engine(f"postgresql+psycopg2://{role}:{CANARY}@/{database}?host={pg.socket_dir}")
        with pytest.raises(DatabaseUnreachableError) as err:
            replace_table(denied, countries(3), "countries")
        message = _assert_secret_free(err.value, caplog)
        assert f'user "{role}"' in message
        assert "not permitted to log in" in message
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP ROLE "{role}"')


# --- chunked serialisation and the head digest ----------------------------------------------


@pytest.fixture
def small_chunks(monkeypatch):
    """Tiny chunks and head, so that a few dozen rows exercise every path of the serialiser."""
    monkeypatch.setattr(load, "_HEAD_ROWS", 4)
    monkeypatch.setattr(load, "_COPY_CHUNK_ROWS", 3)


def test_awkward_values_spread_over_many_chunks_round_trip(engine, small_chunks):
    values = [f"plain {i}" for i in range(40)]
    for k, awkward in enumerate(AWKWARD):
        values[k * 2] = awkward  # some chunks clean, some needing escapes
    df = pd.DataFrame({"v": pd.array(values, dtype=object), "n": np.arange(40, dtype="int64")})

    replace_table(engine, df, "chunks")

    assert read_table(engine, "chunks") == [(v, n) for n, v in enumerate(values)]
    assert content_hash(df) == replace_table(engine, df, "chunks").content_hash  # same digest, chunked or not


def test_change_only_after_the_head_is_detected(engine, small_chunks):
    df = countries(30, seed=1)
    replace_table(engine, df, "countries")
    tail_changed = df.copy()
    tail_changed.loc[29, "currency_name"] = "changed"
    head_changed = df.copy()
    head_changed.loc[0, "currency_name"] = "changed"

    assert replace_table(engine, df, "countries").changed is False
    assert replace_table(engine, tail_changed, "countries").changed is True
    assert read_table(engine) == as_tuples(tail_changed)
    assert replace_table(engine, head_changed, "countries").changed is True
    assert read_table(engine) == as_tuples(head_changed)


def test_unchanged_is_detected_when_the_stored_head_size_differs(engine, monkeypatch):
    df = countries(30, seed=1)
    monkeypatch.setattr(load, "_HEAD_ROWS", 4)
    replace_table(engine, df, "countries")
    before = relation_state(engine)
    monkeypatch.setattr(load, "_HEAD_ROWS", 4096)  # e.g. a later release with another head size

    result = replace_table(engine, df, "countries")

    assert result.changed is False
    assert relation_state(engine) == before


class _TextAfterCopyStarted:
    """A value whose text is only available once COPY has started (set by the read hook)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.copy_started = threading.Event()

    def __str__(self) -> str:
        assert self.copy_started.wait(timeout=30), "COPY never started"
        return self.text


def test_bad_text_met_during_copy_fails_it_and_keeps_the_old_table(engine, small_chunks, monkeypatch):
    old = countries(30, seed=1)
    replace_table(engine, old, "countries")
    before = relation_state(engine)
    late = _TextAfterCopyStarted("nul\x00inside")
    bad = countries(30, seed=2).astype({"nation_official_name": object})  # head differs: COPY starts at once
    bad.loc[28, "nation_official_name"] = late
    handed: list[int] = []

    def hook(chunks_sent: int) -> None:
        handed.append(chunks_sent)
        late.copy_started.set()  # only now can the serialiser reach row 28

    monkeypatch.setattr(load, "_copy_read_hook", hook)

    with pytest.raises(LoadError, match=r'column "nation_official_name" contains a NUL character'):
        replace_table(engine, bad, "countries")

    assert len(handed) > 1  # chunks had gone to COPY before the bad row was met
    assert relation_state(engine) == before
    assert relnames(engine) == ["countries"]


def test_bad_text_found_before_copy_writes_nothing(engine):
    old = countries(30, seed=1)
    replace_table(engine, old, "countries")
    before = relation_state(engine)
    bad = countries(30, seed=2)
    bad.loc[28, "nation_official_name"] = "lone surrogate \ud800"

    with pytest.raises(LoadError, match=r"not valid Unicode"):
        replace_table(engine, bad, "countries")

    assert relation_state(engine) == before


def test_non_string_objects_in_a_text_column_load_as_their_text(engine):
    df = pd.DataFrame({"v": pd.array(["a", 5, None, 2.5, "tab\t"], dtype=object)})

    replace_table(engine, df, "objs")

    assert read_table(engine, "objs") == [("a",), ("5",), (None,), ("2.5",), ("tab\t",)]


def test_table_without_our_comment_is_counted_and_replaced(engine):
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE countries (x int)")
        conn.exec_driver_sql("INSERT INTO countries SELECT generate_series(1, 10)")

    with pytest.raises(QualityGateError, match=r"new data has 2 rows, 80% fewer than the 10 in countries"):
        replace_table(engine, countries(2), "countries")
    result = replace_table(engine, countries(6), "countries")

    assert (result.changed, result.previous_rows) == (True, 10)
    assert read_table(engine) == as_tuples(countries(6))


def test_repeatable_read_reader_with_an_older_snapshot_sees_the_whole_new_table(engine, pg, database_url):
    old, new = countries(50, seed=1), countries(70, seed=2)
    replace_table(engine, old, "countries")
    with contextlib.closing(dbapi_connect(pg, database_url)) as reader:
        reader.autocommit = False
        reader.set_session(isolation_level="REPEATABLE READ")
        with reader.cursor() as cur:
            cur.execute("SELECT 1")  # the snapshot is taken now, before the swap; the table is untouched
            replace_table(engine, new, "countries")
            cur.execute("SELECT * FROM countries ORDER BY ctid")
            rows = [tuple(r) for r in cur.fetchall()]
        reader.rollback()
    # COPY FREEZE: the new rows are visible even to this older snapshot (without it: an empty table)
    assert rows == as_tuples(new)
