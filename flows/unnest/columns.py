"""The output columns of one unnest call: their buffers, grown batch by batch, and their dtypes.

Contract of :class:`ColumnSet`:

- :meth:`ColumnSet.add` creates a column; a second column of the same name is refused with
  UnnestError (two paths flatten to one name).
- Batch by batch, :meth:`ColumnSet.reserve` makes room for the batch's rows, :meth:`write`
  puts a leaf's values at the rows that show them (every other row of the batch is null in
  that column), and :meth:`end_batch` makes every column not written null in the batch's
  rows. A column first written in a later batch is null in all earlier rows.
- :meth:`series` turns a column into a Series whose dtype is the one pandas infers from the
  list of its Python values, with one exception: ints with nulls become float64 only if
  every int survives as a float, otherwise the column stays object (exact ints).

How: each column is one buffer of the rows so far plus room (rows beyond the ones written:
null). What ``infer_dtype`` said of each write's values is kept, so the final conversion
needs no second look at the values.

Strings: pandas' public ``str`` array constructor checks every value; a check of every
string of a finished column, long after the walk read it, misses the CPU cache on each one
(it would cost about a third of a full unnest). So while a column holds only strings and
nulls, its buffer is a ``str`` array (``StringArray``, nulls NaN), and each batch's rows are
checked by the constructor right after they are gathered, while their objects are in the
cache, then copied into the buffer (copying a ``str`` array into another is not checked
again). The final Series is a slice of the buffer: no pass over the values at the end. Its
nulls are one private NaN object (``_GAP``), told apart from NaN found in the data by
identity: if another kind of value arrives later, the column becomes an object array again
and only those nulls become None.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import infer_dtype

from flows.errors import UnnestError
from flows.unnest.values import infer, objects

MAX_EXACT = 2**53
"""The largest count float64 holds exactly (and the bound of ``max_rows``)."""

_STR = pd.Series(["a"]).dtype  # the dtype pandas infers for strings
_GAP = float("nan")  # the null of string columns being built (told apart from data by identity)
_ONE_GAP = pd.arrays.StringArray(np.array([_GAP], dtype=object), dtype=_STR)


class Column:
    """One output column: its values so far and what is known of them."""

    __slots__ = ("buf", "gaps", "kinds", "name", "nulls", "strings")

    def __init__(self, name: str):
        self.name = name
        # Allocated at the first value: a StringArray while ``strings``, else an object array.
        self.buf: Any = None
        self.kinds: set[str] = set()  # what infer_dtype (skipna) said of each write's values
        self.gaps = False  # some row has no value (a null) besides explicit nulls
        self.nulls = False  # some value is a null (None or NaN)
        # Only strings and nulls so far: every null is kept as _GAP, as pandas' str arrays want.
        self.strings: bool | None = None


class ColumnSet:
    """Every output column of one call, their buffers grown together (see the module docstring)."""

    def __init__(self, sep: str, expected: int | None):
        self.sep = sep
        self.expected = expected  # records in the input, when it has a length
        self.columns: list[Column] = []
        self.names: dict[str, Column] = {}
        self.rows = 0  # rows of the batches done
        self.capacity = 0  # rows every column buffer has room for

    def add(self, name: str) -> Column:
        """A new column called ``name``; UnnestError if there is one already."""
        if name in self.names:
            raise UnnestError(
                f"two different paths flatten to the column name {name!r} (a key contains the "
                f"separator {self.sep!r} or is '*' or '*~'); pass a sep= that no key contains"
            )
        col = self.names[name] = Column(name)
        self.columns.append(col)
        return col

    def reserve(self, rows: int, records: int) -> None:
        """Room in every column buffer for ``rows`` more rows (from ``records`` records)."""
        need = self.rows + rows
        if need <= self.capacity:
            return
        if self.capacity == 0 and self.expected and records:
            # A sized input: guess the total from the first batch, with 5% to spare.
            guess = int(rows / records * self.expected * 1.05) + 16
        else:
            guess = 2 * self.capacity
        self.capacity = max(need, guess)
        for col in self.columns:
            if col.buf is not None:
                grown = _buffer(col.strings, self.capacity)
                grown[: self.rows] = col.buf[: self.rows]  # a str array into one: not checked again
                col.buf = grown

    def write(
        self,
        col: Column,
        values: object,
        inferred: str | None,
        *,
        where: np.ndarray | None,
        n: int,
        inst: np.ndarray | None,
        complete: bool,
        rows: int,
    ) -> None:
        """Write one leaf of the current batch (after :meth:`reserve`).

        ``values`` belong to ``n`` instances of a level: to all of them in order
        (``where`` None) or to those at ``where``. ``inst`` says which instance each of the
        batch's ``rows`` rows shows (-1: none; None: row i shows instance i), ``complete``
        that every row shows one. ``inferred``: :func:`infer`'s answer if already known.
        """
        start = self.rows
        array = objects(values)
        if inferred is None:
            inferred = infer(array) or infer_dtype(array, skipna=True)
        nulls = inferred.startswith("-")
        if nulls:
            col.nulls = True
            inferred = inferred[1:]
        col.kinds.add(inferred)
        stringy = inferred == "string" or inferred == "empty"
        if col.strings is None:
            col.strings = stringy
        elif col.strings and not stringy:
            _unstring(col, start)
        fill = _GAP if col.strings else None
        if col.buf is None:
            col.buf = _buffer(col.strings, self.capacity)
            col.gaps = start > 0
        if fill is not None and nulls:
            array[[v is None for v in array]] = fill  # the walk built values: ours to change
        if not (where is None and complete):
            col.gaps = True
            dense = np.full(n + 1, fill, dtype=object)  # the extra last slot: no value
            if where is None:
                dense[:-1] = array
            else:
                dense[where] = array
            array = dense[:-1] if inst is None else dense
        if col.strings:
            block = array if inst is None else array.take(inst, mode="wrap")  # -1: the null slot
            # Checked here, while the values are in the cache; copied in without a second check.
            col.buf[start : start + rows] = pd.arrays.StringArray(block, dtype=_STR)
        elif inst is None:
            col.buf[start : start + rows] = array
        else:
            array.take(inst, out=col.buf[start : start + rows], mode="wrap")

    def end_batch(self, rows: int, written: set[int]) -> None:
        """The batch's ``rows`` rows are done; columns (by id) not in ``written`` are null there."""
        for col in self.columns:
            if col.buf is not None and id(col) not in written:
                col.gaps = True  # its buffer holds nulls there already
        self.rows += rows

    def series(self, col: Column) -> pd.Series:
        """One column as a Series (its buffer is released): see the module docstring."""
        rows = self.rows
        if col.buf is None:
            return pd.Series(np.empty(rows, dtype=object), copy=False)
        if col.strings and "string" not in col.kinds:
            _unstring(col, rows)  # nothing but nulls: pandas makes that object, with None
        buf, col.buf = col.buf, None
        values = buf[:rows]  # a view
        if len(buf) > rows * 1.25 + 16:
            values = values.copy()  # do not keep much unused room alive
        del buf
        if col.strings:
            return pd.Series(values, copy=False)
        return _convert(values, col.kinds - {"empty"}, col.gaps or col.nulls)


