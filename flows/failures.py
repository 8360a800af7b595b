"""How expected failures (``CountriesError``) show in Prefect: the cause first, once, without a traceback."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prefect.states import Failed

from flows.errors import CountriesError


def failing_with_the_cause(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A task body whose ``CountriesError`` ends its task Failed with the cause as the message and the error as
    the state's data; unexpected errors are raised. Only for tasks without a cache policy (Prefect would cache
    the returned state). Call such a task with ``return_state=True``: ``await state.aresult()`` raises the error."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CountriesError as exc:
            return Failed(message=str(exc), data=exc)

    return run


def _without_traceback(record: logging.LogRecord) -> bool:
    if record.exc_info and isinstance(record.exc_info[1], CountriesError):
        record.exc_info, record.exc_text = None, None
    return True


@contextmanager
def quiet_expected_failures() -> Iterator[None]:
    """While inside, Prefect's task-run log records of a ``CountriesError`` ("Task run failed … Retries are
    exhausted") keep their message but lose the traceback (Prefect has no setting for it); others keep theirs."""
    logger = logging.getLogger("prefect.task_runs")
    logger.addFilter(_without_traceback)
    try:
        yield
    finally:
        logger.removeFilter(_without_traceback)
