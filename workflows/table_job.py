"""The workflow every table job type shares: one activity per table, live progress.

Deterministic and thin: the orchestration lives in :mod:`workflows.orchestration`
(shared with the in-process backend); this module maps its effects onto activities.
A job type's workflow subclasses :class:`TableJobWorkflow` and only names itself, its
table activity and its run method (the SDK wants ``@workflow.run`` on the class).

Live counts cost no history event per step: they ride on the table activities'
heartbeat details, which the enqueuer reads with ``describe``; the ``progress`` query
gives statuses and counts. For the Web UI's current details the table activities also
signal their count, at most once per progress interval (less often on long tables).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import ClassVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    TimeoutError,
    TimeoutType,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from activities.tables import INFRASTRUCTURE_ERRORS, TableActivities
    from spinner_jobs.core import wire
    from spinner_jobs.core.models import (
        EventKind,
        JobEvent,
        JobProgress,
        JobResult,
        JobStatus,
        JobWorkflowInput,
        NotifyWorkflowInput,
        ReleaseLocksInput,
        ReleaseLocksResult,
        ResolveTablesInput,
        ResolveTablesResult,
        TableAttemptFailure,
        TableCheckpoint,
        TableLive,
        TableStatus,
        TableTaskInput,
        TableTaskResult,
    )
    from workflows.notify import NotifyWorkflow
    from workflows.orchestration import JobRun, TableAttemptFailedError, TableFailedError

_SHORT = timedelta(seconds=30)
_SHORT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=_SHORT)
# One attempt per activity: the job's own loop (JobRun) decides about retries, so that
# a lost worker never uses up an attempt meant for the source's errors.
_ONE_ATTEMPT = RetryPolicy(maximum_attempts=1)
_BRIEF_PATCH = "brief-first-attempt"
# Time a brief attempt may take beyond its budget: the page being read when it ran out.
_BRIEF_SLACK = timedelta(seconds=30)
_JOB_END = {
    EventKind.JOB_COMPLETED: JobStatus.COMPLETED,
    EventKind.JOB_FAILED: JobStatus.FAILED,
    EventKind.JOB_CANCELLED: JobStatus.CANCELLED,
}


class TableJobWorkflow:
    """Base of the table job types' workflows: runs a :class:`JobRun` on activities.

    A subclass sets :attr:`table_activity` and :attr:`verb`, and defines
    ``@workflow.init __init__`` calling :meth:`_setup` and ``@workflow.run run``
    returning ``await self._run_job()``.
    """

    table_activity: ClassVar[str]
    """Name of the job type's activity that runs one attempt at one table."""
    verb: ClassVar[str]
    """How the table activities' summaries start, e.g. "Download"."""

    def _setup(self, input: JobWorkflowInput) -> None:
        self._input = input
        self._run = JobRun(input, _WorkflowOps(input, self.table_activity, self.verb))

    async def _run_job(self) -> JobResult:
        """Run the job; fail (naming the failed tables) if any table failed."""
        result = await self._run.run()
        if result.status == JobStatus.FAILED:
            raise ApplicationError(
                result.progress.error or "job failed",
                result.progress,
                type="JobFailedError",
                non_retryable=True,
            )
        return result

    @workflow.query(name=wire.QUERY_PROGRESS)
    def progress(self) -> JobProgress:
        """Statuses and counts of every table (see the module doc for live counts)."""
        return self._run.progress

    @workflow.signal(name=wire.SIGNAL_TABLE_LIVE)
    def table_live(self, live: TableLive) -> None:
        """A table attempt's live count: keeps the Web UI's current details live."""
        self._run.live(live.table_id, live.attempt, live.records)


