"""The HTTP API: enqueue and follow jobs with an organization's API key.

Every ``/v1`` route needs ``Authorization: Bearer <key>``; the key decides the
organization, the request never does. Routes are thin: each calls one
:class:`enqueuer.Enqueuer` method, whose typed errors become problem documents
(``problems``). The enqueue routes are made from the job-type registry, one per job
type, so the OpenAPI document shows each type's own input model.
"""

# No `from __future__ import annotations` here: FastAPI reads the routes' annotations
# at run time, and the enqueue routes' body models are made per job type.

import asyncio
import hashlib
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

import structlog
from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, create_model
from starlette.exceptions import HTTPException
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from enqueuer.client import MAX_PAGE_SIZE, Enqueuer
from enqueuer.jobtypes import JOB_TYPES
from enqueuer.settings import Settings
from enqueuer.tracing import Tracing
from spinner_jobs.api.keys import verify_api_key
from spinner_jobs.api.middleware import ApiMetrics, ApiMiddleware
from spinner_jobs.api.openapi import describe_durations
from spinner_jobs.api.problems import (
    PROBLEM_JSON,
    AuthenticationError,
    TooManyStreamsError,
    error_problem,
    http_error_handler,
    problem_body,
    problem_response,
    request_id_of,
    spinner_error_handler,
    validation_error_handler,
)
from spinner_jobs.api.sse import job_event_stream, parse_last_event_id
from spinner_jobs.api.telemetry import telemetry_config
from spinner_jobs.api.view import view_router
from spinner_jobs.core.errors import (
    InvalidJobError,
    JobNotFoundError,
    SpinnerError,
    UnknownJobTypeError,
)
from spinner_jobs.core.models import (
    ApiKey,
    JobOptions,
    JobProgress,
    JobRef,
    JobStats,
    JobStatus,
    JobSummary,
    NonEmptyStr,
)
from spinner_jobs.store.base import Store
from workflows.jobtype import JobType

log = structlog.get_logger(__name__)

T = TypeVar("T")

IDEMPOTENCY_PREFIX = "idem-"
"""Job key of an ``Idempotency-Key``: this prefix and the SHA-256 (hex) of the header."""
MAX_IDEMPOTENCY_KEY = 255


class ApiState:
    """What the routes share: the engine's parts, the metrics, the open streams."""

    def __init__(self, settings: Settings, enqueuer: Enqueuer, store: Store) -> None:
        self.settings = settings
        self.enqueuer = enqueuer
        self.store = store
        self.metrics = ApiMetrics()
        self.closing = asyncio.Event()
        """Set when the server shuts down: event streams end."""
        self.streams: Counter[str] = Counter()

    async def in_store(self, call: Callable[..., T], *args: Any) -> T:
        """A store call in a thread, waiting for the store no longer than an enqueue."""
        limit = self.settings.enqueue_timeout.total_seconds()

        def bounded() -> T:
            with self.store.waiting_at_most(limit):
                return call(*args)

        return await asyncio.to_thread(bounded)

    def open_stream(self, key_id: str) -> None:
        """Count a new event stream of the key (TooManyStreamsError over the cap)."""
        cap = self.settings.api.max_streams_per_key
        if self.streams[key_id] >= cap:
            raise TooManyStreamsError(cap)
        self.streams[key_id] += 1
        self.metrics.streams.inc()

    def close_stream(self, key_id: str) -> None:
        """Give back an event stream's slot."""
        self.streams[key_id] -= 1
        if self.streams[key_id] <= 0:
            del self.streams[key_id]
        self.metrics.streams.dec()


# --- request and response models ---------------------------------------------------------


class EnqueueRequest(BaseModel):
    """An enqueue: who asks, the job type's input, and how to run the job."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: NonEmptyStr = Field(description="The user the job is enqueued for.")
    options: JobOptions | None = Field(None, description="Over the job type's defaults.")


class CancelAccepted(BaseModel):
    """A cancel was sent to the job; it stops shortly and releases its tables."""

    job_id: str
    status: Literal["cancel_requested"] = "cancel_requested"


class JobPage(BaseModel):
    """One page of a job listing."""

    jobs: list[JobSummary]
    next_page_token: str | None = Field(
        None, description="Pass as page_token for the next page; null after the last one."
    )


class Health(BaseModel):
    """The process is up."""

    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    """Whether the API can serve: each dependency's state."""

    status: Literal["ready"] = "ready"
    checks: dict[str, str]


