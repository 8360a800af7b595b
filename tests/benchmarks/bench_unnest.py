"""Benchmark of flows.transform.unnest against pandas.json_normalize (contract: tests/benchmarks/_report.py).

Records come from :func:`country_records`, a seeded generator of REST-Countries-v3.1-like
records with the real API's kinds of nesting: ``name.nativeName`` and ``currencies``,
``languages`` and ``gini`` are data-keyed maps (keys drawn from 150 language codes,
160 currency codes and 16 years, as the real API has ~150 of each), ``tld``, ``capital``,
``timezones`` are lists of strings, ``regionalBlocs`` a list of dicts, ``idd``, ``car``,
``flags``... nested dicts. Sibling lists are kept short (mostly one element, sometimes
two) so that the full cross product stays at about two rows per record. The records of a
page of 1,000 are built, dumped to JSON and parsed back with one ``json.loads``, as an API
client gets them: every value is a fresh object, keys are shared within a page.

Figures (``run()``):

1. 100k records, ours (full unnest, every list and map exploded, fully flat) against
   ``json_normalize`` (which flattens dicts only: it leaves lists in cells and spreads maps
   over one column per key), CPU seconds, best of 3, each in its own subprocess.
2. The same two calls' peak memory: RSS high-water mark above the RSS just before the call
   (Linux ``VmHWM`` reset through ``/proc/self/clear_refs``), in those subprocesses.
3. 1M records streamed from the generator into a full unnest, in a subprocess: peak RSS
   above the baseline just before the call, against the resulting frame's
   ``memory_usage(deep=True)``.
4. For information, figure 1 on records whose maps draw from only 20 language and 10
   currency codes: json_normalize then has far fewer columns to build and the ratio is less
   flattering; it has no target.

``run(smoke=True)`` uses a few hundred records in this process and asserts that ours and
json_normalize agree (see :func:`_check_agreement`).

``python -m tests.benchmarks.bench_unnest [--smoke] [--repeat N]`` prints the figures as a
table; with ``--repeat N`` the whole measurement runs N times and each figure is the median
of the N runs (ours and the baseline each), for a machine shared with other work.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import string
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from flows.transform.unnest import unnest
from tests.benchmarks._report import Figure, format_table

REPO = Path(__file__).resolve().parents[2]
MiB = 2**20
PAGE = 1_000

_REGIONS = ("Africa", "Americas", "Asia", "Europe", "Oceania", "Antarctic")
_SYMBOLS = ("$", "kr", "€", "£", "Fr", "¥", "₹", "R")


def _codes(rnd: random.Random, count: int, letters: str) -> list[str]:
    codes: set[str] = set()
    while len(codes) < count:
        codes.add("".join(rnd.choices(letters, k=3)))
    return sorted(codes)


def _pools(diverse: bool) -> tuple[list[str], list[tuple[str, str, str]]]:
    rnd = random.Random(20240)  # noqa: S311 - reproducible test data, not crypto
    languages = _codes(rnd, 150 if diverse else 20, string.ascii_lowercase)
    currencies = [
        (code, f"Currency of {code}", rnd.choice(_SYMBOLS))
        for code in _codes(rnd, 160 if diverse else 10, string.ascii_uppercase)
    ]
    return languages, currencies


def _record(i: int, rnd: random.Random, languages: list[str], currencies: list) -> dict[str, Any]:
    common = f"Country {i}"
    langs = rnd.sample(languages, 1 if rnd.random() < 0.7 else 2)
    money = rnd.sample(currencies, rnd.choice((0, 1, 1, 1, 1, 1, 1, 2)))
    return {
        "name": {
            "common": common,
            "official": f"Republic of {common}",
            "nativeName": {
                lang: {"official": f"{common} ({lang}, official)", "common": f"{common} ({lang})"} for lang in langs
            },
        },
        "tld": [f".c{i % 997}"] if rnd.random() < 0.97 else [f".c{i % 997}", f".x{i % 89}"],
        "cca2": f"C{i % 26}",
        "ccn3": f"{i % 1000:03d}",
        "cca3": f"C{i % 676:03d}",
        "independent": rnd.random() < 0.8,
        "status": "officially-assigned",
        "unMember": rnd.random() < 0.7,
        "currencies": {code: {"name": name, "symbol": symbol} for code, name, symbol in money},
        "idd": {"root": f"+{rnd.randint(1, 9)}", "suffixes": [f"{rnd.randint(0, 99):02d}"]},
        "capital": [f"Capital of {common}"] if rnd.random() < 0.95 else [],
        "region": rnd.choice(_REGIONS),
        "languages": {lang: f"Language {lang}" for lang in langs},
        "latlng": {"lat": rnd.uniform(-90, 90), "lng": rnd.uniform(-180, 180)},
        "landlocked": rnd.random() < 0.2,
        "area": round(rnd.uniform(1, 1e7), 1),
        "demonyms": {"eng": {"f": f"{common}ian", "m": f"{common}ian"}},
        "maps": {
            "googleMaps": f"https://goo.gl/maps/{i}",
            "openStreetMaps": f"https://www.openstreetmap.org/relation/{i}",
        },
        "population": rnd.randint(1_000, 1_400_000_000),
        "car": {"signs": [f"C{i % 26}"], "side": rnd.choice(("right", "left"))},
        "timezones": [f"UTC+{rnd.randint(0, 12):02d}:00"],
        "continents": [rnd.choice(_REGIONS)],
        "flags": {"png": f"https://flagcdn.com/w320/{i}.png", "svg": f"https://flagcdn.com/{i}.svg"},
        "regionalBlocs": [{"acronym": "EU", "name": "European Union"}] if rnd.random() < 0.3 else [],
        "gini": {str(rnd.randint(2005, 2020)): round(rnd.uniform(20, 60), 1)} if rnd.random() < 0.6 else {},
    }


def country_records(n: int, *, seed: int = 1, diverse: bool = True) -> Iterator[dict[str, Any]]:
    """``n`` country-like records, the same for the same seed, parsed from JSON a page at a time."""
    languages, currencies = _pools(diverse)
    for start in range(0, n, PAGE):
        rnd = random.Random(seed * 1_000_003 + start)  # noqa: S311 - reproducible test data
        page = [_record(i, rnd, languages, currencies) for i in range(start, min(n, start + PAGE))]
        yield from json.loads(json.dumps(page))


# --- measuring in a subprocess ------------------------------------------------------------------


def _rss() -> tuple[int, int] | None:
    """(current RSS, peak RSS) in bytes from /proc, or None where there is no /proc."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def _reset_peak() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _child(task: str, n: int, diverse: bool, repeats: int) -> dict[str, Any]:
    """Runs in a subprocess: one measured call (memory), then ``repeats`` timed calls."""
    import gc

    stream = task == "stream"
    records: Any = None if stream else list(country_records(n, diverse=diverse))

    def call() -> pd.DataFrame:
        if task == "json_normalize":
            return pd.json_normalize(records)
        return unnest(country_records(n, diverse=diverse) if stream else records)

    gc.collect()
    precise = _rss() is not None and _reset_peak()
    if precise:
        before, _ = _rss()  # type: ignore[misc]
        started = time.process_time()
        frame = call()
        seconds = [time.process_time() - started]
        _, peak = _rss()  # type: ignore[misc]
        growth, how = peak - before, "RSS high-water mark above RSS before the call"
    else:
        tracemalloc.start()
        started = time.process_time()
        frame = call()
        seconds = [time.process_time() - started]
        growth, how = tracemalloc.get_traced_memory()[1], "tracemalloc peak (no /proc)"
        tracemalloc.stop()
    result = {
        "rows": len(frame),
        "columns": frame.shape[1],
        "frame_bytes": int(frame.memory_usage(deep=True).sum()) if stream else None,
        "list_columns": sum(1 for name in frame.columns if frame[name].map(lambda v: isinstance(v, list)).any()),
        "peak_growth": growth,
        "memory_how": how,
    }
    del frame
    for _ in range(repeats - 1):
        gc.collect()
        started = time.process_time()
        call()
        seconds.append(time.process_time() - started)
    result["seconds"] = min(seconds)
    return result


