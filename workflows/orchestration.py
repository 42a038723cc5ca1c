"""A table job's orchestration, shared by every job type and both backends.

:class:`JobRun` decides which tables run when, tracks their status and builds the
job's result. It does no I/O itself: every effect goes through :class:`JobOps`, which
the Temporal workflow implements with activities and the in-process backend with
direct calls. The code is deterministic (plain asyncio, no clocks, no randomness), so
it runs unchanged inside the workflow sandbox.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Protocol

from spinner_jobs.core.models import (
    EventKind,
    JobEvent,
    JobProgress,
    JobResult,
    JobStatus,
    JobWorkflowInput,
    ReleaseLocksInput,
    ReleaseLocksResult,
    ResolveTablesInput,
    ResolveTablesResult,
    TableProgress,
    TableRef,
    TableStatus,
    TableTaskInput,
    TableTaskResult,
)


class TableFailedError(Exception):
    """A table attempt failed in a way no retry can fix (bad config, 4xx, lock lost)."""

    def __init__(self, message: str, records: int | None = None) -> None:
        self.records = records
        super().__init__(message)


class TableAttemptFailedError(Exception):
    """A table attempt failed and another attempt may succeed.

    ``infrastructure`` attempts (the worker died or stopped, the store was out) and
    attempts that committed new pages (``progressed``) do not use up the table's
    retries; ``records`` is what the job has committed to the table, when known.
    """

    def __init__(
        self, message: str, *, infrastructure: bool, progressed: bool, records: int | None
    ) -> None:
        self.infrastructure = infrastructure
        self.progressed = progressed
        self.records = records
        super().__init__(message)


class JobOps(Protocol):
    """The effects a job run needs; each backend provides them."""

    async def resolve_tables(self, input: ResolveTablesInput) -> ResolveTablesResult:
        """Resolve the job's tables."""
        ...

    async def run_table(self, input: TableTaskInput) -> TableTaskResult:
        """Make one attempt at a table (the job type's table activity).

        Raises:
            TableFailedError: no retry can help.
            TableAttemptFailedError: another attempt may succeed.

        """
        ...

    async def release_locks(self, input: ReleaseLocksInput) -> ReleaseLocksResult:
        """Release table locks; say how many records the job wrote to each table."""
        ...

    async def run_table_briefly(self, input: TableTaskInput) -> TableTaskResult:
        """A first attempt of at most ``input.budget``, run without a round trip.

        Inside Temporal a local activity (in the workflow task); its result says
        whether the table finished. Raises as :meth:`run_table`.
        """
        ...

    def brief_attempts(self) -> bool:
        """Whether first attempts may be brief (Temporal: not when replaying older jobs)."""
        ...

    async def sleep(self, delay: timedelta) -> None:
        """Wait (a durable timer inside Temporal)."""
        ...

    def notify(self, event: JobEvent) -> None:
        """Hand an event to the notification sinks without waiting for delivery."""
        ...

    async def flush_notifications(self) -> None:
        """Wait until every event is handed over (not delivered) before the job closes."""
        ...

    def now(self) -> datetime:
        """The current time (workflow time inside Temporal)."""
        ...

    def progress_changed(self, progress: JobProgress) -> None:
        """Called whenever a table changes status."""
        ...


