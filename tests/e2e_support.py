"""What the end-to-end tests (``test_deployment_e2e.py``, ``test_operations_e2e.py``) share: the environment
of the processes they start against a Prefect server, the CLI, workers, the work pool, and removing what the
documented setup made."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.exceptions import ObjectNotFound

from tests.conftest import REPO_ROOT

PREFECT_YAML = REPO_ROOT / "prefect.yaml"
FLOW_NAME = "countries"
POOL = "countries-pool"
AUTOMATION_TAG = "countries-pipeline"

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], deadline: float, details: Callable[[], str] = str) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` and ``details()`` at ``deadline``."""
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{details()}")
        time.sleep(0.5)  # polling the API or a process, not waiting for an event by time


def prefect_env(api_url: str, home: Path) -> dict[str, str]:
    """The environment of every process started here: this server, this home, offline, no API key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTCOUNTRIES_")}
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def setup_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for ``python blocks/create_blocks.py``, with the repository root importable.

    (``pip install -e .`` does the same for an operator.)
    """
    path = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return dict(env, PYTHONPATH=path)


def run_cli(
    args: list[str], env: dict[str, str], cwd: Path = REPO_ROOT, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run a command (in the repository root unless told); fail the test with its output unless it exits 0."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, (
        f"{' '.join(args)} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result


def prefect_cli(*args: str, env: dict[str, str], cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return run_cli([sys.executable, "-m", "prefect", *args], env, cwd)


def create_pool_if_missing(env: dict[str, str]) -> bool:
    """``prefect work-pool create`` of the process pool on the server of ``env`` unless it has it; True if made."""
    with SyncPrefectClient(env["PREFECT_API_URL"]) as client:
        try:
            client.read_work_pool(POOL)
            return False
        except ObjectNotFound:
            pass
    prefect_cli("work-pool", "create", POOL, "--type", "process", env=env)
    return True


def remove_setup(client: SyncPrefectClient, blocks: Iterable[tuple[str, str]]) -> None:
    """Delete the setup's ``blocks`` ((name, block type slug), where they exist) and operations automations."""
    for name, slug in blocks:
        with contextlib.suppress(ObjectNotFound):
            client.delete_block_document(client.read_block_document_by_name(name, slug).id)
    for automation in client.read_automations():
        if AUTOMATION_TAG in automation.tags:
            client.delete_automation(automation.id)


def start_worker(env: dict[str, str], queue: str, log: Path, cwd: Path = REPO_ROOT) -> subprocess.Popen[bytes]:
    """`prefect worker start` on the pool in ``cwd``, polling only ``queue`` every 2 s; output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "worker",
                "start",
                "--pool",
                POOL,
                "--work-queue",
                queue,
                "--name",
                f"{queue}-{uuid.uuid4().hex[:4]}",
            ],
            cwd=cwd,
            env=dict(env, PREFECT_WORKER_QUERY_SECONDS="2"),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """Stop a worker and its process group (SIGINT, on which a worker stops promptly, then SIGKILL)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def kill_hard(pids: Iterable[int]) -> None:
    """SIGKILL each of ``pids`` that is still there."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
