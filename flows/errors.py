"""The pipeline's exceptions: every deliberate failure is a ``CountriesError``, whose ``str()`` is one
secret-free line saying what went wrong and what to do."""

from __future__ import annotations

import re
from typing import Literal

_SETTING = re.compile(r"\{\{([a-z][a-z0-9_]*)(?:=([^{}]*))?\}\}")


def setting(name: str, value: object = None) -> str:
    """A run setting named inside a message, rendered for its reader: ``setting("force", True)`` reads
    ``force=True`` in the UI and logs, ``--force`` on the command line (``--min-row-fraction 0.2``)."""
    return "{{" + name + ("" if value is None else f"={value}") + "}}"


class CountriesError(Exception):
    """Base class. ``str(exc)`` names settings as the flow does (``base_url``), ``exc.for_audience("cli")`` as
    the command line does (``--base-url``); ``exc.template`` is the message unrendered."""

    def __str__(self) -> str:
        return self.for_audience("flow")

    def for_audience(self, audience: Literal["flow", "cli"]) -> str:
        def one(match: re.Match[str]) -> str:
            name, value = match.group(1), match.group(2)
            if audience == "flow":
                return name if value is None else f"{name}={value}"
            flag = "--" + name.replace("_", "-")
            return flag if value in (None, "True") else f"{flag} {value}"

        return _SETTING.sub(one, self.template)

    @property
    def template(self) -> str:
        return super().__str__()


class ConfigurationError(CountriesError):
    """An option, parameter, block or environment variable is missing or invalid."""


class InvalidTableNameError(ConfigurationError):
    """The table name is not a plain (optionally schema-qualified) SQL identifier."""


class KeyWithheldError(ConfigurationError):
    """The API key would have to go to an origin it is not sent to; raised before any request."""


class ApiError(CountriesError):
    """The API could not give the data. ``url``: the request's (secret-free); ``status``: the HTTP status, if any.
    Keyword arguments set these and the subclasses' attributes (None unless given)."""

    url: str | None = None
    status: int | None = None

    def __init__(self, message: str, **details: object):
        super().__init__(message)
        vars(self).update(details)


class TransientApiError(ApiError):
    """Worth retrying: 429, 5xx, timeout, connection error. ``retry_after``: the server's ``Retry-After`` seconds."""

    retry_after: float | None = None


class DeadlineExceededError(TransientApiError):
    """A request did not complete (connect, headers and whole body) within its deadline."""


class PermanentApiError(ApiError):
    """Retrying cannot fix it: 400, 401, 403, 404, an ``errors`` body, a bad payload."""


class AuthenticationError(PermanentApiError):
    """401: the API key is missing or invalid."""


class DemoKeyError(AuthenticationError):
    """The key is the public demo key, which answers every query with one fixed sample record."""


class QuotaExceededError(PermanentApiError):
    """403: the plan's quota is used up, or the request asked for a premium field."""


class UnknownRegionError(PermanentApiError):
    """The API knows no region or subregion of that name. ``region``: the name; ``request``: ``GET …/subregion/X``."""

    region: str | None = None
    request: str | None = None


class UnknownRegionNameError(UnknownRegionError, ConfigurationError):
    """A region or subregion name the API does not document; raised before any request, with a suggestion."""


class DeprecatedApiError(PermanentApiError):
    """The API answered with an ``errors`` array, e.g. the retired hosted v3.1 endpoints."""


class WrongBaseUrlError(PermanentApiError):
    """Every region answered HTTP 404: the base URL's path looks wrong."""


class HostNotFoundError(PermanentApiError):
    """The API's host name does not resolve: a wrong URL or no network."""


class NothingListeningError(PermanentApiError):
    """Nothing accepts connections at the API's host and port, after brief retries."""


class BadResponseError(PermanentApiError):
    """The response is not what the dialect promises: not JSON, wrong shape, missing fields."""


class ResponseTooLargeError(BadResponseError):
    """The response body is larger than the configured bound; reading stopped there."""


class ForeignRecordsError(BadResponseError):
    """The API answered with countries that do not belong to the region or subregion asked for."""


class RegionsFailedError(CountriesError):
    """Regions of one run failed for different causes; the message lists each cause once, with its requests."""


class UnnestError(CountriesError):
    """Records cannot be unnested as asked (bad path, bad override, bad input type)."""


class RowLimitExceededError(UnnestError):
    """The unnest would produce more rows than the configured bound; raised before allocating."""


class InvalidRecordError(CountriesError):
    """A record breaks the table's data contract (``flows.transform.schema``)."""


class ConflictingRecordsError(InvalidRecordError):
    """Two regions give one country (the same official name) different records."""


class LoadError(CountriesError):
    """The table could not be replaced; it is left exactly as it was."""


class DatabaseUnreachableError(LoadError):
    """No connection to the database (names host and port, never the password)."""


class QualityGateError(LoadError):
    """The new data failed validation; nothing was written."""


class TableBusyError(LoadError):
    """A lock the load needed was held too long; the message names the blocking sessions. Nothing was written."""


class CommitUnknownError(CountriesError):
    """The connection was lost during the load's commit: the table holds either its previous rows or the new ones."""


class LoadInterruptedError(LoadError):
    """The load was interrupted (``flows.load.interrupt_loads``) before its commit and rolled back."""
