"""The download-records job's table work: page a table's source into the store.

:meth:`DownloadActivities.sync_table` is the engine-neutral core of one attempt at one
table, which both the Temporal activity and the in-process backend run. Retrying
attempts is the job's business (``workflows.orchestration.JobRun``), so that an attempt
lost to a crashed worker or a store outage never uses up the retries that are meant
for the source's errors.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import structlog
from temporalio import activity

from activities.tables import (
    INFRASTRUCTURE_ERRORS,
    PERMANENT_ERRORS,
    WORKER_SHUTDOWN,
    ReportProgress,
    TableAttemptError,
    TableWork,
    WorkParts,
)
from spinner_jobs.connectors.base import ReadContext
from spinner_jobs.core import wire
from spinner_jobs.core.errors import (
    SpinnerError,
    error_type_name,
)
from spinner_jobs.core.models import (
    PageRecord,
    RecordTexts,
    Table,
    TableCheckpoint,
    TableTaskInput,
    TableTaskResult,
)
from spinner_jobs.store.base import Lease, SyncSummary

__all__ = [
    "INFRASTRUCTURE_ERRORS",
    "PERMANENT_ERRORS",
    "WORKER_SHUTDOWN",
    "DownloadActivities",
    "TableAttemptError",
]

log = structlog.get_logger(__name__)

PageWritten = Callable[[Table, int], None]
"""Called after each committed page with the table and the page's record count."""


