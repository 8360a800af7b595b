"""Reading one batch of records column-wise along the path tree: levels and leaves, no rows yet.

Contract of :meth:`Walker.walk` (one call per batch, the records all exact dicts):

- It returns the batch's :class:`~flows.transform.unnest.layout.Level` list (the records first, then
  every level before its child levels) and its *leaves*: ``(column, level, where, values,
  inferred)``, the scalars of one column that belong to instances of one level: to all of
  them in order (``where`` None) or to the instances at ``where``; ``inferred`` is what
  :func:`~flows.transform.unnest.values.infer` said of them, or None if not known yet.
- A full unnest reads every path, creating nodes and columns as it meets them; a selection
  reads only the selected paths' nodes.
- At each path, scalars go to the path's column, dicts are read key by key (or explode as
  maps), lists and maps explode into a child level (``*``), and the ``*~`` column gets the
  map keys or list positions. A path holding several kinds of values is split by kind and
  each part read on its own (the unnest docstring's "mixed types at one path").
- Nothing recurses: the walk is a work stack, so depth is unlimited.

How: one path at a time over the whole batch, with C-level passes (``map``, ``itemgetter``,
``chain``, numpy) instead of per-value Python code. What a path held last batch
(``node.hint``, ``node.keys``) is tried first and checked as it is used; a value of another
kind sends the path through the general route. No container made per value outlives the
moment it is read (a dict's tuple of values is freed at once), so the garbage collector's
young generation stays small and its collections cheap.
"""

from __future__ import annotations

from itertools import chain, compress, repeat
from operator import contains, itemgetter
from typing import Any

import numpy as np

from flows.transform.unnest.layout import Level
from flows.transform.unnest.paths import Node, PathTree
from flows.transform.unnest.values import (
    DICT,
    DICT_ONLY,
    EXPLODE,
    LIST,
    LIST_ONLY,
    MAPS,
    SCALAR,
    SCALAR_TYPES,
    STRUCT,
    infer,
    kind_of,
    objects,
)

Leaf = tuple[Any, Level, np.ndarray | None, Any, str | None]
_Work = tuple[Node, Level, np.ndarray | None, Any, int | None]


