"""Reading a batch of records along the tree of their paths: values and elements, not rows yet.

A :class:`Node` is one path: a key below its parent, or its parent's elements (the *star*
node, ``*``). A star node is a *level*: its instances are the elements of the lists and maps
found at its parent, each held by one instance of the level above (the records are the
instances of the root level). Any other node belongs to the level of its nearest star
ancestor (or the root): each instance of that level holds at most one value there.

:meth:`Schema.walk` reads one batch: each :class:`Column` gets the scalars at its path and
the instances holding them, each star node the holder of each element; with
:meth:`Schema.select`, only the selected paths are read. Depth is unlimited (no recursion).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from itertools import chain, compress, repeat
from operator import attrgetter, contains, itemgetter
from typing import Any

import numpy as np
from pandas.api.types import infer_dtype

from flows.errors import UnnestError

WILDCARD = "*"
"""Path segment for "every element of a list / every value of a data-keyed map"."""

KEY = "*~"
"""Last path segment for "the key of each map entry, or the position of each list element"."""

_SCALARS = frozenset({str, int, float, bool, type(None)})
SCALAR_KINDS = frozenset({"string", "integer", "floating", "boolean"})
"""infer_dtype's answers that rule out a container, and that the final dtype can use as they are."""
_SCALAR, _DICT, _LIST = range(3)


def _kind(value: Any) -> int:
    """Any Mapping is a dict, a list or tuple a list, anything else a scalar."""
    if isinstance(value, Mapping):
        return _DICT
    return _LIST if isinstance(value, list | tuple) else _SCALAR


class Column:
    """One output column: this batch's scalars, and the rows so far."""

    __slots__ = ("buf", "ids", "kind", "kinds", "level", "name", "values")

    def __init__(self, name: str, level: Node):
        self.name = name
        self.level = level  # the level whose instances hold the values
        self.values: Any = None  # this batch's values (a list or an object array), if any
        self.ids: np.ndarray | None = None  # the instance holding each; None: every one, in order
        self.kind: str | None = None  # what infer_dtype said of them, if it was asked
        self.buf: np.ndarray | None = None  # the column's rows so far (None: no value), and room
        self.kinds: set[str | None] = set()  # what rows.py's _kind said of each batch's values


class Node:
    """One path of the schema: a key below its parent, or the parent's elements (``*``)."""

    __slots__ = ("children", "col", "is_map", "keycol", "keys", "level", "parent", "parents", "path", "seq", "star")

    def __init__(self, parent: Node | None, path: tuple[str, ...], seq: int, is_map: bool | None, star: bool):
        self.parent = parent
        self.path = path
        self.seq = seq  # creation order: siblings are created in the order first met
        self.level: Node = self if star or parent is None else parent.level
        self.is_map = is_map  # None: not decided yet
        self.children: dict[Any, Node] = {}
        self.keys: tuple = ()  # the keys of the dicts here last batch (tried first)
        self.star: Node | None = None
        self.col: Column | None = None  # the scalars at this path
        self.keycol: Column | None = None  # on a star node: the map keys / list positions
        self.parents: np.ndarray | None = None  # on a star node: each element's holder this batch


