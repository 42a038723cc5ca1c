"""Job statistics: counts by status, success/failure rates, processing times, queue depth.

On Temporal everything comes from the server, so any process (the CLI, a service, a
dashboard job) sees the same figures without a worker of its own: counts from
visibility (one ``count_workflows ... GROUP BY ExecutionStatus``), processing times
from the most recent closed executions, queue depth from ``DescribeTaskQueue``
stats. Visibility is eventually consistent: a job that just closed can take a moment
to move from running to its closed status.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType, WorkerStatus
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeTaskQueueRequest,
    DescribeTaskQueueResponse,
    ListWorkersRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError

from spinner_jobs.core import wire
from spinner_jobs.core.errors import InvalidJobError
from spinner_jobs.core.models import Backend, JobStats

DEFAULT_SAMPLE = 200
"""Recent closed jobs the processing-time percentiles are computed over."""

# Visibility's ExecutionStatus values → JobStats count fields. ContinuedAsNew is left
# out: download-records never continues as new.
_STATUS_FIELDS = {
    "Running": "running",
    "Completed": "completed",
    "Failed": "failed",
    "Canceled": "cancelled",
    "Terminated": "terminated",
    "TimedOut": "timed_out",
}
_FAILURES = ("failed", "terminated", "timed_out")


async def temporal_stats(
    client: Client,
    task_queue: str | None = None,
    *,
    job_types: Sequence[str],
    organization_id: str | None = None,
    sample: int = DEFAULT_SAMPLE,
    rpc_timeout: timedelta | None = None,
) -> JobStats:
    """Statistics of the engine's jobs from a Temporal server.

    Args:
        client: connected client; its namespace is the one measured.
        task_queue: only jobs started on this task queue, and its backlog; None for
            every job of the namespace (no queue depth then).
        job_types: the job types (workflow types) counted.
        organization_id: only this organization's jobs (the queue depth and worker
            count stay those of the whole queue: workers are shared).
        sample: how many of the most recently closed completed or failed jobs the
            processing-time percentiles cover.
        rpc_timeout: deadline of each RPC.

    Returns:
        The figures, measured now.

    """
    types = ", ".join(f'"{_quoted(name)}"' for name in job_types)
    query = f"WorkflowType IN ({types})"
    if task_queue is not None:
        query += f' AND TaskQueue="{_quoted(task_queue)}"'
    if organization_id is not None:
        query += f' AND {wire.SA_ORGANIZATION_ID.name}="{_quoted(organization_id)}"'

    async def counts() -> dict[str, int]:
        result = await client.count_workflows(
            f"{query} GROUP BY ExecutionStatus", rpc_timeout=rpc_timeout
        )
        found = dict.fromkeys(_STATUS_FIELDS.values(), 0)
        for group in result.groups:
            field = _STATUS_FIELDS.get(str(group.group_values[0]))
            if field is not None:
                found[field] += group.count
        return found

    async def durations() -> list[timedelta]:
        # Visibility lists closed executions newest-closed first: these are the recent ones.
        closed = f'{query} AND (ExecutionStatus="Completed" OR ExecutionStatus="Failed")'
        return [
            execution.close_time - execution.start_time
            async for execution in client.list_workflows(
                closed, limit=sample, page_size=sample, rpc_timeout=rpc_timeout
            )
            if execution.close_time is not None
        ]

    async def backlog() -> tuple[int | None, int | None]:
        if task_queue is None:
            return None, None
        described = await asyncio.gather(
            *(
                _describe_queue(client, task_queue, kind, rpc_timeout)
                for kind in (
                    TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                    TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
                )
            )
        )
        depth = sum(d.stats.approximate_backlog_count for d in described)
        pollers = {poller.identity for d in described for poller in d.pollers}
        alive, gone = await _heartbeating_workers(client, task_queue, rpc_timeout)
        # Pollers the server lists but whose worker sends no heartbeats (an older SDK,
        # or not yet) count as alive unless a heartbeat says they stopped or went silent.
        return depth, len(alive | (pollers - gone))

    found, times, (depth, workers) = await asyncio.gather(counts(), durations(), backlog())
    return job_stats(
        Backend.TEMPORAL,
        task_queue=task_queue,
        job_types=job_types,
        counts=found,
        durations=times,
        queue_depth=depth,
        workers=workers,
    )


async def _heartbeating_workers(
    client: Client, task_queue: str, rpc_timeout: timedelta | None
) -> tuple[set[str], set[str]]:
    """Identities of the task queue's workers that heartbeat, and of those gone silent.

    A worker that was killed stays listed as running; its heartbeats stop, so one
    whose last heartbeat is older than three of its intervals counts as gone, as does
    one that said it shut down. A server without worker heartbeats answers nothing.
    """
    try:
        response = await client.workflow_service.list_workers(
            ListWorkersRequest(
                namespace=client.namespace, query=f'TaskQueue="{_quoted(task_queue)}"'
            ),
            timeout=rpc_timeout,
        )
    except RPCError:
        return set(), set()
    now = datetime.now(UTC)
    alive: set[str] = set()
    gone: set[str] = set()
    for info in response.workers_info:
        beat = info.worker_heartbeat
        # Until the server has seen two heartbeats it knows no interval: assume the
        # engine's workers' own (worker processes heartbeat every 5 s).
        interval = beat.elapsed_since_last_heartbeat.ToTimedelta() or wire.WORKER_HEARTBEAT_INTERVAL
        age = now - beat.heartbeat_time.ToDatetime(tzinfo=UTC)
        fresh = age <= 3 * max(interval, timedelta(seconds=1)) + timedelta(seconds=2)
        if beat.status == WorkerStatus.WORKER_STATUS_RUNNING and fresh:
            alive.add(beat.worker_identity)
        else:
            gone.add(beat.worker_identity)
    return alive, gone - alive


def _quoted(value: str) -> str:
    """``value`` for a double-quoted visibility literal (quotes cannot be escaped there)."""
    if '"' in value or "\\" in value:
        raise InvalidJobError("organization_id", "must not contain quotes or backslashes")
    return value


async def _describe_queue(
    client: Client,
    task_queue: str,
    kind: TaskQueueType.ValueType,
    rpc_timeout: timedelta | None,
) -> DescribeTaskQueueResponse:
    return await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
            task_queue_type=kind,
            report_stats=True,
        ),
        timeout=rpc_timeout,
    )


def job_stats(
    backend: Backend,
    *,
    task_queue: str | None,
    job_types: Sequence[str],
    counts: Mapping[str, int],
    durations: Iterable[timedelta],
    queue_depth: int | None,
    workers: int | None = None,
) -> JobStats:
    """Build :class:`JobStats` from counts and durations; rates and percentiles derived.

    Args:
        backend: where the jobs run.
        task_queue: the task queue the figures cover, if one.
        job_types: the job types the figures cover.
        counts: jobs per JobStats count field (``running``, ``completed``, ...).
        durations: processing times of recent completed or failed jobs.
        queue_depth: backlog (Temporal) or running jobs (in-process).
        workers: distinct pollers of the task queue, if known.

    """
    n = {field: counts.get(field, 0) for field in _STATUS_FIELDS.values()}
    failures = sum(n[field] for field in _FAILURES)
    decided = n["completed"] + failures
    times = sorted(durations)
    return JobStats(
        backend=backend,
        task_queue=task_queue,
        job_types=list(job_types),
        enqueued=sum(n.values()),
        running=n["running"],
        completed=n["completed"],
        failed=n["failed"],
        cancelled=n["cancelled"],
        terminated=n["terminated"],
        timed_out=n["timed_out"],
        success_rate=n["completed"] / decided if decided else None,
        failure_rate=failures / decided if decided else None,
        processing_time_p50=percentile(times, 0.50),
        processing_time_p95=percentile(times, 0.95),
        processing_time_sample=len(times),
        queue_depth=queue_depth,
        workers=workers,
        measured_at=datetime.now(UTC),
    )


def percentile(ordered: Sequence[timedelta], q: float) -> timedelta | None:
    """Nearest-rank percentile ``q`` (0-1] of ascending ``ordered``; None when empty."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
