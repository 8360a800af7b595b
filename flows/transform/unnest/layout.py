"""The rows of one batch: how many there are, and which element each row shows at each level.

A :class:`Level` is a set of *instances* before the cross product: the batch's records
(the root level), or the elements of the lists and maps at one path, each instance knowing
its instance in the parent level. A level's child levels (its ``groups``) are sibling lists
or maps: within one parent instance they multiply, the first group varying slowest.

Contract:

- :func:`count_rows` counts the batch's rows bottom-up (each instance spans the product,
  over its groups, of its children's rows, at least 1 per group: an empty list keeps the
  row) and raises RowLimitExceededError with the exact count, before anything the size of
  the rows is allocated, if the rows so far would pass ``max_rows``.
- :func:`placed` then yields the levels parents first, each with ``inst``: for every row of
  the batch, the instance it shows (-1: none, the row comes from an instance without
  elements here; None: row i shows instance i), and ``complete``: every row shows one. A
  level's ``inst`` is released once the caller has moved on to the next level.

Rows are numbered in mixed radix: within a parent instance's block of rows, the row number
splits into one digit per group (the last group's digit varying fastest), and a group's
digit picks the row within the block of its instances' rows.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from flows.errors import RowLimitExceededError


class Level:
    """``n`` instances; ``parent`` (ascending): each one's instance in the parent level."""

    __slots__ = ("complete", "count", "groups", "inner", "inst", "local", "n", "parent", "size")

    def __init__(self, n: int, parent: np.ndarray | None):
        self.n = n
        self.parent = parent
        self.groups: list[Level] = []  # child levels: sibling lists/maps, multiplied together
        self.count: np.ndarray  # rows each instance spans
        self.size: np.ndarray  # on a group: rows it gives each parent instance (>= 1)
        self.inner: np.ndarray  # on a group: product of the sizes of the groups after it
        self.inst: np.ndarray | None = None  # per row of the batch: the instance it shows, or -1
        self.local: np.ndarray | None = None  # per row: its row number within that instance
        self.complete = False  # every row of the batch shows an instance of this level


def count_rows(levels: list[Level], done: int, max_rows: int) -> int:
    """The rows of the batch whose levels are ``levels`` (root first, parents before children).

    ``done``: rows of the earlier batches. RowLimitExceededError if ``done`` plus these
    would pass ``max_rows``.
    """
    # Bottom-up, in float64 so that a huge product cannot overflow.
    for level in reversed(levels):
        count = np.ones(level.n)
        for group in level.groups:
            sums = np.bincount(group.parent, weights=group.count, minlength=level.n)
            group.size = np.maximum(sums, 1.0)
            count *= group.size
        level.count = count
    root = levels[0]
    if done + float(root.count.sum()) > max_rows:
        _refuse(levels, done, max_rows)
    for level in levels:
        level.count = level.count.astype(np.int64)
        for group in level.groups:
            group.size = group.size.astype(np.int64)
    return int(root.count.sum())


def _refuse(levels: list[Level], done: int, max_rows: int) -> None:
    """Raise RowLimitExceededError with the exact row count (Python ints: no overflow)."""
    counts: dict[int, list[int]] = {}
    for level in reversed(levels):
        count = [1] * level.n
        for group in level.groups:
            sums = [0] * level.n
            for parent, rows in zip(group.parent.tolist(), counts[id(group)], strict=True):
                sums[parent] += rows
            count = [c * max(1, s) for c, s in zip(count, sums, strict=True)]
        counts[id(level)] = count
    total = done + sum(counts[id(levels[0])])
    raise RowLimitExceededError(
        f"unnest would produce at least {total:,} rows, more than max_rows={max_rows:,}; "
        "select fewer list/map paths with columns= or raise max_rows"
    )


def placed(levels: list[Level], rows: int) -> Iterator[Level]:
    """After :func:`count_rows`: each level, parents first, with ``inst`` and ``complete`` set."""
    root = levels[0]
    root.complete = True
    if rows != root.n:
        root.inst = np.repeat(np.arange(root.n), root.count)
        root.local = np.arange(rows) - np.repeat(np.cumsum(root.count) - root.count, root.count)
    for level in levels:
        if level.groups:
            if level.inst is None:  # the identity, spelled out for the arithmetic below
                level.inst = np.arange(rows)
                level.local = np.zeros(rows, dtype=np.int64)
            inner = np.ones(level.n, dtype=np.int64)
            for group in reversed(level.groups):
                group.inner = inner
                inner = inner * group.size
            for group in level.groups:
                _place(level, group, rows)
        yield level
        level.inst = level.local = None


def _place(level: Level, group: Level, rows: int) -> None:
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