class DownloadActivities(TableWork):
    """Table work of the download-records job, over one store and a connector set."""

    def __init__(self, parts: WorkParts) -> None:
        super().__init__(parts)

    def table_activity(self) -> Callable[..., Awaitable[TableTaskResult]]:
        """The ``download-table`` activity."""
        return self.download_table

    @activity.defn(name=wire.ACTIVITY_DOWNLOAD_TABLE)
    async def download_table(self, input: TableTaskInput) -> TableTaskResult:
        """Download one table (one attempt), resuming from the job's stored checkpoint."""
        # Counted per committed page, not from checkpoints: a resumed attempt reports
        # its starting checkpoint too, and those records were counted by the last one.
        downloaded = activity.metric_meter().create_counter(
            wire.METRIC_RECORDS_DOWNLOADED, "Records written to the snapshot store.", "records"
        )

        def page_written(table: Table, records: int) -> None:
            downloaded.add(records, {"connector": table.connector})

        return await self.as_activity(
            input, lambda report: self.sync_table(input, report=report, on_page=page_written)
        )

    async def run_table(self, input: TableTaskInput, *, report: ReportProgress) -> TableTaskResult:
        """One attempt at one table: :meth:`sync_table`."""
        return await self.sync_table(input, report=report)

    async def sync_table(
        self,
        input: TableTaskInput,
        *,
        report: ReportProgress,
        on_page: PageWritten | None = None,
    ) -> TableTaskResult:
        """One attempt: page through the table's source into the store, then finish.

        The attempt takes a fresh lease on the table's lock (fencing out any earlier
        attempt still running somewhere) and starts from the job's stored checkpoint.
        Each page is upserted with its checkpoint in one transaction fenced on the
        lease, then reported. A store that is briefly unavailable is waited out (up to
        the outage timeout).

        Raises:
            TableAttemptError: the attempt failed; ``cause`` is the SpinnerError, with
                the records the job has committed and whether this attempt added any.

        """
        tlog = log.bind(
            job_id=input.job_id,
            workbook_id=input.workbook_id,
            table_id=input.table_id,
            attempt=input.attempt,
        )
        checkpoint = start = TableCheckpoint()
        try:
            table, account = await self._quick_store_call(
                self.load_table, input, job_id=input.job_id
            )
            connector = self._connectors.get(table.connector)
            lease = await self._quick_store_call(
                self._store.lease, table.id, input.job_id, job_id=input.job_id
            )
            stored = await self._quick_store_call(
                self._store.get_checkpoint, table.id, input.job_id, job_id=input.job_id
            )
            fingerprint = config_fingerprint(table)
            if stored is not None and stored.pages and stored.config != fingerprint:
                # The table's config was replaced while this job retried: its pages so
                # far came from the old source. Start over, so the table ends as the
                # new source has it and never as a splice of both.
                tlog.warning("table_config_changed_restarting", pages=stored.pages)
                await self._store_call(self._store.restart_table, lease, job_id=input.job_id)
                stored = None
            checkpoint = start = stored or TableCheckpoint(config=fingerprint)
            if start.pages:
                tlog.info(
                    "table_download_resumed",
                    cursor=start.cursor,
                    records=start.records,
                    pages=start.pages,
                    connector=table.connector,
                )
            else:
                tlog.info("table_download_started", connector=table.connector)
            report(start)
            deadline = time.monotonic() + input.budget.total_seconds() if input.budget else None
            paused = False
            if not start.finished:
                context = ReadContext(job_id=input.job_id, attempt=input.attempt)
                pages = connector.pages(table, account, start.cursor, context)
                try:
                    async for page in pages:
                        records = _distinct(page.records)
                        written = TableCheckpoint(
                            cursor=page.next_cursor,
                            records=checkpoint.records + len(records),
                            pages=checkpoint.pages + 1,
                            config=fingerprint,
                        )
                        await self._quick_store_call(
                            self._store.write_page, lease, records, written, job_id=input.job_id
                        )
                        checkpoint = written
                        if on_page is not None:
                            on_page(table, len(records))
                        report(checkpoint)
                        if (
                            deadline is not None
                            and written.cursor is not None
                            and time.monotonic() >= deadline
                        ):
                            paused = True
                            break
                finally:
                    # Stop the connector now (its read-ahead too), not when it is collected.
                    close = getattr(pages, "aclose", None)
                    if close is not None:
                        await close()
            if paused:
                # A brief attempt ran out of its budget: the next one resumes here.
                tlog.info("table_download_paused", records=checkpoint.records)
                return TableTaskResult(
                    table_id=table.id,
                    records=checkpoint.records,
                    pages=checkpoint.pages,
                    finished=False,
                )
            # Quick too: a thread sweeping the table would hold up the other tables'
            # page writes (about 0.5 s of the loop per million records).
            summary = await self._quick_store_call(self._finish, lease, job_id=input.job_id)
        except SpinnerError as exc:
            progressed = checkpoint.pages > start.pages
            tlog.warning(
                "table_attempt_failed",
                error=str(exc),
                error_type=error_type_name(exc),
                records=checkpoint.records,
                progressed=progressed,
            )
            raise TableAttemptError(exc, checkpoint.records, progressed) from exc
        tlog.info(
            "table_download_finished",
            records=summary.records,
            pages=checkpoint.pages,
            deleted=summary.deleted,
            kept_dirty=summary.kept_dirty,
        )
        return TableTaskResult(
            table_id=table.id,
            records=summary.records,
            pages=checkpoint.pages,
            deleted=summary.deleted,
            kept_dirty=summary.kept_dirty,
            resumed_from=start.cursor if start.pages else None,
        )

    def _finish(self, lease: Lease) -> SyncSummary:
        return self._store.finish_sync(lease, datetime.now(UTC))


def config_fingerprint(table: Table) -> str:
    """A short digest of what a table reads from: connector, config and account."""
    body = json.dumps(
        [table.connector, table.config, table.account_id], sort_keys=True, default=str
    )
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _distinct(records: Sequence[PageRecord]) -> Sequence[PageRecord]:
    """The page's records with each remote id once (the last occurrence wins)."""
    if isinstance(records, RecordTexts):
        if len(set(records.ids)) == len(records):
            return records
        last = dict(records)
        return RecordTexts(list(last), list(last.values()))  # type: ignore[arg-type]
    if len({remote_id for remote_id, _ in records}) == len(records):
        return records
    return list(dict(records).items())
