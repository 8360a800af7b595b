"""Turn JSON records (any nesting of dicts and lists) into one flat pandas DataFrame.

The one public function is :func:`unnest`; its docstring is the contract. It is pure: no I/O,
no Prefect, no global state (in particular it never touches the garbage collector's switches:
Prefect runs tasks in threads).

How it works (not part of the contract): records are read in batches and walked column-wise,
one schema path at a time over the whole batch, with C-level passes (``map``, ``itemgetter``,
numpy) instead of per-value Python code. Lists and data-keyed maps become *levels* (their
elements, each knowing its parent); sibling levels multiply. The
row count of the batch is computed from the levels before any row is built; then numpy index
arithmetic says which element of each level every output row shows, and each column is one
``take``. Numeric columns are built typed batch by batch; string columns get pandas' ``str``
dtype in one public pass at the end. No recursion anywhere, so depth is unlimited. The parts,
each with its contract in its docstring:

- :mod:`flows.transform.unnest.api`: :func:`unnest` itself: arguments, batches, the loop;
- :mod:`flows.transform.unnest.paths`: the schema: the tree of paths met or selected, map decisions,
  column order;
- :mod:`flows.transform.unnest.walk`: one batch read along the tree into levels and leaves;
- :mod:`flows.transform.unnest.layout`: the batch's rows: count (the row limit) and placement;
- :mod:`flows.transform.unnest.columns`: column buffers, dtypes, the final Series;
- :mod:`flows.transform.unnest.values`: what a value is (kinds, inferred types).
"""

from flows.transform.unnest.api import DEFAULT_BATCH_SIZE, DEFAULT_MAX_ROWS, unnest
from flows.transform.unnest.paths import KEY, WILDCARD

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_MAX_ROWS", "KEY", "WILDCARD", "unnest"]
