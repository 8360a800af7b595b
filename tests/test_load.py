"""flows.load against a real embedded PostgreSQL (fixtures ``pg`` and ``database_url``); no mocks.

Failures in the middle of a load are made by real means: a value PostgreSQL
refuses, a user's trigger or constraint that raises, a trigger that waits on an
advisory lock the test holds (so the test knows the load is inside its
transaction, past the DELETE) and then ``pg_terminate_backend``. Waiting for a
session to reach a lock polls ``pg_locks`` with a deadline; nothing sleeps to
let something happen.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import psycopg2
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flows.load.copy as copy_text
from flows.load.changes import ChangeSpec, Measure, SetColumn
from flows.load.database import Database, resolve_table, scrub
from flows.errors import (
    CommitUnknownError,
    ConfigurationError,
    DatabaseUnreachableError,
    InvalidTableNameError,
    LoadError,
    LoadInterruptedError,
    QualityGateError,
    TableBusyError,
)
from flows.load import LoadResult, TableName, interrupt_loads, parse_table_name, replace_table, resume_loads
from flows.load.state import live_rows, source_digest
from tests.conftest import free_port

CANARY = "CANARY-pw-7f3a9Zq"
STRATEGIES = ["rows", "swap"]
SPEC = ChangeSpec(
    key="nation_official_name",
    noun="country",
    plural="countries",
    measures=(Measure("population", "population", "populations"),),
    sets=(SetColumn("currency_name", "currencies"),),
)


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


def frame(rows: list[tuple[str, str | None, int]]) -> pd.DataFrame:
    """A countries frame from (name, currency, population) tuples."""
    names, currencies, populations = zip(*rows, strict=True) if rows else ((), (), ())
    return pd.DataFrame(
        {
            "nation_official_name": pd.array(list(names), dtype="str"),
            "currency_name": pd.array(list(currencies), dtype="str"),
            "population": np.array(populations, dtype="int64"),
        }
    )


def as_tuples(df: pd.DataFrame) -> list[tuple]:
    """Rows as Python tuples with None for missing values (what psycopg2 returns), in frame order."""
    out = df.astype(object).where(df.notna(), None)
    return [tuple(None if pd.isna(v) else v for v in row) for row in out.itertuples(index=False)]


def read_table(engine: sa.Engine, table: str = "countries", order: str = "ctid") -> list[tuple]:
    """The table's rows in physical order (right for a table the load just created)."""
    with engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY {order}").all()]


def same_rows(engine: sa.Engine, df: pd.DataFrame, table: str = "countries") -> bool:
    """Whether the table holds exactly the frame's rows (a table's rows have no order)."""
    return Counter(read_table(engine, table)) == Counter(as_tuples(df))


def relation_state(engine: sa.Engine, table: str = "countries") -> tuple:
    """(oid, relfilenode, catalog-row xmin, comment, row xmins): all change if the table is rewritten."""
    with engine.connect() as conn:
        rel = conn.execute(
            sa.text(
                "SELECT oid, relfilenode, xmin::text, obj_description(oid, 'pg_class') FROM pg_class"
                " WHERE oid = to_regclass(:t)"
            ),
            {"t": table},
        ).one()
        xmins = conn.exec_driver_sql(f"SELECT array_agg(xmin::text ORDER BY ctid) FROM {table}").scalar_one()
    return (*rel, tuple(xmins or ()))


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


