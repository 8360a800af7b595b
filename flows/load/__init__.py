"""The load stage: make a PostgreSQL table's rows equal to a DataFrame's, and say what changed.

:func:`replace_table` -> :class:`LoadResult` (``flows.load.replace``); :func:`interrupt_loads` stops the loads in
progress and refuses new ones until :func:`resume_loads`. Also ``flows.load.state`` (skip a load already made),
``.database`` (the database, table names), ``.changes`` (the change report). Importing it imports psycopg2, never
pandas or SQLAlchemy.
"""

from flows.load.database import TableName, parse_table_name
from flows.load.locks import interrupt_loads, resume_loads
from flows.load.replace import replace_table
from flows.load.state import LoadResult

__all__ = ["LoadResult", "TableName", "interrupt_loads", "parse_table_name", "replace_table", "resume_loads"]