def _buffer(strings: bool | None, size: int) -> Any:
    """``size`` nulls: a StringArray of ``_GAP`` for a string column, else an object array of None."""
    if strings:
        return _ONE_GAP.repeat(size)  # a str array made from a str array: not checked again
    return np.empty(size, dtype=object)


def _unstring(col: Column, rows: int) -> None:
    """A string column gets another kind: an object buffer, its nulls in the first ``rows`` None."""
    buf = np.empty(len(col.buf), dtype=object)
    done = buf[:rows]
    done[:] = np.asarray(col.buf[:rows], dtype=object)  # the same objects: NaN from data stays
    done[np.fromiter((v is _GAP for v in done), dtype=bool, count=rows)] = None
    col.buf, col.strings = buf, False


def _convert(values: np.ndarray, kinds: set[str], gaps: bool) -> pd.Series:
    """``values`` (object array) as a Series of the dtype pandas infers from their list.

    ``kinds``: what infer_dtype (skipna) said of each part, "empty" left out; ``gaps``: some
    value is a missing one (None). The exception of the module docstring applies.
    """
    if kinds == {"string"}:
        return pd.Series(values, dtype="str", copy=False)
    if len(kinds) == 1 and not gaps:
        try:
            if kinds == {"integer"}:
                return pd.Series(values.astype(np.int64), copy=False)
            if kinds == {"boolean"} and infer_dtype(values, skipna=False) == "boolean":
                return pd.Series(values.astype(bool), copy=False)
        except (TypeError, ValueError, OverflowError):
            pass  # a None, NaN or huge int after all: let pandas decide
    if kinds == {"floating"} and not gaps:  # ints among floats: pandas decides (huge ones stay object)
        try:
            floats = values.astype(np.float64)
        except (TypeError, ValueError, OverflowError):
            pass
        else:
            return _exact(pd.Series(floats, copy=False), values)
    return _exact(pd.Series(values, copy=False).infer_objects(), values)


def _exact(series: pd.Series, values: np.ndarray) -> pd.Series:
    """``series``, or ``values`` as object if it is float64 but some int in values is not."""
    if series.dtype == np.float64 and len(series):
        big = np.flatnonzero(np.abs(series.to_numpy()) >= MAX_EXACT)
        if len(big) and any(type(values[i]) is int and float(values[i]) != values[i] for i in big):
            return pd.Series(values, copy=False)
    return series
