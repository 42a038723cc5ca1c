"""Jobs on Temporal: each job is one workflow execution of its job type (job id = workflow id)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections.abc import Awaitable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from temporalio.client import (
    Client,
    Interceptor,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.common import (
    Priority,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.converter import PayloadCodec
from temporalio.exceptions import ApplicationError, CancelledError, WorkflowAlreadyStartedError
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from enqueuer import exits
from enqueuer.backends.base import HolderState, JobIdTakenError, StartRequest
from enqueuer.codec import data_converter
from enqueuer.jobtypes import JOB_TYPES
from enqueuer.settings import TemporalSettings
from enqueuer.stats import temporal_stats
from spinner_jobs.core import wire
from spinner_jobs.core.errors import (
    EnqueueConnectionError,
    InvalidJobError,
    JobAlreadyClosedError,
    JobBackendError,
    JobNotFoundError,
    ServerSetupError,
    WorkerUnavailableError,
)
from spinner_jobs.core.models import (
    Backend,
    JobProgress,
    JobRef,
    JobResult,
    JobStats,
    JobStatus,
    JobSummary,
    JobWorkflowInput,
    TableCheckpoint,
    TableStatus,
)

T = TypeVar("T")

_UNREACHABLE = {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED}


async def connect_client(
    settings: TemporalSettings,
    *,
    runtime: Runtime | None = None,
    codec: PayloadCodec | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> Client:
    """Connect a Temporal client with the pydantic data converter.

    Args:
        settings: where the server is.
        runtime: SDK runtime of the client and of workers built on it (e.g. one that
            serves Prometheus metrics, see ``worker.metrics``); None for the default.
        codec: payload encryption (``enqueuer.codec.payload_codec``); None for none.
        interceptors: of the client and of workers built on it (tracing:
            ``enqueuer.tracing.Tracing.interceptors()``); none by default.

    """
    exits.install_exit_hook()
    return await Client.connect(
        settings.address,
        namespace=settings.namespace,
        data_converter=data_converter(codec),
        tls=settings.tls,
        api_key=settings.api_key.get_secret_value() if settings.api_key else None,
        runtime=runtime,
        interceptors=interceptors,
    )


def job_priority(input: JobWorkflowInput) -> Priority:
    """The job's task-queue priority; its activities and child workflows inherit it.

    The organization is the fairness key: with a backlog, the server hands out tasks
    round-robin across organizations (in proportion to their weights) within each
    priority level, so one organization's burst cannot starve the others. A key may
    be at most 64 bytes: a longer organization id is replaced by a digest of it.
    """
    key = input.job.actor.organization_id
    if len(key.encode()) > 64:
        key = "org-" + hashlib.sha256(key.encode()).hexdigest()[:48]
    return Priority(
        priority_key=input.priority, fairness_key=key, fairness_weight=input.fairness_weight
    )


class TemporalBackend:
    """JobBackend over a Temporal client, connected lazily on first use."""

    kind = Backend.TEMPORAL

    def __init__(
        self,
        settings: TemporalSettings,
        timeout: timedelta,
        client: Client | None = None,
        *,
        runtime: Runtime | None = None,
        codec: PayloadCodec | None = None,
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        self._settings = settings
        self._codec = codec
        self._interceptors = interceptors
        self._timeout = timeout
        self._client = client
        self._owns_client = client is None
        self._runtime = runtime
        self._connecting = asyncio.Lock()
        self._running_counts: dict[tuple[str, str], tuple[float, int]] = {}
        self._last_counted: tuple[str, str] | None = None

    async def client(self) -> Client:
        """The connected client.

        Raises:
            EnqueueConnectionError: no server answered within the timeout.

        """
        if self._client is None:
            async with self._connecting:
                if self._client is None:
                    self._client = await self._bounded(
                        connect_client(
                            self._settings,
                            runtime=self._runtime,
                            codec=self._codec,
                            interceptors=self._interceptors,
                        )
                    )
                    exits.hold_until_exit(self)
        return self._client

    async def _bounded(self, call: Awaitable[T]) -> T:
        """Run an RPC under the enqueue timeout; unreachable → EnqueueConnectionError."""
        try:
            return await asyncio.wait_for(call, self._timeout.total_seconds())
        except TimeoutError:
            raise EnqueueConnectionError(
                self._settings.address, f"no answer within {self._timeout.total_seconds():g}s"
            ) from None
        except RPCError as exc:
            if exc.status in _UNREACHABLE:
                raise EnqueueConnectionError(self._settings.address, exc.message) from exc
            if exc.status == RPCStatusCode.INVALID_ARGUMENT and "search attribute" in exc.message:
                raise ServerSetupError(exc.message) from exc
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.UNIMPLEMENTED):
                raise  # the caller decides what these mean
            raise JobBackendError(self._settings.address, exc.status.name, exc.message) from exc
        except RuntimeError as exc:  # the SDK's "Failed client connect"
            if "connect" in str(exc).lower():
                raise EnqueueConnectionError(self._settings.address, str(exc)) from exc
            raise

    async def start(self, request: StartRequest) -> str | None:
        """Start the job's workflow; the job id is the workflow id.

        Raises:
            JobIdTakenError: a workflow with the job's id exists (running or closed).

        """
        client = await self.client()
        input = request.input
        job = input.job
        attributes = TypedSearchAttributes(
            [
                SearchAttributePair(wire.SA_WORKBOOK_ID, job.workbook_id),
                SearchAttributePair(wire.SA_USER_ID, job.actor.user_id),
                SearchAttributePair(wire.SA_ORGANIZATION_ID, job.actor.organization_id),
                SearchAttributePair(wire.SA_JOB_TYPE, request.job_type.name),
            ]
        )
        memo: dict[str, object] = {wire.MEMO_TABLES: input.table_ids}
        if job.metadata:
            memo[wire.MEMO_METADATA] = job.metadata
        try:
            handle = await self._bounded(
                client.start_workflow(
                    request.job_type.name,
                    input,
                    id=input.job_id,
                    task_queue=request.task_queue,
                    result_type=JobResult,
                    search_attributes=attributes,
                    memo=memo,
                    static_summary=request.summary,
                    # A job id names one job, ever (until retention removes it).
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    start_delay=request.delay,
                    # With a worker of this task queue on this client (a monolith), the
                    # server hands the first workflow task straight back: one round trip
                    # less. A delayed start cannot be eager.
                    request_eager_start=request.delay is None,
                    priority=job_priority(input),
                    rpc_timeout=self._timeout,
                )
            )
        except WorkflowAlreadyStartedError as exc:
            raise JobIdTakenError(input.job_id) from exc
        self._bump_running()
        return handle.result_run_id

    async def find(self, job_id: str, organization_id: str) -> JobRef | None:
        """The ref of the organization's job with this id, or None."""
        try:
            _, description = await self._describe_job(job_id, organization_id)
        except JobNotFoundError:
            return None
        attributes = description.typed_search_attributes
        tables: list[str] = await description.memo_value(wire.MEMO_TABLES, [], type_hint=list[str])
        return JobRef(
            job_id=job_id,
            job_type=description.workflow_type,
            run_id=description.run_id,
            workbook_id=attributes.get(wire.SA_WORKBOOK_ID) or "",
            table_ids=tables,
            backend=self.kind,
        )

    async def _describe_job(
        self, job_id: str, organization_id: str
    ) -> tuple[WorkflowHandle[Any, JobResult], WorkflowExecutionDescription]:
        """The job's handle and description, if it is a job of the organization.

        Raises:
            JobNotFoundError: unknown id, another organization's job, or a workflow
                that is not one of the engine's jobs (all look the same).

        """
        client = await self.client()
        handle = client.get_workflow_handle(job_id, result_type=JobResult)
        try:
            description = await self._bounded(handle.describe(rpc_timeout=self._timeout))
        except RPCError as exc:  # NOT_FOUND (the rest is translated by _bounded)
            raise JobNotFoundError(job_id) from exc
        attributes = description.typed_search_attributes
        if (
            description.workflow_type not in JOB_TYPES
            or attributes.get(wire.SA_ORGANIZATION_ID) != organization_id
        ):
            raise JobNotFoundError(job_id)
        return handle, description

    async def progress(self, job_id: str, organization_id: str) -> JobProgress:
        """Progress of a job.

        While it runs: statuses and counts from the ``progress`` query, live counts of
        active tables from their attempts' heartbeat details. Once closed: from its
        result or failure in the history, so no worker is needed to answer.

        Raises:
            JobNotFoundError: no such job for the organization.
            WorkerUnavailableError: the job runs but no worker answered the query.

        """
        handle, description = await self._describe_job(job_id, organization_id)
        if description.status != WorkflowExecutionStatus.RUNNING:
            return (await self._closed_result(handle)).progress
        try:
            progress: JobProgress = await asyncio.wait_for(
                handle.query(
                    wire.QUERY_PROGRESS, result_type=JobProgress, rpc_timeout=self._timeout
                ),
                self._timeout.total_seconds() + 1,
            )
        except (RPCError, WorkflowQueryFailedError, TimeoutError) as exc:
            if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
                raise JobNotFoundError(job_id) from exc
            detail = getattr(exc, "message", None) or type(exc).__name__
            raise WorkerUnavailableError(job_id, detail) from exc
        client = await self.client()
        for pending in description.raw_description.pending_activities:
            table_id = wire.table_of_activity(pending.activity_id)
            table = progress.tables.get(table_id or "")
            if table is None or table.status != TableStatus.ACTIVE:
                continue
            if pending.heartbeat_details.payloads:
                [checkpoint] = await client.data_converter.decode(
                    pending.heartbeat_details.payloads, [TableCheckpoint]
                )
                records = max(table.records, checkpoint.records)
                total = checkpoint.total if checkpoint.total is not None else table.total
                progress = progress.with_table(
                    table.model_copy(update={"records": records, "total": total})
                )
        return progress

    async def wait(self, job_id: str, organization_id: str) -> JobResult:
        """Wait for the workflow to close; a failed or cancelled job is a result too.

        The wait starts at once, beside the ownership check (one round trip less for
        a short job); nothing of it is returned unless the job is the organization's.
        """
        client = await self.client()
        waiting = asyncio.ensure_future(
            self._closed_result(client.get_workflow_handle(job_id, result_type=JobResult))
        )
        try:
            await self._describe_job(job_id, organization_id)
        except BaseException:
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            raise
        try:
            return await waiting
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise JobNotFoundError(job_id) from exc
            raise JobBackendError(self._settings.address, exc.status.name, exc.message) from exc

    async def _closed_result(self, handle: WorkflowHandle[Any, JobResult]) -> JobResult:
        """The job's result, waiting for it to close; built from the failure if it failed.

        ``handle`` must carry ``result_type=JobResult``.
        """
        job_id = handle.id
        try:
            result: JobResult = await handle.result()
            return result
        except WorkflowFailureError as exc:
            cause = exc.cause
            if isinstance(cause, ApplicationError) and cause.details:
                progress = JobProgress.model_validate(cause.details[0])
                return JobResult(
                    job_id=job_id,
                    status=JobStatus.FAILED,
                    progress=progress,
                    failed_tables=progress.failed_tables,
                    duration=progress.duration,
                )
            # Cancelled, terminated or timed out: the last statuses the workflow knew.
            status = JobStatus.CANCELLED if isinstance(cause, CancelledError) else JobStatus.FAILED
            progress = await self._last_progress(handle, status)
            return JobResult(
                job_id=job_id,
                status=status,
                progress=progress,
                failed_tables=progress.failed_tables,
                duration=progress.duration,
            )

    async def _last_progress(
        self, handle: WorkflowHandle[Any, Any], status: JobStatus
    ) -> JobProgress:
        """Progress of a job that closed without a result (asks a worker to replay it)."""
        try:
            progress: JobProgress = await handle.query(
                wire.QUERY_PROGRESS, result_type=JobProgress, rpc_timeout=self._timeout
            )
        except RPCError:
            # No worker answered (or the history is gone): say what the server knows.
            description = await handle.describe(rpc_timeout=self._timeout)
            workbook_id = description.typed_search_attributes.get(wire.SA_WORKBOOK_ID) or ""
            return JobProgress(job_id=handle.id, workbook_id=workbook_id, status=status)
        if progress.status == JobStatus.RUNNING:  # terminated or timed out mid-run
            progress = progress.model_copy(update={"status": status})
        return progress

    async def cancel(self, job_id: str, organization_id: str) -> None:
        """Request cancellation of the job's workflow.

        Raises:
            JobNotFoundError: no such job for the organization.
            JobAlreadyClosedError: the job has already closed.

        """
        handle, description = await self._describe_job(job_id, organization_id)
        if description.status != WorkflowExecutionStatus.RUNNING:
            status = description.status.name.lower() if description.status else "closed"
            raise JobAlreadyClosedError(job_id, status)
        try:
            await self._bounded(handle.cancel(rpc_timeout=self._timeout))
        except RPCError as exc:  # NOT_FOUND: closed and removed in between
            raise JobNotFoundError(job_id) from exc

    async def holder_state(self, job_id: str) -> HolderState:
        """Running, closed, or unknown to the server (not started yet, or removed)."""
        client = await self.client()
        try:
            description = await self._bounded(
                client.get_workflow_handle(job_id).describe(rpc_timeout=self._timeout)
            )
        except RPCError:  # NOT_FOUND
            return "unknown"
        if description.status == WorkflowExecutionStatus.RUNNING:
            return "running"
        return "closed"

    async def count_running(self, job_type: str, task_queue: str) -> int:
        """Running jobs of the type on its queue, from visibility (cached 1 s)."""
        now = time.monotonic()
        cached = self._running_counts.get((job_type, task_queue))
        if cached and now - cached[0] < 1.0:
            return cached[1]
        client = await self.client()
        try:
            count = (
                await self._bounded(
                    client.count_workflows(
                        f'WorkflowType="{job_type}" AND TaskQueue="{task_queue}" '
                        'AND ExecutionStatus="Running"'
                    )
                )
            ).count
        except RPCError as exc:
            # The time-skipping test server has no visibility counts: no cap there.
            if exc.status != RPCStatusCode.UNIMPLEMENTED:
                raise
            count = 0
        self._running_counts[job_type, task_queue] = (now, count)
        self._last_counted = (job_type, task_queue)
        return count

    def _bump_running(self) -> None:
        # Visibility lags; count our own starts until the cache refreshes.
        key = self._last_counted
        if key is not None and key in self._running_counts:
            at, count = self._running_counts[key]
            self._running_counts[key] = (at, count + 1)

    async def stats(
        self, job_types: list[str], task_queue: str | None, organization_id: str | None = None
    ) -> JobStats:
        """Figures of the jobs of ``job_types`` (on ``task_queue``), from the server."""
        client = await self.client()
        return await self._bounded(
            temporal_stats(
                client,
                task_queue,
                job_types=job_types,
                organization_id=organization_id,
                rpc_timeout=self._timeout,
            )
        )

    async def list_jobs(
        self,
        organization_id: str,
        *,
        job_types: list[str],
        workbook_id: str | None = None,
        status: JobStatus | None = None,
        page_token: str | None = None,
        page_size: int = 50,
    ) -> tuple[list[JobSummary], str | None]:
        """One page of the organization's jobs from visibility (a moment behind, like stats).

        The order is visibility's: running jobs first (newest start first), then closed
        ones, most recently closed first. The page token is the server's, base64url.
        """
        clauses = [
            f"WorkflowType IN ({', '.join(_literal(t, 'job_type') for t in job_types)})",
            f"{wire.SA_ORGANIZATION_ID.name} = {_literal(organization_id, 'organization_id')}",
        ]
        if workbook_id is not None:
            clauses.append(f"{wire.SA_WORKBOOK_ID.name} = {_literal(workbook_id, 'workbook_id')}")
        if status is not None:
            either = " OR ".join(f'ExecutionStatus = "{s}"' for s in _VISIBILITY_STATUSES[status])
            clauses.append(f"({either})")
        token = None
        if page_token is not None:
            try:
                token = base64.urlsafe_b64decode(page_token + "=" * (-len(page_token) % 4))
            except (binascii.Error, ValueError):
                token = None
            if not token:
                raise InvalidJobError("page_token", "is not a token this API gave out")
        client = await self.client()
        listing = client.list_workflows(
            " AND ".join(clauses),
            page_size=page_size,
            next_page_token=token,
            rpc_timeout=self._timeout,
        )
        try:
            await self._bounded(listing.fetch_next_page())
        except JobBackendError as exc:
            if token is not None and exc.status == RPCStatusCode.INVALID_ARGUMENT.name:
                raise InvalidJobError("page_token", "is not a token this API gave out") from exc
            raise
        jobs = [
            JobSummary(
                job_id=execution.id,
                job_type=execution.workflow_type,
                workbook_id=execution.typed_search_attributes.get(wire.SA_WORKBOOK_ID) or "",
                user_id=execution.typed_search_attributes.get(wire.SA_USER_ID),
                status=_JOB_STATUSES.get(
                    execution.status or WorkflowExecutionStatus.RUNNING, JobStatus.FAILED
                ),
                started_at=execution.start_time,
                finished_at=execution.close_time,
            )
            for execution in listing.current_page or []
        ]
        following = listing.next_page_token
        return jobs, base64.urlsafe_b64encode(following).decode().rstrip("=") if following else None

    async def aclose(self) -> None:
        """Let go of the client (the SDK has no explicit close; see enqueuer.exits)."""
        self.release_client()

    def release_client(self) -> None:
        """Drop a client this backend connected itself; the next call connects again."""
        if self._owns_client:
            self._client = None


# A job's status as visibility filters it: failed covers every unsuccessful close but cancel.
_VISIBILITY_STATUSES = {
    JobStatus.RUNNING: ("Running",),
    JobStatus.COMPLETED: ("Completed",),
    JobStatus.FAILED: ("Failed", "Terminated", "TimedOut"),
    JobStatus.CANCELLED: ("Canceled",),
}
_JOB_STATUSES = {
    WorkflowExecutionStatus.RUNNING: JobStatus.RUNNING,
    WorkflowExecutionStatus.COMPLETED: JobStatus.COMPLETED,
    WorkflowExecutionStatus.CANCELED: JobStatus.CANCELLED,
}


def _literal(value: str, field: str) -> str:
    """``value`` as a double-quoted visibility literal.

    Raises:
        InvalidJobError: the value holds a double quote, a backslash or a control character
            (no id the engine makes does; refusing them keeps the query unambiguous).

    """
    if any(c in value for c in '"\\') or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise InvalidJobError(
            field, "must not contain double quotes, backslashes or control characters"
        )
    return f'"{value}"'