class _WorkflowOps:
    """JobOps over Temporal activities."""

    def __init__(self, input: JobWorkflowInput, table_activity: str, verb: str) -> None:
        self._input = input
        self._table_activity = table_activity
        self._verb = verb
        # The workflow's meter records nothing while replaying: no event counts twice.
        meter = workflow.metric_meter()
        self._tables_completed = meter.create_counter(
            wire.METRIC_TABLES_COMPLETED, "Tables a job finished.", "tables"
        )
        self._tables_failed = meter.create_counter(
            wire.METRIC_TABLES_FAILED, "Tables a job gave up on.", "tables"
        )
        self._job_duration = meter.create_histogram_float(
            wire.METRIC_JOB_DURATION, "Job run time, from start to close.", "s"
        )
        self._progress: JobProgress | None = None
        self._notifier: asyncio.Task[workflow.ChildWorkflowHandle[NotifyWorkflow, int]] | None
        self._notifier = None
        self._handing_over: list[asyncio.Task[None]] = []

    async def resolve_tables(self, input: ResolveTablesInput) -> ResolveTablesResult:
        # Only for jobs enqueued without their tables (older ones): a local activity, a
        # quick catalog read inside the first workflow task.
        try:
            return await workflow.execute_local_activity_method(
                TableActivities.resolve_tables,
                input,
                start_to_close_timeout=_SHORT,
                retry_policy=_SHORT_RETRY,
                summary=f"Resolve {len(input.table_ids)} tables of workbook {input.workbook_id}",
            )
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise asyncio.CancelledError from exc
            raise

    async def run_table(self, input: TableTaskInput) -> TableTaskResult:
        try:
            result: TableTaskResult = await workflow.execute_activity(
                self._table_activity,
                input,
                result_type=TableTaskResult,
                activity_id=wire.table_activity_id(input.table_id, input.attempt),
                start_to_close_timeout=self._input.table_timeout,
                heartbeat_timeout=self._input.heartbeat_timeout,
                retry_policy=_ONE_ATTEMPT,
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                summary=f"{self._verb} table {input.table_id} of workbook {input.workbook_id} "
                f"(attempt {input.attempt})",
            )
            return result
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise asyncio.CancelledError from exc
            raise _attempt_failure(exc) from exc

    async def run_table_briefly(self, input: TableTaskInput) -> TableTaskResult:
        # The same table activity as a local activity: it runs inside this workflow
        # task, so a small table costs no activity round trip and no more workflow tasks.
        assert input.budget is not None
        try:
            result: TableTaskResult = await workflow.execute_local_activity(
                self._table_activity,
                input,
                result_type=TableTaskResult,
                start_to_close_timeout=input.budget + _BRIEF_SLACK,
                retry_policy=_ONE_ATTEMPT,
                summary=f"{self._verb} table {input.table_id} of workbook {input.workbook_id} "
                f"(brief first attempt)",
            )
            return result
        except (ActivityError, ApplicationError, TimeoutError) as exc:
            if is_cancelled_exception(exc):
                raise asyncio.CancelledError from exc
            failure = _attempt_failure(exc)
            timed_out = exc.cause if isinstance(exc, ActivityError) else exc
            if isinstance(failure, TableAttemptFailedError) and isinstance(timed_out, TimeoutError):
                # A page slower than the slack: the worker is fine, go on regularly.
                failure.infrastructure = True
            raise failure from exc

    def brief_attempts(self) -> bool:
        # Jobs started before brief attempts existed replay without them.
        return workflow.patched(_BRIEF_PATCH)

    async def release_locks(self, input: ReleaseLocksInput) -> ReleaseLocksResult:
        return await workflow.execute_local_activity_method(
            TableActivities.release_locks,
            input,
            start_to_close_timeout=_SHORT,
            retry_policy=_SHORT_RETRY,
            summary=f"Release locks of {len(input.table_ids)} tables",
        )

    async def sleep(self, delay: timedelta) -> None:
        await workflow.sleep(delay, summary="Back off before the next attempt")

    def notify(self, event: JobEvent) -> None:
        self._record_metrics(event)
        workflow.logger.info(
            "job_event",
            extra={
                "kind": event.kind.value,
                "job_id": event.job_id,
                "job_type": event.job_type,
                "workbook_id": event.workbook_id,
                "table_id": event.table_id,
                "records": event.records,
                "error": event.error,
            },
        )
        if self._input.webhook_retry is not None:
            self._handing_over.append(asyncio.create_task(self._hand_over(event)))

    async def _hand_over(self, event: JobEvent) -> None:
        """Signal the event to the job's notifier (started with the first event)."""
        retry = self._input.webhook_retry
        assert retry is not None
        if self._notifier is None:
            self._notifier = asyncio.create_task(
                workflow.start_child_workflow(
                    NotifyWorkflow.run,
                    NotifyWorkflowInput(job_id=self._input.job_id, retry=retry),
                    id=f"{self._input.job_id}-notify",
                    parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                    static_summary=f"Webhook events of job {self._input.job_id}",
                )
            )
        notifier = await self._notifier
        await notifier.signal(NotifyWorkflow.event, event)

    async def flush_notifications(self) -> None:
        # Handing over is fast (a signal); delivery happens in the notifier.
        await asyncio.gather(*self._handing_over)

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
            counter.add(1, {"connector": connector, "job_type": event.job_type})
        elif event.kind in _JOB_END and progress and progress.started_at:
            # progress_changed saw finished_at before the job's end event was sent.
            finished = progress.finished_at or event.at
            self._job_duration.record(
                max(0.0, (finished - progress.started_at).total_seconds()),
                {"status": _JOB_END[event.kind].value, "job_type": event.job_type},
            )


def _attempt_failure(exc: BaseException) -> Exception:
    """Classify a failed table attempt: for good, the source's fault, or the infrastructure's.

    ``exc`` is the ``ActivityError`` of a regular attempt, or what a local activity
    raised (its ``ApplicationError`` or ``TimeoutError`` itself).
    """
    cause = exc.cause if isinstance(exc, ActivityError) else exc
    if isinstance(cause, ApplicationError):
        details = TableAttemptFailure.model_validate(cause.details[0]) if cause.details else None
        if details is not None and not details.retryable:
            return TableFailedError(cause.message, details.records)
        return TableAttemptFailedError(
            cause.message,
            infrastructure=cause.type in INFRASTRUCTURE_ERRORS,
            progressed=details.progressed if details else False,
            records=details.records if details else None,
        )
    if isinstance(cause, TimeoutError):
        records = None
        if cause.last_heartbeat_details:
            records = TableCheckpoint.model_validate(cause.last_heartbeat_details[0]).records
        if cause.type == TimeoutType.HEARTBEAT:
            # The worker died or lost contact: resume elsewhere, no retry used up.
            return TableAttemptFailedError(
                "the worker stopped heartbeating (crashed or cut off)",
                infrastructure=True,
                progressed=False,
                records=records,
            )
        return TableAttemptFailedError(
            f"attempt timed out ({cause.type.name if cause.type else 'timeout'})",
            infrastructure=False,
            progressed=False,
            records=records,
        )
    return TableAttemptFailedError(
        str(cause or exc), infrastructure=False, progressed=False, records=None
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
