"""PostgreSQL plumbing the loader shares (private; see ``flows.load``): names, connecting, messages.

- :func:`quote_ident` quotes any text as an SQL identifier; identifiers are at
  most :data:`MAX_IDENTIFIER_BYTES` long (PostgreSQL would truncate longer ones
  silently).
- :func:`connect` opens a connection, or raises ``DatabaseUnreachableError``
  saying where it tried and what to do, never the password.
- :func:`pg_message` is PostgreSQL's message for a failed statement on one
  line; :func:`scrub` masks the password in any text before it is shown.
"""

from __future__ import annotations

import psycopg2
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from flows.errors import DatabaseUnreachableError

__all__ = ["MAX_IDENTIFIER_BYTES", "connect", "pg_message", "quote_ident", "scrub"]

MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1; longer names would be truncated silently


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (any text is safe: quotes are doubled)."""
    return '"' + name.replace('"', '""') + '"'


def _describe_target(url: sa.engine.URL) -> str:
    """Where ``url`` points, for messages: host and port or socket directory, database, user. No password."""
    host = url.host or url.query.get("host")
    host = ",".join(host) if isinstance(host, tuple) else host
    if not host:
        where = "the default socket directory"
    elif str(host).startswith("/"):
        where = f"socket directory {host}"
    else:
        where = f"host {host} port {url.port or url.query.get('port') or 5432}"
    return f'database "{url.database or "?"}" at {where} as user "{url.username or "?"}"'


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip()
    return text.splitlines()[0].strip() if text else type(original).__name__


def pg_message(exc: BaseException) -> str:
    """PostgreSQL's message for a failed statement (primary, detail, context) on one line."""
    diag = getattr(getattr(exc, "orig", None) or exc, "diag", None)
    parts = [getattr(diag, "message_primary", None), getattr(diag, "message_detail", None)]
    context = getattr(diag, "context", None)
    if context:
        parts.append(context.splitlines()[0])
    parts = [" ".join(p.split()) for p in parts if p and p.strip()]
    return "; ".join(parts) if parts else _first_line(exc)  # no server message: the connection was lost


def scrub(text: str, url: sa.engine.URL) -> str:
    """``text`` with ``url``'s password masked as ``***``."""
    return text.replace(str(url.password), "***") if url.password else text


def connect(engine: sa.Engine) -> sa.Connection:
    """A connection from ``engine``, or ``DatabaseUnreachableError`` saying where and what to do."""
    try:
        return engine.connect()
    except (sa_exc.DBAPIError, psycopg2.Error) as exc:
        raise DatabaseUnreachableError(
            f"cannot connect to PostgreSQL {_describe_target(engine.url)}: {scrub(_first_line(exc), engine.url)}; "
            "check the countries-db block's connection settings and that PostgreSQL is running"
        ) from None
