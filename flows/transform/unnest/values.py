"""What a value is, as the walk and the columns see it: kinds, object arrays, inferred types.

Stateless helpers shared by :mod:`flows.transform.unnest.walk` and :mod:`flows.transform.unnest.columns`.

- :func:`kind_of` sorts one value into ``SCALAR``, ``DICT`` or ``LIST``: any Mapping is a
  dict, a list or tuple is a list, everything else (None and other objects included) is a
  scalar.
- :func:`objects` makes a 1-d object array of a batch of values, never reading a value as
  a sequence.
- :func:`infer` says what ``pandas.api.types.infer_dtype`` says of values that are surely
  scalars of the common kinds (``"-"`` in front when there are nulls among them), or None
  when its answer does not rule out a dict or a list (then the caller looks closer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pandas.api.types import infer_dtype

# What a value is. The walk also queues work items of kinds that are already sorted out:
# dicts to explode as maps (MAPS), dicts whose keys only are read (STRUCT), and a mix of
# lists and maps to explode together (EXPLODE).
SCALAR, DICT, LIST, MAPS, STRUCT, EXPLODE = range(6)

KINDS: dict[type, int] = {
    str: SCALAR,
    int: SCALAR,
    float: SCALAR,
    bool: SCALAR,
    type(None): SCALAR,
    dict: DICT,
    list: LIST,
}
"""The kind of each exact type that needs no isinstance check (the fast path)."""

SCALAR_TYPES = frozenset(t for t, k in KINDS.items() if k == SCALAR)
DICT_ONLY = frozenset({dict})
LIST_ONLY = frozenset({list})

# infer_dtype answers that rule out a dict or a list among the values.
_SCALAR_INFERRED = frozenset({"string", "integer", "floating", "mixed-integer-float", "boolean", "empty", "bytes"})


def kind_of(value: Any) -> int:
    """SCALAR, DICT or LIST for any value: Mappings are dicts, lists and tuples are lists."""
    kind = KINDS.get(type(value))
    if kind is not None:
        return kind
    if isinstance(value, Mapping):
        return DICT
    if isinstance(value, list | tuple):
        return LIST
    return SCALAR


def objects(values: Any) -> np.ndarray:
    """``values`` (a sized iterable) as a 1-d object array, never reading a value as a sequence."""
    if type(values) is np.ndarray:
        return values if values.dtype == object else values.astype(object)
    return np.fromiter(values, dtype=object, count=len(values))


def infer(array: np.ndarray) -> str | None:
    """What infer_dtype says of ``array``, '-' in front if it holds nulls (None or NaN).

    The answer without the '-' is one of "string", "integer", "floating",
    "mixed-integer-float", "boolean", "empty" (nulls only) and "bytes": all scalars. None
    for any other answer ("mixed", "datetime", ...), which does not rule out a dict or list.
    """
    strict = infer_dtype(array, skipna=False)
    if strict in _SCALAR_INFERRED:
        return strict
    lenient = infer_dtype(array, skipna=True)
    return "-" + lenient if lenient in _SCALAR_INFERRED else None
