"""End to end: prefect.yaml deployed with the real CLI, run by a real worker, into Postgres.

Everything is real: the session's `prefect server start` (fixture `prefect_server`),
`prefect work-pool create`, `prefect --no-prompt deploy --all` run in the
repository root, then `python blocks/create_blocks.py` (the documented order),
`prefect worker start`, the flow run subprocesses the worker starts, the fake
REST Countries HTTP server (both dialects: v5 with the key from the Secret
block, v3.1) and the embedded PostgreSQL.

Determinism: nothing may run against the real API. Right after the deploy both
deployments are paused (which also deletes any run the scheduler made), and the
worker only polls a work queue of its own, where only this test's runs go.
Nothing is left behind on the shared session server: the deployments, the work
queue, the pool (when this module created it), the database, API key and
settings blocks and the operations automations are deleted afterwards, and
every process started here is stopped, also on failure.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from tests.countries_data import COUNTRIES
from tests.e2e_support import (
    FLOW_NAME,
    POOL,
    PREFECT_YAML,
    REPO_ROOT,
    create_pool_if_missing,
    kill_hard,
    prefect_cli,
    prefect_env,
    remove_setup,
    run_cli,
    setup_env,
    start_worker,
    stop_worker,
    wait_for,
)
from tests.expected import EXPECTED_NORTHERN_EUROPE, NORTHERN_EUROPE_COUNTRIES
from tests.fake_api import FakeRestCountries, Fault

# With test_local, one pytest-xdist worker (group "servers"), one test after the other; test_operations_e2e
# runs beside it on another worker (group "ops-e2e").
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("servers")]

DB_BLOCK = "countries-db"
API_KEY_BLOCK = "restcountries-api-key"
SETTINGS_BLOCK = "countries-settings"
# One report artifact per table (issue 11 §4): "countries-" + the table's name in lowercase and dashes.
ARTIFACT_KEYS = {
    "northern_europe_countries": "countries-northern-europe-countries",
    "all_countries": "countries-all-countries",
}
FLOW_PARAMETERS = {
    "regions",
    "table",
    "db_block",
    "api",
    "base_url",
    "force",
    "min_row_fraction",
    "cache_minutes",
    "strategy",
}
RUN_TIMEOUT = 150  # seconds for the worker to pick up and finish the runs


# --- helpers ----------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc), children first found first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_process_tree(proc: subprocess.Popen[bytes]) -> None:
    """Stop a worker (:func:`stop_worker`), then kill whatever it started that is left.

    Flow run subprocesses run in sessions of their own, so they are found via /proc first.
    """
    below = descendants(proc.pid)
    stop_worker(proc)
    for pid in below:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    kill_hard(below)


@contextlib.contextmanager
def running_worker(env: dict[str, str], queue: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`prefect worker start` on the pool, polling only `queue` every 2 s, in the repository root."""
    proc = start_worker(env, queue, log)
    try:
        yield proc
    finally:
        stop_process_tree(proc)


def sync_client():
    return get_client(sync_client=True)


