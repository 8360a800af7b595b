"""blocks/create_blocks.py and flows/ops/settings.py against a real Prefect server and the embedded PostgreSQL.

What the setup promises (its help and docstring, README's operations section, issue 10): it saves the
blocks, the rate limit and the operator settings, and creates the operations automations (crashed
runs marked and rerun; a stale-table alert per scheduled deployment of the flow when a notification
block is named), idempotently, and never prints a secret. Whether the automations act is checked end
to end by tests/test_operations_e2e.py; here: what exists on the server after the setup.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from datetime import timedelta

import pytest
import sqlalchemy as sa

from tests.conftest import REPO_ROOT
from tests.conftest import run_script as run_script_at

SCRIPT = REPO_ROOT / "blocks" / "create_blocks.py"
CANARY_PASSWORD = "canary-db-password-7f3a9"  # noqa: S105 - test canary, must never be printed
CANARY_KEY = "canary-api-key-41c2e"
DETECTOR = "countries: mark silent runs Crashed"
RERUN = "countries: rerun crashed runs"
TAG = "countries-pipeline"


def run_subprocess(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python blocks/create_blocks.py ARGS`` as a user runs it, in a process of its own."""
    # The repository root is importable once the project is installed (`pip install -e .`); say so here too.
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return run_script_at(SCRIPT, *args, env={"PYTHONPATH": path, **(env or {})})


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The same command in this process (its ``main``, ``env`` added to the environment): the same code
    against the same server, without the 3-5 s of starting Python and importing Prefect each time."""
    from blocks import create_blocks

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out), redirect_stderr(err):
        for name, value in (env or {}).items():
            patch.setenv(name, value)
        try:
            code = create_blocks.main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(autouse=True)
def clean_operations(prefect_server) -> Iterator[None]:
    """Leave no automation, settings block or test deployment behind for the other tests on the server."""
    yield
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for automation in client.read_automations():
            if TAG in automation.tags:
                client.delete_automation(automation.id)
        for name, slug in (("countries-settings", "countries-pipeline-settings"),):
            try:
                client.delete_block_document(client.read_block_document_by_name(name, slug).id)
            except ObjectNotFound:
                pass


def automations_by_name() -> dict:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {a.name: a for a in client.read_automations() if TAG in a.tags}


# --- blocks --------------------------------------------------------------------------


def test_saves_db_block_that_connects_and_is_idempotent(prefect_server, database_url):
    from prefect_sqlalchemy import SqlAlchemyConnector

    first = ok(run_subprocess("--db-block", "blocks-test-db", "--db-url", database_url))
    assert "saved block 'blocks-test-db'" in first

    second = ok(run_script("--db-block", "blocks-test-db", "--db-url", database_url))
    assert "rate limit 'restcountries-api': burst 10, 1/s (unchanged)" in second, second
    assert f"automation '{DETECTOR}': unchanged" in second, f"{first}\n--- second run\n{second}"
    assert f"automation '{RERUN}': unchanged" in second, f"{first}\n--- second run\n{second}"

    with SqlAlchemyConnector.load("blocks-test-db") as connector:
        with connector.get_engine().connect() as conn:
            assert conn.execute(sa.text("select current_database()")).scalar() == sa.make_url(database_url).database


def test_password_and_api_key_are_stored_but_never_printed(prefect_server, database_url):
    from prefect.blocks.system import Secret
    from prefect_sqlalchemy import SqlAlchemyConnector

    url = sa.make_url(database_url)
    result = run_subprocess(
        "--db-block",
        "blocks-test-secret-db",
        "--host",
        url.query["host"],
        "--user",
        "postgres",
        "--database",
        url.database,
        env={"COUNTRIES_DB_PASSWORD": CANARY_PASSWORD, "RESTCOUNTRIES_API_KEY": CANARY_KEY},
    )
    output = ok(result) + result.stderr
    assert CANARY_PASSWORD not in output and CANARY_KEY not in output
    assert "saved block 'restcountries-api-key'" in output

    block = SqlAlchemyConnector.load("blocks-test-secret-db")
    assert block.connection_info.password.get_secret_value() == CANARY_PASSWORD
    assert CANARY_PASSWORD not in repr(block)
    assert Secret.load("restcountries-api-key").get() == CANARY_KEY


def test_a_password_in_the_urls_query_is_kept_as_the_secret_and_never_shown(prefect_server, database_url):
    """libpq also reads ``?password=`` from a URL: it becomes the block's secret password, not plain query text."""
    from prefect_sqlalchemy import SqlAlchemyConnector

    from flows.load.database import Database
    from flows.ops.settings import block_database

    canary = "query-pass-8d1f"
    result = run_script("--db-block", "blocks-test-query-pw", "--db-url", f"{database_url}&password={canary}")
    output = ok(result) + result.stderr
    assert canary not in output
    block = SqlAlchemyConnector.load("blocks-test-query-pw")
    assert block.connection_info.password.get_secret_value() == canary
    assert "password" not in (block.connection_info.query or {})
    # A block made elsewhere with secrets in its query: they never show where the run names its database.
    made_elsewhere = Database.from_url(f"postgresql://u@h/d?password={canary}&sslpassword={canary}x&sslmode=require")
    assert made_elsewhere.description == "postgresql://u@h/d?password=***&sslmode=require&sslpassword=***"
    assert canary not in repr(made_elsewhere)
    assert canary not in str(block_database(block.connection_info.model_dump()).description)


