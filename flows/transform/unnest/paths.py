"""The paths of one unnest call as a tree: what has been met (or selected), and how to read it.

A :class:`Node` is one path: a key below its parent node, or its parent's elements (the
``*`` child). Nodes are numbered in creation order (``seq``): that is first-seen order,
which orders sibling columns and the nesting of sibling lists.

Contract of :class:`PathTree`:

- Full unnest (``full``): nodes are created as the walk meets keys (:meth:`child`,
  :meth:`star`); a scalar path gets its column when first met (:meth:`column_at`), a map
  path its ``*~`` column when it first holds a non-empty dict (:meth:`key_column_at`).
  :meth:`ordered_columns` gives every column in schema order: first-seen keys, depth first,
  a map's ``*~`` column before its values.
- Selection: :meth:`select` creates the nodes of one selected path up front and returns its
  column; the walk reads no other node.
- :meth:`decide_map` is the map decision of the unnest docstring (overrides first, then
  detection on the dicts given); the walk asks once per path and keeps the answer.

Besides the columns, each node keeps what the walk found there last batch (``hint``,
``keys`` and their getters) so that the next batch can be read without sorting its values
out first; the walk checks that the hint still holds before relying on it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from itertools import chain
from typing import Any

from flows.transform.unnest.columns import Column, ColumnSet

WILDCARD = "*"
"""Path segment for "every element of a list / every value of a data-keyed map"."""

KEY = "*~"
"""Last path segment for "the key of each map entry, or the position of each list element"."""


class Node:
    """One path of the schema: a key below its parent, or the parent's elements (``*``)."""

    __slots__ = ("children", "col", "getter", "getters", "hint", "is_map", "keycol", "keys", "path", "seq", "star")

    def __init__(self, path: tuple[str, ...], seq: int):
        self.path = path
        self.seq = seq  # creation order: siblings are visited, and their lists nested, in this order
        self.children: dict[Any, Node] = {}
        self.star: Node | None = None
        self.is_map: bool | None = None  # dicts here are data-keyed maps (full unnest only)
        self.col: Column | None = None  # the scalars at this path
        self.keycol: Column | None = None  # on a ``*`` node: the map key / list position
        self.hint: int | None = None  # the kind of values found here last time (checked)
        self.keys: tuple | None = None  # the keys every dict here had last time, and ...
        self.getter: Any = None  # ... itemgetter(*keys), and ...
        self.getters: list | None = None  # ... an itemgetter for each key


class PathTree:
    """The schema of one call (see the module docstring)."""

    def __init__(self, *, full: bool, maps: Mapping[tuple[str, ...], bool] | bool | None, sep: str, columns: ColumnSet):
        self.full = full
        self.maps = maps
        self.sep = sep
        self.columns = columns
        self.seq = 0
        self.root = self._node(())

    def _node(self, path: tuple[str, ...]) -> Node:
        self.seq += 1
        return Node(path, self.seq)

    def child(self, node: Node, key: Any) -> Node:
        """A new child of ``node`` for ``key`` (a key that is not a str is named by its str)."""
        child = self._node((*node.path, key if type(key) is str else str(key)))
        node.children[key] = child
        return child

    def star(self, node: Node) -> Node:
        """The ``*`` child of ``node`` (the elements of its lists and maps), made if new."""
        if node.star is None:
            node.star = self._node((*node.path, WILDCARD))
        return node.star

    def column_at(self, node: Node) -> Column:
        """Full unnest: the column of the scalars at ``node``, made if new."""
        if node.col is None:
            node.col = self.columns.add(self.sep.join(node.path))
        return node.col

    def key_column_at(self, star: Node) -> Column:
        """Full unnest: the ``*~`` column of the map whose elements are ``star``, made if new."""
        if star.keycol is None:
            star.keycol = self.columns.add(self.sep.join((*star.path[:-1], KEY)))
        return star.keycol

    def select(self, segments: tuple[str, ...]) -> Column:
        """Selection: the nodes of one selected path, and the column of its values."""
        node = self.root
        for segment in segments[:-1]:
            node = self.star(node) if segment == WILDCARD else node.children.get(segment) or self.child(node, segment)
        last = segments[-1]
        if last == KEY:
            star = self.star(node)
            if star.keycol is None:
                star.keycol = self.columns.add(self.sep.join(segments))
            return star.keycol
        node = self.star(node) if last == WILDCARD else node.children.get(last) or self.child(node, last)
        if node.col is None:
            node.col = self.columns.add(self.sep.join(segments))
        return node.col

    def decide_map(self, node: Node, dicts: Any) -> bool | None:
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

    def ordered_columns(self) -> list[Column]:
        """Full unnest: every column, in schema order (first-seen keys, depth first)."""
        out: list[Column] = []
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