def wait_until_final(flow_run_ids: list[uuid.UUID], worker: subprocess.Popen[bytes], log: Path) -> dict:
    """Poll the API until every run is in a final state; fail with the worker's log otherwise."""
    deadline = time.monotonic() + RUN_TIMEOUT
    with sync_client() as client:
        while True:
            runs = {i: client.read_flow_run(i) for i in flow_run_ids}
            if all(r.state is not None and r.state.is_final() for r in runs.values()):
                return runs
            if worker.poll() is not None:
                pytest.fail(f"the worker exited with {worker.returncode}:\n{log.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                states = {str(i): r.state_name for i, r in runs.items()}
                pytest.fail(f"runs not finished after {RUN_TIMEOUT}s: {states}\n{log.read_text(errors='replace')}")
            time.sleep(0.5)  # polling the API, not waiting for an event by time


def run_logs(flow_run_id: uuid.UUID) -> str:
    with sync_client() as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(f"{log.level} {log.message}" for log in logs)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (an exited one not yet reaped is a zombie, "Z")."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def server_log_tail(server, lines: int = 40) -> str:
    log = Path(server.home).parent / "prefect-server.log"  # where conftest's fixture writes it
    if not log.exists():
        return ""
    return "--- end of the server's log\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def yaml_deployments() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))
    return {d["name"]: d for d in config["deployments"]}


# --- fixtures ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(prefect_server) -> dict[str, str]:
    return prefect_env(prefect_server.api_url, prefect_server.home)


@pytest.fixture(scope="module")
def deployed(env) -> Iterator[dict[str, Any]]:
    """prefect.yaml deployed with the real CLI onto countries-pool, then paused at once.

    Yields the deployments as the server returned them right after the deploy
    (before the pause), by name.
    """
    created_pool = create_pool_if_missing(env)
    names = list(yaml_deployments())
    try:
        prefect_cli("--no-prompt", "deploy", "--all", env=env)
        with sync_client() as client:
            deployments = {name: client.read_deployment_by_name(f"{FLOW_NAME}/{name}") for name in names}
            for d in deployments.values():
                client.pause_deployment(d.id)
        yield deployments
    finally:
        with sync_client() as client:
            for name in names:
                with contextlib.suppress(ObjectNotFound):
                    client.delete_deployment(client.read_deployment_by_name(f"{FLOW_NAME}/{name}").id)
            if created_pool:
                with contextlib.suppress(ObjectNotFound):
                    client.delete_work_pool(POOL)


@pytest.fixture
def work_queue(env, deployed) -> Iterator[str]:
    """A work queue of the pool that only this test's runs go to."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    prefect_cli("work-queue", "create", name, "--pool", POOL, env=env)
    try:
        yield name
    finally:
        with sync_client() as client:
            queue = client.read_work_queue_by_name(name, work_pool_name=POOL)
            client.delete_work_queue_by_id(queue.id)


@pytest.fixture
def fake_api() -> Iterator[FakeRestCountries]:
    """The fake REST Countries server (both dialects) on a free local port."""
    with FakeRestCountries() as api:
        yield api


@pytest.fixture
def blocks(env, deployed, database_url, fake_api) -> Iterator[str]:
    """The real setup script, after the deploy: `countries-db` for a fresh database, the API key as a
    Secret block, the fake API's base URL trusted with it, the operations automations.

    The key reaches the flow runs only through the Secret block (the worker's
    environment has no RESTCOUNTRIES_API_KEY). Everything it made is deleted afterwards.
    Yields the database URL.
    """
    # The fake API's origin is trusted with the key the documented way (issue 8 §3).
    setup = run_cli(
        [sys.executable, "blocks/create_blocks.py", "--db-url", database_url, "--base-url", fake_api.v5_base_url],
        dict(setup_env(env), RESTCOUNTRIES_API_KEY=fake_api.api_key),
    )
    # Run after the deploy, the setup also made the operations automations.
    assert "automation 'countries: mark silent runs Crashed': created" in setup.stdout
    try:
        yield database_url
    finally:
        with sync_client() as client:
            remove_setup(
                client,
                [
                    (DB_BLOCK, "sqlalchemy-connector"),
                    (API_KEY_BLOCK, "secret"),
                    (SETTINGS_BLOCK, "countries-pipeline-settings"),
                ],
            )


# --- tests ------------------------------------------------------------------------


def test_the_server_has_the_deployments_prefect_yaml_describes(deployed):
    """Schedules, concurrency limit, pool, parameters and pull step exactly as in prefect.yaml."""
    expected = yaml_deployments()
    assert set(deployed) == set(expected) == {"northern-europe", "all-regions"}
    for name, spec in expected.items():
        d = deployed[name]
        assert d.entrypoint == spec["entrypoint"] == "flows/countries.py:countries_flow"
        assert d.work_pool_name == spec["work_pool"]["name"] == POOL
        assert d.parameters == spec["parameters"]
        assert d.tags == spec["tags"]
        assert d.description == spec["description"]
        # Runs send a heartbeat every 30 s: the job variables reached the server (issue 10).
        assert d.job_variables == spec["work_pool"]["job_variables"]
        assert d.job_variables["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"

        assert len(d.schedules) == len(spec["schedules"]) == 1
        (server_schedule,), (yaml_schedule,) = d.schedules, spec["schedules"]
        assert server_schedule.schedule.interval == timedelta(seconds=yaml_schedule["interval"])
        assert server_schedule.schedule.anchor_date == datetime.fromisoformat(yaml_schedule["anchor_date"])
        assert server_schedule.schedule.timezone == yaml_schedule["timezone"]
        assert server_schedule.active is yaml_schedule["active"]

        limit = spec["concurrency_limit"]
        assert d.global_concurrency_limit is not None, f"{name}: no concurrency limit on the server"
        assert d.global_concurrency_limit.limit == limit["limit"] == 1
        assert d.concurrency_options is not None
        assert d.concurrency_options.collision_strategy.value == limit["collision_strategy"]

        # No pull section: deploy recorded the repository root, where the worker finds the code.
        assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}]

    assert deployed["northern-europe"].schedules[0].schedule.interval == timedelta(seconds=300)


def test_the_ui_shows_every_flow_parameter_with_a_description(deployed):
    for d in deployed.values():
        properties = d.parameter_openapi_schema["properties"]
        assert set(properties) == FLOW_PARAMETERS
        for name, prop in properties.items():
            assert prop.get("description"), f"parameter {name} has no description in the UI"
        api = properties["api"]
        choices = api.get("enum") or [c for alt in api.get("anyOf", []) for c in alt.get("enum", [])]
        assert set(choices) == {"v5", "v3.1"}


def test_the_server_turns_the_schedules_into_runs(deployed, prefect_server):
    """The scheduler's own code path (POST /deployments/{id}/schedule) on the deployed schedules.

    all-regions gets runs 12 hours apart at 00:00/12:00 UTC; northern-europe, whose
    schedule is off, gets none. The runs go to the deployments' default queue, which
    no worker here polls, and are deleted right away.
    """
    made: list = []
    try:
        for d in deployed.values():
            response = httpx.post(
                f"{prefect_server.api_url}/deployments/{d.id}/schedule", json={"max_runs": 3}, timeout=30
            )
            assert response.status_code == 200, (
                f"the server cannot schedule runs of {d.name}: HTTP {response.status_code} {response.text}. "
                "Its scheduler service fails the same way, so no schedule would ever fire. (Prefect 3.8.8's "
                "server fails like this with SQLAlchemy 2.1: 'Can't evaluate bulk DML statement'; it works "
                f"with SQLAlchemy 2.0.)\n{server_log_tail(prefect_server)}"
            )
        with sync_client() as client:
            for name, d in deployed.items():
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[d.id]))
                )
                made += [r for r in runs if r.auto_scheduled]
                starts = sorted(r.expected_start_time for r in runs if r.auto_scheduled)
                if name == "northern-europe":
                    assert starts == [], "the 5-minute schedule is off by default"
                    continue
                # At least the 3 asked for: the scheduler service may have made some of the same
                # (same times) between the deploy and the pause.
                assert len(starts) >= 3
                assert all(s.minute == 0 and s.second == 0 and s.hour in (0, 12) for s in starts), starts
                assert {(b - a).total_seconds() for a, b in itertools.pairwise(starts)} == {43200}
    finally:
        with sync_client() as client:
            for run in made:
                client.delete_flow_run(run.id)


def read_table(url: str, table: str) -> tuple[list[tuple[Any, ...]], str]:
    """The table's (nation_official_name, currency_name, population) rows and population's SQL type."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT nation_official_name, currency_name, population FROM {table}")).all()
            population_type = conn.execute(
                sa.text(
                    "SELECT data_type FROM information_schema.columns "
                    "WHERE table_name = :t AND column_name = 'population'"
                ),
                {"t": table},
            ).scalar_one()
    finally:
        engine.dispose()
    return [tuple(r) for r in rows], population_type


