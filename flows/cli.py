"""The command line of the countries flow: ``countries`` (installed) or ``python flows/countries.py``.

Every option but ``--local-db-dir`` is a parameter of ``countries_flow``, and
the command line is derived from the flow itself: from the parameter schema
Prefect builds out of its signature and docstring (the same schema the Prefect
UI and deployments show), so names, help, choices, defaults and ranges are
written once, in ``flows/countries.py``. ``--regions`` takes several values
after one flag (``--regions "Northern Europe" Africa``).

A run goes in this order, so that a mistake costs no server start and no request:

1. usage and parameter checks that need no network (types, the signature's
   ranges, ``check_parameters``: region names, table name, base URL, ...);
2. the Prefect API: ``PREFECT_API_URL`` when set, else the local Prefect server
   (started on first use, reused later; see ``flows/ops/local.py``), else (with
   ``COUNTRIES_LOCAL_PREFECT_SERVER=0``) Prefect's temporary server;
3. the API key for v5 (``RESTCOUNTRIES_API_KEY`` or the Secret block);
4. the database block: an explicitly named block must exist; the default one
   is served by the embedded PostgreSQL when it does not exist yet;
5. the flow run; then the table and, last, the one-line summary.

Each failure is one ``error:`` line on stderr. Exit status: 0 success, 1 the
run failed or could not start, 2 bad usage (options or parameter values).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """The command line or a parameter value is wrong (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with each usage error as one ``error:`` line (no usage block) and exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"error: {message}; see {self.prog} --help\n")


# --- the parser, derived from the flow ----------------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _range(spec: Mapping[str, Any]) -> str:
    low = spec.get("minimum", spec.get("exclusiveMinimum"))
    high = spec.get("maximum", spec.get("exclusiveMaximum"))
    if low is not None and high is not None:
        return f"range {low:g} to {high:g}"
    if low is not None:
        return f"at least {low:g}" if "minimum" in spec else f"more than {low:g}"
    if high is not None:
        return f"at most {high:g}" if "maximum" in spec else f"less than {high:g}"
    return ""


