"""The command line of the countries flow (``countries``, ``python flows/countries.py``): :func:`main`.

Options: ``countries_flow``'s parameters plus ``--local-db-dir``. Checks needing no network come first, then
the Prefect API, the API key, the database block, the run; a failure is one ``error:`` line (exit 1, 2 usage).
SIGINT/SIGTERM roll back an uncommitted load and print one ``interrupted`` line (exit 130/143).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import sys
import time
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_app(flow: Any) -> Any:
    """The ``cyclopts.App`` of ``flow``: called, the options given (None after ``--help``), or ``CycloptsError``."""
    import cyclopts

    from flows.ops import local

    hints = typing.get_type_hints(flow.fn, include_extras=True)
    parameters = inspect.signature(flow.fn).parameters.values()
    options = [p.replace(kind=p.KEYWORD_ONLY, annotation=hints[p.name]) for p in parameters]
    local_db_dir = cyclopts.Parameter(
        help="Data directory of the embedded PostgreSQL that serves the default database block when that block "
        f"does not exist or already points there (default: {local.default_data_dir()}); an error when the run "
        "uses another database."
    )
    options.append(inspect.Parameter("local_db_dir", inspect.Parameter.KEYWORD_ONLY, default=None,
                                     annotation=Annotated[Path | None, local_db_dir]))  # fmt: skip

    def command(**given: Any) -> dict[str, Any]:
        return given

    command.__signature__ = inspect.Signature(options)  # the flow's signature, keyword-only (PEP 362)
    command.__doc__ = flow.fn.__doc__
    app = cyclopts.App(
        name=Path(sys.argv[0]).name,
        help_flags=["--help", "-h"],
        version_flags=[],
        result_action="return_value",
        default_parameter=cyclopts.Parameter(consume_multiple=True, negative=()),
        help_epilogue=(
            f"Runs the flow '{flow.name}' once; prints the table when the run changed it, then a one-line summary. "
            "Prefect: PREFECT_API_URL when set; otherwise a local Prefect server on 127.0.0.1, started on the first "
            "run and reused (COUNTRIES_LOCAL_PREFECT_SERVER=0: Prefect's temporary server instead). Database: the "
            "block --db-block; the default block, when it does not exist yet, is served by an embedded PostgreSQL. "
            "`python -m flows.ops.local status|stop|url|psql` manages both local servers. "
            "Exit status: 0 success, 1 the run failed, 2 bad usage, 130 or 143 interrupted (SIGINT, SIGTERM)."
        ),
    )
    app.default(command)
    return app


def usage_error(exc: Exception) -> str:
    """A cyclopts usage error as one line: ``--cache-minutes inf: input should be a finite number``."""
    from pydantic import ValidationError

    tokens = exc.argument.tokens if getattr(exc, "argument", None) else []
    if isinstance(exc.__cause__, ValidationError) and tokens:  # a range or type of the signature
        message = exc.__cause__.errors()[0]["msg"]
        return f"{tokens[0].keyword} {tokens[0].value}: {message[:1].lower()}{message[1:]}"
    if getattr(exc, "unused_tokens", None):  # cyclopts' "Unused Tokens: [...]"
        return f"unexpected {' '.join(map(str, exc.unused_tokens))!r}: a value follows its option, a flag takes none"
    return " ".join(str(exc).split()).rstrip(".")


def connect_prefect() -> str | None:
    """Point this process at a Prefect API (step 2); returns the line naming its UI, if it has one."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    from flows.ops import local

    settings = get_current_settings()
    if settings.api.url:
        return f"Prefect UI: {settings.ui_url}" if settings.ui_url else None
    if not local.prefect_server_enabled():
        return None  # Prefect's temporary server, which has no UI
    server = local.prefect_server_status()
    if server is None:
        print(f"starting a local Prefect server for {settings.home} (once; later runs reuse it) ...", flush=True)
        server, _ = local.ensure_prefect_server()
    os.environ["PREFECT_API_URL"] = server.api_url
    refresh_global_settings_context()  # the setting is read from the environment, also by Prefect's threads
    return f"Prefect UI: {server.ui_url} (local Prefect server; `python -m flows.ops.local stop` stops it)"