def test_a_worker_runs_the_deployments_into_postgres_one_run_at_a_time(
    deployed, env, work_queue, blocks, fake_api, tmp_path
):
    """Two runs of northern-europe at once (v3.1): one loads the exact table, the other is cancelled.

    Beside them one run of all-regions in the deployment's own dialect, v5, with the
    key from the Secret block: 6 requests, every fixture country loaded.
    """

    def start(deployment: str, **parameters: Any) -> uuid.UUID:
        return run_deployment(
            f"{FLOW_NAME}/{deployment}",
            parameters=parameters,
            work_queue_name=work_queue,
            timeout=0,
            as_subflow=False,
        ).id

    # Every run exists before the worker starts, so its first poll submits them all at once. The
    # Northern Europe answer is slow, so the run that gets the slot still holds it when the other
    # one starts, however far apart the worker's two processes start.
    fake_api.inject("/v3.1/subregion/*", Fault.latency(5), times=2)
    northern = [start("northern-europe", api="v3.1", base_url=fake_api.v31_base_url) for _ in range(2)]
    everything = start("all-regions", base_url=fake_api.v5_base_url)
    log = tmp_path / "worker.log"
    with running_worker(env, work_queue, log) as worker:
        runs = wait_until_final([*northern, everything], worker, log)
    requests = fake_api.requests

    details = "\n\n".join(f"--- run {i} ({r.state_name})\n{run_logs(i)}" for i, r in runs.items())
    details += f"\n--- worker\n{log.read_text(errors='replace')}"
    northern_states = sorted(runs[i].state.type.value for i in northern)
    assert northern_states == ["CANCELLED", "COMPLETED"], f"{northern_states}\n{details}"
    assert runs[everything].state.is_completed(), details
    (run,) = (runs[i] for i in northern if runs[i].state.is_completed())
    assert run.parameters["api"] == "v3.1"
    assert "api" not in runs[everything].parameters, "all-regions runs the flow's default dialect, v5"
    assert {r.work_queue_name for r in runs.values()} == {work_queue}

    # The arithmetic behind the schedules in prefect.yaml: 1 request for northern-europe,
    # 6 for all-regions (one page per region), each v5 one with the key.
    paths = Counter(r.path for r in requests)
    assert paths == {"/v3.1/subregion/Northern Europe": 1, "/countries/v5": 6}, paths
    assert all(r.authorization for r in requests if r.path.startswith("/countries/v5"))

    rows, population_type = read_table(blocks, "northern_europe_countries")  # as its description says
    assert len(rows) == len(EXPECTED_NORTHERN_EUROPE) == 20
    assert len({name for name, _, _ in rows}) == NORTHERN_EUROPE_COUNTRIES == 16
    assert Counter(rows) == Counter(EXPECTED_NORTHERN_EUROPE)
    assert population_type == "bigint"

    all_rows, _ = read_table(blocks, "all_countries")
    assert {name for name, _, _ in all_rows} == {c["name"]["official"] for c in COUNTRIES}
    assert Counter(r for r in all_rows if r[0] in {n for n, _, _ in EXPECTED_NORTHERN_EUROPE}) == Counter(
        EXPECTED_NORTHERN_EUROPE
    )

    with sync_client() as client:
        for flow_run, table in ((run, "northern_europe_countries"), (runs[everything], "all_countries")):
            key = ARTIFACT_KEYS[table]
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[key]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]),
                )
            )
            assert artifacts, f"no artifact {key!r} for flow run {flow_run.id}"

        # The worker ran this test's runs and nothing else of these deployments.
        ran = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[d.id for d in deployed.values()])
            )
        )
        assert {r.id for r in ran if r.state_type.value != "SCHEDULED"} == {*northern, everything}