class JobRun:
    """One run of a table job (any job type)."""

    def __init__(self, input: JobWorkflowInput, ops: JobOps) -> None:
        self._input = input
        self._ops = ops
        self._brief: timedelta | None = None
        self.organization_id = input.job.actor.organization_id
        self.progress = JobProgress(
            job_id=input.job_id,
            job_type=input.job_type,
            workbook_id=input.job.workbook_id,
            tables={
                tid: TableProgress(table_id=tid, name=tid, connector="") for tid in input.table_ids
            },
        )

    async def run(self) -> JobResult:
        """Run every table (bounded parallelism) and return the job's result.

        Raises:
            asyncio.CancelledError: the job was cancelled; locks are released first.

        """
        job = self._input
        tasks: list[asyncio.Task[None]] = []
        # Started now, not when built: a delayed job is built at enqueue in-process.
        self.progress = self.progress.model_copy(update={"started_at": self._ops.now()})
        self._brief = (
            job.brief_attempt
            if job.brief_attempt is not None and self._ops.brief_attempts()
            else None
        )
        try:
            if job.tables is not None:
                # Looked up at enqueue: no round trip. A table removed since then fails
                # in its first attempt (TableGoneError), as one removed mid-job does.
                resolved = ResolveTablesResult(tables=job.tables)
            else:
                resolved = await self._ops.resolve_tables(
                    ResolveTablesInput(
                        job_id=job.job_id, workbook_id=job.job.workbook_id, table_ids=job.table_ids
                    )
                )
            for ref in resolved.tables:
                self._set(ref.table_id, name=ref.name, connector=ref.connector)
            for table_id in resolved.missing:
                self._table_failed(table_id, "table is no longer in the workbook")
            if resolved.missing:
                await self._ops.release_locks(
                    ReleaseLocksInput(job_id=job.job_id, table_ids=resolved.missing)
                )
            gate = asyncio.Semaphore(job.table_parallelism)
            tasks = [asyncio.create_task(self._table(ref, gate)) for ref in resolved.tables]
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._cancelled()
            raise
        return await self._finish()

    async def _table(self, ref: TableRef, gate: asyncio.Semaphore) -> None:
        """Attempt the table until it completes or fails for good.

        Failures of the source or the data use up ``retry.maximum_attempts``, with
        exponential backoff between them, unless the attempt committed new pages;
        attempts lost to the infrastructure are resumed at once, up to
        ``retry.maximum_interruptions`` in a row.
        """
        retry = self._input.retry
        failures = interruptions = attempt = 0
        async with gate:
            while True:
                attempt += 1
                self._set(ref.table_id, status=TableStatus.ACTIVE, attempt=attempt)
                brief = self._brief if attempt == 1 else None
                task = TableTaskInput(
                    job_id=self._input.job_id,
                    workbook_id=self._input.job.workbook_id,
                    table_id=ref.table_id,
                    attempt=attempt,
                    options=self._input.options,
                    budget=brief,
                )
                try:
                    if brief is not None:
                        result = await self._ops.run_table_briefly(task)
                    else:
                        result = await self._ops.run_table(task)
                except TableFailedError as exc:
                    await self._give_up(ref.table_id, str(exc))
                    return
                except TableAttemptFailedError as exc:
                    if exc.records is not None:
                        self._set(ref.table_id, records=exc.records)
                    if exc.progressed:
                        failures = interruptions = 0
                    if exc.infrastructure:
                        interruptions += 1
                        if interruptions > retry.maximum_interruptions:
                            await self._give_up(
                                ref.table_id,
                                f"{exc} ({interruptions} attempts in a row were interrupted)",
                            )
                            return
                        continue
                    if not exc.progressed:
                        failures += 1
                        if failures >= retry.maximum_attempts:
                            await self._give_up(ref.table_id, str(exc))
                            return
                    await self._ops.sleep(retry.backoff(max(failures, 1)))
                    continue
                if not result.finished:  # a brief attempt's budget ran out: go on
                    self._set(ref.table_id, records=result.records)
                    continue
                break
        self._set(
            ref.table_id,
            status=TableStatus.COMPLETED,
            records=result.records,
            deleted=result.deleted,
            kept_dirty=result.kept_dirty,
            total=result.total,
            details=result.details,
        )
        self._notify(EventKind.TABLE_COMPLETED, ref.table_id, records=result.records)

    async def _give_up(self, table_id: str, error: str) -> None:
        released = await self._ops.release_locks(
            ReleaseLocksInput(job_id=self._input.job_id, table_ids=[table_id])
        )
        if self._input.store_counts and table_id in released.records:
            self._set(table_id, records=released.records[table_id])
        self._table_failed(table_id, error)

    def _table_failed(self, table_id: str, error: str) -> None:
        self._set(table_id, status=TableStatus.FAILED, error=error)
        self._notify(
            EventKind.TABLE_FAILED,
            table_id,
            records=self.progress.tables[table_id].records,
            error=error,
        )

    def live(self, table_id: str, attempt: int, records: int) -> None:
        """A live count from an active table's attempt (ignored once it moved on)."""
        table = self.progress.tables.get(table_id)
        if table and table.status == TableStatus.ACTIVE and table.attempt == attempt:
            self._set(table_id, records=records)

    async def cancel_unstarted(self) -> None:
        """Close a job cancelled before it ran (a delayed job): release, mark, notify."""
        await self._cancelled()

    async def _cancelled(self) -> None:
        released = await self._ops.release_locks(
            ReleaseLocksInput(job_id=self._input.job_id, table_ids=self._input.table_ids)
        )
        for table in self.progress.tables.values():
            if table.status in (TableStatus.PENDING, TableStatus.ACTIVE):
                self._set(
                    table.table_id,
                    status=TableStatus.CANCELLED,
                    records=released.records.get(table.table_id, table.records)
                    if self._input.store_counts
                    else table.records,
                )
        self.progress = self.progress.model_copy(
            update={"status": JobStatus.CANCELLED, "finished_at": self._ops.now()}
        )
        self._ops.progress_changed(self.progress)
        self._notify(EventKind.JOB_CANCELLED, records=self.progress.total_records)
        await self._ops.flush_notifications()

    async def _finish(self) -> JobResult:
        failed = self.progress.failed_tables
        status = JobStatus.FAILED if failed else JobStatus.COMPLETED
        self.progress = self.progress.model_copy(
            update={"status": status, "finished_at": self._ops.now()}
        )
        if failed:
            self.progress = self.progress.model_copy(
                update={"error": failure_message(self._input.job_id, self.progress)}
            )
        self._ops.progress_changed(self.progress)
        result = JobResult(
            job_id=self._input.job_id,
            status=status,
            progress=self.progress,
            failed_tables=failed,
            duration=self.progress.duration,
        )
        self._notify(
            EventKind.JOB_FAILED if failed else EventKind.JOB_COMPLETED,
            records=self.progress.total_records,
            error=self.progress.error,
        )
        await self._ops.flush_notifications()
        return result

    def _set(self, table_id: str, **changes: object) -> None:
        table = self.progress.tables[table_id].model_copy(update=changes)
        self.progress = self.progress.with_table(table)
        self._ops.progress_changed(self.progress)

    def _notify(
        self,
        kind: EventKind,
        table_id: str | None = None,
        *,
        records: int | None = None,
        error: str | None = None,
    ) -> None:
        job_id = self._input.job_id
        self._ops.notify(
            JobEvent(
                # Stable per job, kind and table: a receiver drops a redelivered duplicate.
                event_id=JobEvent.stable_id(job_id, kind, table_id),
                kind=kind,
                job_id=job_id,
                job_type=self._input.job_type,
                workbook_id=self._input.job.workbook_id,
                table_id=table_id,
                records=records,
                error=error,
                at=self._ops.now(),
            )
        )


def failure_message(job_id: str, progress: JobProgress) -> str:
    """One line naming the failed tables of a failed job."""
    return f"job {job_id} failed; tables failed: " + "; ".join(
        f"{t.table_id} ({t.error})" for t in progress.tables.values() if t.status == "failed"
    )
