"""Retention: delete closed jobs beyond the newest N completed and M failed.

Like BullMQ's ``removeOnComplete`` / ``removeOnFail``, enforced by a sweep that a
Temporal Schedule runs (:mod:`worker.schedules`); the namespace's time-based
retention still applies on top. ``RetentionActivities`` holds a :class:`JobIndex`
port; :class:`TemporalJobIndex` is the production one (visibility listing plus
``DeleteWorkflowExecution``).

Buckets: *completed* is the Completed status; *failed* is every other way a job
closes without success (Failed, TimedOut, Terminated, Canceled), since for a user
each of those is a job that did not deliver its records. Running executions are
never deleted: on Temporal, deleting a running execution terminates it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

import structlog
from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from spinner_jobs.core import wire
from spinner_jobs.core.models import RetentionSweepInput, RetentionSweepResult

log = structlog.get_logger(__name__)


class Bucket(StrEnum):
    """Retention bucket of a closed job."""

    COMPLETED = "completed"
    FAILED = "failed"


BUCKETS: dict[WorkflowExecutionStatus, Bucket] = {
    WorkflowExecutionStatus.COMPLETED: Bucket.COMPLETED,
    WorkflowExecutionStatus.FAILED: Bucket.FAILED,
    WorkflowExecutionStatus.TIMED_OUT: Bucket.FAILED,
    WorkflowExecutionStatus.TERMINATED: Bucket.FAILED,
    WorkflowExecutionStatus.CANCELED: Bucket.FAILED,
}
"""Statuses a sweep may delete, and their bucket; any other status is left alone."""


@dataclass(frozen=True)
class JobExecution:
    """One run of a job as a :class:`JobIndex` lists it."""

    workflow_id: str
    run_id: str
    status: WorkflowExecutionStatus
    close_time: datetime | None = None  # None while running


class JobIndex(Protocol):
    """Where the jobs of a workflow type are listed and deleted."""

    def list_closed(
        self, workflow_type: str, query_filter: str | None
    ) -> AsyncIterator[JobExecution]:
        """Closed runs of ``workflow_type``, in any order, narrowed by ``query_filter``.

        ``query_filter`` is a Temporal visibility clause (e.g. ``TaskQueue="q"``).
        """
        ...

    async def delete(self, execution: JobExecution) -> bool:
        """Delete that one run; False when it was already gone."""
        ...


class TemporalJobIndex:
    """JobIndex over Temporal visibility and ``DeleteWorkflowExecution``."""

    def __init__(
        self,
        client: Client,
        *,
        page_size: int = 500,
        rpc_timeout: timedelta = timedelta(seconds=10),
    ) -> None:
        self._client = client
        self._page_size = page_size
        self._rpc_timeout = rpc_timeout

    async def list_closed(
        self, workflow_type: str, query_filter: str | None
    ) -> AsyncIterator[JobExecution]:
        """Closed runs from visibility.

        Visibility is eventually consistent: a run closed a moment ago may show up
        only at the next sweep, which is harmless.
        """
        # SQL visibility has no ORDER BY: the activity sorts by close time itself.
        query = f'WorkflowType="{workflow_type}" AND ExecutionStatus!="Running"'
        if query_filter:
            query += f" AND ({query_filter})"
        async for execution in self._client.list_workflows(
            query, page_size=self._page_size, rpc_timeout=self._rpc_timeout
        ):
            if execution.status is None:
                continue
            yield JobExecution(
                workflow_id=execution.id,
                run_id=execution.run_id,
                status=execution.status,
                close_time=execution.close_time,
            )

    async def delete(self, execution: JobExecution) -> bool:
        """Delete the run (its run id pinned, so a newer run of the same id is safe)."""
        request = DeleteWorkflowExecutionRequest(
            namespace=self._client.namespace,
            workflow_execution=WorkflowExecution(
                workflow_id=execution.workflow_id, run_id=execution.run_id
            ),
        )
        try:
            await self._client.workflow_service.delete_workflow_execution(
                request, retry=True, timeout=self._rpc_timeout
            )
        except RPCError as exc:
            # Deleted by an earlier attempt of this sweep, or by the namespace retention.
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return True


class RetentionActivities:
    """The retention sweep, over a job index."""

    def __init__(self, index: JobIndex) -> None:
        self._index = index

    @activity.defn(name=wire.ACTIVITY_SWEEP_CLOSED_JOBS)
    async def sweep_closed_jobs(self, input: RetentionSweepInput) -> RetentionSweepResult:
        """Delete closed jobs beyond the newest ``keep_*`` of each bucket.

        Idempotent: a retry lists again, and a run already gone counts as deleted.
        Deletes oldest first, at most ``input.max_deletions`` runs.
        """
        closed: dict[Bucket, list[tuple[datetime, JobExecution]]] = {b: [] for b in Bucket}
        async for execution in self._index.list_closed(input.workflow_type, input.query_filter):
            activity.heartbeat()
            bucket = BUCKETS.get(execution.status)
            # The index lists closed runs only; checking again is cheap, and a running
            # run must never reach delete (Temporal would terminate it).
            if bucket is None or execution.close_time is None:
                continue
            closed[bucket].append((execution.close_time, execution))

        keep = {Bucket.COMPLETED: input.keep_completed, Bucket.FAILED: input.keep_failed}
        over: list[tuple[datetime, Bucket, JobExecution]] = []
        for bucket, runs in closed.items():
            # Newest first; ties broken by id so every sweep picks the same runs.
            runs.sort(key=lambda r: (r[0], r[1].workflow_id, r[1].run_id), reverse=True)
            over += [(closed_at, bucket, run) for closed_at, run in runs[keep[bucket] :]]
        over.sort(key=lambda o: (o[0], o[2].workflow_id, o[2].run_id))  # oldest first

        deleted: dict[Bucket, list[str]] = {b: [] for b in Bucket}
        for closed_at, bucket, run in over[: input.max_deletions]:
            found = await self._index.delete(run)
            activity.heartbeat()
            deleted[bucket].append(run.workflow_id)
            log.info(
                "job_deleted",
                job_id=run.workflow_id,
                run_id=run.run_id,
                bucket=bucket.value,
                status=run.status.name,
                closed_at=closed_at.isoformat(),
                already_gone=not found,
            )

        result = RetentionSweepResult(
            deleted_completed=deleted[Bucket.COMPLETED],
            deleted_failed=deleted[Bucket.FAILED],
            kept_completed=min(len(closed[Bucket.COMPLETED]), input.keep_completed),
            kept_failed=min(len(closed[Bucket.FAILED]), input.keep_failed),
            deferred=max(0, len(over) - input.max_deletions),
        )
        log.info(
            "retention_swept",
            workflow_type=input.workflow_type,
            query_filter=input.query_filter,
            deleted_completed=len(result.deleted_completed),
            deleted_failed=len(result.deleted_failed),
            kept_completed=result.kept_completed,
            kept_failed=result.kept_failed,
            deferred=result.deferred,
        )
        return result
