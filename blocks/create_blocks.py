"""Set up the Prefect server for the countries pipeline: blocks, rate limit, operations automations.

Saves the database block (``--db-url``, or ``--host/--port/--user/--database``
with the password from ``--password-env``), the API key's Secret block (from
``--api-key-env``), the ``restcountries-api`` rate limit, the operator settings
(an option left out keeps its saved value, ``''`` clears it), and applies the
automations of ``flows/ops/automations/``. Idempotent; run it after ``prefect
deploy`` and again when deployments or schedules change. Every option and every
block it names is checked first: a call that fails (exit 2, one ``error:`` line)
has changed nothing. Never prints a secret. Talks to ``PREFECT_API_URL``.

Usage (from the repository root, with the project installed: ``pip install -e .``)::

    python blocks/create_blocks.py --db-url 'postgresql+psycopg2://etl@db.internal:5432/analytics'
    COUNTRIES_DB_PASSWORD=... python blocks/create_blocks.py --host db.internal --user etl --database analytics
    python blocks/create_blocks.py --notify-block ops-webhook --stale-after-intervals 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from flows.source import budget
from flows.errors import ConfigurationError, CountriesError, setting
from flows.ops import automations, settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python blocks/create_blocks.py",
        description=(
            "Set up the Prefect server for the countries pipeline: the database connector, the API key "
            "secret, the API rate limit, the operator settings and the operations automations (crashed "
            "runs marked and rerun; stale-table alerts). Safe to re-run; run it after `prefect deploy`."
        ),
    )
    db = p.add_argument_group("database block")
    db.add_argument("--db-block", default=settings.DEFAULT_DB_BLOCK, help="name of the block (default: %(default)s)")
    db.add_argument(
        "--db-url",
        help="SQLAlchemy URL, e.g. postgresql+psycopg2://etl@db.internal:5432/analytics "
        "(a password in it is stored as a secret; prefer --password-env)",
    )
    db.add_argument("--host", help="database host (instead of --db-url)")
    db.add_argument("--port", type=int, default=5432, help="database port (default: %(default)s)")
    db.add_argument("--user", help="database user")
    db.add_argument("--database", help="database name")
    db.add_argument(
        "--password-env",
        default="COUNTRIES_DB_PASSWORD",
        help="environment variable holding the database password (default: %(default)s)",
    )
    api = p.add_argument_group("API key, base URL and rate limit")
    api.add_argument(
        "--api-key-env",
        default=settings.API_KEY_ENV,
        help="environment variable holding the REST Countries API key; when set, the "
        f"'{settings.API_KEY_BLOCK}' Secret block is saved (default: %(default)s)",
    )
    api.add_argument(
        "--base-url",
        metavar="URL",
        help="API base URL that runs use when their base_url is empty and that is trusted with the key "
        "(a self-hosted server or a proxy); saved in the settings block, '' clears it",
    )
    api.add_argument(
        "--rate-burst",
        type=int,
        default=budget.DEFAULT_BURST,
        help="API requests allowed at once across all runs (default: %(default)s)",
    )
    api.add_argument(
        "--rate-per-second",
        type=float,
        default=budget.DEFAULT_PER_SECOND,
        help="sustained API requests per second across all runs (default: %(default)s)",
    )
    ops = p.add_argument_group("operations (saved in the settings block: an option left out keeps its saved value)")
    ops.add_argument(
        "--notify-block",
        metavar="NAME",
        help="notification block (NAME or TYPE-SLUG/NAME: Slack, webhook, e-mail...) told when a deployment's "
        "table goes stale; '' turns the alerts off (default: off)",
    )
    ops.add_argument(
        "--stale-after-intervals",
        type=float,
        metavar="N",
        help="a table is stale after N schedule intervals without a completed run, N > 1 "
        f"(default: {settings.DEFAULT_STALE_AFTER_INTERVALS:g})",
    )
    ops.add_argument(
        "--crash-after",
        type=float,
        metavar="SECONDS",
        help="mark a deployment run Crashed after this long without a heartbeat, at least 60 "
        f"(default: {settings.DEFAULT_CRASH_AFTER_SECONDS:g}: 3 heartbeats of 30 s)",
    )
    ops.add_argument(
        "--rerun-window",
        type=float,
        metavar="MINUTES",
        help="rerun a crashed deployment run at once, at most once per deployment in this many minutes "
        f"(default: {settings.DEFAULT_RERUN_WINDOW_MINUTES:g})",
    )
    return p


def _connection_from_args(args: argparse.Namespace):
    """The database block's connection from ``--db-url`` or ``--host/--port/--user/--database``, or None."""
    import sqlalchemy as sa

    password = os.environ.get(args.password_env) or None
    parts = args.host or args.user or args.database
    if args.db_url is not None and not args.db_url.strip():
        raise ConfigurationError(
            f"{setting('db_url')} is empty: give the database's URL (`python -m flows.ops.local url` prints nothing "
            "while the local database is stopped)"
        )
    if args.db_url and parts:
        raise ConfigurationError(
            f"give either {setting('db_url')} or {setting('host')}/{setting('user')}/{setting('database')}, not both"
        )
    if parts:
        missing = [setting(n) for n in ("host", "user", "database") if not getattr(args, n)]
        if missing:
            raise ConfigurationError(
                f"missing {', '.join(missing)}: give all of {setting('host')}, {setting('user')} and "
                f"{setting('database')}"
            )
        url = sa.URL.create("postgresql+psycopg2", args.user, None, args.host, args.port, args.database)
        return settings.connection_from_url(url.render_as_string(), password)
    return settings.connection_from_url(args.db_url, password) if args.db_url else None