async def prepare_database(db_block: str, data_dir: Path | None) -> str | None:
    """Make sure the block ``db_block`` exists, or is the default one served by the embedded PostgreSQL in
    ``data_dir`` (started if needed); returns a note to print, if any. ``ConfigurationError`` otherwise."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.errors import ConfigurationError
    from flows.ops import local, settings

    default, socket_dir, exists = settings.DEFAULT_DB_BLOCK, None, True
    async with get_client() as client:
        try:
            document = await client.read_block_document_by_name(db_block, settings.DB_BLOCK_TYPE, include_secrets=False)
            info = document.data.get("connection_info")
            socket_dir = (info.get("query") or {}).get("host") if isinstance(info, dict) else None
        except ObjectNotFound:
            if db_block != default:
                raise await settings.no_db_block_error(db_block, client) from None
            exists = False
    if db_block != default or (exists and not local.owns_socket(socket_dir, data_dir)):
        if data_dir is not None:
            raise ConfigurationError(
                f"--local-db-dir {data_dir} is not used: the database block '{db_block}' points at another "
                "database; run without --local-db-dir, or give the default block's embedded PostgreSQL that "
                f"directory by removing the block (`prefect block delete sqlalchemy-connector/{default}`) "
                "first"
            )
        return None
    db = local.ensure_database(data_dir)  # the running one, if any
    if db.socket_dir != socket_dir:
        await settings.save_db_block(db_block, settings.connection_from_url(db.psql_url))
    return f'embedded PostgreSQL (data in {db.data_dir}); see the table with: psql "{db.psql_url}"'


def check_api_key_before_starting(api: str) -> None:
    """Raises what ``check_key`` raises for ``$RESTCOUNTRIES_API_KEY``, or the missing-key error when ``api`` needs
    a key and no Prefect database exists yet that could hold the Secret block."""
    from prefect.settings import get_current_settings

    from flows.ops.settings import API_KEY_ENV
    from flows.source import check_key, get_dialect, no_key_error

    if not get_dialect(api).requires_key:
        return
    key = os.environ.get(API_KEY_ENV, "").strip()
    if key:
        check_key(key, API_KEY_ENV)
    current = get_current_settings()
    url = current.server.database.connection_url
    url = url.get_secret_value() if url is not None else ""
    if not (key or current.api.url) and url.startswith("sqlite") and not Path(url.split(":///", 1)[-1]).exists():
        raise no_key_error(api)


async def run_once(flow: Any, **params: Any) -> Any:
    """Run ``flow`` once; its result, or what it raised (a ``CountriesError`` when Cancelled or Crashed)."""
    from flows.errors import CountriesError

    state = await flow(**params, return_state=True)
    if state.is_completed():
        return await state.aresult()
    failure = await state.aresult(raise_on_failure=False)
    if isinstance(failure, BaseException):
        raise failure
    raise CountriesError(state.message or f"the run ended {state.name}")


async def _run(flow: Any, given: dict[str, Any], params: dict[str, Any], data_dir: Path | None) -> Any:
    """Steps 2 to 5 of the module docstring; returns the run's summary."""
    import httpx

    from flows.ops.settings import load_api_key, prefect_api_unreachable
    from flows.source import get_dialect, no_key_error

    ui = connect_prefect()
    try:
        if get_dialect(params["api"]).requires_key and await load_api_key() is None:  # step 3
            raise no_key_error(params["api"])
        note = await prepare_database(params["db_block"], data_dir)
    except httpx.TransportError as exc:  # the first requests to the Prefect API
        advice = "start that server, or unset PREFECT_API_URL to use the local Prefect server"
        raise prefect_api_unreachable(exc, advice) from None
    for line in (ui, note):
        if line:
            print(line, flush=True)
    return await run_once(flow, **given)


class Interrupted(BaseException):
    """A signal stopped the run; ``args``: (the line to print, the exit status). No ``except Exception`` stops it."""


