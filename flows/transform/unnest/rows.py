"""The rows of a batch read by :class:`~flows.transform.unnest.walk.Schema` (:func:`place`, which raises
``RowLimitExceededError`` before building any past ``max_rows``), and the final columns (:func:`series`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from pandas.api.types import infer_dtype

from flows.errors import RowLimitExceededError
from flows.transform.unnest.walk import SCALAR_KINDS, Column, Node

MAX_EXACT = 2**53
"""The largest count float64 holds exactly (and the bound of ``max_rows``)."""

_TYPED = {"integer": np.int64, "floating": np.float64, "boolean": np.bool_}  # without nulls
_STR = pd.Series(["a"]).dtype  # pandas' dtype for strings


def place(levels: list[Node], columns: list[Column], records: int, done: int, max_rows: int, growth: float) -> int:
    """Write the rows of a batch of ``records`` records into ``columns``, forget the batch, return its row count.

    ``levels``: the root, then the star nodes with elements, in path order. ``done``: rows of
    the earlier batches. A column buffer that must grow gets room for ``growth`` times the
    rows so far.
    """
    root = levels[0]
    sizes = {root: records, **{star: len(star.parents) for star in levels[1:]}}
    if done + _count(levels, sizes, float) > max_rows:
        raise RowLimitExceededError(
            f"unnest would produce at least {done + _count(levels, sizes, object):,} rows, more than "
            f"max_rows={max_rows:,}; select fewer list/map paths with columns= or raise max_rows"
        )

    # For each row, the instance of each level it shows (-1: none); root None: row i is record i. Each star level
    # in path order turns a row showing a holder of n elements into n rows (so the first level varies slowest).
    shown: dict[Node, np.ndarray | None] = {root: None}
    rows = records
    for star in levels[1:]:
        above = star.parent.level
        holders = np.arange(rows) if shown[above] is None else shown[above]
        per_holder = np.bincount(star.parents, minlength=sizes[above] + 1)  # the last: for -1
        elements = per_holder[holders]
        repeats = np.maximum(elements, 1)
        grown = int(repeats.sum())
        which: np.ndarray | int = 0  # each row's element among its holder's
        if grown != rows:
            which = np.arange(grown) - np.repeat(np.cumsum(repeats) - repeats, repeats)
            for level, instances in shown.items():
                shown[level] = np.repeat(np.arange(rows) if instances is None else instances, repeats)
            holders, elements = np.repeat(holders, repeats), np.repeat(elements, repeats)
            rows = grown
        first = np.cumsum(per_holder) - per_holder
        shown[star] = np.where(elements > 0, first[holders] + which, -1)

    room = int((done + rows) * growth) + 16
    for col in columns:
        _write(col, shown.get(col.level), sizes.get(col.level, 0), done, rows, room)
        col.values = col.ids = None  # the batch is done
    for star in levels[1:]:
        star.parents = None
    return rows


def _count(levels: list[Node], sizes: dict[Node, int], dtype: type) -> int | float:
    """The batch's rows, bottom-up: in float64 (fast, never overflows) or exact Python ints."""
    count = {level: np.ones(sizes[level], dtype=dtype) for level in levels}
    for star in reversed(levels[1:]):
        above = star.parent.level
        rows = np.zeros(sizes[above], dtype=dtype)
        np.add.at(rows, star.parents, count[star])
        count[above] *= np.maximum(rows, 1)
    return count[levels[0]].sum()


def _write(col: Column, instances: np.ndarray | None, size: int, done: int, rows: int, room: int) -> None:
    """Write the batch's ``rows`` rows of ``col`` after the ``done`` rows of earlier batches.

    ``instances``: for each row, the instance of the column's level it shows (-1: none;
    None: row i shows instance i); ``size``: the level's instances in the batch.
    """
    if col.buf is None or len(col.buf) < done + rows:
        grown = np.full(room, None, dtype=object)
        if col.buf is not None:
            grown[:done] = col.buf[:done]
        elif done:
            col.kinds.add("empty")  # a new column: null in the earlier batches
        col.buf = grown
    if col.values is None:
        col.kinds.add("empty")  # null in this batch
        return
    values = col.values
    if type(values) is not np.ndarray:
        values = np.fromiter(values, dtype=object, count=len(values))
    target = col.buf[done : done + rows]
    kind = col.kind  # still true of the rows if every row shows a value
    if col.ids is not None or size != len(values) or (instances is not None and bool((instances < 0).any())):
        dense = np.full(size + 1, None, dtype=object)  # the last slot: for row -1
        dense[slice(len(values)) if col.ids is None else col.ids] = values
        values, kind = dense, None
    if instances is None:
        target[:] = values[:rows]
    else:
        values.take(instances, out=target, mode="wrap")  # -1: the last slot
    col.kinds.add(kind or _kind(target))


def _kind(values: np.ndarray) -> str | None:
    """What the final dtype needs to know of one batch's rows: a key of ``_TYPED`` (all of that kind, no null),
    "string" (strings and nulls), "empty" (nulls only) or None (anything else)."""
    kind = infer_dtype(values, skipna=False)
    if kind not in SCALAR_KINDS:
        kind = infer_dtype(values, skipna=True)
        if kind != "string" and kind != "empty":
            return None
    return kind


def series(col: Column, rows: int) -> pd.Series:
    """The column's Series over all ``rows`` rows (its buffer is released)."""
    values = np.full(rows, None, dtype=object) if col.buf is None else col.buf[:rows]
    if col.buf is not None and len(col.buf) > 1.25 * rows + 16:
        values = values.copy()  # do not keep much unused room alive
    col.buf = None
    kinds = col.kinds
    if len(kinds) == 1 and kinds <= _TYPED.keys():
        try:
            return pd.Series(values.astype(_TYPED[kinds.pop()]), copy=False)
        except OverflowError:
            pass  # ints beyond int64
    if kinds - {"empty"} == {"string"}:
        return pd.Series(pd.array(values, dtype=_STR, copy=False), copy=False)
    inferred = pd.Series(values, copy=False).infer_objects()
    if inferred.dtype == np.float64 and len(inferred):
        big = np.flatnonzero(np.abs(inferred.to_numpy()) >= MAX_EXACT)
        if any(type(values[i]) is int and float(values[i]) != values[i] for i in big):
            return pd.Series(values, copy=False)
    return inferred
