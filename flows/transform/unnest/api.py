"""The public entry point: :func:`unnest` (its docstring is the contract), its arguments checked."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sized
from itertools import islice
from typing import Any

import pandas as pd

from flows.errors import UnnestError
from flows.transform.unnest.rows import MAX_EXACT, place, series
from flows.transform.unnest.walk import KEY, WILDCARD, Schema

DEFAULT_MAX_ROWS = 10_000_000
DEFAULT_BATCH_SIZE = 1_000


def unnest(
    records: Iterable[Mapping[str, Any]],
    columns: Mapping[str, str] | Iterable[str] | None = None,
    *,
    maps: bool | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    sep: str = ".",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> pd.DataFrame:
    """Flatten JSON records into one DataFrame with no dict or list left in any cell.

    **Input.** ``records``: any iterable of dicts (JSON objects; any Mapping) nesting dicts,
    lists (or tuples) and scalars to any depth (no recursion). It is read once, ``batch_size``
    records at a time, so a generator is never held whole. A record that is not a dict
    raises :class:`UnnestError` naming its index.

    **Paths and columns.** A *path* names where a value sits: dict keys joined by ``sep``
    (``name.official``); ``*`` stands for the elements of a list or the values of a data-keyed
    map (``currencies.*.name``); ``*~`` as the last segment for their *key*: the map key
    (``currencies.*~`` is ``DKK``), or the 0-based position in a list. Each output column is
    named by (or, with ``columns=``, selects) one path, and holds exactly the scalars (any
    value but a dict or list, None included) found there; values never move between paths.

    **Rows.** Each record gives one or more rows, in input order:

    - a nested dict adds columns, not rows;
    - a list gives one row per element (list order), a data-keyed map one row per entry
      (insertion order), with the record's other values repeated on each;
    - sibling lists/maps multiply (a cross product, like SQL lateral joins), so every value
      appears: ``{"a": [1, 2], "b": ["x", "y"]}`` gives rows (1, x), (1, y), (2, x), (2, y).
      They nest in path order (depth first, keys in first-seen order; with ``columns=``, in
      the order the paths are first mentioned), the first varying slowest;
    - an empty list or dict, a missing key, or a path where a record holds another kind of
      value keeps the row, with null in the columns below that path (like a LEFT JOIN); no
      record is ever dropped. A null is a scalar: null at its own path.

    **Mixed types at one path.** A scalar at ``P`` goes to column ``P``, a dict's keys to
    ``P.key`` (or ``P.*~``/``P.*`` if ``P`` is a map), a list's elements to ``P.*``, each
    column null where the record held another kind.

    **Data-keyed maps** (full unnest only). A dict whose keys are data (currency codes,
    years) rather than field names is a *map*: one row per entry, its key in column ``P.*~``,
    its values under ``P.*``. Per path, in the first batch where it holds a non-empty dict:
    a map if it holds a non-empty dict at least twice and no key is in more than half of
    them; the decision then holds for the whole call. ``maps=False``: no maps (as in
    ``pandas.json_normalize``); ``maps=True``: every dict below the record is a map.

    **Selecting columns.** ``columns``: a mapping ``{output name: path}`` (output in that
    order), or an iterable of paths (each named by itself). Only the selected paths are read:
    other branches are not walked and their lists never multiply rows. A selected ``*``
    explodes a list, and also a dict, which it declares a map (``currencies.*.name`` reads a
    list of ``{"code", "name"}`` dicts or a dict keyed by code alike; ``maps`` may not be
    given); ``*~`` selects the map key / list position. A path holding a dict or list in some
    record gives null there; a path found nowhere, an all-null column. Keys containing
    ``sep``, ``*`` or ``*~`` cannot be selected: pass another ``sep``.

    **Full unnest** (``columns=None``): every scalar path becomes a column named by its path
    (``tld.*``, ``currencies.*~``, ``currencies.*.name``), which ``columns=`` accepts back to
    select those values (a selected ``*`` may find more: it reads any dict there as a map).
    Columns are in first-seen key order, depth first, a map's ``*~`` column before its
    values; in ``P.*~``, lists found at ``P`` give null. Two paths giving one column name (a
    key containing ``sep``) raise UnnestError asking for another ``sep``.

    **Output.** A DataFrame with a RangeIndex. Each column's dtype is what pandas infers from
    the list of its values (``pandas.Series(values)``): int64 for ints without nulls, float64
    for floats and for ints with nulls (object if an int would lose precision as a float),
    bool without nulls, ``str`` for strings (nulls are NaN), object for mixed values or only
    nulls. No records: an empty frame (no columns for a full unnest, else the selected ones).

    **Row limit.** Rows are counted before they are built, batch by batch: as soon as the
    records read so far would give more than ``max_rows`` rows, :class:`RowLimitExceededError`
    says the count, the bound and what to do; no more than ``max_rows`` rows are ever held. A
    record whose lists multiply to an astronomical count is refused without building them.

    **Batches.** ``batch_size`` (default 1,000) bounds the input held and is the sample that
    decides maps. Rows, values and dtypes do not depend on it otherwise (column order can,
    where one path holds both dicts and lists: their columns come in the order first met).

    Raises:
        UnnestError: a record is not a dict; a path is malformed; ``maps`` given with
            ``columns``; an argument has the wrong type or range; two paths give one column
            name.
        RowLimitExceededError: the output would exceed ``max_rows`` rows.
    """
    if not isinstance(sep, str) or not sep or WILDCARD in sep or "~" in sep:
        raise UnnestError(f"sep must be a non-empty string without '*' or '~', got {sep!r}")
    if type(max_rows) is not int or not 0 <= max_rows <= MAX_EXACT:
        raise UnnestError(f"max_rows must be an int from 0 to 2**53, got {max_rows!r}")
    if type(batch_size) is not int or batch_size < 1:
        raise UnnestError(f"batch_size must be a positive int, got {batch_size!r}")
    if maps is not None and type(maps) is not bool:
        raise UnnestError(f"maps must be True, False or None, got {maps!r}")
    if columns is not None and maps is not None:
        raise UnnestError(
            "maps= applies only to a full unnest (columns=None); in columns= a '*' path segment declares the map"
        )
    selected = None if columns is None else _selection(columns, sep)

    schema = Schema(full=selected is None, maps=maps, sep=sep)
    chosen = [(name, schema.select(segments)) for name, segments in selected or ()]
    expected = len(records) if isinstance(records, Sized) else None
    rows = read = 0
    for batch in _batches(records, batch_size):
        schema.walk(batch)
        read += len(batch)
        levels = [node for node in schema.nodes() if node is schema.root or node.parents is not None]
        growth = 2.0 if expected is None else 1.05 * max(expected, read) / read  # room for the rest
        rows += place(levels, schema.columns, len(batch), rows, max_rows, growth)
        del batch  # gone before the next batch is read: one batch of input held, not two

    index = pd.RangeIndex(rows)
    if selected is None:
        data = {col.name: series(col, rows) for node in schema.nodes() for col in (node.keycol, node.col) if col}
    else:
        made = {id(col): series(col, rows) for col in {id(col): col for _, col in chosen}.values()}
        data = {name: made[id(col)] for name, col in chosen}
    return pd.DataFrame(data, index=index, copy=False) if data else pd.DataFrame(index=index)


def _selection(columns: Mapping[str, str] | Iterable[str], sep: str) -> list[tuple[str, tuple[str, ...]]]:
    """``columns=`` as (output name, path segments) pairs, in output order; UnnestError if malformed."""
    if isinstance(columns, str | bytes):
        raise UnnestError(f"columns must be a mapping {{name: path}} or a list of paths, not the string {columns!r}")
    pairs = columns.items() if isinstance(columns, Mapping) else [(path, path) for path in columns]
    selected: dict[str, tuple[str, ...]] = {}
    for name, path in pairs:
        if not isinstance(path, str):
            raise UnnestError(f"column {name!r}: path {path!r} is not a string; write paths like 'name{sep}official'")
        if not isinstance(name, str):
            raise UnnestError(f"column names must be strings, got {name!r}")
        if name in selected:  # only a list can name one twice
            raise UnnestError(f"columns lists the path {name!r} twice")
        segments = tuple(path.split(sep))
        if "" in segments:
            raise UnnestError(f"column {name!r}: path {path!r} has an empty segment; write paths like 'name{sep}official'")
        if KEY in segments[:-1]:
            raise UnnestError(f"column {name!r}: '*~' may only end a path, got {path!r}")
        selected[name] = segments
    return list(selected.items())


def _batches(records: Iterable[Any], size: int) -> Iterator[list[Mapping]]:
    """The records in lists of up to ``size``, each record checked to be a Mapping."""
    if isinstance(records, Mapping | str | bytes):
        raise UnnestError(
            f"records must be an iterable of dicts, got a single {type(records).__name__}; wrap one record in a list"
        )
    try:
        iterator = iter(records)
    except TypeError:
        raise UnnestError(f"records must be an iterable of dicts, got {type(records).__name__}") from None
    done = 0
    while batch := list(islice(iterator, size)):
        for i, record in enumerate(batch if set(map(type, batch)) != {dict} else ()):
            if not isinstance(record, Mapping):
                raise UnnestError(
                    f"record {done + i} is a {type(record).__name__}, expected a dict (a JSON object); "
                    "pass an iterable of dicts"
                )
        done += len(batch)
        yield batch
        del batch  # not held while the next batch is read
