"""Download activities: resolve a job's tables, download one table, release locks.

``DownloadActivities`` holds its I/O (store, connectors); the worker registers the
bound methods. :meth:`DownloadActivities.sync_table` is the engine-neutral core that
both the Temporal activity and the in-process backend run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from connectors.base import ReadContext
from connectors.registry import ConnectorRegistry
from enqueuer import wire
from enqueuer.errors import PermanentSourceError, SpinnerError, TableGoneError, error_type_name
from enqueuer.models import (
    DownloadTableInput,
    DownloadTableResult,
    ReleaseLocksInput,
    ResolveTablesInput,
    ResolveTablesResult,
    Table,
    TableCheckpoint,
    TableRef,
)
from store.base import Store

log = structlog.get_logger(__name__)

ReportProgress = Callable[[TableCheckpoint], None]
"""Called after each committed page with the new checkpoint."""

PageWritten = Callable[[Table, int], None]
"""Called after each committed page with the table and the page's record count."""


class DownloadActivities:
    """Activities of the download-records job, over one store and a connector set."""

    def __init__(self, store: Store, connectors: ConnectorRegistry) -> None:
        self._store = store
        self._connectors = connectors

    # --- Temporal activities -----------------------------------------------------------

    @activity.defn(name=wire.ACTIVITY_RESOLVE_TABLES)
    async def resolve_tables(self, input: ResolveTablesInput) -> ResolveTablesResult:
        """Look the job's tables up in the catalog (names and connectors, no config)."""
        workbook = await asyncio.to_thread(self._store.get_workbook, input.workbook_id)
        found = {t.id: t for t in workbook.tables} if workbook else {}
        tables = [
            TableRef(table_id=t.id, name=t.name, connector=t.connector)
            for t in found.values()
            if t.id in input.table_ids
        ]
        missing = [tid for tid in input.table_ids if tid not in found]
        if missing:
            log.warning(
                "tables_gone", job_id=input.job_id, workbook_id=input.workbook_id, tables=missing
            )
        return ResolveTablesResult(tables=tables, missing=missing)

    @activity.defn(name=wire.ACTIVITY_DOWNLOAD_TABLE)
    async def download_table(self, input: DownloadTableInput) -> DownloadTableResult:
        """Download one table, resuming from the last heartbeated checkpoint.

        Raises:
            ApplicationError: typed as the ``SpinnerError`` subclass; non-retryable
                when retrying cannot help.

        """
        info = activity.info()
        resume: TableCheckpoint | None = None
        if info.heartbeat_details:
            # Details arrive decoded without a type hint (a dict); validate them back.
            resume = TableCheckpoint.model_validate(info.heartbeat_details[0])
        last: list[TableCheckpoint] = [resume or TableCheckpoint()]

        def report(checkpoint: TableCheckpoint) -> None:
            last[0] = checkpoint
            activity.heartbeat(checkpoint)

        # Counted per committed page, not from checkpoints: a resumed attempt reports
        # its starting checkpoint too, and those records were counted by the last one.
        downloaded = activity.metric_meter().create_counter(
            wire.METRIC_RECORDS_DOWNLOADED, "Records written to the snapshot store.", "records"
        )

        def page_written(table: Table, records: int) -> None:
            downloaded.add(records, {"connector": table.connector})

        # Pages can be slow; keep heartbeating so cancellation and liveness still work.
        keepalive = asyncio.create_task(_keep_heartbeating(lambda: last[0], info))
        try:
            return await self.sync_table(
                input, attempt=info.attempt, resume=resume, report=report, on_page=page_written
            )
        except SpinnerError as exc:
            raise ApplicationError(
                str(exc),
                type=error_type_name(exc),
                non_retryable=isinstance(exc, PermanentSourceError),
            ) from exc
        finally:
            keepalive.cancel()

    @activity.defn(name=wire.ACTIVITY_RELEASE_LOCKS)
    async def release_locks(self, input: ReleaseLocksInput) -> None:
        """Give back the tables' download locks held by the job."""
        await asyncio.to_thread(self._store.unlock_tables, input.table_ids, input.job_id)
        log.info("table_locks_released", job_id=input.job_id, tables=input.table_ids)

    # --- engine-neutral core -----------------------------------------------------------

    async def sync_table(
        self,
        input: DownloadTableInput,
        *,
        attempt: int,
        resume: TableCheckpoint | None,
        report: ReportProgress,
        on_page: PageWritten | None = None,
    ) -> DownloadTableResult:
        """Page through the table's source into the store, then finish the sync.

        Each page is upserted together with its checkpoint in one transaction, then
        reported. A retried attempt starts from the furthest of ``resume`` (heartbeat
        details) and the store's own checkpoint, so no page is skipped and a page
        written twice is an idempotent upsert. ``on_page``, if given, hears of each
        committed page (the Temporal activity counts records with it).
        """
        tlog = log.bind(
            job_id=input.job_id,
            workbook_id=input.workbook_id,
            table_id=input.table_id,
            attempt=attempt,
        )
        table = await asyncio.to_thread(self._load_table, input)
        connector = self._connectors.get(table.connector)
        account = (
            await asyncio.to_thread(self._store.get_account, table.account_id)
            if table.account_id
            else None
        )
        stored = await asyncio.to_thread(self._store.get_checkpoint, table.id, input.job_id)
        start = max(
            (c for c in (resume, stored) if c is not None),
            key=lambda c: c.pages,
            default=TableCheckpoint(),
        )
        if start.pages:
            tlog.info(
                "table_download_resumed",
                cursor=start.cursor,
                records=start.records,
                pages=start.pages,
                connector=table.connector,
            )
            report(start)
        else:
            tlog.info("table_download_started", connector=table.connector)

        checkpoint = start
        if not start.finished:
            context = ReadContext(job_id=input.job_id, attempt=attempt)
            async for page in connector.pages(table, account, start.cursor, context):
                checkpoint = TableCheckpoint(
                    cursor=page.next_cursor,
                    records=checkpoint.records + len(page.records),
                    pages=checkpoint.pages + 1,
                )
                await asyncio.to_thread(
                    self._store.write_page, table.id, input.job_id, page.records, checkpoint
                )
                if on_page is not None:
                    on_page(table, len(page.records))
                report(checkpoint)

        summary = await asyncio.to_thread(
            self._store.finish_sync, table.id, input.job_id, datetime.now(UTC)
        )
        tlog.info(
            "table_download_finished",
            records=checkpoint.records,
            pages=checkpoint.pages,
            deleted=summary.deleted,
            kept_dirty=summary.kept_dirty,
        )
        return DownloadTableResult(
            table_id=table.id,
            records=checkpoint.records,
            pages=checkpoint.pages,
            deleted=summary.deleted,
            kept_dirty=summary.kept_dirty,
            resumed_from=start.cursor if start.pages else None,
        )

    def _load_table(self, input: DownloadTableInput) -> Table:
        workbook = self._store.get_workbook(input.workbook_id)
        for table in workbook.tables if workbook else []:
            if table.id == input.table_id:
                connector = self._connectors.get(table.connector)
                connector.validate_config(table.config)
                return table
        raise TableGoneError(
            f"table {input.table_id!r} is no longer in workbook {input.workbook_id!r}"
        )


async def _keep_heartbeating(last: Callable[[], TableCheckpoint], info: activity.Info) -> None:
    interval = (info.heartbeat_timeout or timedelta(seconds=30)).total_seconds() / 3
    while True:
        await asyncio.sleep(interval)
        activity.heartbeat(last())