class Schema:
    """The tree of one call's paths, and the batch being read (see the module docstring)."""

    def __init__(self, *, full: bool, maps: bool | None, sep: str):
        self.full = full
        self.maps = maps
        self.sep = sep
        self.seq = 0
        self.root = Node(None, (), 0, False, True)
        self.columns: list[Column] = []
        self._names: dict[str, Column] = {}

    def _child(self, node: Node, key: Any, *, star: bool = False) -> Node:
        """A new node below ``node``: the one for ``key``, or its star node."""
        self.seq += 1
        segment = WILDCARD if star else key if type(key) is str else str(key)
        # A selection: no map until a selected '*' says so; a full unnest: maps=, or detection.
        child = Node(node, (*node.path, segment), self.seq, self.maps if self.full else False, star)
        if star:
            node.star = child
        else:
            node.children[key] = child
        return child

    def _column(self, node: Node, *, key: bool = False) -> Column:
        """The column of the scalars at ``node`` (``key``: of star ``node``'s keys), made if new."""
        col = node.keycol if key else node.col
        if col is None:
            name = self.sep.join((*node.path[:-1], KEY) if key else node.path)
            if name in self._names:
                raise UnnestError(
                    f"two different paths flatten to the column name {name!r} (a key contains the "
                    f"separator {self.sep!r} or is '*' or '*~'); pass a sep= that no key contains"
                )
            col = self._names[name] = Column(name, node.level)
            self.columns.append(col)
            if key:
                node.keycol = col
            else:
                node.col = col
        return col

    def select(self, segments: tuple[str, ...]) -> Column:
        """Selection: the nodes of one selected path, and the column of its values."""
        node = self.root
        for segment in segments[:-1]:
            node = self._step(node, segment)
        if segments[-1] == KEY:
            return self._column(self._step(node, WILDCARD), key=True)
        return self._column(self._step(node, segments[-1]))

    def _step(self, node: Node, segment: str) -> Node:
        if segment == WILDCARD:
            node.is_map = True  # in a selection, '*' declares the dicts there maps
            return node.star or self._child(node, WILDCARD, star=True)
        return node.children.get(segment) or self._child(node, segment)

    def nodes(self) -> list[Node]:
        """Every node in path order: depth first, siblings in the order first met."""
        out: list[Node] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            out.append(node)
            below = [*node.children.values(), *([node.star] if node.star else [])]
            stack.extend(sorted(below, key=attrgetter("seq"), reverse=True))
        return out

    def walk(self, records: list[Mapping]) -> None:
        """Read one batch of records into the columns and star nodes (see the module docstring)."""
        # Values travel as lists, iterated faster than object arrays (5% less CPU at 100k records, A/B in one process).
        work: list[tuple[Node, Any, np.ndarray | None]] = [(self.root, records, None)]
        while work:
            node, values, ids = work.pop()
            if node.col is not None:  # scalars last time: made an array once, checked in C
                array = np.fromiter(values, dtype=object, count=len(values))
                kind = infer_dtype(array, skipna=False)
                if kind in SCALAR_KINDS:
                    self._scalars(node, array, ids, kind)
                    continue
            types = set(map(type, values))
            if types <= _SCALARS:
                self._scalars(node, values, ids)
            elif types == {dict}:
                self._dicts(node, values, ids, work)
            elif types == {list}:
                self._explode(node, values, ids, work, maps=False)
            else:
                self._mixed(node, values, ids, work)

    def _mixed(self, node: Node, values: Any, ids: np.ndarray | None, work: list) -> None:
        """Values of several kinds at one path: each kind read on its own, dicts first."""
        kinds = np.fromiter(map(_kind, values), dtype=np.int8, count=len(values))
        # Other Mappings and tuples read as dicts and lists (copies: no __missing__ hook runs).
        values = [dict(v) if k == _DICT else list(v) if k == _LIST else v for v, k in zip(values, kinds.tolist())]
        ids = np.arange(len(values)) if ids is None else ids
        dicts = list(compress(values, kinds == _DICT))
        containers = kinds == _LIST
        if dicts and node.is_map is None and self.full:
            node.is_map = _detect_map(dicts)
        if node.is_map:  # its dicts explode together with its lists, in order
            containers |= kinds == _DICT
        if dicts and not (node.is_map and self.full):
            self._fields(node, dicts, ids[kinds == _DICT], work)
        if containers.any():
            self._explode(node, list(compress(values, containers)), ids[containers], work, maps=None)
        if (kinds == _SCALAR).any():
            self._scalars(node, list(compress(values, kinds == _SCALAR)), ids[kinds == _SCALAR])

    def _scalars(self, node: Node, values: Any, ids: np.ndarray | None, kind: str | None = None) -> None:
        if node.col is not None or self.full:  # else not selected
            col = self._column(node)
            col.values, col.ids, col.kind = values, ids, kind

    def _dicts(self, node: Node, dicts: Any, ids: np.ndarray | None, work: list) -> None:
        """Dicts at ``node``: maps explode into rows; plain dicts give their keys' values."""
        if node.is_map is None and self.full:
            node.is_map = _detect_map(dicts)
        if node.is_map:
            self._explode(node, dicts, ids, work, maps=True)
        if not (node.is_map and self.full):  # a selection reads a map's selected keys too
            self._fields(node, dicts, ids, work)

    def _fields(self, node: Node, dicts: Any, ids: np.ndarray | None, work: list) -> None:
        """Plain dicts at ``node``: queue each key's values (only the selected keys' in a selection)."""
        if self.full and node.keys and self._read_all(node, node.keys, dicts, ids, work):
            return  # the same keys as last batch
        keys = tuple(dict.fromkeys(chain.from_iterable(dicts)) if self.full else node.children)
        for key in keys:
            if key not in node.children:
                self._child(node, key)
        node.keys = keys
        if keys and self._read_all(node, keys, dicts, ids, work):
            return
        n = len(dicts)
        for key in keys:
            present = np.fromiter(map(contains, dicts, repeat(key)), dtype=bool, count=n)
            if present.all():
                work.append((node.children[key], list(map(itemgetter(key), dicts)), ids))
            elif present.any():
                where = np.flatnonzero(present) if ids is None else ids[present]
                work.append((node.children[key], list(map(itemgetter(key), compress(dicts, present))), where))

    @staticmethod
    def _read_all(node: Node, keys: tuple, dicts: Any, ids: np.ndarray | None, work: list) -> bool:
        """Queue each key's values if every dict has exactly ``keys``, in one pass; else False."""
        if sum(map(len, dicts)) != len(dicts) * len(keys):
            return False
        values = map(itemgetter(*keys), dicts)
        try:  # one key's getter gives the value, not a 1-tuple: zip makes one
            flat = list(chain.from_iterable(values if len(keys) > 1 else zip(values)))
        except KeyError:
            return False  # as many keys, not the same ones
        for i, key in enumerate(keys):
            work.append((node.children[key], flat[i :: len(keys)], ids))
        return True

    def _explode(self, node: Node, containers: Any, ids: np.ndarray | None, work: list, *, maps: bool | None) -> None:
        """Lists and maps at ``node``: their elements become the instances of its star level. ``maps``: True if
        ``containers`` are all dicts, False if all lists, None if both."""
        star = node.star
        if star is None:
            if not self.full:
                return  # not selected
            star = self._child(node, WILDCARD, star=True)
        lens = np.fromiter(map(len, containers), dtype=np.int64, count=len(containers))
        parents = np.repeat(np.arange(len(containers)) if ids is None else ids, lens)
        if not len(parents):
            return  # empty everywhere: one row each, nothing below
        star.parents = parents
        if maps:
            flat = chain.from_iterable(map(dict.values, containers))
        elif maps is False:
            flat = chain.from_iterable(containers)
        else:
            flat = chain.from_iterable(c.values() if type(c) is dict else c for c in containers)
        elements = list(flat)
        keycol = star.keycol
        if keycol is None and self.full and (maps or maps is None and any(type(c) is dict and c for c in containers)):
            keycol = self._column(star, key=True)
        if keycol is not None:
            # A map's keys; a list's positions in a selection, None in a full unnest.
            keycol.values = list(chain.from_iterable(containers if maps else (
                c if type(c) is dict else repeat(None, len(c)) if self.full else range(len(c)) for c in containers
            )))
        work.append((star, elements, None))


def _detect_map(dicts: Any) -> bool | None:
    """The map rule of the unnest docstring on one path's dicts; None if all are empty."""
    nonempty = [d for d in dicts if d]
    if not nonempty:
        return None
    return len(nonempty) >= 2 and max(Counter(chain.from_iterable(nonempty)).values()) * 2 <= len(nonempty)
