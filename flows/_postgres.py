"""PostgreSQL plumbing the loader shares (private; see ``flows.load``): the database, connecting, names, messages.

- :class:`Database`: a database as the parts of a SQLAlchemy URL (what a
  ``SqlAlchemyConnector`` block holds) and psycopg2 ``connect_args``.
  ``connect()`` opens a psycopg2 connection without importing SQLAlchemy (the
  light path: checks before a run fetches, and whether a load is needed);
  ``engine()`` builds the SQLAlchemy engine the loader uses, importing
  SQLAlchemy then; ``description`` says where it is, without the password.
- :func:`connect` opens a connection from a SQLAlchemy engine; both raise
  ``DatabaseUnreachableError`` saying where they tried and what to do, never
  the password.
- :func:`quote_ident` quotes any text as an SQL identifier; identifiers are at
  most :data:`MAX_IDENTIFIER_BYTES` long (PostgreSQL would truncate longer ones
  silently).
- :func:`pg_message` is PostgreSQL's message for a failed statement on one
  line; :func:`scrub` masks the password in any text before it is shown.

Importing this module imports psycopg2, never SQLAlchemy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, quote_plus, unquote

import psycopg2

from flows.errors import DatabaseUnreachableError

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = [
    "MAX_IDENTIFIER_BYTES",
    "PSYCOPG2_DRIVERS",
    "SECRET_QUERY_KEYS",
    "Database",
    "connect",
    "pg_message",
    "quote_ident",
    "scrub",
]

MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1; longer names would be truncated silently
SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})
"""libpq connection parameters that are secrets when a URL's query holds them."""
PSYCOPG2_DRIVERS = ("postgresql+psycopg2", "postgresql")
"""The SQLAlchemy driver names that mean PostgreSQL through psycopg2 (the bare one is SQLAlchemy's default)."""


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (any text is safe: quotes are doubled)."""
    return '"' + name.replace('"', '""') + '"'


class _Located(Protocol):
    """Where a database is: a SQLAlchemy ``URL`` or a :class:`Database`."""

    username: str | None
    password: Any
    host: str | None
    port: int | None
    database: str | None
    query: Mapping[str, str | tuple[str, ...]]


# --- a database, as a SQLAlchemy URL means it ---------------------------------------------------


def _optional_str(value: Any, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    return value


def _query(query: Mapping[str, Any] | None) -> dict[str, str | tuple[str, ...]]:
    """``query`` as SQLAlchemy's ``URL.create`` keeps it: text keys, text or tuple-of-text values."""

    def value(v: Any) -> str | tuple[str, ...]:
        if isinstance(v, str):
            return v
        if isinstance(v, Sequence):
            return tuple(value(e) for e in v)
        raise TypeError("query values must be strings or sequences of strings")

    if query is not None and not isinstance(query, Mapping):
        raise TypeError("query must be a mapping")
    out: dict[str, str | tuple[str, ...]] = {}
    for k, v in (query or {}).items():
        if not isinstance(k, str):
            raise TypeError("query keys must be strings")
        out[k] = value(v)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class Database:
    """A PostgreSQL database reached through psycopg2: the parts of a SQLAlchemy URL, and ``connect_args``.

    The parts mean what they mean to SQLAlchemy's ``URL.create`` and its psycopg2
    dialect (a ``query`` such as ``{"host": "/socket/dir"}`` is passed to libpq);
    ``connect_args`` are extra psycopg2 keyword arguments, as ``create_engine``
    takes them. Parts alone are read without SQLAlchemy; a URL string
    (:meth:`from_url`) and a query naming several hosts or a port are read by
    SQLAlchemy itself, imported then. Raises ``TypeError`` for a part of
    the wrong type, ``ValueError`` for a driver other than psycopg2 or a query
    SQLAlchemy refuses (its message reads after "the database's URL"). The
    password (and ``connect_args``) never appear in its ``repr`` or messages.
    """

    drivername: str = "postgresql+psycopg2"
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: Mapping[str, str | tuple[str, ...]] = dataclasses.field(default_factory=dict)
    connect_args: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.drivername not in PSYCOPG2_DRIVERS:
            raise ValueError(
                f"uses the driver {self.drivername!r}, not postgresql+psycopg2 (the load bulk-copies through psycopg2)"
            )
        for name in ("username", "host", "database"):
            _optional_str(getattr(self, name), name)
        if self.password is not None:
            object.__setattr__(self, "password", str(self.password))
        if self.port is not None:
            try:
                object.__setattr__(self, "port", int(self.port))
            except TypeError:
                raise TypeError("port must be an integer") from None
        object.__setattr__(self, "query", _query(self.query))
        object.__setattr__(self, "connect_args", dict(self.connect_args or {}))
        self.psycopg2_arguments()  # a query SQLAlchemy would refuse is refused now

    @classmethod
    def from_url(cls, url: str, connect_args: Mapping[str, Any] | None = None) -> Database:
        """The database of a SQLAlchemy URL string, parsed by ``sqlalchemy.make_url`` (imported now).

        Raises ``ValueError`` when it is not such a URL (or its port is not a
        number), or for what the constructor refuses.
        """
        import sqlalchemy as sa

        try:
            parsed = sa.make_url(url)
        except (sa.exc.ArgumentError, ValueError, TypeError):
            raise ValueError("is not a SQLAlchemy URL") from None
        return cls(
            drivername=parsed.drivername,
            username=parsed.username,
            password=parsed.password,
            host=parsed.host,
            port=parsed.port,
            database=parsed.database,
            query=parsed.query,
            connect_args=connect_args or {},
        )

    # --- connecting -------------------------------------------------------------------

    def psycopg2_arguments(self) -> tuple[list[str], dict[str, Any]]:
        """The positional and keyword arguments of ``psycopg2.connect`` for this database.

        Exactly those SQLAlchemy's psycopg2 dialect passes (``create_connect_args``),
        then ``connect_args`` on top: host, dbname, user, password and port when
        set, and the query's parameters (one ``host``, such as a socket
        directory, included). A query that names several hosts or a port is
        handed to that dialect, as SQLAlchemy writes multi-host URLs in several
        ways; raises ``ValueError`` when it refuses the query.
        """
        host = self.query.get("host")
        if "port" in self.query or not (host is None or (isinstance(host, str) and not set(host) & {",", ":"})):
            import sqlalchemy as sa
            from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

            try:
                args, opts = PGDialect_psycopg2().create_connect_args(self.sqlalchemy_url())
            except (sa.exc.ArgumentError, ValueError) as exc:
                raise ValueError(f"has a query SQLAlchemy cannot read: {scrub(str(exc), self)}") from None
            return list(args), {**opts, **self.connect_args}
        parts = (("host", "host"), ("database", "dbname"), ("username", "user"), ("password", "password"),
                 ("port", "port"))  # fmt: skip
        opts = {key: getattr(self, attr) for attr, key in parts if getattr(self, attr)}
        if not opts and not self.query:
            return [""], dict(self.connect_args)  # psycopg2 wants a dsn when given nothing else
        return [], {**opts, **self.query, **self.connect_args}

    def connect(self) -> psycopg2.extensions.connection:
        """A new psycopg2 connection (the caller closes it), or ``DatabaseUnreachableError`` saying where and what
        to do."""
        args, kwargs = self.psycopg2_arguments()
        try:
            return psycopg2.connect(*args, **kwargs)
        except psycopg2.Error as exc:
            raise _unreachable(self, exc) from None

    def engine(self, **kwargs: Any) -> sa.Engine:
        """A new SQLAlchemy engine on this database (the caller disposes it), as prefect-sqlalchemy's would be."""
        import sqlalchemy as sa

        return sa.create_engine(self.sqlalchemy_url(), connect_args=dict(self.connect_args), **kwargs)

    def sqlalchemy_url(self) -> sa.engine.URL:
        """This database as a SQLAlchemy ``URL`` (imports SQLAlchemy)."""
        import sqlalchemy as sa

        return sa.engine.URL.create(
            self.drivername, self.username, self.password, self.host, self.port, self.database, self.query
        )

    # --- for people ---------------------------------------------------------------------

    def render(self, hide_password: bool = True) -> str:
        """The URL as SQLAlchemy's ``URL.render_as_string`` writes it; the password, and the libpq secrets a query
        may hold (:data:`SECRET_QUERY_KEYS`), as ``***`` unless shown."""
        s = self.drivername + "://"
        if self.username is not None:
            s += quote(self.username, safe=" +")
            if self.password is not None:
                s += ":" + ("***" if hide_password else quote(self.password, safe=" +"))
            s += "@"
        if self.host is not None:
            s += f"[{self.host}]" if ":" in self.host else self.host
        if self.port is not None:
            s += f":{self.port}"
        if self.database is not None:
            s += "/" + self.database
        if self.query:
            s += "?" + "&".join(
                f"{quote_plus(k)}={'***' if hide_password and k in SECRET_QUERY_KEYS else quote_plus(v)}"
                for k in sorted(self.query)
                for v in ((self.query[k],) if isinstance(self.query[k], str) else self.query[k])
            )
        return s

    @property
    def description(self) -> str:
        """The URL for messages and the report, without the password (shown as ``***``), not percent-encoded."""
        return unquote(self.render(hide_password=True))

    def __str__(self) -> str:
        return self.description

    def __repr__(self) -> str:
        return f"Database({self.description!r})"


def _describe_target(url: _Located) -> str:
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


def scrub(text: str, url: _Located) -> str:
    """``text`` with the password of ``url`` (a SQLAlchemy URL or a :class:`Database`), and any secret its query
    holds, masked as ``***``."""
    secrets = [str(url.password)] if url.password else []
    for key in SECRET_QUERY_KEYS & set(url.query):
        value = url.query[key]
        secrets += [value] if isinstance(value, str) else list(value)
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _unreachable(url: _Located, exc: BaseException) -> DatabaseUnreachableError:
    return DatabaseUnreachableError(
        f"cannot connect to PostgreSQL {_describe_target(url)}: {scrub(_first_line(exc), url)}; "
        "check the countries-db block's connection settings and that PostgreSQL is running"
    )


def connect(engine: sa.Engine) -> sa.Connection:
    """A connection from ``engine``, or ``DatabaseUnreachableError`` saying where and what to do."""
    from sqlalchemy import exc as sa_exc  # already imported by whoever has an engine

    try:
        return engine.connect()
    except (sa_exc.DBAPIError, psycopg2.Error) as exc:
        raise _unreachable(engine.url, exc) from None