class Interruptible:
    """Inside ``with``, SIGINT or SIGTERM raises ``Interrupted`` (during ``run``, after cancelling the run and
    its loads); a second signal ends the process. ``run`` keeps the coroutine off the main thread (the handlers')."""

    def __enter__(self) -> Interruptible:
        self.signum, self.running, self.cancel = 0, False, None
        self.began = time.monotonic()  # loads committed from here on are this run's
        self.handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self.handlers.items():
            signal.signal(signum, handler)
        if "flows.load" in sys.modules:
            sys.modules["flows.load"].resume_loads()

    def run(self, main: typing.Coroutine[Any, Any, Any]) -> Any:
        """``main``'s result (also when a signal came after it ended), else ``Interrupted`` or what it raised."""

        async def started() -> Any:
            loop, task = asyncio.get_running_loop(), asyncio.current_task()
            self.cancel = lambda: loop.call_soon_threadsafe(task.cancel)
            if self.signum:  # stopped before it began
                main.close()
                raise asyncio.CancelledError
            return await main

        self.running = True
        with ThreadPoolExecutor(1, thread_name_prefix="countries-run") as pool:
            try:
                return pool.submit(asyncio.run, started()).result()  # the signal handler runs while this waits
            except BaseException:
                if self.signum:
                    raise Interrupted(self.interrupted(), 128 + self.signum) from None
                raise

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signum:
            print(self.interrupted(), file=sys.stderr, flush=True)
            os._exit(128 + signum)
        if not self.running:  # the main thread is still on the command line's checks: stop there
            self.signum = signum
            raise Interrupted(self.interrupted(), 128 + signum)
        # The run's thread may be in synchronous code (the quality gate) and go on into a load before the cancel
        # lands at its next await: loads are refused from here on (before signum is set, which says it is done).
        from flows.load import interrupt_loads

        interrupt_loads(timeout=0)
        self.signum = signum
        if self.cancel is not None:
            self.cancel()

    def interrupted(self) -> str:
        """One line: what the interrupted run left behind (a load's commit under way: after it, for at most 10 s)."""
        load = sys.modules.get("flows.load")  # not imported: no load has started
        committed = load.interrupt_loads(timeout=10.0, since=self.began) if load else []
        if committed is None:
            return "interrupted during a commit: the table holds its previous rows or the new ones; re-run to be sure"
        if not committed:
            return "interrupted: the table was not changed"
        loads = "; ".join(f"{r.table}: {r.deleted} rows deleted, {r.inserted} inserted" for r in committed)
        return f"interrupted after the load: {loads}"


def _quiet_prefect_on_the_console() -> None:
    """Run errors only in the run's logs (the console has one ``error:`` line); no progress notes of Prefect's."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker, PrefectConsoleHandler

    def no_run_error(record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR or not record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(no_run_error)
    for worker in (APILogWorker, EventsWorker):
        logging.getLogger(worker.__name__).setLevel(logging.ERROR)


def _finish_prefect_output(temporary_server: bool) -> None:
    """Send queued logs and events and stop Prefect's temporary server now: nothing prints after the last line."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    if temporary_server:
        from prefect.server.api.server import SubprocessASGIServer  # seconds to import: only when needed

        SubprocessASGIServer().stop()  # the one Prefect's client started; nothing when none was


def main(flow: Any, argv: list[str] | None = None) -> int:
    """Run ``flow`` (``countries_flow``) once from the command line ``argv``; the exit status."""
    with Interruptible() as guard:
        try:
            return _main(flow, argv, guard)
        except Interrupted as exc:
            line, status = exc.args
            print(line, file=sys.stderr, flush=True)
            return status


def _main(countries_flow: Any, argv: list[str] | None, guard: Interruptible) -> int:
    from cyclopts import CycloptsError
    from prefect.settings import get_current_settings

    from flows.errors import ConfigurationError, CountriesError
    from flows.ops import local
    from flows.parameters import check_parameters

    try:
        given = build_app(countries_flow)(argv, exit_on_error=False, print_error=False)
        if given is None:  # --help
            return EXIT_OK
        data_dir = given.pop("local_db_dir", None)
        defaults = {p.name: p.default for p in inspect.signature(countries_flow.fn).parameters.values()}
        params = check_parameters(**{**defaults, **given})
    except CycloptsError as exc:
        return _fail(f"{usage_error(exc)}; see {Path(sys.argv[0]).name} --help", EXIT_USAGE)
    except ConfigurationError as exc:
        return _fail(exc.for_audience("cli"), EXIT_USAGE)
    try:
        check_api_key_before_starting(params["api"])
    except CountriesError as exc:
        return _fail(exc.for_audience("cli"), EXIT_FAILED)

    _quiet_prefect_on_the_console()
    temporary_server = not get_current_settings().api.url and not local.prefect_server_enabled()
    try:
        summary = guard.run(_run(countries_flow, given, params, data_dir))
    except CountriesError as exc:
        summary = exc
    finally:
        _finish_prefect_output(temporary_server)  # before the last line
    if isinstance(summary, CountriesError):
        return _fail(summary.for_audience("cli"), EXIT_FAILED)
    if summary.preview is not None and summary.changed:
        print(summary.preview, flush=True)
    print(summary.one_line(), flush=True)
    return EXIT_OK


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return status
