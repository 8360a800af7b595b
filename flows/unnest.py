"""Turn JSON records (any nesting of dicts and lists) into one flat pandas DataFrame.

The one public function is :func:`unnest`; its docstring is the contract. It is pure: no I/O,
no Prefect, no global state.

How it works (not part of the contract): records are read in batches and walked column-wise,
one schema path at a time over the whole batch, with C-level passes (``map``, ``zip``,
``itemgetter``, numpy) instead of per-value Python code. Lists and data-keyed maps become
*levels* (their elements, each knowing its parent); sibling levels multiply. The row count
of the batch is computed from the levels before any row is built; then numpy index
arithmetic says which element of each level every output row shows, and each column is one
``take``. No recursion anywhere, so depth is unlimited.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterable, Mapping, Sized
from itertools import chain, compress, islice, repeat
from operator import contains, itemgetter
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import infer_dtype

from flows.errors import RowLimitExceededError, UnnestError

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_MAX_ROWS", "KEY", "WILDCARD", "unnest"]

WILDCARD = "*"
"""Path segment for "every element of a list / every value of a data-keyed map"."""

KEY = "*~"
"""Last path segment for "the key of each map entry, or the position of each list element"."""

DEFAULT_MAX_ROWS = 10_000_000
DEFAULT_BATCH_SIZE = 1_000

_MAX_EXACT = 2**53  # the largest count float64 holds exactly; max_rows may not exceed it

# What a value is. Exact types first (the fast path); other types go through _kind().
_SCALAR, _DICT, _LIST = 0, 1, 2
# Work items that are already sorted out: explode dicts as maps; read dicts' keys only;
# explode a mix of lists and maps.
_MAPS, _STRUCT, _EXPLODE = 3, 4, 5
_KINDS: dict[type, int] = {
    str: _SCALAR,
    int: _SCALAR,
    float: _SCALAR,
    bool: _SCALAR,
    type(None): _SCALAR,
    dict: _DICT,
    list: _LIST,
}
_SCALAR_TYPES = frozenset(t for t, k in _KINDS.items() if k == _SCALAR)
_DICT_ONLY = frozenset({dict})
_LIST_ONLY = frozenset({list})
# pandas.api.types.infer_dtype answers that rule out a dict or a list among the values.
_SCALAR_INFERRED = frozenset({"string", "integer", "floating", "mixed-integer-float", "boolean", "empty", "bytes"})
_NUMERIC_INFERRED = frozenset({"integer", "floating", "mixed-integer-float"})
_STR = pd.Series(["a"]).dtype  # the dtype pandas infers for strings
_STR_TEMPLATE = pd.array(["a"], dtype=_STR)
_GAP = float("nan")  # the null of string columns being built (told apart from data by identity)


def _kind(value: Any) -> int:
    """_SCALAR, _DICT or _LIST for any value: Mappings are dicts, lists and tuples are lists."""
    kind = _KINDS.get(type(value))
    if kind is not None:
        return kind
    if isinstance(value, Mapping):
        return _DICT
    if isinstance(value, list | tuple):
        return _LIST
    return _SCALAR


def _objects(values: Any) -> np.ndarray:
    """``values`` as a 1-d object array (never reading a value as a sequence)."""
    if type(values) is np.ndarray:
        return values if values.dtype == object else values.astype(object)
    return np.fromiter(values, dtype=object, count=len(values))


class _Column:
    """One output column: its values so far, in a buffer that grows (rows beyond: None)."""

    __slots__ = ("buf", "gaps", "kinds", "name", "nulls", "strings")

    def __init__(self, name: str):
        self.name = name
        self.buf: np.ndarray | None = None  # object array, allocated at the first value
        self.kinds: set[str] = set()  # what infer_dtype (skipna) said of each batch's values
        self.gaps = False  # some row has no value (a null) besides explicit nulls
        self.nulls = False  # some value is a null (None or NaN)
        # Only strings and nulls so far: every null is kept as _GAP, as pandas' str arrays want.
        self.strings: bool | None = None


class _Node:
    """One path of the schema: a key below its parent, or the parent's elements (``*``)."""

    __slots__ = (
        "children",
        "col",
        "getter",
        "getters",
        "hint",
        "is_map",
        "keycol",
        "keys",
        "path",
        "seq",
        "star",
    )

    def __init__(self, path: tuple[str, ...], seq: int):
        self.path = path
        self.seq = seq  # creation order: siblings are visited, and their lists nested, in this order
        self.children: dict[Any, _Node] = {}
        self.star: _Node | None = None
        self.is_map: bool | None = None  # dicts here are data-keyed maps (full unnest only)
        self.col: _Column | None = None  # the scalars at this path
        self.keycol: _Column | None = None  # on a ``*`` node: the map key / list position
        self.hint: int | None = None  # the kind of values found here last time (checked)
        self.keys: tuple | None = None  # the keys every dict here had last time, and ...
        self.getter: Any = None  # ... itemgetter(*keys), and ...
        self.getters: list | None = None  # ... an itemgetter for each key


