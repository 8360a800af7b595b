"""The database a load writes to (:class:`Database`), its table names, and its messages. Imports psycopg2;
SQLAlchemy (0.14-0.23 s to import) only for URL strings, multi-host queries and engines."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

import psycopg2

from flows.errors import DatabaseUnreachableError, InvalidTableNameError, LoadError

if TYPE_CHECKING:
    import sqlalchemy as sa

MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1; longer names would be truncated silently
SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})  # libpq parameters that are secrets
PSYCOPG2_DRIVERS = ("postgresql+psycopg2", "postgresql")


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


@dataclasses.dataclass(frozen=True, eq=False)
class Database:
    """A PostgreSQL database: the parts of a SQLAlchemy URL, extra psycopg2 ``connect_args``, and the name of
    the block it came from (for messages). ``ValueError`` for a driver other than psycopg2's. No secret in its repr."""

    drivername: str = "postgresql+psycopg2"
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: Mapping[str, str | tuple[str, ...]] = dataclasses.field(default_factory=dict)
    connect_args: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    block: str | None = None

    def __post_init__(self) -> None:
        if self.drivername not in PSYCOPG2_DRIVERS:
            raise ValueError(
                f"uses the driver {self.drivername!r}, not postgresql+psycopg2 (the load bulk-copies through psycopg2)"
            )
        if self.port is not None:
            object.__setattr__(self, "port", int(self.port))
        query = {k: v if isinstance(v, str) else tuple(v) for k, v in dict(self.query or {}).items()}
        object.__setattr__(self, "query", query)
        object.__setattr__(self, "connect_args", dict(self.connect_args or {}))
        self.psycopg2_arguments()  # a query SQLAlchemy would refuse is refused now

    @classmethod
    def from_url(cls, url: str, connect_args: Mapping[str, Any] | None = None, block: str | None = None) -> Database:
        """The database of a SQLAlchemy URL string (``sqlalchemy.make_url``); ``ValueError`` if it is not one."""
        import sqlalchemy as sa

        try:
            u = sa.make_url(url)
        except (sa.exc.ArgumentError, ValueError, TypeError):
            raise ValueError("is not a SQLAlchemy URL") from None
        parts = (u.drivername, u.username, u.password, u.host, u.port, u.database, u.query)
        return cls(*parts, connect_args=connect_args or {}, block=block)

    @property
    def url(self) -> sa.engine.URL:
        """This database as a SQLAlchemy ``URL``, with psycopg2's driver (2.1 reads ``postgresql://`` as psycopg 3)."""
        import sqlalchemy as sa

        return sa.engine.URL.create(
            "postgresql+psycopg2", self.username, self.password, self.host, self.port, self.database, self.query
        )

    def engine(self, **kwargs: Any) -> sa.Engine:
        """A new SQLAlchemy engine on this database (the caller disposes it)."""
        import sqlalchemy as sa

        return sa.create_engine(self.url, connect_args=dict(self.connect_args), **kwargs)

    def psycopg2_arguments(self) -> tuple[list[str], dict[str, Any]]:
        """The arguments of ``psycopg2.connect``: those of SQLAlchemy's psycopg2 dialect, then ``connect_args``.

        A query naming several hosts or a port is read by that dialect; ``ValueError`` when it refuses it."""
        host = self.query.get("host")
        if "port" in self.query or not (host is None or (isinstance(host, str) and not set(host) & {",", ":"})):
            import sqlalchemy as sa
            from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

            try:
                args, opts = PGDialect_psycopg2().create_connect_args(self.url)
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
        """A new psycopg2 connection (the caller closes it); ``DatabaseUnreachableError`` if none."""
        args, kwargs = self.psycopg2_arguments()
        try:
            return psycopg2.connect(*args, **kwargs)
        except psycopg2.Error as exc:
            raise unreachable(self, exc, self.block) from None

    @property
    def description(self) -> str:
        """The URL as SQLAlchemy's ``render_as_string`` writes it, not percent-encoded, secrets as ``***``."""
        s = self.drivername + "://"
        if self.username is not None:
            s += self.username + (":***" if self.password is not None else "") + "@"
        if self.host is not None:
            s += f"[{self.host}]" if ":" in self.host else self.host
        s += f":{self.port}" if self.port is not None else ""
        s += "/" + self.database if self.database is not None else ""
        if self.query:
            s += "?" + "&".join(
                f"{k}={'***' if k in SECRET_QUERY_KEYS else v}"
                for k in sorted(self.query)
                for v in ((self.query[k],) if isinstance(self.query[k], str) else self.query[k])
            )
        return s

    def __repr__(self) -> str:
        return f"Database({self.description!r})"


def _where(url: Any) -> str:
    """Where ``url`` (a SQLAlchemy URL or a :class:`Database`) points: host and port or socket, database, user."""
    host = url.host or url.query.get("host")
    host = ",".join(host) if isinstance(host, tuple) else host
    if not host:
        where = "the default socket directory"
    elif str(host).startswith("/"):
        where = f"socket directory {host}"
    else:
        where = f"host {host} port {url.port or url.query.get('port') or 5432}"
    return f'database "{url.database or "?"}" at {where} as user "{url.username or "?"}"'