def _measure(task: str, n: int, *, diverse: bool = True, repeats: int = 3) -> dict[str, Any]:
    """Run :func:`_child` in a fresh interpreter and return what it measured."""
    code = (
        "import json, sys; from tests.benchmarks.bench_unnest import _child; "
        f"print(json.dumps(_child({task!r}, {n}, {diverse!r}, {repeats})))"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark subprocess {task} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- smoke: ours and the baseline agree ---------------------------------------------------------


def _without_lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_lists(v) for k, v in value.items() if not isinstance(v, list)}
    return value


def _check_agreement(records: list[dict[str, Any]], unnest: Callable[..., pd.DataFrame] = unnest) -> None:
    """AssertionError unless ``unnest`` and json_normalize agree where they overlap.

    1. Records without lists, maps off: the same frame (columns in any order).
    2. The list ``tld`` kept as well: json_normalize exploded with ``DataFrame.explode``.
    3. Maps on: the (country, currency code, currency name) triples equal those read from
       json_normalize's ``currencies.<code>.name`` columns, a country without any kept once.
    """
    flat = [_without_lists(r) for r in records]
    ours = unnest(flat, maps=False)
    theirs = pd.json_normalize(flat)
    pd.testing.assert_frame_equal(ours, theirs, check_like=True)

    with_tld = [{**_without_lists(r), "tld": r["tld"]} for r in records]
    ours = unnest(with_tld, maps=False)
    theirs = pd.json_normalize(with_tld).explode("tld", ignore_index=True).rename(columns={"tld": "tld.*"})
    theirs["tld.*"] = theirs["tld.*"].astype("str")
    pd.testing.assert_frame_equal(ours, theirs, check_like=True)

    ours = unnest(records, {"cca3": "cca3", "code": "currencies.*~", "name": "currencies.*.name"})
    mine = sorted(ours.astype(object).where(ours.notna(), None).itertuples(index=False, name=None), key=repr)
    wide = pd.json_normalize(records)
    expected = []
    for _, row in wide.iterrows():
        found = [
            (row["cca3"], column.split(".")[1], row[column])
            for column in wide.columns
            if column.startswith("currencies.") and column.endswith(".name") and pd.notna(row[column])
        ]
        expected.extend(found or [(row["cca3"], None, None)])
    assert mine == sorted(expected, key=repr), "currency triples differ between unnest and json_normalize"


