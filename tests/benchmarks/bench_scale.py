"""Benchmark: the whole run at scale, ``python flows/countries.py --regions all`` against a hand-written script.

Issue 18: a self-hosted v3.1 server (the fake, on 127.0.0.1) holding N generated countries
(``tests.countries_data.synthetic_countries``, spread over the six regions), and:

* **ours**: ``python flows/countries.py --api v3.1 --base-url <fake> --regions all --cache-minutes 0
  --table <new table> --db-block <block>`` against a running ``prefect server`` (``PREFECT_API_URL``),
  as a deployment's run would be, loading into the embedded PostgreSQL;
* **the script**: what a competent engineer would write instead (:data:`SCRIPT_SOURCE`, about 25 lines):
  6 concurrent ``httpx`` requests with ``fields=name,currencies,population``, ``json``, a DataFrame of one
  row per country and currency, ``CREATE TABLE`` and psycopg2 ``copy_expert``, into a new table of the
  same database.

Both are fresh ``python`` processes, run in turn (ours, script, ours, script, ...), each into a new
table; the figures are medians: wall seconds (target at 200,000 countries: ours <= 2.0 x the script)
and peak memory of each process tree (informational). The running Prefect server and PostgreSQL are
not counted on either side. After the runs, both tables must hold the same rows (EXCEPT ALL both ways).

``run(smoke=True)``: 600 countries, one run of each, against ``$PREFECT_API_URL`` when set.
``python -m tests.benchmarks.bench_scale [--smoke] [--sizes 20000 200000] [--repeats N]`` prints the table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path

from tests.benchmarks._report import Figure, format_table
from tests.benchmarks.bench_e2e import REPO_ROOT, Run, _db_block_on, _env, _ours_cmd, _pair, measure, prefect_server
from tests.countries_data import synthetic_countries
from tests.fake_api import FakeRestCountries

SCALE_RATIO_TARGET = 2.0  # ours / the script, at 200,000 countries (issue 18)
TARGET_SIZE = 200_000
SIZES = (20_000, 200_000)
SMOKE_SIZE = 600
BASELINE = "hand-written script (httpx + json + DataFrame + COPY)"

SCRIPT_SOURCE = '''\
"""The baseline: fetch every region concurrently, one row per country and currency, COPY into a new table."""
import asyncio, io, json, sys

import httpx, pandas as pd, psycopg2

BASE, DSN, TABLE = sys.argv[1:4]
REGIONS = ["Africa", "Americas", "Antarctic", "Asia", "Europe", "Oceania"]


async def fetch_all():
    async with httpx.AsyncClient(timeout=600) as client:
        async def fetch(region):
            r = await client.get(f"{BASE}/v3.1/region/{region}", params={"fields": "name,currencies,population"})
            r.raise_for_status()
            return json.loads(r.content)
        return await asyncio.gather(*(fetch(region) for region in REGIONS))


rows = []
for records in asyncio.run(fetch_all()):
    for c in records:
        names = [v.get("name") for v in (c.get("currencies") or {}).values()] or [None]
        rows += [(c["name"]["official"], name, c.get("population")) for name in names]
df = pd.DataFrame(rows, columns=["nation_official_name", "currency_name", "population"]).astype({"population": "Int64"})
buf = io.StringIO()
df.to_csv(buf, sep="\\t", header=False, index=False, na_rep="\\\\N")
buf.seek(0)
with psycopg2.connect(DSN) as conn, conn.cursor() as cur:
    cur.execute(f'CREATE TABLE "{TABLE}" (nation_official_name text, currency_name text, population bigint)')
    cur.copy_expert(f'COPY "{TABLE}" FROM STDIN', buf)
print(len(df), "rows")
'''


def _psql_dsn(pg_dir: Path) -> str:
    from flows.ops import local

    db = local.database_status(pg_dir)
    if db is None:
        raise RuntimeError(f"the embedded PostgreSQL in {pg_dir} is not running")
    return db.psql_url


def _same_rows(dsn: str, ours: str, theirs: str) -> int:
    """The row count both tables share; raises when their rows differ (as multisets)."""
    import psycopg2

    cols = "nation_official_name, currency_name, population"
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            f'SELECT (SELECT count(*) FROM "{ours}"), (SELECT count(*) FROM "{theirs}"), '
            f'(SELECT count(*) FROM (SELECT {cols} FROM "{ours}" EXCEPT ALL SELECT {cols} FROM "{theirs}") a), '
            f'(SELECT count(*) FROM (SELECT {cols} FROM "{theirs}" EXCEPT ALL SELECT {cols} FROM "{ours}") b)'
        )
        n_ours, n_theirs, only_ours, only_theirs = cur.fetchone()
    if (n_ours, only_ours, only_theirs) != (n_theirs, 0, 0):
        raise AssertionError(
            f"the tables differ: ours {n_ours} rows ({only_ours} not in the script's), "
            f"the script's {n_theirs} rows ({only_theirs} not in ours)"
        )
    return n_ours


def _figures(size: int, ours: list[Run], script: list[Run], rows: int, smoke: bool) -> list[Figure]:
    target = SCALE_RATIO_TARGET if size >= TARGET_SIZE and not smoke else None
    note = f"{size:,} countries, {rows:,} rows; median of {len(ours)}; tables checked equal"
    name = f"scale: --regions all, {size:,} countries, running server"
    return _pair(name, script, ours, note, target, baseline_name=BASELINE)


def run(smoke: bool = False, sizes: tuple[int, ...] = SIZES, repeats: int = 2) -> list[Figure]:
    """Measure (see the module docstring); ``smoke``: 600 countries, one run of each."""
    sizes, repeats = ((SMOKE_SIZE,), 1) if smoke else (sizes, repeats)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    (tmp / "script.py").write_text(SCRIPT_SOURCE)
    figures: list[Figure] = []
    try:
        with ExitStack() as stack:
            api_url = os.environ.get("PREFECT_API_URL") if smoke else None
            if not api_url:
                api_url = stack.enter_context(prefect_server(tmp / "server-home"))
            env = _env(tmp / "client-home", tmp / "local", api_url)
            pg_dir = tmp / "local" / "postgres"
            block = _db_block_on(api_url, pg_dir)
            dsn = _psql_dsn(pg_dir)
            for size in sizes:
                print(f"scale: {size:,} countries ...", file=sys.stderr, flush=True)
                with FakeRestCountries(synthetic_countries(size)) as fake:
                    ours: list[Run] = []
                    script: list[Run] = []
                    for _ in range(repeats):
                        mine, theirs = f"scale_ours_{uuid.uuid4().hex[:8]}", f"scale_script_{uuid.uuid4().hex[:8]}"
                        cmd = _ours_cmd(fake.v31_base_url, "--regions", "all", "--table", mine, "--db-block", block)
                        ours.append(measure(cmd, env, REPO_ROOT).check("ours"))
                        script_cmd = [sys.executable, str(tmp / "script.py"), fake.v31_base_url, dsn, theirs]
                        script.append(measure(script_cmd, env, tmp).check("the script"))
                        rows = _same_rows(dsn, mine, theirs)
                    figures += _figures(size, ours, script, rows, smoke)
    finally:
        from flows.ops import local

        local.stop_database(tmp / "local" / "postgres")
        shutil.rmtree(tmp, ignore_errors=True)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=2)
    ns = parser.parse_args()
    print(format_table(run(smoke=ns.smoke, sizes=tuple(ns.sizes), repeats=ns.repeats)))
