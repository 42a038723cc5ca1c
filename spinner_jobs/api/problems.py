"""Errors as RFC 9457 problem details (``application/problem+json``).

A problem's ``type`` names the engine's error class (``urn:spinner-jobs:error:<Class>``),
its ``detail`` is the error's one-line message, and ``field`` names the offending
parameter of a validation error. Errors of the infrastructure (the store, the Temporal
server) get a fixed public detail instead of their message, which names addresses and
drivers; the full message goes to the log under the request id. Anything unexpected
is a 500 whose body says only that, and the log has the traceback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from spinner_jobs.core.errors import (
    EnqueueConnectionError,
    InvalidJobError,
    JobAlreadyClosedError,
    JobBackendError,
    JobConflictError,
    JobNotFoundError,
    QueueFullError,
    ServerSetupError,
    SpinnerError,
    StoreUnavailableError,
    TableNotFoundError,
    UnknownJobTypeError,
    WorkbookNotFoundError,
    WorkerUnavailableError,
)

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:spinner-jobs:error:"
"""A problem's ``type`` is this prefix and the name of the error's class."""

RETRY_AFTER_SECONDS = 1
"""``Retry-After`` of a 503 (the store or the Temporal server is out)."""


class ApiError(SpinnerError):
    """An error of the HTTP layer itself, with its status code."""

    status = HTTPStatus.BAD_REQUEST


class AuthenticationError(ApiError):
    """The request carries no API key, or one that is unknown, wrong or revoked.

    Every case gives the same answer, so nothing tells a guesser how close it came.
    """

    status = HTTPStatus.UNAUTHORIZED

    def __init__(self) -> None:
        super().__init__(
            "missing or invalid API key; send `Authorization: Bearer <key>` with a key from "
            "`spinner-jobs api-key create`"
        )


class TooManyStreamsError(ApiError):
    """The API key has as many open event streams as it may."""

    status = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, cap: int) -> None:
        self.cap = cap
        super().__init__(
            f"this API key already has {cap} open event streams (the cap); close one, "
            "or raise SPINNER_API_MAX_STREAMS_PER_KEY"
        )


class RequestTooLargeError(ApiError):
    """The request body is over the API's cap."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE

    def __init__(self, cap: int) -> None:
        self.cap = cap
        super().__init__(
            f"request body over the {cap}-byte cap; send less (job metadata is capped "
            "separately) or raise SPINNER_API_MAX_BODY_BYTES"
        )


class ApiAddressError(SpinnerError):
    """The API cannot listen on its address (the port is taken, the host is not local)."""

    def __init__(self, address: str, detail: str) -> None:
        self.address = address
        super().__init__(
            f"the API cannot listen on {address} ({detail}); free the port or set "
            "SPINNER_API_HOST / SPINNER_API_PORT"
        )


# Most specific first: the first class an error is an instance of decides its status.
_STATUS: Sequence[tuple[type[SpinnerError], HTTPStatus]] = (
    (ApiError, HTTPStatus.BAD_REQUEST),  # replaced by the class's own status
    (UnknownJobTypeError, HTTPStatus.UNPROCESSABLE_ENTITY),
    (InvalidJobError, HTTPStatus.UNPROCESSABLE_ENTITY),
    (WorkbookNotFoundError, HTTPStatus.UNPROCESSABLE_ENTITY),
    (TableNotFoundError, HTTPStatus.UNPROCESSABLE_ENTITY),
    (JobNotFoundError, HTTPStatus.NOT_FOUND),
    (JobConflictError, HTTPStatus.CONFLICT),
    (JobAlreadyClosedError, HTTPStatus.CONFLICT),
    (QueueFullError, HTTPStatus.SERVICE_UNAVAILABLE),
    (WorkerUnavailableError, HTTPStatus.SERVICE_UNAVAILABLE),
    (StoreUnavailableError, HTTPStatus.SERVICE_UNAVAILABLE),
    (EnqueueConnectionError, HTTPStatus.SERVICE_UNAVAILABLE),
    (ServerSetupError, HTTPStatus.SERVICE_UNAVAILABLE),
    (JobBackendError, HTTPStatus.BAD_GATEWAY),
)

# The engine's messages of these name hosts, files and drivers: callers get these.
_PUBLIC_DETAIL: Mapping[type[SpinnerError], str] = {
    StoreUnavailableError: "the job store is unavailable; retry shortly",
    EnqueueConnectionError: "the job server is unavailable; retry shortly",
    ServerSetupError: "the job server is not set up for spinner-jobs yet; start a worker "
    "once, then retry",
    JobBackendError: "the job server refused the request; retry shortly",
}


def status_of(error: SpinnerError) -> HTTPStatus:
    """The HTTP status of an engine error (500 for one with no mapping)."""
    if isinstance(error, ApiError):
        return error.status
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return status
    return HTTPStatus.INTERNAL_SERVER_ERROR