def test_a_url_naming_a_query_key_twice_is_one_clear_error_and_saves_nothing(prefect_server):
    result = run_script("--db-block", "blocks-test-twice", "--db-url", "postgresql://u@/d?host=h1:1&host=h2:2")
    assert result.returncode == 2, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --db-url names 'host' more than once"), result.stderr
    assert "host=h1,h2&port=p1,p2" in result.stderr


def test_creates_the_api_rate_limit(prefect_server):
    from prefect.client.orchestration import get_client

    from flows.source import budget

    ok(run_script("--rate-burst", "7", "--rate-per-second", "1.5"))
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(budget.RATE_LIMIT_NAME)
    assert (limit.limit, limit.slot_decay_per_second) == (7, 1.5)
    # leave the default for the other tests
    ok(run_script())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--db-url", "mysql://u@h/db"], "--db-url must point at PostgreSQL"),
        (["--db-url", "not a url"], "--db-url is not a SQLAlchemy URL"),
        (["--db-url", ""], "--db-url is empty: give the database's URL"),
        (["--db-url", "postgresql+asyncpg://u@h/db"], "use postgresql+psycopg2://"),
        (["--host", "h"], "missing --user, --database"),
        (["--crash-after", "30"], "--crash-after must be at least 60 s"),
        (["--stale-after-intervals", "1"], "--stale-after-intervals must be more than 1"),
        (["--rerun-window", "0"], "--rerun-window must be a positive number of minutes"),
        (["--base-url", "countries.internal/v5"], "--base-url 'countries.internal/v5' must start with http:// or https://"),
        (
            ["--notify-block", "no-such-block-x"],
            "no block named 'no-such-block-x' (--notify-block): the notification blocks are:",
        ),
    ],
)
def test_bad_input_is_one_clear_line(prefect_server, args, message):
    result = run_script(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line


def test_a_prefect_api_that_does_not_answer_is_one_clear_line():
    from tests.prefect_servers import free_port

    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    result = run_subprocess("--db-url", "postgresql+psycopg2://u@h/d", env={"PREFECT_API_URL": url})
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: the Prefect API at {url} does not answer"), line
    assert "prefect server start" in line and "PREFECT_API_URL" in line


@pytest.mark.parametrize(
    "bad",
    [
        ["--notify-block", "no-such-block-y"],
        ["--base-url", "countries.internal/v5"],
        ["--rate-per-second", "0"],
        ["--crash-after", "10"],
    ],
    ids=["missing-notify-block", "base-url-without-scheme", "rate", "crash-after"],
)
def test_a_failing_setup_changes_nothing_on_the_server(prefect_server, database_url, bad):
    """Issue 16 §8: every option, and every block named, is checked before anything is created or changed."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.source import budget
    from flows.ops import settings

    def limit() -> tuple[int, float] | None:
        with get_client(sync_client=True) as client:
            try:
                found = client.read_global_concurrency_limit_by_name(budget.RATE_LIMIT_NAME)
            except ObjectNotFound:
                return None
        return found.limit, found.slot_decay_per_second

    block = f"blocks-test-unsaved-{uuid.uuid4().hex[:6]}"
    limit_before = limit()
    args = ["--db-block", block, "--db-url", database_url, "--rate-burst", "9", *bad]
    result = run_script(*args, env={"RESTCOUNTRIES_API_KEY": CANARY_KEY + "-unsaved"})
    assert result.returncode == 2, result.stdout + result.stderr
    async def db_block_names() -> list[str]:
        async with get_client() as client:
            return await settings.db_block_names(client)

    assert asyncio.run(db_block_names()).count(block) == 0
    assert asyncio.run(settings.load_api_key()) != CANARY_KEY + "-unsaved"
    assert limit() == limit_before
    assert asyncio.run(settings.load_settings()).notify_block is None
    assert automations_by_name() == {}
    assert "stale-table alerts: off" in ok(run_script())


# --- operator settings ----------------------------------------------------------------


def test_base_url_is_saved_trusted_and_the_default(prefect_server, monkeypatch):
    from flows.ops import settings

    def saved() -> settings.CountriesSettings:
        return asyncio.run(settings.load_settings())

    public = "https://api.restcountries.com/countries/v5"
    out = ok(run_script("--base-url", "https://countries.internal:8443/v5/"))
    assert "API base URL trusted with the key and used by default: https://countries.internal:8443/v5/" in out

    monkeypatch.delenv("RESTCOUNTRIES_BASE_URL", raising=False)
    assert settings.trusted_base_urls(saved()) == ["https://countries.internal:8443/v5"]
    assert settings.resolve_base_url(None, public, saved()) == "https://countries.internal:8443/v5"
    assert settings.resolve_base_url("", public, saved()) == "https://countries.internal:8443/v5"
    assert settings.resolve_base_url("http://127.0.0.1:9/", public, saved()) == "http://127.0.0.1:9"

    # The environment (the worker's, or the shell's for local runs) comes first and is trusted too.
    monkeypatch.setenv("RESTCOUNTRIES_BASE_URL", "http://127.0.0.1:8080")
    assert settings.resolve_base_url(None, public, saved()) == "http://127.0.0.1:8080"
    assert settings.trusted_base_urls(saved()) == ["http://127.0.0.1:8080", "https://countries.internal:8443/v5"]

    # A re-run without the option keeps it; an empty value clears it.
    monkeypatch.delenv("RESTCOUNTRIES_BASE_URL")
    ok(run_script())
    assert settings.trusted_base_urls(saved()) == ["https://countries.internal:8443/v5"]
    ok(run_script("--base-url", ""))
    assert settings.trusted_base_urls(saved()) == []
    assert settings.resolve_base_url(None, public, saved()) == public


def test_a_base_url_set_by_the_runs_own_job_variables_is_not_trusted(monkeypatch):
    """Whoever may start a custom run may set its job variables (env): that value gets no key (issue 8 §3)."""
    from prefect.runtime import flow_run

    from flows.ops import settings

    saved = settings.CountriesSettings(base_url="https://countries.internal:8443/v5")
    monkeypatch.setenv("RESTCOUNTRIES_BASE_URL", "https://collector.example.org/v5")
    run_env = {"env": {"RESTCOUNTRIES_BASE_URL": "https://collector.example.org/v5"}}
    monkeypatch.setitem(flow_run.FIELDS, "job_variables", lambda: run_env)  # as inside that run
    assert settings.trusted_base_urls(saved) == ["https://countries.internal:8443/v5"]
    assert settings.trusted_base_urls(settings.CountriesSettings()) == []
    # It is still the base URL the run uses (like its base_url parameter), just not trusted with the key.
    assert settings.resolve_base_url(None, "https://public/v5", saved) == "https://collector.example.org/v5"
    # Job variables that leave it alone, and a run outside a deployment (no flow run: no job variables).
    for job_variables in ({"env": {"PREFECT_LOGGING_LEVEL": "DEBUG"}}, {}, {"env": None}, None):
        monkeypatch.setitem(flow_run.FIELDS, "job_variables", lambda: job_variables)  # noqa: B023 - called at once
        assert settings.trusted_base_urls(saved) == [
            "https://collector.example.org/v5",
            "https://countries.internal:8443/v5",
        ]


def test_api_key_comes_from_the_environment_first_then_the_secret_block(prefect_server, monkeypatch):
    from flows.ops import settings

    monkeypatch.delenv("RESTCOUNTRIES_API_KEY", raising=False)
    ok(run_script(env={"RESTCOUNTRIES_API_KEY": CANARY_KEY}))
    assert asyncio.run(settings.load_api_key()) == CANARY_KEY
    monkeypatch.setenv("RESTCOUNTRIES_API_KEY", "from-the-environment")
    assert asyncio.run(settings.load_api_key()) == "from-the-environment"


# --- operations automations ---------------------------------------------------------


@pytest.fixture
def scheduled_deployment(prefect_server) -> Iterator[tuple[uuid.UUID, str]]:
    """A deployment of the `countries` flow with an active 12-hour schedule and prefect.yaml's heartbeat.

    Made through the API (nothing runs it); deleted afterwards. Yields (id, name).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import IntervalSchedule

    name = f"blocks-test-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("countries")
        deployment_id = client.create_deployment(
            flow_id,
            name,
            parameters={"table": "blocks_test_countries"},
            schedules=[DeploymentScheduleCreate(schedule=IntervalSchedule(interval=timedelta(hours=12)), active=True)],
            job_variables={"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}},
            entrypoint="flows/countries.py:countries_flow",
        )
    try:
        yield deployment_id, name
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)


@pytest.fixture
def notify_block(prefect_server) -> Iterator[str]:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client

    name = f"blocks-test-hook-{uuid.uuid4().hex[:6]}"
    CustomWebhookNotificationBlock(name="ops", url="http://127.0.0.1:9/hook").save(name)
    try:
        yield name
    finally:
        with get_client(sync_client=True) as client:
            client.delete_block_document(client.read_block_document_by_name(name, "custom-webhook").id)


def test_crash_automations_watch_only_deployment_runs_of_the_flow(prefect_server):
    out = ok(run_script("--crash-after", "120", "--rerun-window", "30"))
    assert f"automation '{DETECTOR}': created" in out
    found = automations_by_name()
    detector, rerun = found[DETECTOR], found[RERUN]

    trigger = detector.trigger
    assert trigger.posture.value == "Proactive" and trigger.within == timedelta(seconds=120)
    assert trigger.after == {"prefect.flow-run.heartbeat", "prefect.flow-run.Pending", "prefect.flow-run.Running"}
    assert trigger.for_each == {"prefect.resource.id"}
    related = [dict(spec.root) for spec in trigger.match_related]
    assert {"prefect.resource.role": "flow", "prefect.resource.name": "countries"} in related
    assert {"prefect.resource.role": "deployment"} in related
    assert [a.type for a in detector.actions] == ["change-flow-run-state", "run-deployment"]
    assert detector.actions[0].state.value == "CRASHED"
    assert detector.actions[0].message.startswith("no heartbeat for 2 min")

    # Reruns of reported crashes: at most one per deployment per window; failed runs are not rerun.
    assert rerun.trigger.expect == {"prefect.flow-run.Crashed"}
    assert rerun.trigger.for_each == {"related:deployment:prefect.resource.id"}
    assert rerun.trigger.within == timedelta(minutes=30)
    assert [a.type for a in rerun.actions] == ["run-deployment"]

    # The chosen values are saved: a plain re-run keeps them.
    assert f"automation '{DETECTOR}': unchanged" in ok(run_script())


def test_stale_table_alert_per_scheduled_deployment_follows_the_server(
    prefect_server, scheduled_deployment, notify_block
):
    deployment_id, name = scheduled_deployment
    alert = f"countries: stale countries/{name}"

    out = ok(run_script("--notify-block", notify_block))
    assert f"automation '{alert}': created (notifies '{notify_block}' after 1 day without a completed run)" in out
    automation = automations_by_name()[alert]
    assert automation.trigger.posture.value == "Proactive"
    assert automation.trigger.expect == {"prefect.flow-run.Completed"}
    assert automation.trigger.within == timedelta(hours=24)  # 2 x the 12 h interval
    assert dict(automation.trigger.match_related.root) == {
        "prefect.resource.role": "deployment",
        "prefect.resource.id": f"prefect.deployment.{deployment_id}",
    }
    (action,) = automation.actions
    assert action.type == "send-notification" and action.subject == "countries: blocks_test_countries is stale"

    # Configurable; the saved notification block is kept by a plain re-run.
    out = ok(run_script("--stale-after-intervals", "3"))
    assert f"automation '{alert}': updated (notifies '{notify_block}' after 36 h" in out
    assert f"automation '{alert}': unchanged" in ok(run_script())

    # A paused deployment gets no alert; the alert goes when the deployment does.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.pause_deployment(deployment_id)
    out = ok(run_script())
    assert f"no stale-table alert for countries/{name}: it is paused" in out
    assert f"automation '{alert}': removed" in out
    assert alert not in automations_by_name()

    # '' turns the alerts off.
    assert "stale-table alerts: off" in ok(run_script("--notify-block", ""))


def test_setup_before_deploy_says_to_run_again_after_it(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        existing = client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=["countries"])))
    if existing:
        pytest.skip("deployments of the countries flow exist on this server")
    assert "run this again after `prefect deploy`" in ok(run_script())


def test_warns_when_a_deployment_sends_heartbeats_too_rarely(prefect_server):
    from prefect.client.orchestration import get_client

    name = f"blocks-test-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        deployment_id = client.create_deployment(client.create_flow_from_name("countries"), name)
    try:
        out = ok(run_script())
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)
    assert (
        f"warning: runs of countries/{name} send a heartbeat every 180 s, too rarely for the 90 s crash timeout" in out
    )
