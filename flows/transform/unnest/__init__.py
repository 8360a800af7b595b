"""Turn JSON records (any nesting of dicts and lists) into one flat pandas DataFrame.

The one public function is :func:`unnest` (:mod:`~flows.transform.unnest.api`); its
docstring is the contract. Pure: no I/O, no Prefect, no global state. Its parts:
:mod:`~flows.transform.unnest.walk` reads a batch of records along the tree of their paths,
:mod:`~flows.transform.unnest.rows` makes the batch's rows and the final columns.
"""

from flows.transform.unnest.api import DEFAULT_MAX_ROWS, unnest

__all__ = ["DEFAULT_MAX_ROWS", "unnest"]
