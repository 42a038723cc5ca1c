"""Download activities: resolve a job's tables, download one table, release locks.

``DownloadActivities`` holds its I/O (store, connectors); the worker registers the
bound methods. :meth:`DownloadActivities.sync_table` is the engine-neutral core that
both the Temporal activity and the in-process backend run: one attempt at one table.
Retrying attempts is the job's business (``workflows.orchestration.JobRun``), so that
an attempt lost to a crashed worker or a store outage never uses up the retries that
are meant for the source's errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from spinner_jobs.connectors.base import ReadContext
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.core import wire
from spinner_jobs.core.errors import (
    LockLostError,
    PermanentSourceError,
    SpinnerError,
    StoreUnavailableError,
    TableGoneError,
    error_type_name,
)
from spinner_jobs.core.models import (
    ConnectorAccount,
    DownloadTableInput,
    DownloadTableResult,
    RecordRow,
    ReleaseLocksInput,
    ReleaseLocksResult,
    ResolveTablesInput,
    ResolveTablesResult,
    Table,
    TableAttemptFailure,
    TableCheckpoint,
    TableLive,
    TableRef,
)
from spinner_jobs.store.base import Lease, Store, SyncSummary

log = structlog.get_logger(__name__)

T = TypeVar("T")

ReportProgress = Callable[[TableCheckpoint], None]
"""Called after each committed page with the new checkpoint."""

PageWritten = Callable[[Table, int], None]
"""Called after each committed page with the table and the page's record count."""

WORKER_SHUTDOWN = "WorkerShutdownError"
"""``ApplicationError.type`` of an attempt given up because its worker is stopping."""

INFRASTRUCTURE_ERRORS = frozenset({WORKER_SHUTDOWN, StoreUnavailableError.__name__})
"""Failure types that say nothing about the source: they never use up a retry."""

PERMANENT_ERRORS = (PermanentSourceError, LockLostError)
"""Errors no retry can fix: the table fails at once."""


class TableAttemptError(SpinnerError):
    """One attempt at a table failed; carries what it had committed."""

    def __init__(self, cause: SpinnerError, records: int, progressed: bool) -> None:
        self.cause = cause
        self.records = records
        self.progressed = progressed
        super().__init__(str(cause))