class Walker:
    """Walks the batches of one call along one :class:`PathTree` (see the module docstring)."""

    def __init__(self, tree: PathTree):
        self.tree = tree
        self.full = tree.full
        self.levels: list[Level] = []
        self.leaves: list[Leaf] = []

    def walk(self, records: list[dict]) -> tuple[list[Level], list[Leaf]]:
        """The levels and leaves of one batch of records."""
        root = Level(len(records), None)
        self.levels, self.leaves = [root], []
        work: list[_Work] = [(self.tree.root, root, None, records, DICT)]
        while work:
            node, level, where, values, kind = work.pop()
            inferred = None
            if kind is None:
                hint = node.hint
                if hint == SCALAR:
                    # Scalars last time: one C pass both converts and checks them.
                    array = objects(values)
                    inferred = infer(array)
                    if inferred is not None:
                        kind, values = SCALAR, array
                elif hint == DICT and self.full and self._known_dicts(node, level, where, values, work):
                    continue
                if kind is None:
                    types = set(map(type, values))
                    if types <= SCALAR_TYPES:
                        kind = SCALAR
                    elif types == DICT_ONLY:
                        kind = DICT
                    elif types == LIST_ONLY:
                        kind = LIST
                    else:
                        node.hint = None
                        self._mixed(node, level, where, values, work)
                        continue
                node.hint = kind
            if kind == SCALAR:
                if node.col is not None or self.full:
                    self.leaves.append((self.tree.column_at(node), level, where, values, inferred))
            elif kind == DICT or kind == STRUCT:
                self._dicts(node, level, where, values, kind, work)
            else:  # LIST, MAPS, EXPLODE
                self._explode(node, level, where, values, kind, work)
        levels, leaves = self.levels, self.leaves
        self.levels, self.leaves = [], []
        return levels, leaves

    # --- dicts -----------------------------------------------------------------------------------

    def _known_dicts(self, node: Node, level: Level, where: np.ndarray | None, values: Any, work: list) -> bool:
        """Dicts last time at a decided path: read them as then (maps, or the same keys).

        False, having changed nothing, if they are not all dicts or not with those keys (the
        caller then sorts the values out in general).
        """
        n = len(values)
        if set(map(type, values)) != DICT_ONLY:
            return False  # not all exactly dicts (a subclass's __missing__ must not run)
        if node.is_map:
            lens = np.fromiter(map(len, values), dtype=np.int64, count=n)
            elements = list(chain.from_iterable(map(dict.values, values)))
            self._explode(node, level, where, values, MAPS, work, lens=lens, elements=elements)
            return True
        if node.keys is None or sum(map(len, values)) != n * len(node.keys):
            return False
        try:
            columns = self._columns_of(node, values)
        except KeyError:
            return False  # a key that last time's dicts did not have
        self._push(node, level, where, node.keys, columns, work)
        return True

    @staticmethod
    def _columns_of(node: Node, dicts: Any) -> list:
        """The values of each of ``node.keys`` in ``dicts`` (KeyError if one lacks one).

        A few keys: one pass per key. More: one pass over the dicts (each dict read once,
        while in the cache) into a table of one row per dict, each dict's tuple of values
        freed as soon as it is read. A child that held scalars last time gets its column as
        an object array, the others a list.
        """
        n = len(dicts)
        children = node.children
        if len(node.keys) <= 3:
            return [
                np.fromiter(map(getter, dicts), dtype=object, count=n)
                if children[key].hint == SCALAR
                else list(map(getter, dicts))
                for key, getter in zip(node.keys, node.getters, strict=True)
            ]
        flat = np.fromiter(chain.from_iterable(map(node.getter, dicts)), dtype=object, count=n * len(node.keys))
        table = flat.reshape(n, len(node.keys)).T.copy()  # one row per key
        return [
            row if children[key].hint == SCALAR else row.tolist() for key, row in zip(node.keys, table, strict=True)
        ]

    @staticmethod
    def _push(node: Node, level: Level, where: np.ndarray | None, keys: Any, columns: list, work: list) -> None:
        """Queue each key's values, in the children's creation order (first popped first)."""
        children = node.children
        items = sorted(
            ((children[key], column) for key, column in zip(keys, columns, strict=True)),
            key=lambda item: item[0].seq,
            reverse=True,
        )
        work.extend((child, level, where, column, None) for child, column in items)

    def _dicts(self, node: Node, level: Level, where: np.ndarray | None, dicts: Any, kind: int, work: list) -> None:
        """Dicts at ``node``: a map explodes into rows; a struct's keys become child paths.

        ``kind`` STRUCT: the keys only (the caller explodes any maps).
        """
        if not self.full:
            self._selected_keys(node, level, where, dicts, kind, work)
            return
        tree = self.tree
        if node.is_map is None and node.path:
            node.is_map = tree.decide_map(node, dicts)
        if node.is_map and kind == DICT:
            self._explode(node, level, where, dicts, MAPS, work)
            return
        n = len(dicts)
        columns = None
        keys = node.keys
        if keys is not None and sum(map(len, dicts)) == n * len(keys):
            # Same key count as last time's keys, and (if no KeyError) those very keys.
            try:
                columns = self._columns_of(node, dicts)
            except KeyError:
                pass
        if columns is None:
            keys = tuple(dict.fromkeys(chain.from_iterable(dicts)))
            for key in keys:
                if key not in node.children:
                    tree.child(node, key)
            if keys and sum(map(len, dicts)) == n * len(keys):
                node.keys, node.getter = keys, itemgetter(*keys)
                node.getters = [itemgetter(key) for key in keys]
                columns = self._columns_of(node, dicts)
            else:
                node.keys = node.getter = node.getters = None
        if columns is not None:
            self._push(node, level, where, keys, columns, work)
        elif keys:
            self._sparse(node, level, where, dicts, keys, work)

    def _selected_keys(
        self, node: Node, level: Level, where: np.ndarray | None, dicts: Any, kind: int, work: list
    ) -> None:
        """Selection: each selected key's values, where present; a selected ``*`` reads maps."""
        items: list[tuple[int, Node, np.ndarray | None, Any, int | None]] = []
        n = len(dicts)
        if node.star is not None and kind == DICT:
            items.append((node.star.seq, node, where, dicts, MAPS))
        for key, child in node.children.items():
            mask = np.fromiter(map(contains, dicts, repeat(key)), dtype=bool, count=n)
            present = int(np.count_nonzero(mask))
            if present == n:
                items.append((child.seq, child, where, list(map(itemgetter(key), dicts)), None))
            elif present:
                sub = list(map(itemgetter(key), compress(dicts, mask)))
                sub_where = np.flatnonzero(mask) if where is None else where[mask]
                items.append((child.seq, child, sub_where, sub, None))
        items.sort(key=itemgetter(0), reverse=True)
        work.extend((target, level, at, values, kind) for _, target, at, values, kind in items)

    @staticmethod
    def _sparse(node: Node, level: Level, where: np.ndarray | None, dicts: Any, keys: tuple, work: list) -> None:
        """Dicts with varying keys: group all their entries by key with one stable sort."""
        lens = np.fromiter(map(len, dicts), dtype=np.int64, count=len(dicts))
        position = {key: i for i, key in enumerate(keys)}
        flat_keys = list(chain.from_iterable(dicts))
        codes = np.fromiter(map(position.__getitem__, flat_keys), dtype=np.int64, count=len(flat_keys))
        order = np.argsort(codes, kind="stable")
        values = objects(list(chain.from_iterable(map(dict.values, dicts))))[order]
        owners = np.repeat(np.arange(level.n) if where is None else where, lens)[order]
        bounds = np.searchsorted(codes[order], np.arange(len(keys) + 1))
        children = node.children
        items = []
        for i, key in enumerate(keys):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            child = children[key]
            sub_where = None if where is None and hi - lo == level.n else owners[lo:hi]
            items.append((child.seq, child, sub_where, values[lo:hi]))
        items.sort(key=itemgetter(0), reverse=True)
        work.extend((child, level, sub_where, part, None) for _, child, sub_where, part in items)

    # --- several kinds at one path -----------------------------------------------------------------

    def _mixed(self, node: Node, level: Level, where: np.ndarray | None, values: Any, work: list) -> None:
        """Values of several kinds at one path: split them, and queue each part on its own."""
        if where is None:
            where = np.arange(level.n)
        kinds = np.fromiter(map(kind_of, values), dtype=np.int8, count=len(values))
        dicts = [v if type(v) is dict else dict(v) for v in compress(values, kinds == DICT)]
        if dicts and self.full and node.is_map is None and node.path:
            node.is_map = self.tree.decide_map(node, dicts)
        # Lists, and dicts read as maps, both explode into the elements at ``node.*``: one level.
        exploding = kinds == LIST
        struct = kinds == DICT
        if self.full and node.is_map:
            exploding |= struct
            struct[:] = False
        elif not self.full and node.star is not None:
            exploding |= struct
        if exploding.any():
            containers = [
                v if type(v) is dict else list(v) if kind_of(v) == LIST else dict(v)
                for v in compress(values, exploding)
            ]
            kind = EXPLODE if (exploding & (kinds == DICT)).any() else LIST
            work.append((node, level, where[exploding], containers, kind))
        if struct.any():
            part = [v if type(v) is dict else dict(v) for v in compress(values, struct)]
            work.append((node, level, where[struct], part, STRUCT))
        scalars = kinds == SCALAR
        if scalars.any():
            work.append((node, level, where[scalars], list(compress(values, scalars)), SCALAR))

    # --- lists and maps ----------------------------------------------------------------------------

    def _explode(
        self,
        node: Node,
        level: Level,
        where: np.ndarray | None,
        containers: Any,
        kind: int,
        work: list,
        *,
        lens: np.ndarray | None = None,
        elements: list | None = None,
    ) -> None:
        """Lists (LIST), maps (MAPS) or both (EXPLODE) at ``node``: their elements become the
        instances of a child level, each one showing in the rows of its parent instance."""
        star = node.star
        if star is None:
            if not self.full:
                return
            star = self.tree.star(node)
        if lens is None:
            lens = np.fromiter(map(len, containers), dtype=np.int64, count=len(containers))
        total = int(lens.sum())
        if total == 0:
            return  # empty everywhere: one row each, nothing below
        child = Level(total, np.repeat(np.arange(level.n) if where is None else where, lens))
        level.groups.append(child)
        self.levels.append(child)
        keycol = star.keycol
        keys: Any = None
        if kind == LIST:
            flat = chain.from_iterable(containers)
            # Scalars there last time: straight into the array they will be checked as.
            elements = np.fromiter(flat, dtype=object, count=total) if star.hint == SCALAR else list(flat)
            if keycol is not None and not self.full:
                keys = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)
        else:
            if keycol is None and self.full and (kind == MAPS or any(type(c) is dict and c for c in containers)):
                keycol = self.tree.key_column_at(star)
            if kind == MAPS:
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
