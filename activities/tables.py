"""What every table job type shares: the table activities' base, locks and error classes.

A job type works table by table. Its :class:`TableWork` subclass holds the
engine-neutral core of one attempt at one table (:meth:`TableWork.run_table`), which
the in-process backend calls directly, and one Temporal activity that wraps the same
core with heartbeats, live counts and the worker's shutdown
(:meth:`TableWork.as_activity`). :class:`TableActivities` resolves a job's tables and
gives their locks back, for every job type alike.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

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
    ReleaseLocksInput,
    ReleaseLocksResult,
    ResolveTablesInput,
    ResolveTablesResult,
    Table,
    TableAttemptFailure,
    TableCheckpoint,
    TableLive,
    TableRef,
    TableTaskInput,
    TableTaskResult,
)
from spinner_jobs.store.base import Store

log = structlog.get_logger(__name__)

T = TypeVar("T")

ReportProgress = Callable[[TableCheckpoint], None]
"""Called after each committed step (a page, a change) with the new checkpoint."""

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


@dataclass(frozen=True)
class WorkParts:
    """What table work runs against: the store, the sources and a few engine knobs."""

    store: Store
    connectors: ConnectorRegistry
    store_outage_timeout: timedelta = timedelta(minutes=5)
    live_interval: timedelta = timedelta(seconds=1)
    exports_dir: Path = field(default_factory=lambda: Path("data") / "exports")


QUICK_WAIT = 0.005
"""Seconds a quick store call blocks the event loop for another writer before it moves
to a thread: long enough for a page another thread is writing, short enough that the
loop's other tasks barely notice."""


class StoreCalls:
    """Runs store calls in a thread, waiting out a store outage with backoff.

    The short calls of a quick store run on the event loop's own thread when they can
    go at once (:meth:`_quick_store_call`).
    """

    def __init__(self, store: Store, outage_timeout: timedelta) -> None:
        self._store = store
        self._outage_timeout = outage_timeout.total_seconds()

    async def _store_call(self, call: Callable[..., T], *args: object, job_id: str) -> T:
        """Run ``call(*args)`` in a thread; retry while the store is unavailable.

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

    async def _quick_store_call(self, call: Callable[..., T], *args: object, job_id: str) -> T:
        """Run the short store call ``call(*args)`` on this thread when it can go at once.

        With a quick store (``Store.quick_calls``) the call is made here, on the event
        loop's thread, waiting at most ``QUICK_WAIT`` for another writer; a page
        written in a worker thread would fight the loop for the GIL at every row. Only
        when the store stays busy (another process writing, an outage) does the call
        wait in a thread, as :meth:`_store_call` runs every call. A busy attempt wrote
        nothing (its transaction never began), so trying again is safe.
        """
        if self._store.quick_calls:
            try:
                with self._store.waiting_at_most(QUICK_WAIT):
                    return call(*args)
            except StoreUnavailableError:
                pass
        return await self._store_call(call, *args, job_id=job_id)


class TableActivities(StoreCalls):
    """The activities every table job shares: resolve its tables, release its locks."""

    def __init__(self, store: Store, *, store_outage_timeout: timedelta = timedelta(minutes=5)):
        super().__init__(store, store_outage_timeout)

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

    @activity.defn(name=wire.ACTIVITY_RELEASE_LOCKS)
    async def release_locks(self, input: ReleaseLocksInput) -> ReleaseLocksResult:
        """Give back the tables' locks held by the job; count what it wrote to each."""
        records = await self._store_call(
            self._store.unlock_tables, input.table_ids, input.job_id, job_id=input.job_id
        )
        log.info("table_locks_released", job_id=input.job_id, tables=input.table_ids)
        return ReleaseLocksResult(records=records)

    async def touch_locks(self, job_id: str) -> None:
        """Keep the job's locks young (the in-process backend's liveness signal)."""
        await self._store_call(self._store.touch_locks, job_id, job_id=job_id)

    def activities(self) -> list[Callable[..., Any]]:
        """The Temporal activities to register."""
        return [self.resolve_tables, self.release_locks]


class TableWork(StoreCalls, ABC):
    """One job type's work on one table, for both backends.

    Subclasses implement :meth:`run_table` and declare one ``@activity.defn`` method
    (named by the job type) that returns ``await self.as_activity(input)``.
    """

    def __init__(self, parts: WorkParts) -> None:
        super().__init__(parts.store, parts.store_outage_timeout)
        self.parts = parts
        self._connectors = parts.connectors
        self._live_interval = parts.live_interval.total_seconds()

    @abstractmethod
    async def run_table(self, input: TableTaskInput, *, report: ReportProgress) -> TableTaskResult:
        """One attempt at one table; ``report`` after each committed step.

        Raises:
            TableAttemptError: the attempt failed; ``cause`` is the SpinnerError, with
                the items the job has committed and whether this attempt added any.

        """

    @abstractmethod
    def table_activity(self) -> Callable[..., Awaitable[TableTaskResult]]:
        """The bound ``@activity.defn`` method of one attempt at one table."""

    async def as_activity(
        self,
        input: TableTaskInput,
        run: Callable[[ReportProgress], Awaitable[TableTaskResult]] | None = None,
    ) -> TableTaskResult:
        """Run one attempt inside a Temporal activity.

        Heartbeats carry the last checkpoint (the enqueuer's live counts); the job's
        workflow gets a throttled live-count signal; when the worker stops, the table
        is handed over after the step being committed.

        Args:
            input: the attempt.
            run: the core to run with the activity's ``report``; None for
                :meth:`run_table`.

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
            if not info.is_local:  # a brief attempt runs inside the workflow task
                activity.heartbeat(checkpoint)
                live.maybe_send(checkpoint.records)

        core = run(report) if run is not None else self.run_table(input, report=report)
        attempt = asyncio.ensure_future(core)
        # Steps can be slow; keep heartbeating so cancellation and liveness still work.
        keepalive = asyncio.create_task(
            _keep_heartbeating(lambda: last[0], info) if not info.is_local else asyncio.sleep(0)
        )
        shutdown = asyncio.create_task(activity.wait_for_worker_shutdown())
        try:
            await asyncio.wait({attempt, shutdown}, return_when=asyncio.FIRST_COMPLETED)
            if not attempt.done():
                # The worker is stopping: hand the table over now. The step being
                # committed commits or not as a whole; the next attempt resumes after it.
                attempt.cancel()
                await asyncio.gather(attempt, return_exceptions=True)
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
            return attempt.result()
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
            for task in (attempt, keepalive, shutdown):
                task.cancel()
            await asyncio.gather(keepalive, shutdown, return_exceptions=True)
            await live.aclose()

    def load_table(self, input: TableTaskInput) -> tuple[Table, ConnectorAccount | None]:
        """The table (read config validated) and its account, of the workbook's organization.

        Raises:
            TableGoneError: the table is no longer in the workbook.
            InvalidAccountError: the account is unknown or another organization's.
            InvalidTableConfigError: the connector refuses the table's config.

        """
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


class _LiveSignal:
    """Signals the job's workflow with a table's live count, throttled.

    This is what makes the Web UI's current details live while a table runs. To keep
    a long table's history bounded, the interval grows after five minutes (to a
    three-hundredth of the time the attempt has run).
    """

    def __init__(self, input: TableTaskInput, interval: float) -> None:
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