class _Level:
    """Rows before the cross product: the records, or the elements of the lists/maps at one path.

    ``n`` instances; ``parent`` (ascending) is each instance's instance in the parent level;
    ``groups`` are the child levels (sibling lists, multiplied together).
    """

    __slots__ = ("complete", "count", "groups", "inner", "inst", "local", "n", "parent", "size")

    def __init__(self, n: int, parent: np.ndarray | None):
        self.n = n
        self.parent = parent
        self.groups: list[_Level] = []
        self.count: np.ndarray  # rows each instance spans
        self.size: np.ndarray  # on a group: rows it gives each parent instance (>= 1)
        self.inner: np.ndarray  # on a group: product of the sizes of the groups after it
        self.inst: np.ndarray  # per output row of the batch: the instance it shows, or -1
        self.local: np.ndarray  # per output row: its row number within that instance
        self.complete = False  # every output row shows an instance of this level


class _Unnester:
    """The state of one :func:`unnest` call: the schema tree, the columns, the row count."""

    def __init__(self, *, full: bool, maps: Mapping[tuple[str, ...], bool] | bool | None, sep: str, max_rows: int):
        self.full = full
        self.maps = maps
        self.sep = sep
        self.max_rows = max_rows
        self.seq = 0
        self.root = self.node(())
        self.rows = 0  # rows of the batches done
        self.names: dict[str, _Column] = {}  # full unnest: every column by name, to catch collisions
        self.columns: list[_Column] = []  # every column, to grow their buffers together
        self.capacity = 0  # rows every column buffer has room for
        self.expected: int | None = None  # records in the input, when it has a length
        self.levels: list[_Level] = []  # of the current batch
        self.leaves: list[tuple[_Column, _Level, np.ndarray | None, Any, str | None]] = []

    # --- schema ----------------------------------------------------------------------------------

    def node(self, path: tuple[str, ...]) -> _Node:
        self.seq += 1
        return _Node(path, self.seq)

    def child(self, node: _Node, key: Any) -> _Node:
        child = self.node((*node.path, key if type(key) is str else str(key)))
        node.children[key] = child
        return child

    def star(self, node: _Node) -> _Node:
        if node.star is None:
            node.star = self.node((*node.path, WILDCARD))
        return node.star

    def column(self, path: tuple[str, ...]) -> _Column:
        name = self.sep.join(path)
        if name in self.names:
            raise UnnestError(
                f"two different paths flatten to the column name {name!r} (a key contains the "
                f"separator {self.sep!r} or is '*' or '*~'); pass a sep= that no key contains"
            )
        col = self.names[name] = _Column(name)
        self.columns.append(col)
        return col

    @staticmethod
    def unstring(col: _Column, rows: int) -> None:
        """A column kept as strings gets another kind: its missing values become None again."""
        done = col.buf[:rows]
        done[np.fromiter((v is _GAP for v in done), dtype=bool, count=rows)] = None
        col.strings = False

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
                grown = np.empty(self.capacity, dtype=object)
                grown[: self.rows] = col.buf[: self.rows]
                col.buf = grown

    def decide_map(self, node: _Node, dicts: Any) -> bool | None:
        """Whether the dicts at ``node`` are data-keyed maps; None: no non-empty dict to tell."""
        maps = self.maps
        if isinstance(maps, bool):
            return maps
        if maps is not None and node.path in maps:
            return maps[node.path]
        nonempty = len(dicts) - list(map(len, dicts)).count(0)
        if nonempty == 0:
            return None
        if nonempty < 2:
            return False
        most = max(Counter(chain.from_iterable(dicts)).values())
        return most * 2 <= nonempty

    # --- walking one batch -----------------------------------------------------------------------

    def batch(self, records: list[dict]) -> None:
        """Walk one batch of records column-wise, count its rows, then lay its rows out."""
        root = _Level(len(records), None)
        self.levels = [root]
        self.leaves = []
        work: list[tuple[_Node, _Level, np.ndarray | None, Any, int | None]] = [(self.root, root, None, records, _DICT)]
        while work:
            node, level, idx, values, kind = work.pop()
            inferred = None
            if kind is None:
                hint = node.hint
                if hint == _SCALAR:
                    # Scalars last time: one C pass both converts and checks them.
                    array = _objects(values)
                    inferred = _infer(array)
                    if inferred is not None:
                        kind, values = _SCALAR, array
                elif hint == _DICT and self.full and self.known_dicts(node, level, idx, values, work):
                    continue
                if kind is None:
                    types = set(map(type, values))
                    if types <= _SCALAR_TYPES:
                        kind = _SCALAR
                        inferred = None
                    elif types == _DICT_ONLY:
                        kind = _DICT
                    elif types == _LIST_ONLY:
                        kind = _LIST
                    else:
                        node.hint = None
                        self.mixed(node, level, idx, values, work)
                        continue
                node.hint = kind
            if kind == _SCALAR:
                col = node.col
                if col is None:
                    if not self.full:
                        continue
                    col = node.col = self.column(node.path)
                self.leaves.append((col, level, idx, values, inferred))
            elif kind == _DICT or kind == _STRUCT:
                self.dicts(node, level, idx, values, kind, work)
            else:  # _LIST, _MAPS, _EXPLODE
                self.explode(node, level, idx, values, kind, work)
        self.layout()

    def known_dicts(self, node: _Node, level: _Level, idx: np.ndarray | None, values: Any, work: list) -> bool:
        """Dicts last time at a decided path: read them as then (maps, or the same keys).

        False, having changed nothing, if they are not all dicts or not with those keys (the
        caller then sorts the values out in general).
        """
        n = len(values)
        if set(map(type, values)) != _DICT_ONLY:
            return False  # not all exactly dicts (a subclass's __missing__ must not run)
        try:
            if node.is_map:
                lens = np.fromiter(map(len, values), dtype=np.int64, count=n)
                elements = list(chain.from_iterable(map(dict.values, values)))
            elif node.keys is not None and sum(map(len, values)) == n * len(node.keys):
                columns = self.columns_of(node, values)
            else:
                return False
        except KeyError:
            return False  # a key that last time's dicts did not have
        if node.is_map:
            self.explode(node, level, idx, values, _MAPS, work, lens=lens, elements=elements)
        else:
            self.push_children(node, level, idx, node.keys, columns, work)
        return True

    def columns_of(self, node: _Node, dicts: Any) -> list:
        """The values of each of ``node.keys`` in ``dicts`` (KeyError if one lacks one).

        A child that held scalars last time gets an object array, the others a list.
        """
        n = len(dicts)
        children = node.children
        if len(node.keys) <= 3:
            return [
                np.fromiter(map(getter, dicts), dtype=object, count=n)
                if children[key].hint == _SCALAR
                else list(map(getter, dicts))
                for key, getter in zip(node.keys, node.getters, strict=True)
            ]
        return list(zip(*map(node.getter, dicts)))  # noqa: B905 - itemgetter tuples: one length

    def push_children(
        self, node: _Node, level: _Level, idx: np.ndarray | None, keys: Any, columns: list, work: list
    ) -> None:
        """Queue each key's values, in the children's creation order (first popped first)."""
        children = node.children
        items = sorted(
            ((children[key], column) for key, column in zip(keys, columns, strict=True)),
            key=lambda item: item[0].seq,
            reverse=True,
        )
        work.extend((child, level, idx, column, None) for child, column in items)

    def mixed(self, node: _Node, level: _Level, idx: np.ndarray | None, values: Any, work: list) -> None:
        """Values of several kinds at one path: split them, and queue each part on its own."""
        if idx is None:
            idx = np.arange(level.n)
        kinds = np.fromiter(map(_kind, values), dtype=np.int8, count=len(values))
        dicts = [v if type(v) is dict else dict(v) for v in compress(values, kinds == _DICT)]
        if dicts and self.full and node.is_map is None and node.path:
            node.is_map = self.decide_map(node, dicts)
        # Lists, and dicts read as maps, both explode into the elements at ``node.*``: one level.
        exploding = kinds == _LIST
        struct = kinds == _DICT
        if self.full and node.is_map:
            exploding |= struct
            struct[:] = False
        elif not self.full and node.star is not None:
            exploding |= struct
        if exploding.any():
            containers = [
                v if type(v) is dict else list(v) if _kind(v) == _LIST else dict(v) for v in compress(values, exploding)
            ]
            kind = _EXPLODE if (exploding & (kinds == _DICT)).any() else _LIST
            work.append((node, level, idx[exploding], containers, kind))
        if struct.any():
            part = [v if type(v) is dict else dict(v) for v in compress(values, struct)]
            work.append((node, level, idx[struct], part, _STRUCT))
        scalars = kinds == _SCALAR
        if scalars.any():
            work.append((node, level, idx[scalars], list(compress(values, scalars)), _SCALAR))

    def dicts(self, node: _Node, level: _Level, idx: np.ndarray | None, dicts: Any, kind: int, work: list) -> None:
        """Dicts at ``node``: a map explodes into rows; a struct's keys become child paths.

        ``kind`` _STRUCT: the keys only (the caller explodes any maps).
        """
        items: list[tuple[int, _Node, np.ndarray | None, Any, int | None]] = []
        children = node.children
        n = len(dicts)
        if self.full:
            if node.is_map is None and node.path:
                node.is_map = self.decide_map(node, dicts)
            if node.is_map and kind == _DICT:
                self.explode(node, level, idx, dicts, _MAPS, work)
                return
            columns = None
            keys = node.keys
            if keys is not None and sum(map(len, dicts)) == n * len(keys):
                # Same key count as last time's keys, and (if no KeyError) those very keys.
                try:
                    columns = self.columns_of(node, dicts)
                except KeyError:
                    pass
            if columns is None:
                keys = tuple(dict.fromkeys(chain.from_iterable(dicts)))
                for key in keys:
                    if key not in children:
                        self.child(node, key)
                if keys and sum(map(len, dicts)) == n * len(keys):
                    node.keys, node.getter = keys, itemgetter(*keys)
                    node.getters = [itemgetter(key) for key in keys]
                    columns = self.columns_of(node, dicts)
                else:
                    node.keys = node.getter = node.getters = None
            if columns is not None:
                for key, column in zip(keys, columns, strict=True):
                    child = children[key]
                    items.append((child.seq, child, idx, column, None))
            elif keys:
                self.sparse(node, level, idx, dicts, keys, items)
        else:
            if node.star is not None and kind == _DICT:
                items.append((node.star.seq, node, idx, dicts, _MAPS))
            for key, child in children.items():
                mask = np.fromiter(map(contains, dicts, repeat(key)), dtype=bool, count=n)
                present = int(np.count_nonzero(mask))
                if present == n:
                    items.append((child.seq, child, idx, list(map(itemgetter(key), dicts)), None))
                elif present:
                    sub = list(map(itemgetter(key), compress(dicts, mask)))
                    sub_idx = np.flatnonzero(mask) if idx is None else idx[mask]
                    items.append((child.seq, child, sub_idx, sub, None))
        items.sort(key=itemgetter(0), reverse=True)
        work.extend((child, level, i, v, k) for _, child, i, v, k in items)

    @staticmethod
    def sparse(node: _Node, level: _Level, idx: np.ndarray | None, dicts: Any, keys: tuple, items: list) -> None:
        """Dicts with varying keys: group all their entries by key with one stable sort."""
        lens = np.fromiter(map(len, dicts), dtype=np.int64, count=len(dicts))
        position = {key: i for i, key in enumerate(keys)}
        flat_keys = list(chain.from_iterable(dicts))
        codes = np.fromiter(map(position.__getitem__, flat_keys), dtype=np.int64, count=len(flat_keys))
        order = np.argsort(codes, kind="stable")
        values = _objects(list(chain.from_iterable(map(dict.values, dicts))))[order]
        owners = np.repeat(np.arange(level.n) if idx is None else idx, lens)[order]
        bounds = np.searchsorted(codes[order], np.arange(len(keys) + 1))
        children = node.children
        for i, key in enumerate(keys):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            child = children[key]
            sub_idx = None if idx is None and hi - lo == level.n else owners[lo:hi]
            items.append((child.seq, child, sub_idx, values[lo:hi], None))

    def explode(
        self,
        node: _Node,
        level: _Level,
        idx: np.ndarray | None,
        containers: Any,
        kind: int,
        work: list,
        *,
        lens: np.ndarray | None = None,
        elements: list | None = None,
    ) -> None:
        """Lists (_LIST), maps (_MAPS) or both (_EXPLODE) at ``node``: their elements become
        the instances of a child level, each one showing in the rows of its parent instance."""
        star = node.star
        if star is None:
            if not self.full:
                return
            star = self.star(node)
        if lens is None:
            lens = np.fromiter(map(len, containers), dtype=np.int64, count=len(containers))
        total = int(lens.sum())
        if total == 0:
            return  # empty everywhere: one row each, nothing below
        child = _Level(total, np.repeat(np.arange(level.n) if idx is None else idx, lens))
        level.groups.append(child)
        self.levels.append(child)
        keycol = star.keycol
        keys: Any = None
        if kind == _LIST:
            flat = chain.from_iterable(containers)
            # Scalars there last time: straight into the array they will be checked as.
            elements = np.fromiter(flat, dtype=object, count=total) if star.hint == _SCALAR else list(flat)
            if keycol is not None and not self.full:
                keys = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
        else:
            if keycol is None and self.full and (kind == _MAPS or any(type(c) is dict and c for c in containers)):
                keycol = star.keycol = self.column((*node.path, KEY))
            if kind == _MAPS:
                if elements is None:
                    elements = list(chain.from_iterable(map(dict.values, containers)))
                if keycol is not None:
                    keys = list(chain.from_iterable(containers))
            else:
                elements = list(chain.from_iterable(c.values() if type(c) is dict else c for c in containers))
                if keycol is not None:
                    # A list's elements have their position as key; in a full unnest, none.
                    keys = list(
                        chain.from_iterable(
                            c if type(c) is dict else repeat(None, len(c)) if self.full else range(len(c))
                            for c in containers
                        )
                    )
        if keys is not None:
            self.leaves.append((keycol, child, None, keys, None))
        work.append((star, child, None, elements, None))

    # --- laying out one batch --------------------------------------------------------------------

    def layout(self) -> None:
        """Count the batch's rows (refusing past max_rows), then write each leaf to its rows."""
        levels = self.levels
        # Rows per instance, bottom-up, in float64 so that a huge product cannot overflow.
        for level in reversed(levels):
            count = np.ones(level.n)
            for group in level.groups:
                sums = np.bincount(group.parent, weights=group.count, minlength=level.n)
                group.size = np.maximum(sums, 1.0)
                count *= group.size
            level.count = count
        root = levels[0]
        total = float(root.count.sum())
        if self.rows + total > self.max_rows:
            self.refuse()
        for level in levels:
            level.count = level.count.astype(np.int64)
            for group in level.groups:
                group.size = group.size.astype(np.int64)
        rows = int(root.count.sum())
        start = self.rows
        self.reserve(rows, root.n)
        capacity = self.capacity

        # Which instance of each level every output row shows, top-down.
        root.complete = True
        if rows == root.n:
            root.inst = None  # the identity
        else:
            root.inst = np.repeat(np.arange(root.n), root.count)
            root.local = np.arange(rows) - np.repeat(np.cumsum(root.count) - root.count, root.count)
        by_level: dict[int, list] = {}
        for leaf in self.leaves:
            by_level.setdefault(id(leaf[1]), []).append(leaf)
        for level in levels:
            if level.groups:
                if level.inst is None:
                    level.inst = np.arange(rows)
                    level.local = np.zeros(rows, dtype=np.int64)
                inner = np.ones(level.n, dtype=np.int64)
                for group in reversed(level.groups):
                    group.inner = inner
                    inner = inner * group.size
                for group in level.groups:
                    self.place(level, group, rows)
            inst = level.inst
            for col, _, idx, values, inferred in by_level.get(id(level), ()):
                array = _objects(values)
                if inferred is None:
                    inferred = _infer(array) or infer_dtype(array, skipna=True)
                nulls = inferred.startswith("-")
                if nulls:
                    col.nulls = True
                    inferred = inferred[1:]
                col.kinds.add(inferred)
                stringy = inferred == "string" or inferred == "empty"
                if col.strings is None:
                    col.strings = stringy
                elif col.strings and not stringy:
                    self.unstring(col, start)
                fill = _GAP if col.strings else None
                if col.buf is None:
                    col.buf = np.empty(capacity, dtype=object)
                    col.buf[:start] = fill
                    col.gaps = start > 0
                if fill is not None and nulls:
                    array[[v is None for v in array]] = fill  # our own array: no copy needed
                target = col.buf[start : start + rows]
                if not (idx is None and level.complete):
                    col.gaps = True
                    dense = np.full(level.n + 1, fill, dtype=object)  # the extra last slot: no value
                    if idx is None:
                        dense[:-1] = array
                    else:
                        dense[idx] = array
                    array = dense[:-1] if inst is None else dense
                if inst is None:
                    target[:] = array
                else:
                    np.take(array, inst, out=target, mode="wrap")  # -1: the None slot
            level.inst = level.local = None
        written = {id(leaf[0]) for leaf in self.leaves}
        for col in self.columns:
            if col.buf is not None and id(col) not in written:
                col.gaps = True
                if col.strings:
                    col.buf[start : start + rows] = _GAP
        self.rows += rows
        self.levels = []
        self.leaves = []

    @staticmethod
    def place(level: _Level, group: _Level, rows: int) -> None:
        """Set ``group.inst`` / ``group.local`` from its parent level's (mixed-radix row numbers)."""
        inst, local = level.inst, level.local
        parent = group.parent
        if not group.groups and (group.n == 1 or bool((parent[1:] > parent[:-1]).all())):
            # At most one element per parent instance, one row each: it shows wherever its
            # parent does (the common one-element list), or nowhere.
            if group.n == level.n:
                group.inst, group.local, group.complete = inst, local, level.complete
            else:
                element = np.full(level.n + 1, -1, dtype=np.int64)  # the last slot: for row -1
                element[parent] = np.arange(group.n)
                group.inst, group.local, group.complete = element[inst], local, False
            return
        if not level.complete:
            shown = np.flatnonzero(inst >= 0)
            inst, local = inst[shown], local[shown]
        # Row number within the block of rows the group gives the parent instance.
        digit = (local // group.inner[inst]) % group.size[inst]
        children = np.bincount(group.parent, minlength=level.n)
        first = np.cumsum(children) - children
        before = np.cumsum(group.count) - group.count  # rows of the group's earlier instances
        has = children[inst] > 0
        complete = level.complete and bool(has.all())
        if not complete:
            positions = np.flatnonzero(has) if level.complete else shown[has]
            inst, digit = inst[has], digit[has]
        offset = before[first[inst]] + digit
        which = np.searchsorted(before, offset, side="right") - 1
        if complete:
            group.inst, group.local, group.complete = which, offset - before[which], True
            return
        group.inst = np.full(rows, -1, dtype=np.int64)
        group.local = np.zeros(rows, dtype=np.int64)
        group.inst[positions] = which
        group.local[positions] = offset - before[which]

    def refuse(self) -> None:
        """Raise RowLimitExceededError with the exact row count (Python ints: no overflow)."""
        counts: dict[int, list[int]] = {}
        for level in reversed(self.levels):
            count = [1] * level.n
            for group in level.groups:
                sums = [0] * level.n
                for parent, rows in zip(group.parent.tolist(), counts[id(group)], strict=True):
                    sums[parent] += rows
                count = [c * max(1, s) for c, s in zip(count, sums, strict=True)]
            counts[id(level)] = count
        total = self.rows + sum(counts[id(self.levels[0])])
        raise RowLimitExceededError(
            f"unnest would produce at least {total:,} rows, more than max_rows={self.max_rows:,}; "
            "select fewer list/map paths with columns= or raise max_rows"
        )

    # --- the result ------------------------------------------------------------------------------

    def ordered_columns(self) -> list[_Column]:
        """Full unnest: every column, in schema order (first-seen keys, depth first)."""
        out: list[_Column] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            if node.keycol is not None:
                out.append(node.keycol)
            if node.col is not None:
                out.append(node.col)
            below = list(node.children.values())
            if node.star is not None:
                below.append(node.star)
            below.sort(key=lambda n: n.seq, reverse=True)
            stack.extend(below)
        return out

    def series(self, col: _Column) -> pd.Series:
        """One column as a Series, of the dtype pandas infers from a list of the values."""
        buf, col.buf = col.buf, None
        if buf is None:
            return pd.Series(np.empty(self.rows, dtype=object), copy=False)
        if col.strings and "string" not in col.kinds:
            col.buf = buf
            self.unstring(col, self.rows)  # nothing but nulls: pandas makes that object, with None
            buf, col.buf = col.buf, None
        values = buf[: self.rows]
        if len(buf) > self.rows * 1.25 + 16:
            values = values.copy()  # do not keep much unused room alive
        del buf
        if col.strings:
            return pd.Series(_strings(values), copy=False)
        return _convert(values, col.kinds - {"empty"}, col.gaps or col.nulls)


def _infer(array: np.ndarray) -> str | None:
    """What infer_dtype says of scalars, prefixed with '-' if there are nulls; None if not all scalars."""
    strict = infer_dtype(array, skipna=False)
    if strict in _SCALAR_INFERRED:
        return strict
    lenient = infer_dtype(array, skipna=True)
    return "-" + lenient if lenient in _SCALAR_INFERRED else None


def _strings(values: np.ndarray) -> pd.api.extensions.ExtensionArray:
    """``values``, an object array of str only (checked batch by batch), as pandas' str array.

    Wrapping the array as it is saves a pass over every cell, after the batches' objects
    have left the CPU cache (that pass alone costs a sixth of a full unnest). The shortcut
    is pandas' own constructor for arrays it knows to be valid (pandas is pinned); should it
    ever be missing, the public constructor does the same with the pass.
    """
    try:
        return _STR_TEMPLATE._from_backing_data(values)
    except (AttributeError, TypeError):
        return pd.array(values, dtype=_STR)


def _convert(values: np.ndarray, kinds: set[str], gaps: bool) -> pd.Series:
    """``values`` (object array) as a Series of the dtype pandas infers from their list.

    ``kinds``: what infer_dtype (skipna) said of each part, "empty" left out; ``gaps``: some
    value is a missing one (None). One exception to pandas: ints with nulls become float64
    only if every int survives as a float; otherwise the column stays object (exact ints).
    """
    if kinds == {"string"}:
        if not gaps:
            return pd.Series(_strings(values), copy=False)
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
        big = np.flatnonzero(np.abs(series.to_numpy()) >= _MAX_EXACT)
        if len(big) and any(type(values[i]) is int and float(values[i]) != values[i] for i in big):
            return pd.Series(values, copy=False)
    return series


def _split(path: Any, sep: str, what: str) -> tuple[str, ...]:
    """A path string as its segments; UnnestError if it is not a well-formed path."""
    if not isinstance(path, str):
        raise UnnestError(f"{what}: path {path!r} is not a string; write paths like 'name{sep}official'")
    segments = tuple(path.split(sep))
    if not path or "" in segments:
        raise UnnestError(f"{what}: path {path!r} has an empty segment; write paths like 'name{sep}official'")
    return segments


def _batches(records: Iterable[Any], size: int) -> Iterable[list[dict]]:
    """The records in lists of up to ``size``, each record checked to be a dict."""
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
        if set(map(type, batch)) != _DICT_ONLY:
            for i, record in enumerate(batch):
                if type(record) is not dict:
                    if not isinstance(record, Mapping):
                        raise UnnestError(
                            f"record {done + i} is a {type(record).__name__}, expected a dict "
                            "(a JSON object); pass an iterable of dicts"
                        )
                    batch[i] = dict(record)
        done += len(batch)
        yield batch


def unnest(
    records: Iterable[Mapping[str, Any]],
    columns: Mapping[str, str] | Iterable[str] | None = None,
    *,
    maps: Mapping[str, bool] | bool | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    sep: str = ".",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> pd.DataFrame:
    """Flatten JSON records into one DataFrame with no dict or list left in any cell.

    **Input.** ``records`` is any iterable of dicts (JSON objects) nesting dicts, lists and
    scalars arbitrarily deep; it is read once, ``batch_size`` records at a time, so a
    generator is never held whole (only one batch of input at a time). A record that is not a
    dict (a Mapping is accepted) raises :class:`UnnestError` naming its index. Depth is
    unlimited (no recursion).

    **Paths and columns.** A *path* names where a value sits: dict keys joined by ``sep``
    (``name.official``); ``*`` stands for the elements of a list or the values of a data-keyed
    map (``currencies.*.name``); ``*~`` as the last segment stands for the *key* of those
    entries: the map key (``currencies.*~`` is ``DKK``), or the 0-based position in a list.
    Every output column is named by (or, with ``columns=``, selects) one such path, and holds
    exactly the scalars (str, int, float, bool, None, or any other non-dict, non-list object)
    found at that path. Values are never coerced from one path to another.

    **Rows.** Each record gives one or more rows, in input order:

    - a nested dict adds columns, not rows;
    - a list gives one row per element (list order), a data-keyed map one row per entry
      (insertion order), with the record's other values repeated on each;
    - sibling lists/maps within one record are independent and multiply (a cross product,
      like SQL lateral joins), so every value appears: ``{"a": [1, 2], "b": ["x", "y"]}``
      gives rows (1, x), (1, y), (2, x), (2, y). Sibling lists nest in path order (depth
      first, keys in first-seen order; with ``columns=``, in the order the paths are first
      mentioned), the first varying slowest: in a full unnest, the list whose columns come
      first;
    - an empty list or dict, a missing key, or a path where a record holds a different kind of
      value keeps the row, with null in the columns below that path (like a LEFT JOIN); it
      never drops a record. A null is a scalar: it gives null at its own path.

    **Mixed types at one path.** A scalar at ``P`` goes to column ``P``, a dict's keys to
    ``P.key`` (or ``P.*~``/``P.*`` if ``P`` is a map), a list's elements to ``P.*``. So a path
    holding a scalar in one record, a dict in another and a list in a third gives all three
    kinds of columns, each null where the record held another kind.

    **Data-keyed maps** (full unnest only, ``columns=None``). A dict whose keys are data
    (currency codes, language codes, years) rather than field names is a *map*: one row per
    entry, its key in column ``P.*~``, its values under ``P.*``. Detection rule, per path:
    in the first batch where the path holds a non-empty dict, it is a map when it holds a
    non-empty dict at least twice and no key appears in more than half of those dicts
    (field names recur in every record; codes vary). Once decided, a path keeps its decision
    for the whole call. ``maps`` overrides: a mapping of paths (``*`` for list/map levels, e.g.
    ``{"name.nativeName": True, "flags": False}``) to True (map) or False (plain dict),
    unlisted paths being detected; ``maps=False`` turns detection off (every dict is plain,
    as in ``pandas.json_normalize``); ``maps=True`` makes every dict below the record a map.
    The record itself is never a map.

    **Selecting columns.** ``columns`` selects and names the output columns: a mapping
    ``{output name: path}`` (output in that order), or an iterable of paths (each named by
    itself). Only the selected paths are read: other branches are not walked and their lists
    never multiply rows. In a selected path, ``*`` explodes a list, and also a dict, which it
    declares a map (so ``currencies.*.name`` works whether ``currencies`` is a list of
    ``{"code", "name"}`` dicts or a dict keyed by code; ``maps`` does not apply and may not be
    given). A path ending in ``*~`` selects the map key / list position. A path whose value is
    a dict or list in some record gives null there. A selected path found in no record gives
    an all-null column. Keys containing ``sep``, or equal to ``*`` or ``*~``, cannot be
    selected: pass another ``sep``.

    **Full unnest** (``columns=None``): every scalar path becomes a column, named by its path
    (``tld.*``, ``currencies.*~``, ``currencies.*.name``), so any column name can be passed
    back as a path in ``columns=`` to select those values (a selected ``*`` also reads as a
    map any dict at that level, so it may find more). Columns are ordered by first-seen key,
    depth first, a map's ``*~`` column before its values. ``P.*~`` exists for each map path
    ``P`` and holds the map keys (lists found at ``P`` give null there: their order is the
    row order). If two different paths would give the same column name (a key containing
    ``sep``), UnnestError asks for another ``sep``.

    **Output.** A DataFrame with a RangeIndex. Each column's dtype is what pandas infers
    from the list of its Python values (``pandas.Series(values)``): int64 for ints without
    nulls, float64 for floats and for ints with nulls (unless an int would lose precision as a
    float: then object), bool without nulls, ``str`` for strings (nulls are NaN), object for
    mixed values or only nulls. No records gives an empty frame (no columns for a full
    unnest, the selected columns otherwise).

    **Row limit.** The rows are counted before they are built, batch by batch: as soon as the
    records read so far would give more than ``max_rows`` rows, :class:`RowLimitExceededError`
    is raised (saying the count reached, the bound and what to do); no more than ``max_rows``
    rows are ever held, and no DataFrame is built. A single record whose lists multiply to an
    astronomical count is refused at once, its rows never built.

    **Batches.** ``batch_size`` (default 1,000) records are read at a time: it bounds the input
    held, and is the sample that decides a path's maps (see above). Rows, values and dtypes
    do not depend on it otherwise (column order can, where one path holds both dicts and
    lists: their columns come in the order first met).

    Raises:
        UnnestError: a record is not a dict; a path or ``maps`` entry is malformed; ``maps``
            given with ``columns``; an argument has the wrong type or range; two paths give
            one column name.
        RowLimitExceededError: the output would exceed ``max_rows`` rows.
    """
    if not isinstance(sep, str) or not sep or WILDCARD in sep or "~" in sep:
        raise UnnestError(f"sep must be a non-empty string without '*' or '~', got {sep!r}")
    if type(max_rows) is not int or not 0 <= max_rows <= _MAX_EXACT:
        raise UnnestError(f"max_rows must be an int from 0 to 2**53, got {max_rows!r}")
    if type(batch_size) is not int or batch_size < 1:
        raise UnnestError(f"batch_size must be a positive int, got {batch_size!r}")

    selected: list[tuple[str, tuple[str, ...]]] | None = None
    if columns is not None:
        if maps is not None:
            raise UnnestError(
                "maps= applies only to a full unnest (columns=None); in columns= a '*' path segment declares the map"
            )
        if isinstance(columns, str | bytes):
            raise UnnestError(
                f"columns must be a mapping {{name: path}} or a list of paths, not the string {columns!r}"
            )
        if isinstance(columns, Mapping):
            pairs = list(columns.items())
        else:
            pairs = [(path, path) for path in columns]
            seen = [name for name, count in Counter(p for p, _ in pairs).items() if count > 1]
            if seen:
                raise UnnestError(f"columns lists the path {seen[0]!r} twice")
        selected = []
        for name, path in pairs:
            if not isinstance(name, str):
                raise UnnestError(f"column names must be strings, got {name!r}")
            segments = _split(path, sep, f"column {name!r}")
            if KEY in segments[:-1]:
                raise UnnestError(f"column {name!r}: '*~' may only end a path, got {path!r}")
            selected.append((name, segments))
        overrides: Mapping[tuple[str, ...], bool] | bool | None = None
    elif isinstance(maps, bool) or maps is None:
        overrides = maps
    elif isinstance(maps, Mapping):
        overrides = {}
        for path, flag in maps.items():
            segments = _split(path, sep, "maps")
            if KEY in segments:
                raise UnnestError(f"maps: path {path!r} may not contain '*~' (a key is not a dict)")
            if type(flag) is not bool:
                raise UnnestError(f"maps: {path!r} must map to True or False, got {flag!r}")
            overrides[segments] = flag
    else:
        raise UnnestError(f"maps must be a mapping {{path: bool}}, a bool or None, got {type(maps).__name__}")

    state = _Unnester(full=selected is None, maps=overrides, sep=sep, max_rows=max_rows)
    state.expected = len(records) if isinstance(records, Sized) else None
    internal: dict[tuple[str, ...], _Column] = {}
    for _, segments in selected or ():
        if segments in internal:
            continue
        node = state.root
        for segment in segments[:-1]:
            if segment == WILDCARD:
                node = state.star(node)
            else:
                node = node.children.get(segment) or state.child(node, segment)
        last = segments[-1]
        col = _Column(sep.join(segments))
        state.columns.append(col)
        if last == KEY:
            state.star(node).keycol = col
        else:
            if last == WILDCARD:
                node = state.star(node)
            else:
                node = node.children.get(last) or state.child(node, last)
            if node.col is None:
                node.col = col
            col = node.col
        internal[segments] = col

    # The walk allocates many short-lived containers while the input holds many long-lived
    # ones: the cyclic collector would rescan the input again and again. It finds no cycles
    # here (nothing we build refers back), so it is paused for the call.
    collecting = gc.isenabled()
    gc.disable()
    try:
        for batch in _batches(records, batch_size):
            state.batch(batch)
    finally:
        if collecting:
            gc.enable()

    index = pd.RangeIndex(state.rows)
    if selected is None:
        data = {col.name: state.series(col) for col in state.ordered_columns()}
    else:
        by_path = {segments: state.series(col) for segments, col in internal.items()}
        data = {name: by_path[segments] for name, segments in selected}
    frame = pd.DataFrame(data, index=index, copy=False) if data else pd.DataFrame(index=index)
    return frame
