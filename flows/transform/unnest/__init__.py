"""Turn JSON records (any nesting of dicts and lists) into one flat pandas DataFrame.

The one public function is :func:`unnest`; its docstring is the contract. It is pure: no
I/O, no Prefect, no global state. The parts, each with its contract in its docstring:

- :mod:`flows.transform.unnest.api`: :func:`unnest` itself: arguments, batches, the frame;
- :mod:`flows.transform.unnest.walk`: the tree of paths, and one batch read along it
  record by record into each column's values and each list's or map's elements;
- :mod:`flows.transform.unnest.rows`: the batch's rows (their count, the row limit, the
  cross products) and the final columns with their dtypes.
"""

from flows.transform.unnest.api import DEFAULT_MAX_ROWS, unnest

__all__ = ["DEFAULT_MAX_ROWS", "unnest"]
