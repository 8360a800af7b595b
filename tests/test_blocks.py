"""blocks/create_blocks.py against a real Prefect server and the embedded PostgreSQL."""

from __future__ import annotations

import subprocess

import pytest
import sqlalchemy as sa

from tests.conftest import REPO_ROOT
from tests.conftest import run_script as run_script_at

SCRIPT = REPO_ROOT / "blocks" / "create_blocks.py"
CANARY_PASSWORD = "canary-db-password-7f3a9"  # noqa: S105 - test canary, must never be printed
CANARY_KEY = "canary-api-key-41c2e"


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_script_at(SCRIPT, *args, env=env)


def test_saves_db_block_that_connects_and_is_idempotent(prefect_server, database_url):
    from prefect_sqlalchemy import SqlAlchemyConnector

    first = run_script("--db-block", "blocks-test-db", "--db-url", database_url)
    assert first.returncode == 0, first.stderr
    assert "saved block 'blocks-test-db'" in first.stdout

    second = run_script("--db-block", "blocks-test-db", "--db-url", database_url)
    assert second.returncode == 0, second.stderr
    assert "(unchanged)" in second.stdout  # rate limit already as asked

    with SqlAlchemyConnector.load("blocks-test-db") as connector:
        with connector.get_engine().connect() as conn:
            assert conn.execute(sa.text("select current_database()")).scalar() == sa.make_url(database_url).database


def test_password_and_api_key_are_stored_but_never_printed(prefect_server, database_url):
    from prefect.blocks.system import Secret
    from prefect_sqlalchemy import SqlAlchemyConnector

    url = sa.make_url(database_url)
    result = run_script(
        "--db-block", "blocks-test-secret-db",
        "--host", url.query["host"], "--user", "postgres", "--database", url.database,
        env={"COUNTRIES_DB_PASSWORD": CANARY_PASSWORD, "RESTCOUNTRIES_API_KEY": CANARY_KEY},
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert CANARY_PASSWORD not in output and CANARY_KEY not in output
    assert "saved block 'restcountries-api-key'" in output

    block = SqlAlchemyConnector.load("blocks-test-secret-db")
    assert block.connection_info.password.get_secret_value() == CANARY_PASSWORD
    assert CANARY_PASSWORD not in repr(block)
    assert Secret.load("restcountries-api-key").get() == CANARY_KEY


def test_creates_the_api_rate_limit(prefect_server):
    from prefect.client.orchestration import get_client

    from flows import budget

    result = run_script("--rate-burst", "7", "--rate-per-second", "1.5")
    assert result.returncode == 0, result.stderr
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(budget.RATE_LIMIT_NAME)
    assert (limit.limit, limit.slot_decay_per_second) == (7, 1.5)
    # leave the default for the other tests
    assert run_script().returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--db-url", "mysql://u@h/db"], "must point at PostgreSQL"),
        (["--db-url", "not a url"], "is not a SQLAlchemy URL"),
        (["--db-url", "postgresql+asyncpg://u@h/db"], "use postgresql+psycopg2://"),
        (["--host", "h"], "missing --user, --database"),
    ],
)
def test_bad_input_is_one_clear_line(prefect_server, args, message):
    result = run_script(*args)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