def _shown_default(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(f'"{v}"' if " " in str(v) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _schema_type(spec: Mapping[str, Any]) -> str | None:
    if "type" in spec:
        return spec["type"]
    types = [s.get("type") for s in spec.get("anyOf", ()) if s.get("type") != "null"]
    return types[0] if len(types) == 1 else None


_CONVERTERS = {"number": float, "integer": int, "string": str}


def build_parser(flow: Any = None, prog: str | None = None) -> argparse.ArgumentParser:
    """The command line of ``flow`` (default: ``countries_flow``), one option per parameter, plus ``--local-db-dir``.

    Options are named after the parameters (``min_row_fraction`` ->
    ``--min-row-fraction``); help, choices, defaults and ranges come from the
    flow's parameter schema. An option that is not given is not passed, so the
    flow's own default applies. ``prog`` defaults to the program's name
    (``countries`` or ``countries.py``).
    """
    from flows.ops import local

    if flow is None:
        from flows.countries import countries_flow as flow
    summary = (flow.description or "").partition("\n")[0]
    parser = _Parser(
        prog=prog,
        description=(
            f"{summary.strip()} Runs the flow '{flow.name}' once; prints the table when it changed, "
            "then a one-line summary."
        ),
        epilog=(
            "Prefect: PREFECT_API_URL when set; otherwise a local Prefect server on 127.0.0.1, started on the "
            "first run and reused (COUNTRIES_LOCAL_PREFECT_SERVER=0: Prefect's temporary server instead). "
            "Database: the block --db-block; the default block, when it does not exist yet, is served by an "
            "embedded PostgreSQL. `python -m flows.ops.local status|stop|url|psql` manages both local servers. "
            "Exit status: 0 success, 1 the run failed, 2 bad usage."
        ),
    )
    schema = flow.parameters.model_dump()["properties"]
    for name, spec in sorted(schema.items(), key=lambda item: item[1].get("position", 0)):
        kind = _schema_type(spec)
        notes = [n for n in (_range(spec),) if n]
        default = spec.get("default")
        if not (default is None or default is False or default in ("", [])):
            notes.append(f"default: {_shown_default(default)}")
        text = " ".join([spec.get("description", "").strip(), f"({'; '.join(notes)})" if notes else ""]).strip()
        for other in schema:  # the docstring names other parameters the flow's way: min_row_fraction
            if "_" in other:
                text = re.sub(rf"\b{other}\b", _flag(other), text)
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": text.replace("%", "%%")}
        if kind == "boolean":
            kwargs["action"] = "store_true" if default is False else argparse.BooleanOptionalAction
        elif kind == "array":
            item = _schema_type(spec.get("items", {})) or "string"
            kwargs.update(nargs="+", type=_CONVERTERS.get(item, str), metavar=name.removesuffix("s").upper())
        else:
            kwargs.update(type=_CONVERTERS.get(kind, str), metavar=name.rsplit("_", 1)[-1].upper())
            if "enum" in spec:
                kwargs.update(choices=spec["enum"], metavar=None)
        parser.add_argument(_flag(name), **kwargs)
    parser.add_argument(
        "--local-db-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="data directory of the embedded PostgreSQL that serves the default database block when that "
        f"block does not exist or already points there (default: {local.default_data_dir()}); an error when "
        "the run uses another database",
    )
    return parser


def check_types(flow: Any, given: Mapping[str, Any]) -> None:
    """Check ``given`` parameter values against the flow signature's types and constraints (ranges).

    Raises ``UsageError`` naming the option, the value and the rule, e.g.
    ``--min-row-fraction 5: input should be less than or equal to 1``.
    """
    from pydantic import TypeAdapter, ValidationError

    hints = typing.get_type_hints(flow.fn, include_extras=True)
    for name, value in given.items():
        try:
            TypeAdapter(hints[name]).validate_python(value)
        except ValidationError as exc:
            message = exc.errors()[0]["msg"]
            shown = _shown_default(value)
            raise UsageError(f"{_flag(name)} {shown}: {message[:1].lower()}{message[1:]}") from None


# --- the Prefect API ------------------------------------------------------------------------


def connect_prefect() -> str | None:
    """Point this process at a Prefect API; returns the line that says where its UI is, if it has one.

    ``PREFECT_API_URL`` (environment or Prefect profile) wins; otherwise the
    local Prefect server is started or reused, unless turned off with
    ``COUNTRIES_LOCAL_PREFECT_SERVER=0`` (then Prefect's temporary server is used,
    which has no UI).
    """
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    from flows.ops import local

    settings = get_current_settings()
    if settings.api.url:
        return f"Prefect UI: {settings.ui_url}" if settings.ui_url else None
    if not local.prefect_server_enabled():
        return None
    server = local.prefect_server_status()
    if server is None:
        print(f"starting a local Prefect server for {settings.home} (once; later runs reuse it) ...", flush=True)
        server, _ = local.ensure_prefect_server()
    os.environ["PREFECT_API_URL"] = server.api_url
    refresh_global_settings_context()  # the setting is read from the environment, also by Prefect's threads
    return f"Prefect UI: {server.ui_url} (local Prefect server; `python -m flows.ops.local stop` stops it)"


# --- the database -----------------------------------------------------------------------------


async def _block_socket(client: Any, name: str) -> tuple[bool, str | None]:
    """(whether the SqlAlchemyConnector block ``name`` exists, the unix-socket directory it points at)."""
    from prefect.exceptions import ObjectNotFound

    from flows.ops.settings import DB_BLOCK_TYPE

    try:
        document = await client.read_block_document_by_name(name, block_type_slug=DB_BLOCK_TYPE, include_secrets=False)
    except ObjectNotFound:
        return False, None
    info = document.data.get("connection_info")
    query = info.get("query") if isinstance(info, dict) else None
    return True, (query or {}).get("host")


async def prepare_database(db_block: str, data_dir: Path | None) -> str | None:
    """Make sure the database block ``db_block`` can be used; returns a note to print, if any.

    - Any name but the default (``countries-db``) must name an existing
      SqlAlchemyConnector block; otherwise ``ConfigurationError`` lists the ones
      that exist.
    - The default block, when it does not exist, is created for the embedded
      PostgreSQL (started in ``data_dir``, default ``.local/postgres``); when it
      points at that embedded PostgreSQL, the server is started if needed. The
      note then gives the psql connection string.
    """
    from prefect.client.orchestration import get_client

    from flows.ops import local
    from flows.errors import ConfigurationError
    from flows.ops.settings import DEFAULT_DB_BLOCK, connection_from_url, no_db_block_error, save_db_block

    async with get_client() as client:
        exists, socket_dir = await _block_socket(client, db_block)
        if db_block != DEFAULT_DB_BLOCK and not exists:
            raise await no_db_block_error(db_block, client)
    elsewhere = db_block != DEFAULT_DB_BLOCK or (exists and not local.owns_socket(socket_dir, data_dir))
    if data_dir is not None and elsewhere:
        raise ConfigurationError(
            f"--local-db-dir {data_dir} is not used: the database block '{db_block}' points at another database; "
            "run without --local-db-dir, or give the default block's embedded PostgreSQL that directory by "
            f"removing the block (`prefect block delete sqlalchemy-connector/{DEFAULT_DB_BLOCK}`) first"
        )
    if db_block != DEFAULT_DB_BLOCK:
        return None
    if exists and not local.owns_socket(socket_dir, data_dir):
        return None  # the default block points at a real database
    db = local.database_status(data_dir)
    if db is None or db.socket_dir != socket_dir:
        db = local.ensure_database(data_dir)
        if db.socket_dir != socket_dir:
            await save_db_block(db_block, connection_from_url(db.sqlalchemy_url))
    return f'embedded PostgreSQL (data in {db.data_dir}); see the table with: psql "{db.psql_url}"'


def _no_api_key(api: str):
    from flows.errors import ConfigurationError, setting
    from flows.ops.settings import API_KEY_BLOCK, API_KEY_ENV

    return ConfigurationError(
        f"no REST Countries API key for {setting('api', api)}: set {API_KEY_ENV}, or save it in the "
        f"'{API_KEY_BLOCK}' Secret block with `{API_KEY_ENV}=... python blocks/create_blocks.py`; "
        f"a self-hosted server needs none: {setting('api', 'v3.1')} {setting('base_url')} http://HOST:PORT"
    )


def check_api_key_before_starting(api: str) -> None:
    """What can be said of the API key before any server starts, so that a first run fails at once.

    Raises what ``flows.source.check_key`` raises for the key in the environment
    (the public demo key, a key no header can carry); and the
    missing-key ``ConfigurationError`` when ``api`` needs a key, the environment
    has none, no Prefect API is configured and the local Prefect server's
    database does not exist yet (so no Secret block can hold one).
    """
    from prefect.settings import get_current_settings

    from flows.source import check_key, get_dialect
    from flows.ops.settings import API_KEY_ENV

    if not get_dialect(api).requires_key:
        return
    key = os.environ.get(API_KEY_ENV, "").strip()
    if key:
        check_key(key, API_KEY_ENV)
    current = get_current_settings()
    url = current.server.database.connection_url
    url = url.get_secret_value() if url is not None else ""
    if key or current.api.url or not url.startswith("sqlite"):
        return
    if not Path(url.split(":///", 1)[-1]).exists():
        raise _no_api_key(api)


async def check_api_key(api: str) -> None:
    """Raise ``ConfigurationError`` when ``api`` needs a key and neither the environment nor the Secret block has it."""
    from flows.source import get_dialect
    from flows.ops.settings import load_api_key

    if get_dialect(api).requires_key and await load_api_key() is None:
        raise _no_api_key(api)


# --- running ----------------------------------------------------------------------------------


async def _run(given: dict[str, Any], params: dict[str, Any], data_dir: Path | None) -> Any:
    """Steps 2 to 5 of the module docstring; returns the run's summary."""
    import httpx

    from flows.countries import run_flow
    from flows.ops.settings import prefect_api_unreachable

    check_api_key_before_starting(params["api"])
    ui = connect_prefect()
    try:
        await check_api_key(params["api"])
        note = await prepare_database(params["db_block"], data_dir)
    except httpx.TransportError as exc:  # the first requests to the Prefect API
        advice = "start that server, or unset PREFECT_API_URL to use the local Prefect server"
        raise prefect_api_unreachable(exc, advice) from None
    for line in (ui, note):
        if line:
            print(line, flush=True)
    return await run_flow(**given)


class _RunErrorsStayInTheRunLogs(logging.Filter):
    """Drops the error records of flow and task runs (a failure and its traceback, each "Failed" state).

    On the console a failed run is the command's one ``error:`` line; the
    records stay in the run's logs in the Prefect UI (another handler). An
    unexpected failure still ends in Python's traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR or not record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))


def _quiet_prefect_on_the_console() -> None:
    """Run errors go to the run's logs only (see above); Prefect's senders of logs and events do not note their
    progress ("Still processing items ...") while the command finishes."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker, PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_RunErrorsStayInTheRunLogs())
    for worker in (APILogWorker, EventsWorker):
        logging.getLogger(worker.__name__).setLevel(logging.ERROR)


def _uses_temporary_server() -> bool:
    """Whether this run is on Prefect's default path: a temporary server (no PREFECT_API_URL, no local server)."""
    from prefect.settings import get_current_settings

    from flows.ops import local

    return not get_current_settings().api.url and not local.prefect_server_enabled()


def _finish_prefect_output(temporary_server: bool) -> None:
    """Let Prefect finish what it prints before the last line: send queued logs and events, stop a temporary server.

    Without this, Prefect's exit handlers could print after the summary
    ("Stopping temporary server ...", a note about events still being sent).
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    if temporary_server:
        from prefect.server.api.server import SubprocessASGIServer

        SubprocessASGIServer().stop()  # the one Prefect's client started; nothing when none was


def main(argv: list[str] | None = None) -> int:
    """Run the countries flow once from the command line; returns the exit status (0, 1 or 2)."""
    from flows.countries import countries_flow
    from flows.errors import ConfigurationError, CountriesError
    from flows.parameters import check_parameters

    args = vars(build_parser(countries_flow).parse_args(argv))
    data_dir = args.pop("local_db_dir")
    given = args  # only the options given on the command line; the flow's defaults apply to the others
    try:
        check_types(countries_flow, given)
        defaults = {k: v.default for k, v in _signature(countries_flow).items()}
        params = check_parameters(**{**defaults, **given})
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except ConfigurationError as exc:
        return _fail(exc.for_audience("cli"), EXIT_USAGE)

    _quiet_prefect_on_the_console()
    temporary_server = _uses_temporary_server()
    failure: CountriesError | None = None
    try:
        summary = asyncio.run(_run(given, params, data_dir))
    except CountriesError as exc:
        failure = exc
    finally:
        _finish_prefect_output(temporary_server)
    if failure is not None:
        return _fail(failure.for_audience("cli"), EXIT_FAILED)
    if summary.preview is not None:
        print(summary.preview, flush=True)
    print(summary.one_line(), flush=True)
    return EXIT_OK


def _signature(flow: Any) -> Mapping[str, Any]:
    import inspect

    return inspect.signature(flow.fn).parameters


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