def test_a_failed_deployment_run_shows_its_cause_first_in_the_ui(deployed, env, work_queue, blocks, fake_api, tmp_path):
    """What the Prefect UI shows of a deployment run that fails for a reason the pipeline expects (issue 11).

    Two regions fail for two causes (region names themselves are checked before any request)."""
    fake_api.inject("/v3.1/subregion/Western Europe", Fault.bad_body("non_list"), times=10)
    fake_api.inject("/v3.1/subregion/Southern Europe", Fault.bad_body("html"), times=10)
    run_id = run_deployment(
        f"{FLOW_NAME}/northern-europe",
        parameters={
            "api": "v3.1",
            "base_url": fake_api.v31_base_url,
            "regions": ["Northern Europe", "Western Europe", "Southern Europe"],
            "table": "northern_europe_countries",
        },
        work_queue_name=work_queue,
        timeout=0,
        as_subflow=False,
    ).id
    log = tmp_path / "worker.log"
    with running_worker(env, work_queue, log) as worker:
        (run,) = wait_until_final([run_id], worker, log).values()
        # The flow's process sends its last log lines as it exits, after its final state: stop the
        # worker (and whatever it started) only once that process is gone.
        wait_for(
            "the flow run's process to exit", lambda: not any(alive(p) for p in descendants(worker.pid)),
            time.monotonic() + 60, lambda: run_logs(run_id),
        )  # fmt: skip
    logs = run_logs(run_id)

    # The state message: the cause first, every failed region named once, the setting as the UI calls it.
    assert run.state.is_failed(), logs
    message = run.state.message
    assert message.startswith("2 of 3 regions failed: "), message
    assert message.count("Western Europe") == 1 and message.count("Southern Europe") == 1, message
    assert "base_url" in message and "--base-url" not in message and "127.0.0.1" not in message
    # Logged without a traceback; the flow's own line (level 40, ERROR) once.
    assert "Traceback" not in logs and "Encountered exception" not in logs, logs
    flow_lines = [line for line in logs.splitlines() if line.startswith('40 Finished in state Failed("2 of 3 regions')]
    assert len(flow_lines) == 1, logs

    # Names that say what the run and its tasks do; the good sibling finished, none shows as Crashed.
    assert run.name == "northern_europe_countries ← Northern Europe, Western Europe, Southern Europe"
    with sync_client() as client:
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

        this_run = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run_id]))

        def settled_tasks() -> list | None:
            """The run's task runs once each has a final state (the server records task states from events)."""
            found = client.read_task_runs(task_run_filter=this_run)
            return found if len(found) == 3 and all(t.state and t.state.is_final() for t in found) else None

        tasks = wait_for(
            "the three fetch task runs to have final states",
            settled_tasks,
            time.monotonic() + 60,
            lambda: str({t.name: t.state_type for t in client.read_task_runs(task_run_filter=this_run)}),
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[ARTIFACT_KEYS["northern_europe_countries"]]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
            )
        )
    states = {t.name: t.state_type.value for t in tasks}
    assert states == {
        "fetch Northern Europe": "COMPLETED",
        "fetch Western Europe": "FAILED",
        "fetch Southern Europe": "FAILED",
    }

    # A failed run publishes a short report under the table's key: what failed, and the table untouched.
    (report,) = artifacts
    assert "failed" in report.data and "the table was not changed" in report.data and "Western Europe" in report.data
