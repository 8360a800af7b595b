"""The load stage: make a PostgreSQL table's rows equal to a DataFrame's, and say what changed.

- :func:`replace_table` -> :class:`LoadResult`: one transaction, only the differing rows
  written, readers never blocked (``flows.load.replace``); :func:`interrupt_loads` stops
  the loads in progress (for a signal handler).
- :mod:`flows.load.state`: whether a run's source was already loaded and the table is
  untouched since (``source_digest``, ``is_unchanged``, ``save_state``).
- :mod:`flows.load.database`: the database (``Database``), table names, messages.
- :mod:`flows.load.changes`: the change report.

Oldest PostgreSQL supported: 14 (``hash_record_extended``); tested on 18.
Importing this package imports psycopg2, never pandas or SQLAlchemy (a load imports them).
"""

from flows.load.changes import ChangeSpec, ChangeSummary, Measure, SetColumn
from flows.load.database import Database, TableName, parse_table_name, resolve_table
from flows.load.locks import interrupt_loads
from flows.load.replace import STRATEGIES, Strategy, replace_table
from flows.load.state import LoadResult

__all__ = [
    "STRATEGIES",
    "ChangeSpec",
    "ChangeSummary",
    "Database",
    "LoadResult",
    "Measure",
    "SetColumn",
    "Strategy",
    "TableName",
    "interrupt_loads",
    "parse_table_name",
    "replace_table",
    "resolve_table",
]