_PROBLEM = {"content": {PROBLEM_JSON: {}}, "description": "A problem document (RFC 9457)."}
_ERRORS: dict[int | str, dict[str, Any]] = dict.fromkeys(
    (401, 404, 409, 413, 422, 429, 503), _PROBLEM
)


# --- authentication ----------------------------------------------------------------------


async def api_key(request: Request) -> ApiKey:
    """The request's API key: ``Authorization: Bearer <key>``, known and not revoked.

    Raises:
        AuthenticationError: no key, a malformed, unknown, wrong or revoked one (the
            same 401 for each; the log says which).

    """
    state: ApiState = request.app.state.api
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        log.info("api_auth_refused", reason="missing")
        raise AuthenticationError
    verdict = await state.in_store(verify_api_key, state.store, presented.strip())
    if verdict.key is None:
        log.info("api_auth_refused", reason=verdict.reason)
        raise AuthenticationError
    request.state.organization_id = verdict.key.organization_id
    request.state.api_key_id = verdict.key.id
    structlog.contextvars.bind_contextvars(
        organization_id=verdict.key.organization_id, api_key_id=verdict.key.id
    )
    return verdict.key


Key = Annotated[ApiKey, Depends(api_key)]


def _reader(key: ApiKey) -> dict[str, str]:
    """The actor of a read or control call: only its organization matters."""
    return {"user_id": f"api-key:{key.id}", "organization_id": key.organization_id}


def idempotent_job_key(value: str) -> str:
    """The job key (``options.job_id``) of an ``Idempotency-Key`` header.

    Any printable text up to 255 characters is a key; its digest fits the job-key
    alphabet (``[A-Za-z0-9._:-]``, at most 128), so a retried request with the same
    header, for the same organization and job type, gets the same job.
    """
    if not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY or not value.isprintable():
        raise InvalidJobError(
            "Idempotency-Key", f"must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters"
        )
    return IDEMPOTENCY_PREFIX + hashlib.sha256(value.encode()).hexdigest()


