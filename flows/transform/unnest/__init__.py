"""Turn JSON records (any nesting of dicts and lists) into one flat pandas DataFrame: :func:`unnest`, whose
docstring is the contract. Pure: no I/O, no Prefect, no global state."""

from flows.transform.unnest.api import DEFAULT_MAX_ROWS, unnest

__all__ = ["DEFAULT_MAX_ROWS", "unnest"]
