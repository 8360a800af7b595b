"""How expected failures (``CountriesError``) show in Prefect: the cause first, once, without a traceback."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from prefect.states import Failed, State

from flows.errors import CountriesError

P = ParamSpec("P")
R = TypeVar("R")


def failing_with_the_cause(fn: Callable[P, R]) -> Callable[P, R | State]:
    """A task body whose ``CountriesError`` ends its task Failed with the cause as the message (``quality gate:
    …``, not "Task run encountered an exception …") and the error as the state's data. Unexpected errors are
    raised. Only for tasks without a cache policy: Prefect would cache the returned state as the result.

    Call such a task with ``return_state=True`` and read ``await state.aresult()``, which raises the error."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R | State:
        try:
            return fn(*args, **kwargs)
        except CountriesError as exc:
            return Failed(message=str(exc), data=exc)

    return run


class ExpectedFailuresWithoutTraceback(logging.Filter):
    """Drops the traceback from Prefect's "Task run failed … Retries are exhausted" record of a
    ``CountriesError`` (Prefect has no setting for it); unexpected errors keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], CountriesError):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_expected_failures() -> None:
    """Install :class:`ExpectedFailuresWithoutTraceback` on Prefect's task-run logger (once per process)."""
    logger = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, ExpectedFailuresWithoutTraceback) for f in logger.filters):
        logger.addFilter(ExpectedFailuresWithoutTraceback())