def dbapi_connect(pg, database_url: str, application_name: str = "test"):
    """An autocommit psycopg2 connection (use with ``contextlib.closing``: psycopg2's own
    ``with conn`` opens a transaction, which would hold locks until the block ends)."""
    conn = psycopg2.connect(
        host=pg.socket_dir,
        dbname=sa.make_url(database_url).database,
        user=pg.user,
        application_name=application_name,
    )
    conn.autocommit = True
    return conn


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` until it holds (a readiness probe, not a timed wait); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Background:
    """Run ``replace_table(...)`` in a thread; ``result()`` joins it and returns or raises."""

    def __init__(self, *args, **kwargs) -> None:
        self._outcome: list = []
        self._thread = threading.Thread(target=self._run, args=args, kwargs=kwargs)
        self._thread.start()

    def _run(self, *args, **kwargs) -> None:
        try:
            self._outcome.append(replace_table(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread by result()
            self._outcome.append(exc)

    def result(self, timeout: float = 60.0):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the load did not finish"
        if isinstance(self._outcome[0], BaseException):
            raise self._outcome[0]
        return self._outcome[0]


HOLD_KEY = 4242  # advisory lock (HOLD_KEY, 1): a user trigger waits on it while the test holds it


@contextlib.contextmanager
def load_held_at_insert(pg, database_url: str, table: str = "countries") -> Iterator[psycopg2.extensions.connection]:
    """A user trigger on ``table`` makes the next load wait at its INSERT (after its DELETE) while
    the yielded connection holds advisory lock (HOLD_KEY, 1); the trigger is dropped afterwards."""
    with contextlib.closing(dbapi_connect(pg, database_url, "holder")) as holder, holder.cursor() as cur:
        cur.execute(
            "CREATE FUNCTION hold_load() RETURNS trigger LANGUAGE plpgsql SET lock_timeout = 0 AS $$"
            f" BEGIN PERFORM pg_advisory_xact_lock_shared({HOLD_KEY}, 1); RETURN NULL; END $$"
        )
        cur.execute(f"CREATE TRIGGER hold BEFORE INSERT ON {table} FOR EACH STATEMENT EXECUTE FUNCTION hold_load()")
        cur.execute(f"SELECT pg_advisory_lock({HOLD_KEY}, 1)")
        try:
            yield holder
        finally:
            cur.execute("SELECT pg_advisory_unlock_all()")
            cur.execute(f"DROP TRIGGER IF EXISTS hold ON {table}")
            cur.execute("DROP FUNCTION IF EXISTS hold_load()")


def held_loader_pid(holder) -> int | None:
    """The pid of the session waiting on the hold lock, if one is."""
    with holder.cursor() as cur:
        cur.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objid = 1 AND NOT granted",
            (HOLD_KEY,),
        )
        row = cur.fetchone()
    return None if row is None else row[0]


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(database_url)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture
def db(database_url: str) -> Database:
    """The test's database for the light checks (``resolve_table``, ``live_rows``): psycopg2, no engine."""
    return Database.from_url(database_url)


# --- first load, replace, unchanged ------------------------------------------------


def test_first_load_creates_table_with_types_and_exact_contents(engine):
    df = countries(25)

    result = replace_table(engine, df, "countries")

    assert (result.table, result.rows, result.previous_rows, result.deleted, result.inserted, result.changed) == (
        "public.countries", 25, None, 0, 25, True
    )
    assert column_types(engine, "countries") == [
        ("nation_official_name", "text"),
        ("currency_name", "text"),
        ("population", "bigint"),
    ]
    assert read_table(engine) == as_tuples(df)
    assert any(row[1] is None for row in read_table(engine))  # the NULL currency survived as NULL


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_replace_with_different_data_leaves_exact_contents_and_its_state(engine, strategy):
    replace_table(engine, countries(20, seed=1), "countries", strategy=strategy)
    new = countries(15, seed=2, prefix="Nation")

    result = replace_table(engine, new, "countries", strategy=strategy)

    assert (result.rows, result.deleted, result.inserted, result.previous_rows) == (15, 20, 15, 20)
    assert result.strategy == strategy
    assert same_rows(engine, new)
    assert relnames(engine) == ["countries"]  # no staging table, no state table in the user's schema
    assert relation_state(engine)[3] is None  # the table's comment is the user's: the load wrote none


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_unchanged_data_is_not_rewritten(engine, strategy):
    df = countries(30)
    first = replace_table(engine, df, "countries", strategy=strategy)
    before = relation_state(engine)

    again = replace_table(engine, df.copy(), "countries", strategy=strategy, changes=SPEC)

    assert (again.changed, again.deleted, again.inserted, again.rows, again.previous_rows) == (False, 0, 0, 30, 30)
    assert again.fingerprint == first.fingerprint
    assert again.changes.unchanged and again.changes.phrase() == "no changes"
    assert relation_state(engine) == before  # same relation, same file, same catalog row, same row versions
    assert relnames(engine) == ["countries"]


@pytest.mark.parametrize("changed_row", [None, 0, 99], ids=["unchanged", "first-row", "last-row"])
def test_a_swap_without_a_change_spec_replaces_the_table_only_when_a_row_differs(engine, changed_row):
    df = countries(100)
    df.loc[0, "currency_name"] = None  # a NULL in the table's first row
    replace_table(engine, df, "countries", strategy="swap")
    before = relation_state(engine)
    new = df.copy()
    if changed_row is not None:
        new.loc[changed_row, "population"] += 1

    result = replace_table(engine, new, "countries", strategy="swap")

    assert result.changed == (changed_row is not None)
    assert (relation_state(engine) == before) == (changed_row is None)  # unchanged: the same table, untouched
    assert same_rows(engine, new)


@pytest.mark.parametrize("rows", [100, 3000], ids=["one-page", "many-pages"])
def test_when_the_tables_first_rows_all_changed_the_rows_in_both_are_still_kept(engine, rows):
    df = countries(rows)
    replace_table(engine, df, "countries")
    versions = Counter(relation_state(engine)[4])
    changed = df.copy()
    first = rows * 2 // 3
    changed.loc[: first - 1, "population"] += 1  # the table's first rows, in its physical order

    result = replace_table(engine, changed, "countries")

    assert (result.deleted, result.inserted) == (first, first)
    assert sum((Counter(relation_state(engine)[4]) & versions).values()) == rows - first  # untouched
    assert same_rows(engine, changed)


def test_a_changed_value_is_detected_and_loaded_in_place(engine):
    df = countries(30)
    replace_table(engine, df, "countries")
    before = relation_state(engine)
    changed = df.copy()
    changed.loc[29, "population"] += 1

    result = replace_table(engine, changed, "countries")

    assert (result.changed, result.deleted, result.inserted) == (True, 1, 1)
    after = relation_state(engine)
    assert after[0] == before[0]  # the same table (oid): only the changed row was replaced
    assert len(set(after[4]) - set(before[4])) == 1  # one new row version; the 29 others are untouched
    assert same_rows(engine, changed)


def test_zero_rows_first_load_creates_an_empty_table(engine):
    result = replace_table(engine, countries(0), "countries")

    assert (result.rows, result.inserted, result.changed) == (0, 0, False)
    assert read_table(engine) == []
    assert [t for _, t in column_types(engine, "countries")] == ["text", "text", "bigint"]


def test_rows_deleted_by_hand_make_the_next_load_rewrite(engine):
    df = countries(10)
    replace_table(engine, df, "countries")
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM countries WHERE ctid = (SELECT min(ctid) FROM countries)")

    result = replace_table(engine, df, "countries")

    assert (result.changed, result.previous_rows) == (True, 9)
    assert same_rows(engine, df)


# --- the legacy comment of earlier releases, and the user's comment ------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_users_comment_is_left_alone(engine, strategy):
    replace_table(engine, countries(5, seed=1), "countries", strategy=strategy)
    with engine.begin() as conn:
        conn.exec_driver_sql("COMMENT ON TABLE countries IS 'Countries, refreshed nightly; ask #data'")

    replace_table(engine, countries(5, seed=2), "countries", strategy=strategy)

    assert relation_state(engine)[3] == "Countries, refreshed nightly; ask #data"


# --- what users attach to the table survives (strategy "rows") ----------------------------


def test_views_indexes_constraints_triggers_grants_comment_and_owner_survive_loads(engine):
    role = f"analyst_{uuid.uuid4().hex[:8]}"
    replace_table(engine, countries(20, seed=1), "countries")
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" NOLOGIN')
        conn.exec_driver_sql("CREATE VIEW big_countries AS SELECT * FROM countries WHERE population > 500000000")
        conn.exec_driver_sql("CREATE INDEX countries_by_population ON countries (population)")
        conn.exec_driver_sql("ALTER TABLE countries ADD CONSTRAINT population_not_negative CHECK (population >= 0)")
        conn.exec_driver_sql(
            "ALTER TABLE countries ADD CONSTRAINT one_row_per_currency UNIQUE NULLS NOT DISTINCT"
            " (nation_official_name, currency_name)"
        )
        conn.exec_driver_sql("CREATE TABLE audit (at timestamptz DEFAULT now(), rows bigint)")
        conn.exec_driver_sql(
            "CREATE FUNCTION audit_load() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN INSERT INTO audit (rows) SELECT count(*) FROM countries; RETURN NULL; END $$"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER audit AFTER INSERT ON countries FOR EACH STATEMENT EXECUTE FUNCTION audit_load()"
        )
        conn.exec_driver_sql(f'GRANT SELECT ON countries TO "{role}"')
        conn.exec_driver_sql("COMMENT ON TABLE countries IS 'owned by the data team'")
        conn.exec_driver_sql(f'ALTER TABLE countries OWNER TO "{role}"')
    oid = relation_state(engine)[0]
    try:
        for seed in (2, 3):
            new = countries(20, seed=seed)
            assert replace_table(engine, new, "countries").changed

        with engine.connect() as conn:
            assert relation_state(engine)[0] == oid
            view = conn.exec_driver_sql("SELECT count(*) FROM big_countries").scalar_one()
            assert view == int((new["population"] > 500_000_000).sum())
            indexes = conn.exec_driver_sql("SELECT indexname FROM pg_indexes WHERE tablename = 'countries'").scalars()
            assert set(indexes) == {"countries_by_population", "one_row_per_currency"}
            constraints = conn.exec_driver_sql(
                "SELECT conname FROM pg_constraint WHERE conrelid = 'countries'::regclass"
            ).scalars()
            assert set(constraints) == {"population_not_negative", "one_row_per_currency"}
            assert conn.exec_driver_sql("SELECT rows FROM audit ORDER BY at").scalars().all() == [20, 20]
            granted = conn.execute(sa.text("SELECT has_table_privilege(:r, 'countries', 'SELECT')"), {"r": role})
            assert granted.scalar_one() is True
            owner = conn.exec_driver_sql("SELECT tableowner FROM pg_tables WHERE tablename = 'countries'")
            assert owner.scalar_one() == role
        assert relation_state(engine)[3] == "owned by the data team"
        assert same_rows(engine, new)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER')
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
            conn.exec_driver_sql(f'DROP ROLE "{role}"')


def _xmins(engine: sa.Engine, table: str = "countries") -> dict[tuple, str]:
    """Each row's row version (xmin), by its values (rows unique in the table)."""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"SELECT xmin::text, * FROM {table}").all()
    return {tuple(r[1:]): r[0] for r in rows}


def test_a_child_table_with_on_delete_cascade_keeps_the_rows_of_countries_that_come_back(engine):
    old = frame([("Aland", "Euro", 30_000), ("Borduria", None, 900), ("Carpania", "Lion", 12), ("Syldavia", "", 4)])
    replace_table(engine, old, "countries")
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE countries ADD CONSTRAINT one_name UNIQUE (nation_official_name)")
        conn.exec_driver_sql(
            "CREATE TABLE visits (country text REFERENCES countries (nation_official_name) ON DELETE CASCADE,"
            " visitor text)"
        )
        conn.exec_driver_sql(
            "INSERT INTO visits VALUES ('Aland', 'ann'), ('Borduria', 'bo'), ('Carpania', 'cy'), ('Syldavia', 'sy')"
        )
    # Aland, Borduria (NULL currency) and Syldavia (empty currency) come back as they were; Carpania is gone
    new = frame([("Aland", "Euro", 30_000), ("Borduria", None, 900), ("Syldavia", "", 4), ("Zembla", "Euro", 7)])

    for _ in range(2):  # and a forced load of the same rows again
        replace_table(engine, new, "countries", force=True)

    assert same_rows(engine, new)
    with engine.connect() as conn:
        visits = sorted(conn.exec_driver_sql("SELECT country, visitor FROM visits").all())
    assert visits == [("Aland", "ann"), ("Borduria", "bo"), ("Syldavia", "sy")]  # only the gone country's cascade


def test_a_plain_foreign_key_to_rows_that_stay_does_not_fail_the_load(engine):
    old = frame([("Aland", "Euro", 30_000), ("Borduria", None, 900), ("Carpania", "Lion", 12)])
    replace_table(engine, old, "countries")
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE countries ADD CONSTRAINT one_name UNIQUE (nation_official_name)")
        conn.exec_driver_sql("CREATE TABLE visits (country text REFERENCES countries (nation_official_name))")
        conn.exec_driver_sql("INSERT INTO visits VALUES ('Aland'), ('Borduria')")
    new = frame([("Aland", "Euro", 30_000), ("Borduria", None, 900), ("Carpania", "Lion", 13)])

    result = replace_table(engine, new, "countries")

    assert (result.changed, result.rows) == (True, 3)
    assert same_rows(engine, new)
    before = relation_state(engine)
    gone = frame([("Carpania", "Lion", 14), ("Borduria", None, 900)])  # Aland is still referenced
    with pytest.raises(LoadError, match=r'^loading public.countries failed: .*"visits".*the table was not changed'):
        replace_table(engine, gone, "countries")
    assert relation_state(engine) == before


def test_rows_that_stay_keep_their_row_version_and_extra_columns(engine):
    old = countries(40, seed=1)
    replace_table(engine, old, "countries")
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE countries ADD COLUMN note text DEFAULT 'new'")
        conn.exec_driver_sql("UPDATE countries SET note = 'kept'")
    before = {row[:3]: xmin for row, xmin in _xmins(engine).items()}
    new = old.drop(index=[0, 1]).reset_index(drop=True)
    new.loc[5, "population"] += 1
    new = pd.concat([new, countries(3, seed=9, prefix="Fresh")], ignore_index=True)

    replace_table(engine, new, "countries")

    after = _xmins(engine)
    kept = {row[:3] for row, xmin in after.items() if before.get(row[:3]) == xmin}
    assert kept == set(as_tuples(old)) & set(as_tuples(new))  # 37 rows: every row in both, untouched
    assert len(kept) == 37
    assert {row[3] for row in after if row[:3] in kept} == {"kept"}
    assert {row[3] for row in after if row[:3] not in kept} == {"new"}
    assert Counter(row[:3] for row in after) == Counter(as_tuples(new))


def test_duplicates_and_nulls_give_exactly_the_new_multiset(engine):
    old = frame(
        [("A", None, 1)] * 3 + [("B", "", 2), ("B", None, 2), ("B", "\\N", 2)] + [("C", "x", 3)] * 2 + [("E", None, 5)]
    )
    new = frame([("A", None, 1), ("B", "", 2), ("B", "", 2), ("B", None, 2), ("C", "x", 3)] * 1 + [("D", None, 4)] * 2)
    replace_table(engine, old, "countries")
    versions_before = Counter(relation_state(engine)[4])

    replace_table(engine, new, "countries")

    assert Counter(read_table(engine)) == Counter(as_tuples(new))
    # kept untouched: one A, the "" B, the NULL B, one C (the multiset intersection); 2 B "" and 2 D are new
    kept = sum((Counter(relation_state(engine)[4]) & versions_before).values())
    assert kept == 4


ROWS = st.lists(
    st.tuples(st.sampled_from(["a", "b", ""]), st.sampled_from([None, "", "x", "\\N"]), st.integers(0, 2)),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(loads=st.lists(ROWS, min_size=1, max_size=3))
def test_any_sequence_of_loads_leaves_exactly_the_last_multiset_property(engine, loads):
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS countries")
    for rows in loads:
        replace_table(engine, frame(rows), "countries", force=True)
        assert Counter(read_table(engine)) == Counter(rows)


def test_a_user_added_column_with_a_default_is_kept(engine):
    replace_table(engine, countries(5, seed=1), "countries")
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE countries ADD COLUMN loaded_at timestamptz NOT NULL DEFAULT now()")

    replace_table(engine, countries(5, seed=2), "countries")

    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(loaded_at) FROM countries").scalar_one() == 5


def test_rows_strategy_refuses_a_table_without_the_datas_columns_and_swap_replaces_it(engine):
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE countries (x int)")
        conn.exec_driver_sql("INSERT INTO countries SELECT generate_series(1, 10)")
    before = relation_state(engine)

    with pytest.raises(LoadError) as err:
        replace_table(engine, countries(6), "countries")

    assert str(err.value) == (
        'public.countries has no column "nation_official_name", "currency_name", "population" of the data '
        "(its columns: x): add it, drop the table so that the next load creates it, or load with "
        "strategy=swap to replace the table; the table was not changed"
    )
    assert err.value.for_audience("cli").endswith(
        "or load with --strategy swap to replace the table; the table was not changed"
    )
    assert relation_state(engine) == before
    result = replace_table(engine, countries(6), "countries", strategy="swap")
    assert (result.changed, result.previous_rows) == (True, 10)
    assert read_table(engine) == as_tuples(countries(6))


def test_a_table_not_loaded_by_the_pipeline_is_counted_and_its_rows_replaced(engine):
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE countries (nation_official_name text, currency_name text, population bigint)"
        )
        conn.exec_driver_sql("INSERT INTO countries SELECT 'C' || i, NULL, i FROM generate_series(1, 10) i")

    with pytest.raises(QualityGateError, match=r"^new data has 2 rows, 20% of the 10 in countries"):
        replace_table(engine, countries(2), "countries")
    result = replace_table(engine, countries(6), "countries")

    assert (result.changed, result.previous_rows) == (True, 10)
    assert same_rows(engine, countries(6))


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

    replace_table(engine, df, "countries", changes=SPEC)

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
            "tz": pd.to_datetime(["2024-01-02 03:04:05+02:00"] * 5 + [None], utc=True).tz_convert("Europe/Helsinki"),
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


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"strategy": "truncate"}, "strategy must be one of rows, swap, got 'truncate'"),
        ({"lock_timeout": 0}, "lock_timeout must be a number of seconds in (0, 3600], got 0"),
        ({"lock_retries": -1}, "lock_retries must be a whole number >= 0, got -1"),
        (
            {"changes": ChangeSpec(key="name")},
            "the change spec names columns the data does not have: ['name'] "
            "(columns: ['nation_official_name', 'currency_name', 'population'])",
        ),
    ],
)
def test_bad_options_are_refused_before_touching_the_database(options, message):
    nowhere = sa.create_engine(f"postgresql+psycopg2://u:{CANARY}@/db?host=/nonexistent-socket-dir")
    with pytest.raises(ConfigurationError) as err:
        replace_table(nowhere, countries(3), "countries", **options)
    assert str(err.value) == message


def test_awkward_column_names_are_quoted(engine):
    names = ["has space", 'quo"te', "colon:x", "per%cent", "Upper"]
    df = pd.DataFrame([["a", "b", "c", "d", 1]], columns=names)

    replace_table(engine, df, "odd")
    replace_table(
        engine, df.assign(Upper=2), "odd", changes=ChangeSpec(key="per%cent", sets=(SetColumn('quo"te', "q"),))
    )

    assert [c for c, _ in column_types(engine, "odd")] == names
    assert read_table(engine, "odd") == [("a", "b", "c", "d", 2)]


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
        assert read_table(engine, "prop", order="k") == [(v, k) for k, v in enumerate(values)]

    check()


@pytest.mark.parametrize("neighbour", [None, "needs\tescaping"])
def test_text_with_nul_character_is_refused_and_old_table_kept(engine, neighbour):
    old = countries(10)
    replace_table(engine, old, "countries")
    before = relation_state(engine)
    bad = countries(10, seed=5)
    bad.loc[7, "nation_official_name"] = "nul\x00inside"
    if neighbour is not None:  # a value of the same chunk and column with a character to escape
        bad.loc[6, "nation_official_name"] = neighbour

    with pytest.raises(LoadError, match=r'column "nation_official_name" contains a NUL character'):
        replace_table(engine, bad, "countries")

    assert relation_state(engine) == before


def test_a_failed_first_load_creates_no_table_and_claims_no_previous_one(engine):
    bad = countries(10, seed=2)
    bad["population"] = bad["population"].astype(object)
    bad.loc[9, "population"] = "about 5 million"

    with pytest.raises(LoadError) as err:
        replace_table(engine, bad, "countries", column_types={"population": "bigint"})

    assert str(err.value).endswith("; the table was not changed")
    assert "previous" not in str(err.value)  # there was no table before
    assert relnames(engine) == []


def test_bad_text_met_in_a_later_chunk_fails_the_copy_and_keeps_the_old_table(engine, monkeypatch):
    monkeypatch.setattr(copy_text, "_COPY_CHUNK_ROWS", 3)  # the bad row is in the 10th chunk COPY asks for
    old = countries(30, seed=1)
    replace_table(engine, old, "countries")
    before = relation_state(engine)
    bad = countries(30, seed=2)
    bad.loc[28, "nation_official_name"] = "nul\x00inside"

    with pytest.raises(LoadError, match=r'column "nation_official_name" contains a NUL character'):
        replace_table(engine, bad, "countries")

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


def test_awkward_values_spread_over_many_chunks_round_trip(engine, monkeypatch):
    monkeypatch.setattr(copy_text, "_COPY_CHUNK_ROWS", 3)  # some chunks clean, some needing escapes
    values = [f"plain {i}" for i in range(40)]
    for k, awkward in enumerate(AWKWARD):
        values[k * 2] = awkward
    df = pd.DataFrame({"v": pd.array(values, dtype=object), "n": np.arange(40, dtype="int64")})

    replace_table(engine, df, "chunks")

    assert read_table(engine, "chunks") == [(v, n) for n, v in enumerate(values)]


# --- content hash -------------------------------------------------------------------


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


def test_a_schema_with_capital_letters_loads_again_and_again(engine, db):
    with engine.begin() as conn:
        conn.exec_driver_sql('CREATE SCHEMA "MyData"')
    target = TableName("MyData", "countries")  # reached quoted, as its creator named it
    first, second = countries(6, seed=1), countries(6, seed=2)

    replace_table(engine, first, target)
    again = replace_table(engine, second, target)
    unchanged = replace_table(engine, second, target)

    assert (again.changed, again.previous_rows, unchanged.changed) == (True, 6, False)
    assert relnames(engine, "MyData") == ["countries"]
    assert relnames(engine, "mydata") == [] and relnames(engine, "public") == []
    assert Counter(read_table(engine, '"MyData".countries')) == Counter(as_tuples(second))
    stored = {"fingerprint": unchanged.fingerprint, "columns": unchanged.columns, "rows": 6}
    assert live_rows(db, target, stored) == 6


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


# --- the source digest: a later run with the same source may skip the load ------------------

SOURCE_A = "a" * 64
COLUMNS = ("nation_official_name", "currency_name", "population")
PUBLIC_COUNTRIES = TableName("public", "countries")


RECORDS = [
    {"name": {"official": "Republic of Iceland"}, "population": 366425, "currencies": {"ISK": {"name": "króna"}}},
    {"name": {"official": "Kingdom of Norway"}, "population": 5379475, "currencies": {"NOK": {"name": "krone"}}},
]
DIGEST_COLUMNS = [("nation_official_name", "name.official", "text"), ("population", "population", "bigint")]


def test_the_source_digest_covers_records_columns_and_dialect_not_key_order():
    digest = source_digest(RECORDS, dialect="v3.1", columns=DIGEST_COLUMNS)
    assert len(digest) == 64 and digest == source_digest(copy.deepcopy(RECORDS), dialect="v3.1", columns=DIGEST_COLUMNS)
    reordered_keys = [dict(reversed(list(r.items()))) for r in RECORDS]
    assert source_digest(reordered_keys, dialect="v3.1", columns=DIGEST_COLUMNS) == digest

    changed = copy.deepcopy(RECORDS)
    changed[0]["population"] = 366426
    other_type = [DIGEST_COLUMNS[0], ("population", "population", "numeric")]
    other_path = [("nation_official_name", "name.common", "text"), DIGEST_COLUMNS[1]]
    others = {
        source_digest(changed, dialect="v3.1", columns=DIGEST_COLUMNS),
        source_digest(RECORDS[::-1], dialect="v3.1", columns=DIGEST_COLUMNS),
        source_digest(RECORDS[:1], dialect="v3.1", columns=DIGEST_COLUMNS),
        source_digest(RECORDS, dialect="v5", columns=DIGEST_COLUMNS),
        source_digest(RECORDS, dialect="v3.1", columns=other_type),
        source_digest(RECORDS, dialect="v3.1", columns=other_path),
        source_digest(RECORDS, dialect="v3.1", columns=DIGEST_COLUMNS[:1]),
    }
    assert len(others) == 7 and digest not in others
    # JSON tells 1 from 1.0 and true from 1: never the same digest for records that could load differently
    as_float = [dict(RECORDS[0], population=366425.0)]
    as_int = [dict(RECORDS[0], population=366425)]
    assert source_digest(as_float, dialect="v3.1", columns=[]) != source_digest(as_int, dialect="v3.1", columns=[])


def test_records_that_are_not_json_data_have_no_source_digest():
    assert source_digest([{"population": object()}], dialect="v3.1", columns=DIGEST_COLUMNS) is None
    assert source_digest([{1: "a", "b": 2}], dialect="v3.1", columns=DIGEST_COLUMNS) is None


# --- zero downtime ---------------------------------------------------------------------

SIGNATURE_SQL = (
    "SELECT count(*), md5(coalesce(string_agg(concat_ws('|', nation_official_name,"
    " coalesce(currency_name, '<null>'), population::text), E'\\n' ORDER BY nation_official_name), ''))"
    " FROM countries"
)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_readers_see_old_or_new_table_never_an_error_or_a_partial_one(engine, pg, database_url, strategy):
    dataset_a = countries(400, seed=1, prefix="Alpha")
    dataset_b = countries(650, seed=2, prefix="Beta")
    signatures = {}
    with contextlib.closing(dbapi_connect(pg, database_url)) as probe, probe.cursor() as cur:
        for label, df in (("a", dataset_a), ("b", dataset_b)):
            replace_table(engine, df, "countries", strategy=strategy)
            assert same_rows(engine, df)
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
                cur.execute("SET statement_timeout = '5s'")
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
        for i in range(40):
            dataset = dataset_a if i % 2 == 0 else dataset_b
            results.append(replace_table(engine, dataset, "countries", force=True, strategy=strategy))
    finally:
        stop.set()
        for t in threads:
            t.join()

    assert errors == []
    assert all(r.changed for r in results)  # 40 real replacements
    reads = [sig for slot in seen for sig in slot]
    assert set(reads) <= set(signatures)  # every read saw one whole dataset, never a partial or empty one
    assert set(reads) == set(signatures)  # and the readers did see both
    assert all(len(slot) > 0 for slot in seen)
    assert relnames(engine) == ["countries"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_concurrent_loaders_of_one_table_are_serialised(engine, strategy):
    datasets = [countries(100, seed=s) for s in range(4)]
    errors: list[BaseException] = []
    results: list[LoadResult] = []

    def loader(k: int) -> None:
        try:
            for i in range(8):
                results.append(replace_table(engine, datasets[(k + i) % 4], "countries", strategy=strategy))
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on
            errors.append(exc)

    threads = [threading.Thread(target=loader, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert len(results) == 24
    assert any(same_rows(engine, d) for d in datasets)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM countries").scalar_one() == 100
    assert relnames(engine) == ["countries"]


def test_a_long_reader_neither_blocks_the_load_nor_is_blocked(engine, pg, database_url):
    old, new = countries(50, seed=1), countries(70, seed=2)
    replace_table(engine, old, "countries")
    with contextlib.closing(dbapi_connect(pg, database_url, "long-report")) as reader:
        reader.autocommit = False
        reader.set_session(isolation_level="REPEATABLE READ")
        with reader.cursor() as cur:
            cur.execute("SELECT count(*) FROM countries")  # holds its snapshot and its lock on the table
            assert cur.fetchone()[0] == 50

            started = time.monotonic()
            result = replace_table(engine, new, "countries", lock_timeout=5, lock_retries=0)
            waited = time.monotonic() - started

            cur.execute("SELECT * FROM countries")
            seen_by_old_snapshot = [tuple(r) for r in cur.fetchall()]
        reader.rollback()

    assert result.changed and waited < 5  # it would have raised TableBusyError after 5 s of waiting
    assert Counter(seen_by_old_snapshot) == Counter(as_tuples(old))  # the whole old table, to the end
    with contextlib.closing(dbapi_connect(pg, database_url)) as fresh, fresh.cursor() as cur:
        cur.execute("SET statement_timeout = '5s'")
        cur.execute("SELECT * FROM countries")
        assert Counter(tuple(r) for r in cur.fetchall()) == Counter(as_tuples(new))


def test_a_load_in_progress_blocks_no_reader(engine, pg, database_url):
    old, new = countries(50, seed=1), countries(60, seed=2)
    replace_table(engine, old, "countries")
    with load_held_at_insert(pg, database_url) as holder:
        running = Background(engine, new, "countries")
        wait_until(lambda: held_loader_pid(holder) is not None, "the load to reach its INSERT")

        with contextlib.closing(dbapi_connect(pg, database_url)) as reader, reader.cursor() as cur:
            cur.execute("SET statement_timeout = '5s'")  # a reader like the one issue 9 saw fail
            cur.execute("SELECT * FROM countries")  # the load has deleted every row, uncommitted
            during = Counter(tuple(r) for r in cur.fetchall())
        with holder.cursor() as cur:
            cur.execute(f"SELECT pg_advisory_unlock({HOLD_KEY}, 1)")
        result = running.result()

    assert during == Counter(as_tuples(old))
    assert result.changed
    assert same_rows(engine, new)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_repeatable_read_reader_with_an_older_snapshot_sees_a_whole_table(engine, pg, database_url, strategy):
    old, new = countries(50, seed=1), countries(70, seed=2)
    replace_table(engine, old, "countries", strategy=strategy)
    with contextlib.closing(dbapi_connect(pg, database_url)) as reader:
        reader.autocommit = False
        reader.set_session(isolation_level="REPEATABLE READ")
        with reader.cursor() as cur:
            cur.execute("SELECT 1")  # the snapshot is taken now, before the load; the table is untouched
            replace_table(engine, new, "countries", strategy=strategy)
            cur.execute("SELECT * FROM countries")
            rows = Counter(tuple(r) for r in cur.fetchall())
        reader.rollback()
    # rows: MVCC shows this snapshot the old rows; swap: the new table's rows were COPY'd FREEZE
    assert rows == Counter(as_tuples(old if strategy == "rows" else new))


# --- lock waits are bounded; a busy table is named with what holds it ----------------------


def test_swap_behind_a_long_reader_ends_table_busy_naming_it_and_readers_keep_working(engine, pg, database_url):
    old = countries(30, seed=1)
    replace_table(engine, old, "countries")
    before = relation_state(engine)
    stop = threading.Event()
    reads: list[float] = []
    errors: list[BaseException] = []

    def reader() -> None:
        with contextlib.closing(dbapi_connect(pg, database_url, "dashboard")) as conn, conn.cursor() as cur:
            cur.execute("SET statement_timeout = '5s'")
            while not stop.is_set():
                try:
                    started = time.monotonic()
                    cur.execute("SELECT count(*) FROM countries")
                    cur.fetchone()
                    reads.append(time.monotonic() - started)
                except psycopg2.Error as exc:
                    errors.append(exc)

    with contextlib.closing(dbapi_connect(pg, database_url, "long-report")) as long_reader:
        long_reader.autocommit = False
        with long_reader.cursor() as cur:
            cur.execute("SELECT count(*)   FROM\n countries")  # then idle in transaction, holding its lock
        pid = long_reader.get_backend_pid()
        thread = threading.Thread(target=reader)
        thread.start()
        try:
            with pytest.raises(TableBusyError) as err:
                replace_table(engine, countries(30, seed=2), "countries", strategy="swap", lock_retries=1)
        finally:
            stop.set()
            thread.join()
        long_reader.rollback()

    message = str(err.value)
    assert message.startswith(
        "table public.countries is busy: 2 tries to lock it, each waiting up to 1s, failed; "
        f'blocked by pid {pid} (user "{pg.user}", application "long-report", idle in transaction, transaction open '
    )  # the oldest transaction first
    assert "count(*)" not in message and "query" not in message  # its SQL text is not for the message's readers
    assert f"end that transaction (or SELECT pg_terminate_backend(pid) for pid {pid}" in message
    assert message.endswith(") and re-run; the table was not changed")
    assert relation_state(engine) == before
    assert relnames(engine) == ["countries"]  # the staging table went with the transaction
    assert errors == [] and reads  # readers arriving during the swap's tries were held at most ~1 s each
    assert max(reads) < 4


def test_rows_strategy_behind_a_users_row_lock_ends_table_busy_naming_the_writer(engine, pg, database_url):
    replace_table(engine, countries(10, seed=1), "countries")
    before = relation_state(engine)
    with contextlib.closing(dbapi_connect(pg, database_url, "editor")) as editor:
        editor.autocommit = False
        with editor.cursor() as cur:
            cur.execute("SELECT * FROM countries LIMIT 1 FOR UPDATE")
        with pytest.raises(TableBusyError) as err:
            replace_table(engine, countries(10, seed=2), "countries", lock_timeout=0.2, lock_retries=2)
        editor.rollback()
        pid = editor.get_backend_pid()

    assert str(err.value).startswith(
        "table public.countries is busy: 3 tries to lock it, each waiting up to 0.2s, failed; "
        f'blocked by pid {pid} (user "{pg.user}", application "editor", idle in transaction'
    )
    assert relation_state(engine) == before


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
    assert message.startswith(
        'loading public.countries failed: invalid input syntax for type bigint: "about 5 million"'
    )
    assert "line 40, column population" in message
    assert message.endswith("the table was not changed")
    assert "\n" not in message
    assert relation_state(engine) == before
    assert relnames(engine) == ["countries"]


def test_a_users_trigger_or_constraint_refusing_a_row_fails_the_load_and_keeps_the_old_table(engine):
    old = countries(20, seed=1)
    replace_table(engine, old, "countries")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION no_narnia() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            " IF NEW.nation_official_name = 'Narnia' THEN RAISE EXCEPTION 'Narnia is not a country'; END IF;"
            " RETURN NEW; END $$"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER no_narnia BEFORE INSERT ON countries FOR EACH ROW EXECUTE FUNCTION no_narnia()"
        )
        conn.exec_driver_sql("ALTER TABLE countries ADD CONSTRAINT population_not_negative CHECK (population >= 0)")
    before = relation_state(engine)

    narnia = pd.concat([countries(20, seed=2), frame([("Narnia", "Lion", 5)])], ignore_index=True)
    refused = r"^loading public.countries failed: Narnia is not a country; .*; the table was not changed$"
    with pytest.raises(LoadError, match=refused):
        replace_table(engine, narnia, "countries")
    negative = pd.concat([countries(20, seed=2), frame([("Atlantis", None, -1)])], ignore_index=True)
    with pytest.raises(LoadError, match=r'violates check constraint "population_not_negative"'):
        replace_table(engine, negative, "countries")

    assert relation_state(engine) == before
    assert same_rows(engine, old)


def test_loader_killed_in_the_middle_keeps_the_old_table(engine, pg, database_url):
    old = countries(30, seed=1)
    replace_table(engine, old, "countries")
    before = relation_state(engine)
    with load_held_at_insert(pg, database_url) as holder:
        running = Background(engine, countries(50, seed=2), "countries", changes=SPEC)
        wait_until(lambda: held_loader_pid(holder) is not None, "the load to reach its INSERT")
        with holder.cursor() as cur:  # it has deleted every row and staged the new ones
            cur.execute("SELECT pg_terminate_backend(%s, 10000)", (held_loader_pid(holder),))
            assert cur.fetchone()[0] is True
        with pytest.raises(LoadError) as err:
            running.result()

    message = str(err.value)
    assert message.startswith("loading public.countries failed: ")
    assert "terminat" in message or "closed" in message
    assert message.endswith("the table was not changed")
    after = relation_state(engine)  # (its catalog row changed: the test's trigger came and went)
    assert (after[0], after[1], after[3], after[4]) == (before[0], before[1], before[3], before[4])
    assert relnames(engine) == ["countries"]
    new = countries(50, seed=3)
    # the engine recovered: the dead connection was discarded, not handed out again
    assert replace_table(engine, new, "countries").changed
    assert same_rows(engine, new)


def test_swap_refuses_to_drop_a_table_with_a_view_and_rows_keeps_the_view(engine):
    old = countries(10, seed=1)
    replace_table(engine, old, "countries", strategy="swap")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE VIEW big_countries AS SELECT * FROM countries WHERE population > 1000")

    with pytest.raises(LoadError) as err:
        replace_table(engine, countries(10, seed=2), "countries", strategy="swap")

    assert str(err.value).startswith(
        "cannot swap public.countries: cannot drop table countries because other objects depend on it; "
    )
    assert str(err.value).endswith(
        "load with strategy=rows (the default), which keeps them, or drop them; the table was not changed"
    )
    assert read_table(engine) == as_tuples(old)
    assert relnames(engine) == ["countries"]
    assert replace_table(engine, countries(10, seed=2), "countries").changed
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM big_countries").scalar_one() > 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_privileges_of_the_old_table_are_kept(engine, strategy):
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" NOLOGIN')
    try:
        replace_table(engine, countries(5, seed=1), "countries", strategy=strategy)
        with engine.begin() as conn:
            conn.exec_driver_sql(f'GRANT SELECT ON countries TO "{role}"')

        replace_table(engine, countries(5, seed=2), "countries", strategy=strategy)

        with engine.connect() as conn:
            can = conn.execute(sa.text("SELECT has_table_privilege(:r, 'countries', 'SELECT')"), {"r": role})
            assert can.scalar_one() is True
            can = conn.execute(sa.text("SELECT has_table_privilege(:r, 'countries', 'INSERT')"), {"r": role})
            assert can.scalar_one() is False
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
            conn.exec_driver_sql(f'DROP ROLE "{role}"')


# --- row-drop rule: "refuse a load smaller than min_row_fraction of the current table" ----------


def test_row_drop_rule_refuses_a_load_below_the_fraction_and_writes_nothing(engine):
    replace_table(engine, countries(16, seed=1), "northern_europe_countries")
    before = relation_state(engine, "northern_europe_countries")

    with pytest.raises(QualityGateError) as err:
        replace_table(engine, countries(7, seed=2), "northern_europe_countries")

    assert str(err.value) == (
        "new data has 7 rows, 44% of the 16 in northern_europe_countries, below min_row_fraction=0.5 "
        "(at least 8 rows); re-run with force=True if this is expected"
    )
    assert err.value.for_audience("cli").endswith(
        "below --min-row-fraction 0.5 (at least 8 rows); re-run with --force if this is expected"
    )
    assert relation_state(engine, "northern_europe_countries") == before


def test_row_drop_rule_boundaries(engine):
    replace_table(engine, countries(16, seed=1), "countries")

    half = replace_table(engine, countries(8, seed=2), "countries")  # exactly half: allowed at 0.5
    with pytest.raises(
        QualityGateError, match=r"^new data has 7 rows, 88% of the 8 in countries, below min_row_fraction=0.9 "
    ):
        replace_table(engine, countries(7, seed=3), "countries", min_row_fraction=0.9)
    kept = replace_table(engine, countries(2, seed=4), "countries", min_row_fraction=0.2)  # 25% kept at 0.2
    forced = replace_table(engine, countries(1, seed=5), "countries", min_row_fraction=1.0, force=True)

    assert (half.changed, half.previous_rows, half.rows) == (True, 16, 8)
    assert (kept.changed, kept.previous_rows, kept.rows) == (True, 8, 2)
    assert (forced.changed, forced.previous_rows, forced.rows) == (True, 2, 1)
    assert same_rows(engine, countries(1, seed=5))
    with pytest.raises(ConfigurationError, match=r"^min_row_fraction must be between 0 and 1"):
        replace_table(engine, countries(8, seed=2), "countries", min_row_fraction=50)


def test_no_table_or_an_empty_table_never_refuses(engine):
    first = replace_table(engine, countries(1), "countries", min_row_fraction=1.0)
    emptied = replace_table(engine, countries(0), "countries", force=True)
    again = replace_table(engine, countries(1, seed=2), "countries", min_row_fraction=1.0)
    assert (first.changed, first.previous_rows) == (True, None)
    assert (emptied.rows, again.previous_rows, again.rows) == (0, 0, 1)


# --- database unreachable ----------------------------------------------------------------


def _assert_secret_free(err: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    message = str(err)
    assert CANARY not in message
    assert CANARY not in repr(err)
    assert CANARY not in "".join(traceback.format_exception(err))
    assert CANARY not in caplog.text
    assert "\n" not in message
    assert "check the connection settings" in message
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


def test_a_role_that_may_only_write_rows_loads_through_a_temporary_table(pg, engine, database_url):
    """docs/operations.md: TEMP on the database and SELECT, INSERT, DELETE on the table are enough for "rows"."""
    replace_table(engine, countries(10, seed=1), "countries")
    role = f"loader_{uuid.uuid4().hex[:8]}"
    database = sa.make_url(database_url).database
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
        conn.exec_driver_sql(f'GRANT TEMP ON DATABASE "{database}" TO "{role}"')
        conn.exec_driver_sql(f'GRANT USAGE ON SCHEMA public TO "{role}"')
        conn.exec_driver_sql(f'GRANT SELECT, INSERT, DELETE ON countries TO "{role}"')
    loader = sa.create_engine(f"postgresql+psycopg2://{role}@/{database}?host={pg.socket_dir}")
    try:
        with loader.connect() as conn:
            assert conn.exec_driver_sql("SELECT has_schema_privilege('public', 'CREATE')").scalar_one() is False
        new = countries(10, seed=2)
        result = replace_table(loader, new, "countries")
        assert result.changed and same_rows(engine, new)
        assert relnames(engine) == ["countries"]
    finally:
        loader.dispose()
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
            conn.exec_driver_sql(f'DROP ROLE "{role}"')


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


@pytest.mark.parametrize("where", ["socket", "tcp", "no database"])
def test_the_checks_before_a_load_fail_as_the_load_does_when_the_database_is_unreachable(pg, where, caplog):
    """resolve_table and the unchanged check connect with psycopg2 alone, and say what the load (SQLAlchemy) says."""
    caplog.set_level(logging.DEBUG)
    url = {
        "socket": f"postgresql+psycopg2://loader:{CANARY}@/countries_db?host={tempfile.mkdtemp(prefix='no-postgres-')}",
        "tcp": f"postgresql+psycopg2://loader:{CANARY}@127.0.0.1:{free_port()}/countries_db",
        "no database": f"postgresql+psycopg2://{pg.user}:{CANARY}@/no_such_db?host={pg.socket_dir}",
    }[where]
    engine = sa.create_engine(url)
    with pytest.raises(DatabaseUnreachableError) as by_load:
        replace_table(engine, countries(3), "countries")
    engine.dispose()
    db = Database.from_url(url)
    with pytest.raises(DatabaseUnreachableError) as by_resolve:
        resolve_table(db, "countries")
    with pytest.raises(DatabaseUnreachableError) as by_check:
        live_rows(db, PUBLIC_COUNTRIES, {"fingerprint": "0:0", "columns": list(COLUMNS), "rows": 0})

    assert str(by_resolve.value) == str(by_check.value) == str(by_load.value)
    _assert_secret_free(by_resolve.value, caplog)
    assert CANARY not in repr(db) and CANARY not in db.description


def test_resolve_table_makes_the_schema_explicit_over_psycopg2(engine, db):
    assert resolve_table(db, "countries") == PUBLIC_COUNTRIES
    assert resolve_table(db, "Public.Countries") == PUBLIC_COUNTRIES
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA analytics")
        conn.exec_driver_sql(f'ALTER DATABASE "{db.database}" SET search_path = analytics')
    assert resolve_table(db, "countries") == TableName("analytics", "countries")  # a new session's search_path
    with pytest.raises(LoadError, match='schema "nowhere" does not exist'):
        resolve_table(db, "nowhere.countries")
    with pytest.raises(InvalidTableNameError):
        resolve_table(db, "no-such name")


# --- what changed ---------------------------------------------------------------------------

BEFORE = [
    ("Republic of Finland", "Euro", 5_500_000),
    ("Iceland", "Icelandic króna", 370_000),
    ("Kingdom of Denmark", "Danish krone", 5_900_000),
    ("Kingdom of Norway", "Norwegian krone", 5_400_000),
    ("Kingdom of Sweden", "Swedish krona", 10_400_000),
    ("Faroe Islands", "Danish krone", 54_000),
    ("Faroe Islands", "Faroese króna", 54_000),
    ("Åland Islands", "Euro", 30_000),
    ("Narnia", None, 1_000),
]
AFTER = [
    ("Republic of Finland", "Euro", 5_600_000),  # population +100,000
    ("Iceland", "Euro", 370_000),  # currency changed
    ("Iceland", "Icelandic króna", 370_000),
    ("Kingdom of Denmark", "Danish krone", 5_900_000),
    ("Kingdom of Norway", "Norwegian krone", 5_350_000),  # population -50,000
    ("Kingdom of Sweden", "Swedish krona", 10_400_000),
    ("Faroe Islands", "Danish krone", 54_001),  # population +1; currency removed
    ("Åland Islands", "Euro", 30_000),
    ("Svalbard and Jan Mayen", "Norwegian krone", 2_500),  # added; Narnia removed
]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_change_report_names_added_and_removed_countries_population_and_currency_changes(engine, strategy):
    replace_table(engine, frame(BEFORE), "countries", strategy=strategy)

    result = replace_table(engine, frame(AFTER), "countries", changes=SPEC, strategy=strategy)

    changes = result.changes  # lists in code-point order, the largest population change first
    assert changes.phrase() == "+1 country, -1 country, 3 populations changed, currencies changed for 2 countries"
    assert changes.log_lines() == [
        "countries added (1): Svalbard and Jan Mayen",
        "countries removed (1): Narnia",
        "populations changed (3), largest: Republic of Finland 5,500,000 -> 5,600,000 (+100,000), "
        "Kingdom of Norway 5,400,000 -> 5,350,000 (-50,000), Faroe Islands 54,000 -> 54,001 (+1)",
        "currencies changed for 2 countries: Faroe Islands: {Danish krone, Faroese króna} -> {Danish krone}, "
        "Iceland: {Icelandic króna} -> {Euro, Icelandic króna}",
    ]
    assert changes.table_rows() == [
        {"change": "added", "country": "Svalbard and Jan Mayen", "before": "", "after": ""},
        {"change": "removed", "country": "Narnia", "before": "", "after": ""},
        {"change": "population", "country": "Republic of Finland", "before": "5,500,000", "after": "5,600,000"},
        {"change": "population", "country": "Kingdom of Norway", "before": "5,400,000", "after": "5,350,000"},
        {"change": "population", "country": "Faroe Islands", "before": "54,000", "after": "54,001"},
        {
            "change": "currencies",
            "country": "Faroe Islands",
            "before": "{Danish krone, Faroese króna}",
            "after": "{Danish krone}",
        },
        {
            "change": "currencies",
            "country": "Iceland",
            "before": "{Icelandic króna}",
            "after": "{Euro, Icelandic króna}",
        },
    ]
    assert changes.markdown().startswith(
        "**Changes:** +1 country, -1 country, 3 populations changed, currencies changed for 2 countries\n\n"
        "| change | country | before | after |\n|---|---|---|---|\n| added | Svalbard and Jan Mayen |  |  |\n"
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_population_put_back_on_one_of_a_countrys_rows_is_a_population_change(engine, strategy):
    """A hand edit of one of Faroe Islands' two rows (its greatest population unchanged) is repaired: the report
    must not say "same populations"."""
    edited = [(n, c, 1 if c == "Faroese króna" else p) for n, c, p in BEFORE]
    replace_table(engine, frame(edited), "countries", strategy=strategy)

    changes = replace_table(engine, frame(BEFORE), "countries", changes=SPEC, strategy=strategy).changes

    assert changes.phrase() == "1 population changed"
    assert changes.log_lines() == ["populations changed (1), largest: Faroe Islands 1 / 54,000 -> 54,000"]
    assert changes.table_rows() == [
        {"change": "population", "country": "Faroe Islands", "before": "1 / 54,000", "after": "54,000"}
    ]


def test_a_population_changed_on_a_middle_row_of_a_country_is_a_population_change(engine):
    """Neither the least nor the greatest of the country's populations changes: still a population change."""
    rows = [("Zimbabwe", currency, population) for currency, population in (("A", 1), ("B", 7), ("C", 15))]
    replace_table(engine, frame(rows), "countries")

    changed = [(n, c, 9 if c == "B" else p) for n, c, p in rows]
    changes = replace_table(engine, frame(changed), "countries", changes=SPEC).changes

    assert changes.phrase() == "1 population changed"
    assert changes.log_lines() == ["populations changed (1), largest: Zimbabwe 1 / 7 / 15 -> 1 / 9 / 15"]


def test_change_report_caps_its_lists_and_counts_exactly(engine):
    base = [(f"Country {i:02d}", "Euro", 1000 + i) for i in range(30)]
    replace_table(engine, frame(base), "countries")
    grown = [(n, c, p * 2 if i < 12 else p) for i, (n, c, p) in enumerate(base)]
    grown += [(f"New {i:02d}", None, 5) for i in range(13)]

    changes = replace_table(engine, frame(grown), "countries", changes=SPEC).changes

    assert changes.phrase() == "+13 countries, 12 populations changed"
    assert changes.log_lines()[0] == (
        "countries added (13): New 00, New 01, New 02, New 03, New 04, New 05, New 06, New 07, New 08, New 09"
        " and 3 more"
    )
    assert changes.table_rows()[10] == {"change": "added", "country": "and 3 more", "before": "", "after": ""}
    rows = changes.table_rows()
    assert rows[11] == {"change": "population", "country": "Country 11", "before": "1,011", "after": "2,022"}
    assert rows[21] == {"change": "population", "country": "and 2 more", "before": "", "after": ""}


def test_change_report_when_every_row_differs_compares_every_country(engine):
    replace_table(engine, frame(BEFORE), "countries")
    after = [(n, c, p * 2) for n, c, p in BEFORE if n != "Narnia"] + [("Atlantis", "Euro", 1)]

    result = replace_table(engine, frame(after), "countries", changes=SPEC)

    assert (result.deleted, result.inserted) == (len(BEFORE), len(after))
    assert result.changes.phrase() == "+1 country, -1 country, 7 populations changed"
    assert Counter(read_table(engine)) == Counter(after)


def test_change_report_on_a_first_load_lists_every_country_as_added(engine):
    changes = replace_table(engine, frame(BEFORE), "countries", changes=SPEC).changes
    assert changes.phrase() == "+8 countries"
    assert changes.log_lines()[0].startswith("countries added (8): Faroe Islands, Iceland, Kingdom of Denmark, ")


def test_rows_in_another_order_are_the_same_table(engine):
    replace_table(engine, frame(BEFORE), "countries")
    result = replace_table(engine, frame(BEFORE[::-1]), "countries", changes=SPEC)  # a table's rows have no order
    assert (result.changed, result.changes.kinds, result.changes.phrase()) == (False, (), "no changes")
    assert result.changes.table_rows() == []


def test_change_report_says_why_it_could_not_compare(engine):
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE countries (nation_official_name text, currency_name text, population text)")
    result = replace_table(engine, frame(BEFORE), "countries", changes=SPEC)
    assert result.changes.phrase() == 'changes not compared: the previous table\'s "population" is not numeric'


# --- issue 16: the table equals the source after every load, whatever was done by hand ----------


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE countries SET population = 1 WHERE nation_official_name = 'Country 0-3'",
        "DELETE FROM countries WHERE nation_official_name = 'Country 0-3';"
        " INSERT INTO countries VALUES ('Atlantis', 'Euro', 5)",  # same row count
    ],
)
def test_a_hand_edit_is_repaired_by_the_next_load_of_the_same_data(engine, strategy, edit):
    df = countries(10)
    replace_table(engine, df, "countries", strategy=strategy)
    with engine.begin() as conn:
        conn.exec_driver_sql(edit)

    result = replace_table(engine, df, "countries", strategy=strategy, changes=SPEC)

    assert result.changed and same_rows(engine, df)
    if strategy == "rows":
        assert (result.deleted, result.inserted) == (1, 1)  # only the edited row
    assert result.changes.kinds
    assert replace_table(engine, df, "countries", strategy=strategy).changed is False


def test_rows_are_compared_by_value_in_the_tables_own_types_and_a_users_cascade_keeps_its_rows(engine):
    """Issue 16 §2: numeric(14,2), a unique key and ON DELETE CASCADE: one country changed, one rewritten."""
    df = countries(20)
    replace_table(engine, df, "countries")
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE countries ALTER population TYPE numeric(14,2)")
        conn.exec_driver_sql("ALTER TABLE countries ADD UNIQUE (nation_official_name)")
        conn.exec_driver_sql(
            "CREATE TABLE notes (country text REFERENCES countries (nation_official_name) ON DELETE CASCADE, n int)"
        )
        conn.exec_driver_sql("INSERT INTO notes SELECT nation_official_name, 1 FROM countries")
    xmins = _xmins(engine)
    changed = df.copy()
    changed.loc[4, "population"] += 1

    result = replace_table(engine, changed, "countries", changes=SPEC)

    assert (result.deleted, result.inserted) == (1, 1)
    assert result.changes.phrase() == "1 population changed"
    assert len(set(_xmins(engine).items()) - set(xmins.items())) == 1  # the 19 other rows are untouched
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM notes").scalar_one() == 19  # only the changed one cascaded
        assert conn.exec_driver_sql("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid ="
                                    " 'countries'::regclass AND attname = 'population'").scalar_one() == "numeric(14,2)"
    assert replace_table(engine, changed, "countries").changed is False  # 364260.00 equals 364260


def test_a_load_waits_for_another_load_of_the_table_only_so_long_then_says_table_busy(engine, pg, database_url):
    from flows.load.locks import _lock_key

    replace_table(engine, countries(3), "countries")
    with contextlib.closing(dbapi_connect(pg, database_url, "lost loader")) as other, other.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("public.countries"),))
        started = time.monotonic()
        with pytest.raises(TableBusyError) as err:
            replace_table(engine, countries(3, seed=2), "countries", loader_wait=0.5)
        assert time.monotonic() - started < 10
        cur.execute("SELECT pg_backend_pid()")
        pid = cur.fetchone()[0]
        cur.execute("ROLLBACK")
    message = str(err.value)
    assert message.startswith("table public.countries is busy")
    assert f"pid {pid}" in message and 'application "lost loader"' in message
    assert same_rows(engine, countries(3))


def test_an_interrupt_while_a_load_waits_for_a_lock_rolls_it_back(engine, pg, database_url):
    replace_table(engine, countries(5), "countries")
    began = time.monotonic()  # the load above committed before: not this interrupt's business
    with contextlib.closing(dbapi_connect(pg, database_url, "user")) as user, user.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("LOCK TABLE countries IN EXCLUSIVE MODE")  # the load waits for its write lock
        load = Background(engine, countries(5, seed=2), "countries", lock_timeout=30, lock_retries=0)

        def waiting() -> bool:
            cur.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'countries'::regclass")
            return cur.fetchone()[0] > 0

        wait_until(waiting, "the load to wait for its lock")
        try:
            committed = interrupt_loads(timeout=10, since=began)
            with pytest.raises(LoadInterruptedError, match="^interrupted: the table was not changed"):
                load.result()
            assert interrupt_loads(timeout=1, since=began) == []  # nothing left running, nothing committed since
        finally:
            resume_loads()
        cur.execute("ROLLBACK")
    assert committed == []
    assert same_rows(engine, countries(5))


def test_a_connection_lost_during_the_commit_is_not_said_to_leave_the_table_unchanged(engine, pg, database_url):
    """The server may have committed before the connection was lost: the error must say the outcome is unknown.
    A user's deferred constraint trigger holds the load inside its COMMIT; the session is then terminated."""
    replace_table(engine, countries(5), "countries")
    with contextlib.closing(dbapi_connect(pg, database_url, "user")) as user, user.cursor() as cur:
        user.autocommit = True
        cur.execute(
            "CREATE FUNCTION wait_at_commit() RETURNS trigger LANGUAGE plpgsql AS"
            " $$BEGIN PERFORM pg_advisory_lock(4242); RETURN NULL; END$$;"
            " CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON countries DEFERRABLE INITIALLY DEFERRED"
            " FOR EACH ROW EXECUTE FUNCTION wait_at_commit(); SELECT pg_advisory_lock(4242)"
        )
        try:
            load = Background(engine, countries(5, seed=2), "countries", lock_timeout=30)

            def committing() -> int | None:
                cur.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND NOT granted")
                return (cur.fetchone() or [None])[0]

            wait_until(committing, "the load's COMMIT to wait in the trigger")
            cur.execute("SELECT pg_terminate_backend(%s)", (committing(),))
            with pytest.raises(CommitUnknownError, match=r"^loading public\.countries: the connection was lost during"
                               r" the commit \(.+\); the table holds its previous rows or the new ones: re-run$"):
                load.result()
        finally:
            cur.execute("DROP TRIGGER at_commit ON countries; DROP FUNCTION wait_at_commit()")
            cur.execute("SELECT pg_advisory_unlock_all()")
    assert same_rows(engine, countries(5))  # here the server had not committed


def test_an_interrupt_waits_only_for_commits_under_way(engine):
    """A load that has not reached its commit can no longer commit: the interrupt need not wait for it to end, and
    it did not change the table (before: it waited the whole timeout, then said a commit was under way)."""
    from flows.load.locks import running_loads

    proxy = engine.raw_connection()
    try:
        with running_loads(proxy.dbapi_connection) as load:  # registered, never reaches its commit
            began = time.monotonic()
            assert interrupt_loads(timeout=30, since=began) == []
            assert time.monotonic() - began < 15 and load.interrupted
    finally:
        resume_loads()
        proxy.close()


def test_a_second_interrupt_inside_the_first_returns(engine):
    """A second Ctrl-C's handler runs on the main thread inside the first one's, e.g. while it cancels a load
    (a network round trip): it must not wait for a lock the first one holds. The stand-in connection's cancel
    interrupts again, as that second signal would."""
    from flows.load.locks import running_loads

    class CancelInterrupted:
        signals = 1

        def cancel(self) -> None:
            if self.signals:  # one second signal
                self.signals -= 1
                interrupt_loads(timeout=0)

    finished = threading.Event()

    def first_interrupt() -> None:
        with running_loads(CancelInterrupted()):
            interrupt_loads(timeout=0)
        finished.set()

    try:
        threading.Thread(target=first_interrupt, daemon=True).start()
        assert finished.wait(30), "the nested interrupt waited for the lock its own thread held"
    finally:
        resume_loads()


def test_a_load_that_starts_after_an_interrupt_rolls_back_until_loads_resume(engine):
    """An interrupt that comes before the load registers (the run's thread busy in the quality gate) must still
    stop it: every load from then on rolls back, until ``resume_loads``."""
    replace_table(engine, countries(5), "countries")
    try:
        assert interrupt_loads(timeout=1, since=time.monotonic()) == []  # none running, none committed since
        with pytest.raises(LoadInterruptedError, match="^interrupted: the table was not changed"):
            replace_table(engine, countries(5, seed=2), "countries")
    finally:
        resume_loads()
    assert same_rows(engine, countries(5))
    replace_table(engine, countries(5, seed=2), "countries")  # resumed: loads commit again
    assert same_rows(engine, countries(5, seed=2))


def test_ctrl_c_while_the_run_is_busy_before_the_load_leaves_the_table_and_says_so(engine):
    """The command line's guard (flows.cli.Interruptible): Ctrl-C lands while the run's thread is in synchronous
    code before the load (as in the quality gate), which goes on into the load; the table must stay as it was and
    the one line must say so."""
    import asyncio
    import os
    import signal

    from flows.cli import Interrupted, Interruptible

    replace_table(engine, countries(5), "countries")

    async def run(guard: Interruptible) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        wait_until(lambda: guard.signum, "the signal handler to run")  # synchronous: the event loop waits too
        replace_table(engine, countries(5, seed=2), "countries")  # as the load task, no await before it
        await asyncio.sleep(0)  # the run's next await: where the cancellation lands

    with Interruptible() as guard, pytest.raises(Interrupted) as stopped:
        guard.run(run(guard))
    assert stopped.value.args == ("interrupted: the table was not changed", 128 + signal.SIGINT)
    assert same_rows(engine, countries(5))
    replace_table(engine, countries(5, seed=2), "countries")  # the guard is gone: loads commit again
    assert same_rows(engine, countries(5, seed=2))


# --- issue 16 §7: messages that name the real cause, and mask the password only as a credential ---


def test_a_short_password_is_masked_as_a_credential_never_inside_words(pg):
    db = Database.from_url(f"postgresql+psycopg2://{pg.user}:st@/no_such_db?host={pg.socket_dir}", block="warehouse")
    with pytest.raises(DatabaseUnreachableError) as err:
        db.connect()
    message = str(err.value)
    assert 'database "no_such_db" does not exist' in message
    assert "check the warehouse block's connection settings" in message
    text = "postgresql://u:st@h/d password=st statement timeout; does not exist"
    assert scrub(text, db) == "postgresql://u:***@h/d password=*** statement timeout; does not exist"


def test_a_run_may_skip_only_while_the_source_and_the_tables_content_are_what_the_last_load_left(
    prefect_server, engine, db
):
    """Issue 16 §1: the skip checks the table's content (not its oid or row count); the state is a Prefect Variable."""
    import asyncio

    from flows.load import state

    df = countries(8)
    result = replace_table(engine, df, "countries")
    assert asyncio.run(state.stored_state(db, PUBLIC_COUNTRIES)) is None  # no state yet
    asyncio.run(state.save_state(db, PUBLIC_COUNTRIES, SOURCE_A, result))

    stored = asyncio.run(state.stored_state(db, PUBLIC_COUNTRIES))
    assert stored["source"] == SOURCE_A
    assert live_rows(db, PUBLIC_COUNTRIES, stored) == 8
    with engine.begin() as conn:  # same oid, same row count, other content
        conn.exec_driver_sql("UPDATE countries SET population = population + 1 WHERE ctid = (SELECT min(ctid) FROM"
                             " countries)")  # fmt: skip
    assert live_rows(db, PUBLIC_COUNTRIES, stored) is None
    asyncio.run(state.mark_pending(db, PUBLIC_COUNTRIES, stored))  # before a load of other data
    assert asyncio.run(state.stored_state(db, PUBLIC_COUNTRIES)) == {**stored, "pending": True}
    with engine.connect() as conn:  # nothing of the pipeline's in the user's schema
        assert conn.exec_driver_sql("SELECT count(*) FROM pg_class WHERE relname LIKE '%%pipeline%%'").scalar_one() == 0
