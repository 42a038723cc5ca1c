"""The export-records job's table work: write a snapshot of a table to a file.

The writer itself is :func:`activities.export_core.export_table` (streamed page by
page, atomic, with size and SHA-256); this module runs it for one table of a job:
under the job's lock on the table, into the job's own folder under the data dir.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

import structlog
from temporalio import activity

from activities.export_core import export_table, safe_file_name
from activities.tables import ReportProgress, TableAttemptError, TableWork, WorkParts
from spinner_jobs.core.errors import SpinnerError, TableGoneError
from spinner_jobs.core.exports import ExportFormat
from spinner_jobs.core.models import TableCheckpoint, TableJobInput, TableTaskInput, TableTaskResult

log = structlog.get_logger(__name__)

ACTIVITY_EXPORT_TABLE = "export-table"


class ExportRecordsInput(TableJobInput):
    """Input of an export-records job: which tables, in which file format."""

    format: ExportFormat = ExportFormat.CSV


class ExportActivities(TableWork):
    """Table work of the export-records job."""

    def __init__(self, parts: WorkParts) -> None:
        super().__init__(parts)

    def table_activity(self) -> Callable[..., Awaitable[TableTaskResult]]:
        """The ``export-table`` activity."""
        return self.export_table

    @activity.defn(name=ACTIVITY_EXPORT_TABLE)
    async def export_table(self, input: TableTaskInput) -> TableTaskResult:
        """Export one table (one attempt) to its file."""
        return await self.as_activity(input)

    async def run_table(self, input: TableTaskInput, *, report: ReportProgress) -> TableTaskResult:
        """Write the table to ``<data dir>/exports/<job>/<table>.<format>``, then unlock it.

        The job holds the table's lock (no download changes it meanwhile); the lease
        taken first fences out an earlier attempt of the job still running somewhere.
        A retried attempt writes the whole file again: the file appears only complete.
        """
        options = ExportRecordsInput.model_validate(
            {"workbook_id": input.workbook_id, **input.options}
        )
        tlog = log.bind(
            job_id=input.job_id,
            workbook_id=input.workbook_id,
            table_id=input.table_id,
            attempt=input.attempt,
        )
        rows = 0

        def rows_written(count: int) -> None:
            nonlocal rows
            rows = count
            report(TableCheckpoint(records=count))

        run = functools.partial(self._store_call, job_id=input.job_id)

        try:
            workbook = await run(self._store.get_workbook, input.workbook_id)
            if workbook is None or all(t.id != input.table_id for t in workbook.tables):
                raise TableGoneError(
                    f"table {input.table_id!r} is no longer in workbook {input.workbook_id!r}"
                )
            await run(self._store.lease, input.table_id, input.job_id)
            # A caller's job id may hold anything a key may: the folder name is made safe.
            job_folder = safe_file_name(input.job_id, options.format).rsplit(".", 1)[0]
            folder = self.parts.exports_dir / job_folder
            tlog.info("table_export_started", format=options.format.value)
            exported = await export_table(
                run,
                self._store,
                input.table_id,
                folder,
                file_stem=input.table_id,
                fmt=options.format,
                report=rows_written,
            )
            await run(self._store.unlock_tables, [input.table_id], input.job_id)
        except SpinnerError as exc:
            tlog.warning("table_attempt_failed", error=str(exc), rows=rows)
            raise TableAttemptError(exc, rows, progressed=False) from exc
        tlog.info(
            "table_export_finished",
            rows=exported.rows,
            bytes=exported.bytes,
            path=exported.path,
            sha256=exported.sha256,
        )
        return TableTaskResult(
            table_id=input.table_id,
            records=exported.rows,
            total=exported.rows,
            details=exported.model_dump(mode="json"),
        )
