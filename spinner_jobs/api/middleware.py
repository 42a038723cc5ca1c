"""What every request goes through: an id, the body cap, a log line, metrics, no tracebacks.

A plain ASGI middleware (not Starlette's ``BaseHTTPMiddleware``), so event streams
pass through unbuffered and are timed to their end.
"""

from __future__ import annotations

import re
import time
import uuid
from http import HTTPStatus
from typing import Any

import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spinner_jobs.api.problems import (
    INTERNAL_DETAIL,
    PROBLEM_JSON,
    RequestTooLargeError,
    error_problem,
    problem_body,
)

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Probes and scrapes: logged at debug, so a log is not mostly health checks.
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Buckets of ``spinner_api_request_duration_seconds`` (an event stream lasts its stream)."""


class ApiMetrics:
    """The API's Prometheus metrics, in a registry of their own (served at ``/metrics``).

    - ``spinner_api_requests_total{method, route, status}``: requests answered;
    - ``spinner_api_request_duration_seconds{method, route}``: time to the last byte;
    - ``spinner_api_sse_streams_open``: event streams open now.

    ``route`` is the route's template (``/v1/jobs/{job_id}``), never the raw path, so
    job ids do not make new series; requests that match no route are ``unmatched``.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "spinner_api_requests",
            "HTTP API requests answered, by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "spinner_api_request_duration_seconds",
            "HTTP API request time, first byte in to last byte out.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.streams = Gauge(
            "spinner_api_sse_streams_open", "Event streams open now.", registry=self.registry
        )


class _BodyTooLargeError(Exception):
    pass


class ApiMiddleware:
    """Request id, body cap, structured log line, metrics and a last-resort 500."""

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request (other ASGI scopes pass through untouched)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        scope["spinner.request_id"] = request_id
        method = scope["method"]
        status = HTTPStatus.INTERNAL_SERVER_ERROR.value
        response_started = False

        async def sending(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        async def fail(code: int, body: dict[str, Any], headers: dict[str, str]) -> None:
            if response_started:
                return  # the response is under way: all that can be done is to end it
            raw = orjson.dumps(body)
            await sending(
                {
                    "type": "http.response.start",
                    "status": code,
                    "headers": [
                        (b"content-type", PROBLEM_JSON.encode()),
                        (b"content-length", str(len(raw)).encode()),
                        *((k.lower().encode(), v.encode()) for k, v in headers.items()),
                    ],
                }
            )
            await sending({"type": "http.response.body", "body": raw})

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                if method in _BODY_METHODS:
                    receive = await self._capped(scope, receive)
                await self.app(scope, receive, sending)
            except _BodyTooLargeError:
                code, body, headers = error_problem(
                    RequestTooLargeError(self.max_body_bytes),
                    instance=scope.get("path"),
                    request_id=request_id,
                )
                await fail(code, body, headers)
            except Exception as exc:
                log.exception("api_request_crashed", path=scope.get("path"), error=repr(exc))
                body = problem_body(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    detail=INTERNAL_DETAIL,
                    instance=scope.get("path"),
                    request_id=request_id,
                )
                await fail(HTTPStatus.INTERNAL_SERVER_ERROR, body, {})
                status = HTTPStatus.INTERNAL_SERVER_ERROR.value
            finally:
                self._record(scope, method, status, time.perf_counter() - started, request_id)

    async def _capped(self, scope: Scope, receive: Receive) -> Receive:
        """Read the whole body (at most the cap) and hand it on as one message.

        Raises:
            _BodyTooLargeError: the declared length or the bytes received exceed the cap.

        """
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_body_bytes:
                    raise _BodyTooLargeError
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the app sees an empty body, then the disconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _BodyTooLargeError
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    def _record(
        self, scope: Scope, method: str, status: int, seconds: float, request_id: str
    ) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        self.metrics.requests.labels(method, route, str(status)).inc()
        self.metrics.latency.labels(method, route).observe(seconds)
        state = scope.get("state") or {}
        emit = log.debug if route in _QUIET_ROUTES and status < 500 else log.info
        emit(
            "api_request",
            request_id=request_id,
            organization_id=state.get("organization_id"),
            api_key_id=state.get("api_key_id"),
            method=method,
            route=route,
            path=scope.get("path"),
            status=status,
            duration_ms=round(seconds * 1000, 2),
        )


def _request_id(scope: Scope) -> str:
    """The caller's ``X-Request-ID`` when it is a plain token, else a new one."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            given: str = value.decode("latin-1")
            if _SAFE_REQUEST_ID.match(given):
                return given
            break
    return uuid.uuid4().hex