class DownloadActivities:
    """Activities of the download-records job, over one store and a connector set."""

    def __init__(
        self,
        store: Store,
        connectors: ConnectorRegistry,
        *,
        store_outage_timeout: timedelta = timedelta(minutes=5),
        live_interval: timedelta = timedelta(seconds=1),
    ) -> None:
        self._store = store
        self._connectors = connectors
        self._outage_timeout = store_outage_timeout.total_seconds()
        self._live_interval = live_interval.total_seconds()

    # --- Temporal activities -----------------------------------------------------------

    @activity.defn(name=wire.ACTIVITY_RESOLVE_TABLES)
    async def resolve_tables(self, input: ResolveTablesInput) -> ResolveTablesResult:
        """Look the job's tables up in the catalog (names and connectors, no config)."""
        workbook = await self._store_call(
            self._store.get_workbook, input.workbook_id, job_id=input.job_id
        )
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
        """Download one table (one attempt), resuming from the job's stored checkpoint.

        Raises:
            ApplicationError: typed as the ``SpinnerError`` subclass, non-retryable
                (the job decides on retries), with a :class:`TableAttemptFailure` as
                details; ``WorkerShutdownError`` when the worker is stopping.

        """
        info = activity.info()
        last: list[TableCheckpoint] = [TableCheckpoint()]
        live = _LiveSignal(input, self._live_interval)

        def report(checkpoint: TableCheckpoint) -> None:
            last[0] = checkpoint
            activity.heartbeat(checkpoint)
            live.maybe_send(checkpoint.records)

        # Counted per committed page, not from checkpoints: a resumed attempt reports
        # its starting checkpoint too, and those records were counted by the last one.
        downloaded = activity.metric_meter().create_counter(
            wire.METRIC_RECORDS_DOWNLOADED, "Records written to the snapshot store.", "records"
        )

        def page_written(table: Table, records: int) -> None:
            downloaded.add(records, {"connector": table.connector})

        sync = asyncio.create_task(self.sync_table(input, report=report, on_page=page_written))
        # Pages can be slow; keep heartbeating so cancellation and liveness still work.
        keepalive = asyncio.create_task(_keep_heartbeating(lambda: last[0], info))
        shutdown = asyncio.create_task(activity.wait_for_worker_shutdown())
        try:
            await asyncio.wait({sync, shutdown}, return_when=asyncio.FIRST_COMPLETED)
            if not sync.done():
                # The worker is stopping: hand the table over now. The page being
                # written commits or not as a whole; the next attempt resumes after it.
                sync.cancel()
                await asyncio.gather(sync, return_exceptions=True)
                log.info(
                    "table_handed_over",
                    job_id=input.job_id,
                    workbook_id=input.workbook_id,
                    table_id=input.table_id,
                    records=last[0].records,
                )
                raise ApplicationError(
                    "worker shutting down; the table resumes on another worker",
                    TableAttemptFailure(records=last[0].records, progressed=False),
                    type=WORKER_SHUTDOWN,
                    non_retryable=True,
                )
            return sync.result()
        except TableAttemptError as exc:
            raise ApplicationError(
                str(exc),
                TableAttemptFailure(
                    records=exc.records,
                    progressed=exc.progressed,
                    retryable=not isinstance(exc.cause, PERMANENT_ERRORS),
                ),
                type=error_type_name(exc.cause),
                non_retryable=True,
            ) from exc
        finally:
            for task in (sync, keepalive, shutdown):
                task.cancel()
            await asyncio.gather(keepalive, shutdown, return_exceptions=True)
            await live.aclose()

    @activity.defn(name=wire.ACTIVITY_RELEASE_LOCKS)
    async def release_locks(self, input: ReleaseLocksInput) -> ReleaseLocksResult:
        """Give back the tables' download locks held by the job; count what it wrote."""
        records = await self._store_call(
            self._store.unlock_tables, input.table_ids, input.job_id, job_id=input.job_id
        )
        log.info("table_locks_released", job_id=input.job_id, tables=input.table_ids)
        return ReleaseLocksResult(records=records)

    # --- engine-neutral core -----------------------------------------------------------

    async def touch_locks(self, job_id: str) -> None:
        """Keep the job's locks young (the in-process backend's liveness signal)."""
        await self._store_call(self._store.touch_locks, job_id, job_id=job_id)

    async def sync_table(
        self,
        input: DownloadTableInput,
        *,
        report: ReportProgress,
        on_page: PageWritten | None = None,
    ) -> DownloadTableResult:
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
            table, account = await self._store_call(self._load_table, input, job_id=input.job_id)
            connector = self._connectors.get(table.connector)
            lease = await self._store_call(
                self._store.lease, table.id, input.job_id, job_id=input.job_id
            )
            stored = await self._store_call(
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
            if not start.finished:
                context = ReadContext(job_id=input.job_id, attempt=input.attempt)
                async for page in connector.pages(table, account, start.cursor, context):
                    records = _distinct(page.records)
                    written = TableCheckpoint(
                        cursor=page.next_cursor,
                        records=checkpoint.records + len(records),
                        pages=checkpoint.pages + 1,
                        config=fingerprint,
                    )
                    await self._store_call(
                        self._store.write_page, lease, records, written, job_id=input.job_id
                    )
                    checkpoint = written
                    if on_page is not None:
                        on_page(table, len(records))
                    report(checkpoint)
            summary = await self._store_call(self._finish, lease, job_id=input.job_id)
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
        return DownloadTableResult(
            table_id=table.id,
            records=summary.records,
            pages=checkpoint.pages,
            deleted=summary.deleted,
            kept_dirty=summary.kept_dirty,
            resumed_from=start.cursor if start.pages else None,
        )

    def _finish(self, lease: Lease) -> SyncSummary:
        return self._store.finish_sync(lease, datetime.now(UTC))

    async def _store_call(
        self,
        call: Callable[..., T],
        *args: object,
        job_id: str,
    ) -> T:
        """Run a store call in a thread, waiting out a store outage with backoff.

        Raises:
            StoreUnavailableError: the store stayed unavailable for the outage timeout.

        """
        deadline = time.monotonic() + self._outage_timeout
        delay = 0.2
        while True:
            try:
                return await asyncio.to_thread(call, *args)
            except StoreUnavailableError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning(
                    "store_unavailable_waiting",
                    job_id=job_id,
                    error=str(exc),
                    retry_in=round(delay, 2),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _load_table(self, input: DownloadTableInput) -> tuple[Table, ConnectorAccount | None]:
        """The table (config validated) and its account, which must be the workbook's org's."""
        workbook = self._store.get_workbook(input.workbook_id)
        for table in workbook.tables if workbook else []:
            if table.id != input.table_id:
                continue
            assert workbook is not None
            connector = self._connectors.get(table.connector)
            connector.validate_config(table.config)
            account = self._store.get_account(table.account_id) if table.account_id else None
            if table.account_id and (
                account is None or account.organization_id != workbook.organization_id
            ):
                # Another organization's account looks exactly like a missing one.
                raise InvalidAccountError(table.id, table.account_id)
            return table, account
        raise TableGoneError(
            f"table {input.table_id!r} is no longer in workbook {input.workbook_id!r}"
        )


class InvalidAccountError(PermanentSourceError):
    """A table names a connector account that its organization does not have."""

    def __init__(self, table_id: str, account_id: str) -> None:
        super().__init__(
            f"table {table_id!r} names connector account {account_id!r}, which its "
            "organization does not have; create the account for this organization "
            "(`spinner-jobs account create`) or fix the table's account_id"
        )


def config_fingerprint(table: Table) -> str:
    """A short digest of what a table reads from: connector, config and account."""
    body = json.dumps(
        [table.connector, table.config, table.account_id], sort_keys=True, default=str
    )
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _distinct(records: Sequence[RecordRow]) -> Sequence[RecordRow]:
    """The page's records with each remote id once (the last occurrence wins)."""
    if len({remote_id for remote_id, _ in records}) == len(records):
        return records
    return list(dict(records).items())


class _LiveSignal:
    """Signals the job's workflow with a table's live count, throttled.

    This is what makes the Web UI's current details live while a table downloads. To
    keep a long table's history bounded, the interval grows after five minutes
    (to a three-hundredth of the time the attempt has run).
    """

    def __init__(self, input: DownloadTableInput, interval: float) -> None:
        self._input = input
        self._interval = interval
        self._started = time.monotonic()
        # The first signal waits one interval: a short table sends none (its result
        # updates the details anyway), so small jobs keep their few workflow tasks.
        self._last_sent = self._started
        self._last_records = -1
        self._task: asyncio.Task[None] | None = None

    def maybe_send(self, records: int) -> None:
        if not activity.in_activity() or records == self._last_records:
            return
        now = time.monotonic()
        interval = max(self._interval, (now - self._started) / 300)
        if now - self._last_sent < interval or (self._task and not self._task.done()):
            return
        self._last_sent, self._last_records = now, records
        self._task = asyncio.create_task(self._send(records))

    async def _send(self, records: int) -> None:
        info = activity.info()
        try:
            handle = activity.client().get_workflow_handle(info.workflow_id or self._input.job_id)
            await handle.signal(
                wire.SIGNAL_TABLE_LIVE,
                TableLive(
                    table_id=self._input.table_id, attempt=self._input.attempt, records=records
                ),
            )
        except Exception as exc:  # best effort: the heartbeat carries progress too
            log.debug("live_signal_failed", job_id=self._input.job_id, error=str(exc))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def _keep_heartbeating(last: Callable[[], TableCheckpoint], info: activity.Info) -> None:
    interval = (info.heartbeat_timeout or timedelta(seconds=30)).total_seconds() / 3
    while True:
        await asyncio.sleep(interval)
        activity.heartbeat(last())
