"""Prefect processes of the tests and the benchmarks: a real ``prefect server start``, a free port, a clean
environment.

No side effects at import (unlike ``tests/conftest.py``, which isolates the test session's Prefect settings
when it is imported), so the benchmarks import it when they run on their own too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

# Variables that would point a run at another Prefect server, API, key or local stack than the caller chose.
OUTSIDE = {
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "RESTCOUNTRIES_API_KEY",
    "RESTCOUNTRIES_BASE_URL",
    "COUNTRIES_LOCAL_DIR",
    "COUNTRIES_LOCAL_PREFECT_SERVER",
}

# Lease storage that survives a server restart (the default keeps leases in memory: a restart
# forgets them while their concurrency slots stay counted). Server operators set the same.
LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
LEASES_ON_DISK = {"PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str | Path) -> dict[str, str]:
    """This process's environment without the ``OUTSIDE`` variables, plus ``extra`` (as strings)."""
    env = {k: v for k, v in os.environ.items() if k not in OUTSIDE}
    env.update({k: str(v) for k, v in extra.items()})
    return env


class PrefectServer:
    """A real ``prefect server start`` on 127.0.0.1 (SQLite in ``home``), which can be stopped and started again.

    ``env`` is the server's environment (default: this process's), always with ``PREFECT_HOME=home`` and
    without ``PREFECT_API_URL``. ``api_url`` and ``home`` stay the same across restarts (same port, same
    database, same lease files), as for an operator restarting the server. As a context manager: started on
    entry, stopped on exit.
    """

    def __init__(self, home: Path, log: Path, env: Mapping[str, str] | None = None, port: int | None = None):
        self.home = home
        self.log = log
        self.port = port or free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.env = {**(os.environ if env is None else env), "PREFECT_HOME": str(home)}
        # SQLite's busy wait (Prefect's default 10 s): on 2 cores, with a worker and several flow runs writing
        # at once, a state write waited longer than that and failed "database is locked".
        self.env.setdefault("PREFECT_SERVER_DATABASE_TIMEOUT", "60")
        self.env.pop("PREFECT_API_URL", None)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        """Start the server and wait until ``/health`` answers; its output is appended to ``log``."""
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.home.parent,
                start_new_session=True,
            )
        try:
            self._wait_until_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_healthy(self, timeout: float) -> None:
        import httpx

        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)  # polling a readiness probe, not synchronising on time
        raise RuntimeError(f"prefect server not healthy after {timeout}s:\n{self.log.read_text()}")

    def stop(self, timeout: float = 20) -> None:
        """Stop the server as an operator would (SIGTERM to its process group), killing the group if the server
        does not exit in ``timeout`` s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def restart(self, timeout: float = 120) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> PrefectServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
