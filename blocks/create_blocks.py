"""``python blocks/create_blocks.py --help``: set up the Prefect server at ``PREFECT_API_URL``, idempotently.

Saves the blocks, the rate limit and the operator settings, and applies ``flows/ops/automations/``; a call
that fails (exit 2, one ``error:`` line) changed nothing. Never prints a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from flows.source import budget
from flows.errors import ConfigurationError, CountriesError, setting
from flows.ops import automations, settings

OPERATOR_SETTINGS = (  # option, metavar, type, the CountriesSettings field it saves (whose description is its help)
    ("--base-url", "URL", str, "base_url"),
    ("--notify-block", "NAME", str, "notify_block"),
    ("--stale-after-intervals", "N", float, "stale_after_intervals"),
    ("--crash-after", "SECONDS", float, "crash_after_seconds"),
    ("--rerun-window", "MINUTES", float, "rerun_window_minutes"),
)

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
    api = p.add_argument_group("API key and rate limit")
    api.add_argument(
        "--api-key-env",
        default=settings.API_KEY_ENV,
        help="environment variable holding the REST Countries API key; when set, the "
        f"'{settings.API_KEY_BLOCK}' Secret block is saved (default: %(default)s)",
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
    ops = p.add_argument_group("operator settings (saved in the settings block: left out keeps the saved value)")
    for flag, metavar, kind, field in OPERATOR_SETTINGS:
        text = settings.CountriesSettings.model_fields[field].description
        text = text.rstrip(".") + ("; '' clears it" if kind is str else "")
        ops.add_argument(flag, dest=field, metavar=metavar, type=kind, help=text)
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
    # An option left out keeps the saved value; an empty one ('') clears it.
    given = {field: getattr(args, field) for *_, field in OPERATOR_SETTINGS}
    changed = {k: (None if v == "" else v) for k, v in given.items() if v is not None}
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
    _, changed_limit = await budget.ensure_rate_limit(burst=args.rate_burst, per_second=args.rate_per_second, update=True)
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
        lines = asyncio.run(_run(args))
    except (CountriesError, httpx.TransportError) as exc:
        advice = "start it (`prefect server start`), or set PREFECT_API_URL to the server the worker uses"
        error = exc if isinstance(exc, CountriesError) else settings.prefect_api_unreachable(exc, advice)
        print(f"error: {error.for_audience('cli')}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