def pg_message(exc: BaseException) -> str:
    """PostgreSQL's message for a failed statement (primary, detail, context) on one line."""
    original = getattr(exc, "orig", None) or exc
    diag = getattr(original, "diag", None)
    parts = [getattr(diag, "message_primary", None), getattr(diag, "message_detail", None)]
    context = getattr(diag, "context", None)
    if context:
        parts.append(context.splitlines()[0])
    parts = [" ".join(p.split()) for p in parts if p and p.strip()]
    if parts:
        return "; ".join(parts)
    text = str(original).strip()  # no server message: the connection was lost, or it never opened
    return text.splitlines()[0].strip() if text else type(original).__name__


def scrub(text: str, url: Any) -> str:
    """``text`` with the secrets of ``url`` (a SQLAlchemy URL or a :class:`Database`) masked as ``***`` where
    they stand as credentials (``user:SECRET@``, ``password=SECRET``, also percent-encoded), not inside words."""
    secrets = [str(url.password)] if url.password else []
    for key in SECRET_QUERY_KEYS & set(url.query):
        value = url.query[key]
        secrets += [value] if isinstance(value, str) else list(value)
    forms = {f for s in secrets if s for f in (s, quote(s, safe=""), quote_plus(s))}
    if not forms:
        return text
    secret = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
    text = re.sub(rf"(:)(?:{secret})(?=@)", r"\1***", text)
    return re.sub(rf"(\b(?:ssl)?password\s*=\s*(['\"]?))(?:{secret})(?=\2(?:[\s&;,)]|$))", r"\1***", text)


def unreachable(url: Any, exc: BaseException, block: str | None = None) -> DatabaseUnreachableError:
    """The error for a connection that failed: where it tried, why (no secret), and which block to check."""
    check = f"check the {block} block's connection settings" if block else "check the connection settings"
    return DatabaseUnreachableError(
        f"cannot connect to PostgreSQL {_where(url)}: {scrub(pg_message(exc), url)}; "
        f"{check} and that PostgreSQL is running"
    )

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_NAME_HELP = "use letters, digits and underscores, optionally schema-qualified like analytics.countries"


@dataclasses.dataclass(frozen=True)
class TableName:
    """A validated, lower-case table name; ``schema`` is ``None`` for "the first schema on search_path"."""

    schema: str | None
    name: str

    @property
    def sql(self) -> str:
        """The quoted name for SQL, e.g. ``"public"."countries"``."""
        if self.schema is None:
            return quote_ident(self.name)
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    def __str__(self) -> str:
        return self.name if self.schema is None else f"{self.schema}.{self.name}"


def parse_table_name(name: str) -> TableName:
    """``"countries"`` or ``"analytics.countries"`` as a lower-case ``TableName``; ``InvalidTableNameError`` for
    a part that is not a plain identifier of at most 63 bytes or more than one dot."""
    shown = json.dumps(name, ensure_ascii=False)
    parts = name.split(".")
    if len(parts) > 2:
        raise InvalidTableNameError(
            f"invalid table name {shown}: at most one dot (schema.table) is allowed; {_NAME_HELP}"
        )
    for part in parts:
        if not _IDENTIFIER.fullmatch(part):
            quoted = json.dumps(part, ensure_ascii=False)
            what = "an empty part" if part == "" else f"{quoted} is not a plain identifier"
            raise InvalidTableNameError(f"invalid table name {shown}: {what}; {_NAME_HELP}")
        if len(part) > MAX_IDENTIFIER_BYTES:
            raise InvalidTableNameError(
                f"invalid table name {shown}: a part is {len(part)} characters long, "
                f"PostgreSQL allows at most {MAX_IDENTIFIER_BYTES}; {_NAME_HELP}"
            )
    parts = [p.lower() for p in parts]
    return TableName(None, parts[0]) if len(parts) == 1 else TableName(parts[0], parts[1])


def resolve_schema(cur: psycopg2.extensions.cursor, table: TableName) -> TableName:
    """``table`` with its schema made explicit (from ``search_path``); ``LoadError`` if there is none."""
    cur.execute("SELECT s, to_regnamespace(quote_ident(s)) FROM coalesce(%s, current_schema()) s", (table.schema,))
    schema, exists = cur.fetchone()
    if schema is None:
        raise LoadError(f"cannot place table {table}: search_path names no existing schema; use schema.table")
    if exists is None:
        raise LoadError(
            f'schema "{table.schema}" does not exist: create it first '
            f"(CREATE SCHEMA {quote_ident(table.schema)}) or load into another schema; nothing was written"
        )
    return TableName(schema, table.name)


def resolve_table(db: Database, table: str | TableName) -> TableName:
    """``table`` schema-qualified as a load would place it in ``db`` (:func:`resolve_schema`); writes nothing."""
    target = table if isinstance(table, TableName) else parse_table_name(table)
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            return resolve_schema(cur, target)
    except psycopg2.Error as exc:
        raise LoadError(f"checking {target} failed: {scrub(pg_message(exc), db)}") from None
    finally:
        conn.close()
