"""HTTP status -> ``flows.errors`` exception: the one place that decides what a status means.

- :data:`TRANSIENT_STATUSES` are retried (:mod:`flows._retry`) and, once the
  retries run out, end as ``TransientApiError``.
- :func:`raise_for_status` maps every other status of a final answer: 401,
  403, 404 (the caller's handler), 400, 3xx and the rest.
- :func:`api_message` finds the API's own words in an error body, to quote.

Messages follow :meth:`flows._request.Request.fail`: the cause first, then what
to do, then the request; what the API said is quoted through
:meth:`~flows._request.Request.quote` (one line, shortened, key masked).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from flows._http import KEY_ADVICE
from flows.errors import AuthenticationError, PermanentApiError, QuotaExceededError, setting

if TYPE_CHECKING:
    from flows._request import Answer, Request

__all__ = ["TRANSIENT_STATUSES", "api_message", "raise_for_status"]

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Statuses worth retrying: timeouts, rate limits, an overloaded or restarting server."""


def api_message(body: Any) -> str | None:
    """The API's own error text in a decoded body: ``errors[].message`` or a top-level ``message``."""
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list) and errors:
            parts = []
            for err in errors:
                if isinstance(err, dict) and err.get("message") is not None:
                    parts.append(str(err["message"]))
                elif isinstance(err, str):
                    parts.append(err)
            if parts:
                return "; ".join(parts)
            return json.dumps(errors)
        if isinstance(body.get("message"), str):
            return body["message"]
    return None


def raise_for_status(req: Request, answer: Answer, *, on_404: Callable[[Answer], NoReturn]) -> None:
    """Return for 2xx; otherwise raise the ``flows.errors`` exception of ``answer.status``.

    401 ``AuthenticationError``, 403 ``QuotaExceededError``, 404 ``on_404(answer)``
    (the dialect knows whether it means an unknown region), 400 and every other
    status ``PermanentApiError``, including a 3xx (redirects are not followed;
    the caller handles a redirect it can explain, e.g. of a deprecated API,
    before this). :data:`TRANSIENT_STATUSES` never get here: ``Request.send``
    retries them.
    """
    status = answer.status
    if 200 <= status < 300:
        return
    said = req.said(answer)
    if status == 401:
        req.fail(
            AuthenticationError, f"the API key was refused (HTTP 401{said}): {KEY_ADVICE} to a valid key", status=status
        )
    if status == 403:
        req.fail(
            QuotaExceededError,
            f"the API refused the request (HTTP 403{said}): the plan's request quota "
            "is used up or a requested field needs a premium plan; wait for the quota to reset or upgrade "
            "the plan",
            status=status,
        )
    if status == 404:
        on_404(answer)
    if status == 400:
        req.fail(
            PermanentApiError,
            f"the API rejected a request parameter (HTTP 400{said}): check the region "
            "name, or report this if the API changed",
            status=status,
        )
    if 300 <= status < 400:
        location = req.quote(answer.headers.get("Location", "?"))
        req.fail(
            PermanentApiError,
            f"the API redirected the request (HTTP {status} to {location}), and the "
            f"client does not follow redirects: point {setting('base_url')} at the final API address",
            status=status,
        )
    req.fail(
        PermanentApiError,
        f"the API answered HTTP {status}{said}, and retrying will not help: check "
        f"{setting('base_url')} and {setting('api')}",
        status=status,
    )