async def _run(args: argparse.Namespace) -> list[str]:
    """Check every option (and that the blocks it names exist) before changing anything, then save and apply."""
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client

    from flows.parameters import check_base_url
    from flows.source import check_key

    connection = _connection_from_args(args)
    # Where it points, without its secrets; refuses what the flow could not use.
    where = settings.block_database(connection.model_dump()).description if connection is not None else None
    api_key = os.environ.get(args.api_key_env)
    if api_key:
        check_key(api_key, f"${args.api_key_env}")
    if args.rate_burst < 1 or not args.rate_per_second > 0:
        raise ConfigurationError(
            f"{setting('rate_burst')} must be at least 1 and {setting('rate_per_second')} more than 0, got "
            f"{args.rate_burst} and {args.rate_per_second:g}"
        )
    if args.base_url:  # '' clears it
        check_base_url(args.base_url)
    changes = {
        "base_url": args.base_url,
        "notify_block": args.notify_block,
        "stale_after_intervals": args.stale_after_intervals,
        "crash_after_seconds": args.crash_after,
        "rerun_window_minutes": args.rerun_window,
    }
    # An option left out keeps the saved value; an empty one ('') clears it.
    changed = {k: (None if v == "" else v) for k, v in changes.items() if v is not None}
    wanted = (await settings.load_settings()).model_copy(update=changed)
    automations.choices(wanted)  # raises for a setting that cannot work
    notify = None
    if wanted.notify_block:
        async with get_client() as client:
            notify = await automations.find_notification_block(client, wanted.notify_block)

    # Everything checked: now the changes.
    done: list[str] = []
    if connection is not None:
        await settings.save_db_block(args.db_block, connection)
        done.append(f"saved block '{args.db_block}' -> {where}")
    if api_key:
        await Secret(value=api_key).asave(settings.API_KEY_BLOCK, overwrite=True)
        done.append(f"saved block '{settings.API_KEY_BLOCK}' from ${args.api_key_env}")
    changed_limit = await budget.ensure_rate_limit(burst=args.rate_burst, per_second=args.rate_per_second, update=True)
    done.append(
        f"rate limit '{budget.RATE_LIMIT_NAME}': burst {args.rate_burst}, {args.rate_per_second:g}/s"
        + ("" if changed_limit else " (unchanged)")
    )
    if changed:
        await wanted.asave(settings.SETTINGS_BLOCK, overwrite=True)
        done.append(f"saved block '{settings.SETTINGS_BLOCK}' (operator settings)")
    if wanted.base_url:
        done.append(f"API base URL trusted with the key and used by default: {wanted.base_url}")

    done += await automations.ensure_operations(wanted, notify)
    return done


def main(argv: list[str] | None = None) -> int:
    """Run the setup; 0 on success, 2 with one ``error:`` line on stderr when an option or the server is wrong."""
    import httpx

    args = _parser().parse_args(argv)
    try:
        try:
            lines = asyncio.run(_run(args))
        except httpx.TransportError as exc:
            advice = "start it (`prefect server start`), or set PREFECT_API_URL to the server the worker uses"
            raise settings.prefect_api_unreachable(exc, advice) from None
    except CountriesError as exc:
        print(f"error: {exc.for_audience('cli')}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