def _smoke_figures() -> list[Figure]:
    n = 300
    records = list(country_records(n))
    _check_agreement(records)
    _check_agreement(list(country_records(n, seed=2, diverse=False)))

    started = time.process_time()
    ours = unnest(records)
    mine = time.process_time() - started
    started = time.process_time()
    theirs = pd.json_normalize(records)
    baseline = time.process_time() - started
    tracemalloc.start()
    frame = unnest(country_records(n))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    frame_mib = frame.memory_usage(deep=True).sum() / MiB
    return [
        Figure(
            benchmark=f"unnest {n} records (smoke)",
            metric="CPU seconds",
            baseline_name="pandas.json_normalize",
            baseline=baseline,
            ours=mine,
            target="",
            met=None,
            note=f"ours rows={len(ours)} cols={ours.shape[1]}; json_normalize rows={len(theirs)} "
            f"cols={theirs.shape[1]}; agreement checked",
        ),
        Figure(
            benchmark=f"unnest {n} records streamed (smoke)",
            metric="peak MiB (tracemalloc)",
            baseline_name="result DataFrame memory_usage(deep=True)",
            baseline=frame_mib,
            ours=peak / MiB,
            target="",
            met=None,
            note=f"rows={len(frame)} cols={frame.shape[1]}",
        ),
    ]


