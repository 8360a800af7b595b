"""How expected failures show in Prefect: the cause first, once, without a traceback.

- :func:`failing_with_the_cause`: a task body whose expected failure (a ``CountriesError``) ends its
  task in a Failed state whose message is the cause, for the tasks without a cache policy.
- :class:`ExpectedFailuresWithoutTraceback`: installed on Prefect's task-run logger by
  :func:`quiet_expected_failures`, it drops the traceback of "Retries are exhausted" records of
  expected failures (the fetch task raises: Prefect would cache a returned Failed state).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from prefect.states import Failed, State

from flows.errors import CountriesError


class ExpectedFailuresWithoutTraceback(logging.Filter):
    """Drops the traceback from Prefect's "Task run failed … Retries are exhausted" record when the failure
    is an expected one (a ``CountriesError``, whose one line says it all); unexpected errors keep theirs.

    Prefect logs that record with ``exc_info`` and has no setting to leave it out; a filter on its task-run
    logger is the public means (``logging``). Only records carrying a ``CountriesError`` are touched."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], CountriesError):
            record.exc_info, record.exc_text = None, None
        return True


P = ParamSpec("P")
R = TypeVar("R")


def failing_with_the_cause(fn: Callable[P, R]) -> Callable[P, R | State]:
    """A task body whose expected failures (``CountriesError``) end it in a Failed state whose message is the
    cause (``quality gate: …``), not Prefect's "Task run encountered an exception …"; the error is the state's
    data, so retry conditions see it as if raised. Unexpected errors are raised. Only for tasks without a
    cache policy: Prefect caches a returned state's data as the task's result.

    Call such a task with ``return_state=True`` and read ``await state.aresult()``, which raises the error (a
    plain call would return the Failed state itself)."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R | State:
        try:
            return fn(*args, **kwargs)
        except CountriesError as exc:
            return Failed(message=str(exc), data=exc)

    return run




def quiet_expected_failures() -> None:
    """Install :class:`ExpectedFailuresWithoutTraceback` on Prefect's task-run logger (once per process)."""
    logger = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, ExpectedFailuresWithoutTraceback) for f in logger.filters):
        logger.addFilter(ExpectedFailuresWithoutTraceback())