class _EventStream(StreamingResponse):
    """An event stream that gives its slot back however it ends (even before it starts)."""

    media_type = "text/event-stream"

    def __init__(self, *args: Any, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


# --- the application ---------------------------------------------------------------------


def create_app(
    settings: Settings, enqueuer: Enqueuer, store: Store, *, tracing: Tracing | None = None
) -> FastAPI:
    """The HTTP API over ``enqueuer`` (its jobs) and ``store`` (the API keys).

    The caller owns both and closes them after the server stops. With ``tracing``, each
    request is a server span, and the enqueue it makes (through an enqueuer whose client
    has ``tracing.interceptors()``) continues its trace.
    """
    app = FastAPI(
        title="spinner-jobs",
        summary="Enqueue and follow durable background jobs with an organization's API key.",
        version="1",
        redoc_url=None,
        telemetry=telemetry_config(tracing),
    )
    describe_durations(app)
    state = ApiState(settings, enqueuer, store)
    app.state.api = state
    app.add_middleware(
        ApiMiddleware,
        metrics=state.metrics,
        max_body_bytes=settings.api.max_body_bytes,
    )
    app.add_exception_handler(SpinnerError, spinner_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)

    for kind in JOB_TYPES:
        _add_enqueue_route(app, state, kind)

    @app.post(
        "/v1/jobs/{job_type}",
        include_in_schema=False,
        status_code=HTTPStatus.ACCEPTED,
    )
    async def enqueue_unknown_type(job_type: str, request: Request, key: Key) -> Response:
        """A job type that is not registered: 404, naming the known ones."""
        try:
            JOB_TYPES.get(job_type)
        except UnknownJobTypeError as exc:
            status, body, headers = error_problem(
                exc,
                instance=request.url.path,
                request_id=request_id_of(request),
                status=HTTPStatus.NOT_FOUND,
            )
            return problem_response(status, body, headers)
        raise AssertionError("registered job types have their own routes")  # pragma: no cover

    @app.get("/v1/jobs/{job_id}", responses=_ERRORS, tags=["jobs"])
    async def get_progress(job_id: str, key: Key) -> JobProgress:
        """Live progress of a job: total records, and per table its count and status."""
        return await state.enqueuer.progress(job_id, actor=_reader(key))

    @app.post(
        "/v1/jobs/{job_id}/cancel",
        status_code=HTTPStatus.ACCEPTED,
        responses=_ERRORS,
        tags=["jobs"],
    )
    async def cancel(job_id: str, key: Key) -> CancelAccepted:
        """Cancel a running job; its tables are released (409 if it has already closed)."""
        await state.enqueuer.cancel(job_id, actor=_reader(key))
        return CancelAccepted(job_id=job_id)

    @app.get(
        "/v1/jobs/{job_id}/events",
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "The job's events."},
            204: {"description": "The job's final event was already delivered."},
            **_ERRORS,
        },
        response_class=StreamingResponse,
        tags=["jobs"],
    )
    async def events(
        job_id: str,
        request: Request,
        key: Key,
        last_event_id: Annotated[
            str | None,
            Header(
                alias="Last-Event-ID",
                description="Resume after this event (the id of the last event received).",
            ),
        ] = None,
    ) -> Response:
        """The job's events as Server-Sent Events, until its final event.

        ``progress`` at most every SPINNER_JOBS_PROGRESS_INTERVAL, one event per table
        that finishes (``table.completed``, ``table.failed``), then the job's final
        event (``job.completed``, ``job.failed``, ``job.cancelled``). Reconnecting with
        ``Last-Event-ID`` sends nothing twice.
        """
        resume = parse_last_event_id(job_id, last_event_id)
        if await state.enqueuer.backend.find(job_id, key.organization_id) is None:
            raise JobNotFoundError(job_id)
        if resume.finished:
            return Response(status_code=HTTPStatus.NO_CONTENT)
        state.open_stream(key.id)
        stream = job_event_stream(
            state.enqueuer,
            job_id,
            actor=_reader(key),
            resume=resume,
            interval=settings.jobs.progress_interval.total_seconds(),
            heartbeat=settings.api.sse_heartbeat.total_seconds(),
            closing=state.closing,
            request_id=request_id_of(request),
        )
        log.info("sse_stream_opened", job_id=job_id, resumed=last_event_id is not None)
        return _EventStream(
            stream,
            on_close=lambda: state.close_stream(key.id),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # The live job page and its view links (``view``): a signed link, not a key.
    app.include_router(view_router(state, authenticate=api_key, stream_response=_EventStream))

    @app.get("/v1/jobs", responses=_ERRORS, tags=["jobs"])
    async def list_jobs(
        key: Key,
        workbook_id: Annotated[str | None, Query(description="Only this workbook's jobs.")] = None,
        status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
        job_type: Annotated[str | None, Query(description="Only this job type's jobs.")] = None,
        page_token: Annotated[str | None, Query(description="From a previous page.")] = None,
        page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    ) -> JobPage:
        """The organization's jobs, running ones first (newest first), then the latest closed."""
        jobs, token = await state.enqueuer.list_jobs(
            key.organization_id,
            workbook_id=workbook_id,
            status=status,
            job_type=job_type,
            page_token=page_token,
            page_size=page_size,
        )
        return JobPage(jobs=jobs, next_page_token=token)

    @app.get("/v1/stats", responses=_ERRORS, tags=["jobs"])
    async def stats(
        key: Key,
        job_type: Annotated[str | None, Query(description="Only this job type's jobs.")] = None,
    ) -> JobStats:
        """Counts, rates, processing times of the organization's jobs; the queue's depth."""
        return await state.enqueuer.stats(key.organization_id, job_type)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> Health:
        """The process is up (no dependency is checked)."""
        return Health()

    @app.get(
        "/readyz",
        tags=["operations"],
        responses={503: {**_PROBLEM, "description": "A dependency does not answer."}},
    )
    async def readyz(request: Request) -> Response:
        """The store and (with SPINNER_USE_JOBS) the Temporal server answer."""
        checks = await _readiness(state)
        if all(value in ("ok", "not used") for value in checks.values()):
            return Response(
                Readiness(checks=checks).model_dump_json(), media_type="application/json"
            )
        failing = ", ".join(name for name, value in checks.items() if value == "unavailable")
        body = problem_body(
            HTTPStatus.SERVICE_UNAVAILABLE,
            detail=f"not ready: {failing} unavailable",
            instance=request.url.path,
            request_id=request_id_of(request),
            checks=checks,
        )
        return problem_response(HTTPStatus.SERVICE_UNAVAILABLE, body, {"Retry-After": "1"})

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics() -> Response:
        """The API's Prometheus metrics."""
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _add_enqueue_route(app: FastAPI, state: ApiState, kind: JobType) -> None:
    """``POST /v1/jobs/<job type>`` with the job type's own input model."""
    pascal = "".join(part.capitalize() for part in kind.name.replace("_", "-").split("-"))
    body_model = create_model(
        f"Enqueue{pascal}Request",
        __base__=EnqueueRequest,
        __doc__=f"Enqueue a {kind.name} job: {kind.description}",
        input=(kind.input_model, Field(description=f"The {kind.name} job's input.")),
    )

    async def enqueue(
        body: Any,
        response: Response,
        key: Key,
        idempotency_key: Annotated[
            str | None,
            Header(
                alias="Idempotency-Key",
                description="A retried request with the same key returns the same job.",
            ),
        ] = None,
    ) -> JobRef:
        options = body.options or JobOptions()
        if idempotency_key is not None:
            if options.job_id is not None:
                raise InvalidJobError(
                    "Idempotency-Key", "give the header or options.job_id, not both"
                )
            options = options.model_copy(update={"job_id": idempotent_job_key(idempotency_key)})
        ref = await state.enqueuer.enqueue(
            kind,
            body.input,
            actor={"user_id": body.user_id, "organization_id": key.organization_id},
            options=options,
        )
        response.headers["Location"] = f"/v1/jobs/{quote(ref.job_id, safe=':')}"
        return ref

    # The body's model is the job type's: set where FastAPI reads it.
    enqueue.__annotations__["body"] = body_model
    app.post(
        f"/v1/jobs/{kind.name}",
        status_code=HTTPStatus.ACCEPTED,
        responses=_ERRORS,
        tags=["jobs"],
        summary=f"Enqueue a {kind.name} job",
        description=f"{kind.description} Returns at once with the job's reference; "
        "its Location is the job's progress.",
        name=f"enqueue_{kind.name}",
    )(enqueue)


async def _readiness(state: ApiState) -> dict[str, str]:
    """Each dependency: ``ok``, ``unavailable`` or ``not used``."""
    from enqueuer.backends.temporal import TemporalBackend

    limit = state.settings.enqueue_timeout
    checks: dict[str, str] = {}

    async def store() -> None:
        # Any read does: an API key lookup is the one this process makes most.
        await asyncio.wait_for(
            state.in_store(state.store.get_api_key, "readyz-probe"), limit.total_seconds()
        )

    async def temporal() -> None:
        backend = state.enqueuer.backend
        assert isinstance(backend, TemporalBackend)
        client = await backend.client()
        healthy = await asyncio.wait_for(
            client.service_client.check_health(timeout=limit), limit.total_seconds() + 1
        )
        if not healthy:
            raise ConnectionError("the Temporal server says it is not serving")

    probes: dict[str, Callable[[], Any]] = {"store": store}
    if isinstance(state.enqueuer.backend, TemporalBackend):
        probes["temporal"] = temporal
    else:
        checks["temporal"] = "not used"
    results = await asyncio.gather(*(probe() for probe in probes.values()), return_exceptions=True)
    for name, result in zip(probes, results, strict=True):
        if isinstance(result, BaseException):
            log.warning("readyz_check_failed", check=name, error=repr(result))
            checks[name] = "unavailable"
        else:
            checks[name] = "ok"
    return checks


__all__ = ["ApiState", "create_app", "idempotent_job_key"]