# --- the real measurement ----------------------------------------------------------------------------


def run(smoke: bool = False) -> list[Figure]:
    """The figures; ``smoke``: tiny sizes, in this process, asserting agreement with the baseline."""
    if smoke:
        return _smoke_figures()
    n = 100_000
    figures: list[Figure] = []
    for diverse in (True, False):
        ours = _measure("unnest", n, diverse=diverse)
        theirs = _measure("json_normalize", n, diverse=diverse)
        what = "150 language / 160 currency codes" if diverse else "20 language / 10 currency codes"
        note = (
            f"{what}; ours fully flat rows={ours['rows']} cols={ours['columns']}; json_normalize "
            f"rows={theirs['rows']} cols={theirs['columns']}, {theirs['list_columns']} columns "
            "still holding lists; best of 3, each in a subprocess"
        )
        ratio = ours["seconds"] / theirs["seconds"]
        figures.append(
            Figure(
                benchmark=f"unnest {n // 1000}k records" + ("" if diverse else " (few map keys, info)"),
                metric="CPU seconds",
                baseline_name="pandas.json_normalize",
                baseline=theirs["seconds"],
                ours=ours["seconds"],
                target="ours/baseline <= 0.1" if diverse else "",
                met=ratio <= 0.1 if diverse else None,
                note=note,
            )
        )
        if diverse:
            figures.append(
                Figure(
                    benchmark=f"unnest {n // 1000}k records",
                    metric="peak MiB",
                    baseline_name="pandas.json_normalize",
                    baseline=theirs["peak_growth"] / MiB,
                    ours=ours["peak_growth"] / MiB,
                    target="",
                    met=None,
                    note=f"{ours['memory_how']}, records already in memory",
                )
            )
    big = 1_000_000
    streamed = _measure("stream", big, repeats=1)
    frame_mib = streamed["frame_bytes"] / MiB
    figures.append(
        Figure(
            benchmark=f"unnest {big // 1_000_000}M records streamed",
            metric="peak MiB",
            baseline_name="result DataFrame memory_usage(deep=True)",
            baseline=frame_mib,
            ours=streamed["peak_growth"] / MiB,
            target="ours/baseline <= 2",
            met=streamed["peak_growth"] / MiB <= 2 * frame_mib,
            note=(
                f"full unnest, records generated while read; {streamed['memory_how']}; "
                f"rows={streamed['rows']} cols={streamed['columns']}, {streamed['seconds']:.1f} CPU s"
            ),
        )
    )
    return figures


def _median_figures(runs: list[list[Figure]]) -> list[Figure]:
    """Each figure as the median of its values over ``runs`` (the same figures, in the same order)."""
    out = []
    for same in zip(*runs, strict=True):
        first = same[0]
        ours = statistics.median(f.ours for f in same)
        baseline = None if first.baseline is None else statistics.median(f.baseline for f in same)
        ratio = None if not baseline else ours / baseline
        met = None
        if first.met is not None and ratio is not None:
            met = ratio <= float(first.target.rsplit("<=", 1)[1])
        note = f"median of {len(same)} runs ({', '.join(f'{f.ours:.3g}' for f in same)}); {first.note}"
        out.append(Figure(first.benchmark, first.metric, first.baseline_name, baseline, ours, first.target, met, note))
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the figures; exit status 1 if a figure misses its target."""
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_unnest", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few hundred records, in this process")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="run N times and report medians")
    args = parser.parse_args(argv)
    runs = [run(smoke=args.smoke) for _ in range(max(1, args.repeat))]
    figures = runs[0] if len(runs) == 1 else _median_figures(runs)
    print(format_table(figures))
    return 1 if any(f.met is False for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
