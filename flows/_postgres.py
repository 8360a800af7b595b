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
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qsl, quote, quote_plus, unquote

import psycopg2

from flows.errors import DatabaseUnreachableError

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["MAX_IDENTIFIER_BYTES", "PSYCOPG2_DRIVERS", "Database", "connect", "pg_message", "quote_ident", "scrub"]

MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1; longer names would be truncated silently
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

# SQLAlchemy 2.0's URL grammar (sqlalchemy.engine.url._parse_url), so that a URL means the same here.
_URL = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)


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
    takes them. Raises ``TypeError`` for a part of the wrong type, ``ValueError``
    for a driver other than psycopg2 or a query whose hosts and ports do not
    match (its message reads after "the database's URL"). The password (and
    ``connect_args``) never appear in its ``repr`` or messages.
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
        self._hosts_and_ports()  # a query SQLAlchemy would refuse is refused now

    @classmethod
    def from_url(cls, url: str, connect_args: Mapping[str, Any] | None = None) -> Database:
        """The database of a SQLAlchemy URL string, parsed as ``sqlalchemy.make_url`` parses it.

        Raises ``ValueError`` when it is not such a URL (or its port is not a
        number), or for what the constructor refuses.
        """
        match = _URL.match(url) if isinstance(url, str) else None
        if match is None:
            raise ValueError("is not a SQLAlchemy URL")
        parts = match.groupdict()
        query: dict[str, str | list[str]] | None = None
        if parts["query"] is not None:
            query = {}
            for key, value in parse_qsl(parts["query"]):
                if key in query:
                    previous = query[key]
                    query[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
                else:
                    query[key] = value
        try:
            port = int(parts["port"]) if parts["port"] else None
        except ValueError:
            raise ValueError("is not a SQLAlchemy URL") from None
        return cls(
            drivername=parts["name"],
            username=None if parts["username"] is None else unquote(parts["username"]),
            password=None if parts["password"] is None else unquote(parts["password"]),
            host=parts["ipv4host"] or parts["ipv6host"],
            port=port,
            database=parts["database"],
            query=query or {},
            connect_args=connect_args or {},
        )

    # --- connecting -------------------------------------------------------------------

    def psycopg2_arguments(self) -> tuple[list[str], dict[str, Any]]:
        """The positional and keyword arguments of ``psycopg2.connect`` for this database.

        Exactly those SQLAlchemy's psycopg2 dialect passes (``create_connect_args``,
        then ``connect_args`` on top): host, dbname, user, password and port when
        set, the query's parameters, several hosts joined with commas.
        """
        opts: dict[str, Any] = {}
        for attr, key in (("host", "host"), ("database", "dbname"), ("username", "user"), ("password", "password"),
                          ("port", "port")):  # fmt: skip
            value = getattr(self, attr)
            if value:
                opts[key] = value
        hosts, ports = self._hosts_and_ports()
        args: list[str] = []
        if opts or self.query:
            opts.update(self.query)
            if hosts:
                opts["host"] = ",".join(hosts)
                comma_ports = ",".join(str(p) if p else "" for p in ports)
                if comma_ports:
                    opts["port"] = comma_ports
        else:
            args = [""]  # psycopg2 wants a dsn when given nothing else
        opts.update(self.connect_args)
        return args, opts

    def _hosts_and_ports(self) -> tuple[tuple[str, ...] | None, tuple[int | None, ...] | None]:
        """The hosts and ports the query names, as SQLAlchemy's PostgreSQL dialect reads them (multihost URLs)."""
        hosts: tuple[str, ...] | None = None
        ports_text: tuple[str | None, ...] | None = None
        integrated = False
        host = self.query.get("host")
        if isinstance(host, tuple):
            integrated = True
            try:
                hosts, ports_text = zip(*[t.split(":") if ":" in t else (t, None) for t in host], strict=False)
            except ValueError:  # "h:p:q" tokens, or no host at all
                raise ValueError("has query hosts that are not HOST or HOST:PORT") from None
        elif isinstance(host, str):
            hosts = tuple(host.split(","))
            if "port" not in self.query and len(hosts) == 1 and ":" in hosts[0]:
                match = re.match(r"^([a-zA-Z0-9\-\.]*)(?:\:(\d*))?$", hosts[0])
                if match:
                    integrated = True
                    hosts, ports_text = (match.group(1),), (match.group(2) or None,)
        port = self.query.get("port")
        if port is not None:
            if integrated:
                raise ValueError(
                    "mixes two ways of naming several hosts in its query: use host=h1,h2&port=p1,p2 "
                    "or host=h1:p1&host=h2:p2"
                )
            ports_text = port if isinstance(port, tuple) else tuple(port.split(","))
        ports: tuple[int | None, ...] | None = None
        if ports_text:
            try:
                ports = tuple(int(p) if p else None for p in ports_text)
            except ValueError:
                shown = ",".join(p or "" for p in ports_text)
                raise ValueError(f"has a query port that is not a number: {shown}") from None
        mismatch = hosts and len(hosts) != len(ports or ()) and (len(hosts) > 1 or len(ports or ()) > 1)
        if ports and ((not hosts and len(ports) > 1) or mismatch):
            raise ValueError("names a different number of hosts and ports in its query")
        if hosts is not None and ports is None:
            ports = tuple(None for _ in hosts)
        return hosts, ports

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
        """The URL as SQLAlchemy's ``URL.render_as_string`` writes it (the password as ``***`` unless shown)."""
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
                f"{quote_plus(k)}={quote_plus(v)}"
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
    """``text`` with the password of ``url`` (a SQLAlchemy URL or a :class:`Database`) masked as ``***``."""
    return text.replace(str(url.password), "***") if url.password else text


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