def public_detail(error: SpinnerError) -> str:
    """The error's one-line message, or a fixed one where the message names internals."""
    for kind, detail in _PUBLIC_DETAIL.items():
        if isinstance(error, kind):
            return detail
    if isinstance(error, WorkerUnavailableError):
        return f"no worker answered for job {error.job_id!r} in time; retry shortly"
    if status_of(error) == HTTPStatus.INTERNAL_SERVER_ERROR:
        return INTERNAL_DETAIL
    return str(error).splitlines()[0] if str(error) else type(error).__name__


INTERNAL_DETAIL = "an internal error occurred; the logs have it under this request's id"


def problem_body(
    status: int,
    *,
    type_: str = "about:blank",
    detail: str | None = None,
    instance: str | None = None,
    request_id: str | None = None,
    **extensions: Any,
) -> dict[str, Any]:
    """The members of a problem document."""
    body: dict[str, Any] = {
        "type": type_,
        "title": HTTPStatus(status).phrase,
        "status": status,
    }
    if detail is not None:
        body["detail"] = detail
    if instance is not None:
        body["instance"] = instance
    if request_id is not None:
        body["request_id"] = request_id
    body.update({name: value for name, value in extensions.items() if value is not None})
    return body


def problem_response(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    """A problem document as a response."""
    return Response(
        orjson.dumps(body), status_code=int(status), media_type=PROBLEM_JSON, headers=headers
    )


def error_problem(
    error: SpinnerError, *, instance: str | None, request_id: str | None, status: int | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, problem members and headers of an engine error."""
    code = status or status_of(error)
    extensions: dict[str, Any] = {}
    if isinstance(error, InvalidJobError):
        extensions["field"] = error.field
    if isinstance(error, JobConflictError):
        extensions["running_job_id"] = error.running_job_id
    if isinstance(error, JobAlreadyClosedError):
        extensions["job_status"] = error.status
    headers: dict[str, str] = {}
    if code == HTTPStatus.SERVICE_UNAVAILABLE:
        headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    if isinstance(error, AuthenticationError):
        headers["WWW-Authenticate"] = 'Bearer realm="spinner-jobs"'
    body = problem_body(
        code,
        type_=TYPE_PREFIX + type(error).__name__,
        detail=public_detail(error),
        instance=instance,
        request_id=request_id,
        **extensions,
    )
    return code, body, headers


def request_id_of(request: Request) -> str | None:
    """The id the API gave this request (see ``middleware``)."""
    value = request.scope.get("spinner.request_id")
    return value if isinstance(value, str) else None


async def spinner_error_handler(request: Request, exc: Exception) -> Response:
    """Engine errors raised by a route."""
    assert isinstance(exc, SpinnerError)
    status, body, headers = error_problem(
        exc, instance=request.url.path, request_id=request_id_of(request)
    )
    return problem_response(status, body, headers)


def _field(loc: Sequence[int | str]) -> str:
    """A validation error's location as the caller wrote it: ``input.format``, ``status``."""
    where = [str(part) for part in loc]
    if where and where[0] in ("body", "query", "path", "header"):
        kind, where = where[0], where[1:]
        if kind == "header" and where:
            return "-".join(word.capitalize() for word in where[0].split("-"))
    return ".".join(where) or "body"


async def validation_error_handler(request: Request, exc: Exception) -> Response:
    """A request that does not fit its models: 422, naming the first offending field."""
    assert isinstance(exc, RequestValidationError)
    problems = [
        {
            # A body that is not JSON at all: its location is a character position.
            "field": "body" if error.get("type") == "json_invalid" else _field(error["loc"]),
            "message": str(error.get("msg", "invalid")),
        }
        for error in exc.errors()
    ]
    first = problems[0] if problems else {"field": "body", "message": "invalid request"}
    error = InvalidJobError(first["field"], first["message"])
    status, body, headers = error_problem(
        error, instance=request.url.path, request_id=request_id_of(request)
    )
    body["errors"] = problems
    return problem_response(status, body, headers)


_HTTP_DETAIL = {
    HTTPStatus.NOT_FOUND: "no such route; the routes are listed at /openapi.json",
    HTTPStatus.METHOD_NOT_ALLOWED: "this route does not take this method; see /openapi.json",
}


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Routing errors (no such route, wrong method) and other HTTP errors of the framework."""
    assert isinstance(exc, HTTPException)
    status = HTTPStatus(exc.status_code)
    detail = _HTTP_DETAIL.get(status) or (
        exc.detail if isinstance(exc.detail, str) and status < 500 else status.phrase
    )
    body = problem_body(
        status, detail=detail, instance=request.url.path, request_id=request_id_of(request)
    )
    return problem_response(status, body, dict(exc.headers or {}))
