"""DownloadRecordsWorkflow: one activity per table, bounded parallelism, live progress.

Deterministic and thin: the orchestration lives in :mod:`workflows.orchestration`
(shared with the in-process backend); this module maps its effects onto activities.
Live record counts are not kept here (that would cost a history event per page):
they ride on the table activities' heartbeat details, which the enqueuer reads with
``describe``; the ``progress`` query gives statuses and final counts.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities.download import DownloadActivities
    from activities.notify import NotifyActivities
    from enqueuer import wire
    from enqueuer.models import (
        DownloadRecordsWorkflowInput,
        DownloadTableInput,
        DownloadTableResult,
        EventKind,
        JobEvent,
        JobProgress,
        JobResult,
        JobStatus,
        NotifyInput,
        ReleaseLocksInput,
        ResolveTablesInput,
        ResolveTablesResult,
        TableStatus,
    )
    from workflows.orchestration import JobRun, TableFailedError, failure_message

_SHORT = timedelta(seconds=30)
_SHORT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=_SHORT)
_JOB_END = {
    EventKind.JOB_COMPLETED: JobStatus.COMPLETED,
    EventKind.JOB_FAILED: JobStatus.FAILED,
    EventKind.JOB_CANCELLED: JobStatus.CANCELLED,
}


@workflow.defn(name=wire.WORKFLOW_DOWNLOAD_RECORDS)
class DownloadRecordsWorkflow:
    """Download the records of a workbook's tables into the snapshot store."""

    @workflow.init
    def __init__(self, input: DownloadRecordsWorkflowInput) -> None:
        self._input = input
        self._run = JobRun(input, _WorkflowOps(input))

    @workflow.run
    async def run(self, input: DownloadRecordsWorkflowInput) -> JobResult:
        """Run the job; fail (naming the failed tables) if any table failed."""
        result = await self._run.run()
        if result.status == JobStatus.FAILED:
            raise ApplicationError(
                failure_message(result),
                result.progress,
                type="JobFailedError",
                non_retryable=True,
            )
        return result

    @workflow.query(name=wire.QUERY_PROGRESS)
    def progress(self) -> JobProgress:
        """Statuses and completed counts of every table (live counts: see module doc)."""
        return self._run.progress


class _WorkflowOps:
    """JobOps over Temporal activities."""

    def __init__(self, input: DownloadRecordsWorkflowInput) -> None:
        self._input = input
        r = input.retry
        self._table_retry = RetryPolicy(
            maximum_attempts=r.maximum_attempts,
            initial_interval=r.initial_interval,
            backoff_coefficient=r.backoff_coefficient,
            maximum_interval=r.maximum_interval,
        )
        # The workflow's meter records nothing while replaying: no event counts twice.
        meter = workflow.metric_meter()
        self._tables_completed = meter.create_counter(
            wire.METRIC_TABLES_COMPLETED, "Tables downloaded.", "tables"
        )
        self._tables_failed = meter.create_counter(
            wire.METRIC_TABLES_FAILED, "Tables whose download failed for good.", "tables"
        )
        self._job_duration = meter.create_histogram_float(
            wire.METRIC_JOB_DURATION, "Job run time, from start to close.", "s"
        )
        self._progress: JobProgress | None = None

    async def resolve_tables(self, input: ResolveTablesInput) -> ResolveTablesResult:
        try:
            return await workflow.execute_activity_method(
                DownloadActivities.resolve_tables,
                input,
                start_to_close_timeout=_SHORT,
                retry_policy=_SHORT_RETRY,
                summary=f"Resolve {len(input.table_ids)} tables of workbook {input.workbook_id}",
            )
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise asyncio.CancelledError from exc
            raise

    async def download_table(self, input: DownloadTableInput) -> DownloadTableResult:
        try:
            return await workflow.execute_activity_method(
                DownloadActivities.download_table,
                input,
                activity_id=f"table:{input.table_id}",
                start_to_close_timeout=self._input.table_timeout,
                heartbeat_timeout=self._input.heartbeat_timeout,
                retry_policy=self._table_retry,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"Download table {input.table_id} of workbook {input.workbook_id}",
            )
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise asyncio.CancelledError from exc
            cause = exc.cause
            message = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
            raise TableFailedError(message) from exc

    async def release_locks(self, input: ReleaseLocksInput) -> None:
        await workflow.execute_activity_method(
            DownloadActivities.release_locks,
            input,
            start_to_close_timeout=_SHORT,
            retry_policy=_SHORT_RETRY,
            summary=f"Release locks of {len(input.table_ids)} tables",
        )

    async def notify(self, event: JobEvent) -> None:
        self._record_metrics(event)
        workflow.logger.info(
            "job_event",
            extra={
                "kind": event.kind.value,
                "job_id": event.job_id,
                "workbook_id": event.workbook_id,
                "table_id": event.table_id,
                "records": event.records,
                "error": event.error,
            },
        )
        retry = self._input.webhook_retry
        if retry is None:
            return
        try:
            await workflow.execute_activity_method(
                NotifyActivities.notify,
                NotifyInput(event=event),
                start_to_close_timeout=_SHORT,
                retry_policy=RetryPolicy(
                    maximum_attempts=retry.maximum_attempts,
                    initial_interval=retry.initial_interval,
                    backoff_coefficient=retry.backoff_coefficient,
                    maximum_interval=retry.maximum_interval,
                ),
                summary=f"Notify {event.kind.value}",
            )
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise asyncio.CancelledError from exc
            # A receiver that stays down must not fail the download (the in-process
            # backend gives up the same way): the event is dropped after its retries.
            workflow.logger.warning(
                "webhook_given_up",
                extra={
                    "event_id": event.event_id,
                    "job_id": event.job_id,
                    "workbook_id": event.workbook_id,
                    "attempts": retry.maximum_attempts,
                },
            )

    def now(self) -> datetime:
        return workflow.now()

    def progress_changed(self, progress: JobProgress) -> None:
        self._progress = progress
        workflow.set_current_details(render_details(progress))

    def _record_metrics(self, event: JobEvent) -> None:
        """Count table outcomes by connector and time the job, from its events."""
        progress = self._progress
        if event.kind in (EventKind.TABLE_COMPLETED, EventKind.TABLE_FAILED):
            table = progress.tables.get(event.table_id or "") if progress else None
            # A table gone from the workbook never resolved to a connector.
            connector = table.connector if table and table.connector else "unknown"
            counter = (
                self._tables_completed
                if event.kind == EventKind.TABLE_COMPLETED
                else self._tables_failed
            )
            counter.add(1, {"connector": connector})
        elif event.kind in _JOB_END and progress and progress.started_at:
            # progress_changed saw finished_at before the job's end event was sent.
            finished = progress.finished_at or event.at
            self._job_duration.record(
                max(0.0, (finished - progress.started_at).total_seconds()),
                {"status": _JOB_END[event.kind].value},
            )


def render_details(progress: JobProgress) -> str:
    """Markdown shown on the Web UI's "User Metadata" tab while the job runs."""
    done = sum(1 for t in progress.tables.values() if t.status == TableStatus.COMPLETED)
    lines = [
        f"**{progress.status.value}**: {done}/{len(progress.tables)} tables, "
        f"{progress.total_records:,} records",
        "",
        "| table | connector | status | records |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {t.name} (`{t.table_id}`) | {t.connector} | {t.status.value} | {t.records:,} |"
        for t in progress.tables.values()
    ]
    return "\n".join(lines)
