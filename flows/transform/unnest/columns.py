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

How: each column is one buffer of the rows so far plus room. What ``infer_dtype`` said of
each write's values is kept, so the final dtype needs no second look at the values. A
column is in one of these modes:

- *typed*: exact Python ints, floats or bools only, no null and no gap so far: an int64,
  float64 or bool buffer, each batch converted while its values are in the CPU cache;
- *strings*: strings and nulls only so far: an object buffer whose nulls are one private NaN
  object (``_GAP``, told apart from NaN found in the data by identity). At the end pandas'
  public ``str`` constructor makes the column (one pass, which also turns each null into
  NaN); everything in it is a string or a null, as every write's ``infer_dtype`` said;
- *objects*: anything else: an object buffer of the values themselves (None for no value).

A typed or strings column that gets another kind of value (or a null or gap, for typed)
becomes an objects column, without loss: the typed values become the same Python values
again, and only the ``_GAP`` nulls become None.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pandas.api.types import infer_dtype

from flows.errors import UnnestError
from flows.transform.unnest.values import infer, objects

MAX_EXACT = 2**53
"""The largest count float64 holds exactly (and the bound of ``max_rows``)."""

_STR = pd.Series(["a"]).dtype  # the dtype pandas infers for strings
_GAP = float("nan")  # the null of string columns being built (told apart from data by identity)
_TYPED = {"integer": (int, np.int64), "floating": (float, np.float64), "boolean": (bool, np.bool_)}
_STRINGS, _OBJECTS = "strings", "objects"


class Column:
    """One output column: its values so far and what is known of them."""

    __slots__ = ("buf", "gaps", "kinds", "mode", "name", "nulls")

    def __init__(self, name: str):
        self.name = name
        self.buf: np.ndarray | None = None  # allocated at the first value
        self.mode: str | None = None  # _STRINGS, _OBJECTS, or the kind of a typed buffer
        self.kinds: set[str] = set()  # what infer_dtype (skipna) said of each write's values
        self.gaps = False  # some row has no value (a null) besides explicit nulls
        self.nulls = False  # some value is a null (None or NaN)


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
                grown = np.empty(self.capacity, dtype=col.buf.dtype)
                grown[: self.rows] = col.buf[: self.rows]
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
        whole = where is None and complete  # every row of the batch gets one of these values
        if col.mode is None:
            col.mode = self._first_mode(col, array, inferred, nulls, whole, start)
        elif col.mode == _STRINGS and inferred != "string" and inferred != "empty":
            _unstring(col, start)
        if col.mode not in (_STRINGS, _OBJECTS) and self._typed_write(col, array, inferred, nulls, whole, inst, rows):
            return
        fill = _GAP if col.mode == _STRINGS else None
        if fill is not None and nulls:
            array[[v is None for v in array]] = fill  # the walk built values: ours to change
        if not whole:
            col.gaps = True
            dense = np.full(n + 1, fill, dtype=object)  # the extra last slot: no value
            if where is None:
                dense[:-1] = array
            else:
                dense[where] = array
            array = dense[:-1] if inst is None else dense
        target = col.buf[start : start + rows]
        if inst is None:
            target[:] = array
        else:
            array.take(inst, out=target, mode="wrap")  # -1: the null slot

    def _first_mode(self, col: Column, array: np.ndarray, inferred: str, nulls: bool, whole: bool, start: int) -> str:
        """The mode of a column at its first value, with its buffer (null in earlier rows)."""
        typed = _TYPED.get(inferred)
        if typed is not None and start == 0 and whole and not nulls and set(map(type, array)) == {typed[0]}:
            col.buf = np.empty(self.capacity, dtype=typed[1])
            return inferred
        col.buf = np.empty(self.capacity, dtype=object)
        col.gaps = start > 0
        if inferred == "string" or inferred == "empty":
            col.buf[:start] = _GAP
            return _STRINGS
        return _OBJECTS

    def _typed_write(
        self,
        col: Column,
        array: np.ndarray,
        inferred: str,
        nulls: bool,
        whole: bool,
        inst: np.ndarray | None,
        rows: int,
    ) -> bool:
        """Write into a typed buffer if the values fit it; else make the column objects, False."""
        kind, dtype = _TYPED[col.mode]
        if inferred == col.mode and whole and not nulls and set(map(type, array)) == {kind}:
            try:
                converted = array.astype(dtype)
            except (TypeError, ValueError, OverflowError):
                pass  # an int beyond int64: objects from here on
            else:
                target = col.buf[self.rows : self.rows + rows]
                if inst is None:
                    target[:] = converted
                else:
                    converted.take(inst, out=target)  # complete: no -1 in inst
                return True
        _objectify(col, self.rows)
        return False

    def end_batch(self, rows: int, written: set[int]) -> None:
        """The batch's ``rows`` rows are done; columns (by id) not in ``written`` are null there."""
        start = self.rows
        for col in self.columns:
            if col.buf is not None and id(col) not in written:
                col.gaps = True
                if col.mode == _STRINGS:
                    col.buf[start : start + rows] = _GAP
                elif col.mode != _OBJECTS:
                    _objectify(col, start)  # its new buffer holds None in the batch's rows
        self.rows += rows

    def series(self, col: Column) -> pd.Series:
        """One column as a Series (its buffer is released): see the module docstring."""
        rows = self.rows
        if col.buf is None:
            return pd.Series(np.empty(rows, dtype=object), copy=False)
        if col.mode == _STRINGS and "string" not in col.kinds:
            _unstring(col, rows)  # nothing but nulls: pandas makes that object, with None
        buf, col.buf = col.buf, None
        values = buf[:rows]  # a view
        if len(buf) > rows * 1.25 + 16:
            values = values.copy()  # do not keep much unused room alive
        del buf
        if col.mode == _STRINGS:
            return pd.Series(pd.array(values, dtype=_STR, copy=False), copy=False)
        if col.mode != _OBJECTS:
            return pd.Series(values, copy=False)
        return _convert(values, col.kinds - {"empty"})


def _objectify(col: Column, rows: int) -> None:
    """A typed column becomes objects: its first ``rows`` values as the same Python values."""
    buf = np.empty(len(col.buf), dtype=object)
    buf[:rows] = col.buf[:rows]  # int64, float64, bool -> int, float, bool
    col.buf, col.mode = buf, _OBJECTS


def _unstring(col: Column, rows: int) -> None:
    """A strings column becomes objects: its ``_GAP`` nulls in the first ``rows`` become None."""
    done = col.buf[:rows]
    done[np.fromiter((v is _GAP for v in done), dtype=bool, count=rows)] = None
    col.mode = _OBJECTS


def _convert(values: np.ndarray, kinds: set[str]) -> pd.Series:
    """``values`` (object array) as a Series of the dtype pandas infers from their list.

    ``kinds``: what infer_dtype (skipna) said of each part, "empty" left out. The exception
    of the module docstring applies.
    """
    if kinds == {"string"}:
        return pd.Series(values, dtype="str", copy=False)
    return _exact(pd.Series(values, copy=False).infer_objects(), values)


def _exact(series: pd.Series, values: np.ndarray) -> pd.Series:
    """``series``, or ``values`` as object if it is float64 but some int in values is not."""
    if series.dtype == np.float64 and len(series):
        big = np.flatnonzero(np.abs(series.to_numpy()) >= MAX_EXACT)
        if len(big) and any(type(values[i]) is int and float(values[i]) != values[i] for i in big):
            return pd.Series(values, copy=False)
    return series
