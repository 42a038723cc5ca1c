"""The download-records job's orchestration, shared by both backends.

:class:`JobRun` decides which tables run when, tracks their status and builds the
job's result. It does no I/O itself: every effect goes through :class:`JobOps`, which
the Temporal workflow implements with activities and the in-process backend with
direct calls. The code is deterministic (plain asyncio, no clocks, no randomness), so
it runs unchanged inside the workflow sandbox.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Protocol

from enqueuer.models import (
    DownloadRecordsWorkflowInput,
    DownloadTableInput,
    DownloadTableResult,
    EventKind,
    JobEvent,
    JobProgress,
    JobResult,
    JobStatus,
    ReleaseLocksInput,
    ResolveTablesInput,
    ResolveTablesResult,
    TableProgress,
    TableRef,
    TableStatus,
)


class TableFailedError(Exception):
    """A table download failed for good (retries exhausted or non-retryable)."""


class JobOps(Protocol):
    """The effects a job run needs; each backend provides them."""

    async def resolve_tables(self, input: ResolveTablesInput) -> ResolveTablesResult:
        """Resolve the job's tables."""
        ...

    async def download_table(self, input: DownloadTableInput) -> DownloadTableResult:
        """Download a table with the job's retry policy; raise TableFailedError at the end."""
        ...

    async def release_locks(self, input: ReleaseLocksInput) -> None:
        """Release table locks."""
        ...

    async def notify(self, event: JobEvent) -> None:
        """Deliver a notification event."""
        ...

    def now(self) -> datetime:
        """The current time (workflow time inside Temporal)."""
        ...

    def progress_changed(self, progress: JobProgress) -> None:
        """Called whenever a table changes status."""
        ...


class JobRun:
    """One run of a download-records job."""

    def __init__(self, input: DownloadRecordsWorkflowInput, ops: JobOps) -> None:
        self._input = input
        self._ops = ops
        self.progress = JobProgress(
            job_id=input.job_id,
            workbook_id=input.job.workbook_id,
            tables={
                tid: TableProgress(table_id=tid, name=tid, connector="") for tid in input.table_ids
            },
            started_at=ops.now(),
        )

    async def run(self) -> JobResult:
        """Download every table (bounded parallelism) and return the job's result.

        Raises:
            asyncio.CancelledError: the job was cancelled; locks are released first.

        """
        job = self._input
        tasks: list[asyncio.Task[None]] = []
        try:
            resolved = await self._ops.resolve_tables(
                ResolveTablesInput(
                    job_id=job.job_id, workbook_id=job.job.workbook_id, table_ids=job.table_ids
                )
            )
            for ref in resolved.tables:
                self._set(ref.table_id, name=ref.name, connector=ref.connector)
            for table_id in resolved.missing:
                await self._table_failed(table_id, "table is no longer in the workbook")
            if resolved.missing:
                await self._ops.release_locks(
                    ReleaseLocksInput(job_id=job.job_id, table_ids=resolved.missing)
                )
            gate = asyncio.Semaphore(job.table_parallelism)
            tasks = [asyncio.create_task(self._download(ref, gate)) for ref in resolved.tables]
            await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._cancelled()
            raise
        return await self._finish()

    async def _download(self, ref: TableRef, gate: asyncio.Semaphore) -> None:
        async with gate:
            self._set(ref.table_id, status=TableStatus.ACTIVE)
            try:
                result = await self._ops.download_table(
                    DownloadTableInput(
                        job_id=self._input.job_id,
                        workbook_id=self._input.job.workbook_id,
                        table_id=ref.table_id,
                    )
                )
            except TableFailedError as exc:
                await self._ops.release_locks(
                    ReleaseLocksInput(job_id=self._input.job_id, table_ids=[ref.table_id])
                )
                await self._table_failed(ref.table_id, str(exc))
                return
            self._set(
                ref.table_id,
                status=TableStatus.COMPLETED,
                records=result.records,
                deleted=result.deleted,
                kept_dirty=result.kept_dirty,
            )
            await self._notify(EventKind.TABLE_COMPLETED, ref.table_id, records=result.records)

    async def _table_failed(self, table_id: str, error: str) -> None:
        self._set(table_id, status=TableStatus.FAILED, error=error)
        await self._notify(EventKind.TABLE_FAILED, table_id, error=error)

    async def _cancelled(self) -> None:
        for table in self.progress.tables.values():
            if table.status in (TableStatus.PENDING, TableStatus.ACTIVE):
                self._set(table.table_id, status=TableStatus.CANCELLED)
        self.progress = self.progress.model_copy(
            update={"status": JobStatus.CANCELLED, "finished_at": self._ops.now()}
        )
        self._ops.progress_changed(self.progress)
        await self._ops.release_locks(
            ReleaseLocksInput(job_id=self._input.job_id, table_ids=self._input.table_ids)
        )
        await self._notify(EventKind.JOB_CANCELLED)

    async def _finish(self) -> JobResult:
        failed = self.progress.failed_tables
        status = JobStatus.FAILED if failed else JobStatus.COMPLETED
        self.progress = self.progress.model_copy(
            update={"status": status, "finished_at": self._ops.now()}
        )
        self._ops.progress_changed(self.progress)
        result = JobResult(
            job_id=self._input.job_id,
            status=status,
            progress=self.progress,
            failed_tables=failed,
            duration=self.progress.duration,
        )
        await self._notify(
            EventKind.JOB_FAILED if failed else EventKind.JOB_COMPLETED,
            records=self.progress.total_records,
            error=failure_message(result) if failed else None,
        )
        return result

    def _set(self, table_id: str, **changes: object) -> None:
        table = self.progress.tables[table_id].model_copy(update=changes)
        self.progress = self.progress.with_table(table)
        self._ops.progress_changed(self.progress)

    async def _notify(
        self,
        kind: EventKind,
        table_id: str | None = None,
        *,
        records: int | None = None,
        error: str | None = None,
    ) -> None:
        job_id = self._input.job_id
        await self._ops.notify(
            JobEvent(
                # Stable per job, kind and table: a receiver drops a redelivered duplicate.
                event_id=JobEvent.stable_id(job_id, kind, table_id),
                kind=kind,
                job_id=job_id,
                workbook_id=self._input.job.workbook_id,
                table_id=table_id,
                records=records,
                error=error,
                at=self._ops.now(),
            )
        )


def failure_message(result: JobResult) -> str:
    """One line naming the failed tables of a failed job."""
    tables = result.progress.tables
    return f"job {result.job_id} failed; tables failed: " + "; ".join(
        f"{tid} ({tables[tid].error})" for tid in result.failed_tables
    )
