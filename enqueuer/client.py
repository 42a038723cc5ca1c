"""The Enqueuer: what services call to enqueue and follow download-records jobs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from pydantic import ValidationError

from enqueuer.backends.base import JobBackend
from enqueuer.settings import Settings
from spinner_jobs.core.errors import (
    InvalidJobError,
    JobConflictError,
    QueueFullError,
    SpinnerError,
    StoreUnavailableError,
    TableNotFoundError,
    WorkbookNotFoundError,
    WorkerUnavailableError,
)
from spinner_jobs.core.models import (
    DEFAULT_PRIORITY,
    HIGHEST_PRIORITY,
    LOWEST_PRIORITY,
    Actor,
    DownloadRecordsJobInput,
    DownloadRecordsWorkflowInput,
    EventKind,
    JobEvent,
    JobProgress,
    JobRef,
    JobResult,
    JobStats,
    JobStatus,
    RetryOptions,
    TableStatus,
)

if TYPE_CHECKING:
    from spinner_jobs.store.base import HeldLock, Store

log = structlog.get_logger(__name__)

T = TypeVar("T")

_TABLE_EVENTS = {
    TableStatus.COMPLETED: EventKind.TABLE_COMPLETED,
    TableStatus.FAILED: EventKind.TABLE_FAILED,
}
_JOB_EVENTS = {
    JobStatus.COMPLETED: EventKind.JOB_COMPLETED,
    JobStatus.FAILED: EventKind.JOB_FAILED,
    JobStatus.CANCELLED: EventKind.JOB_CANCELLED,
}


class Enqueuer:
    """Enqueue download-records jobs and follow them, on Temporal or in-process.

    Build one per process with :meth:`from_env` (or :meth:`from_settings`) and close
    it with :meth:`aclose` (or ``async with``).
    """

    def __init__(self, settings: Settings, store: Store, backend: JobBackend) -> None:
        self.settings = settings
        self.store = store
        self._cleanups: set[asyncio.Future[Any]] = set()
        self.backend = backend
        self._owned: list[Any] = []

    @classmethod
    def from_env(cls) -> Enqueuer:
        """Build from ``SPINNER_*`` environment variables (see :class:`Settings`)."""
        return cls.from_settings(Settings.load())

    @classmethod
    def from_settings(cls, settings: Settings, store: Store | None = None) -> Enqueuer:
        """Build the backend that ``settings.use_jobs`` selects, over the configured store.

        No connection is made here: the Temporal client connects on first use, within
        ``settings.enqueue_timeout``.
        """
        from spinner_jobs.store import open_store

        own_store = store is None
        store = store or open_store(settings.store_url, secret_key=settings.secret_key)
        backend: JobBackend
        owned: list[Any] = []
        if settings.use_jobs:
            from enqueuer.backends.temporal import TemporalBackend
            from enqueuer.codec import payload_codec

            backend = TemporalBackend(
                settings.temporal,
                settings.enqueue_timeout,
                codec=payload_codec(settings.payload_key),
            )
        else:
            from enqueuer.backends.inprocess import InProcessBackend
            from enqueuer.wiring import download_activities, open_connectors, open_webhook

            connectors = open_connectors(settings)
            webhook, http = open_webhook(settings)
            if http is not None:
                owned.append(http)
            owned.append(connectors)
            activities = download_activities(settings, store, connectors)
            backend = InProcessBackend(activities, settings.retention, webhook)
        enqueuer = cls(settings, store, backend)
        enqueuer._owned = owned + ([store] if own_store else [])
        return enqueuer

    async def __aenter__(self) -> Enqueuer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop in-process jobs and close what this enqueuer opened.

        A Temporal client the enqueuer connected is let go, so the SDK's threads can
        stop before the interpreter exits (see ``enqueuer.exits``).
        """
        await asyncio.gather(*self._cleanups, return_exceptions=True)
        await self.backend.aclose()
        for thing in reversed(self._owned):
            if hasattr(thing, "aclose"):
                await thing.aclose()
            else:
                thing.close()
        self._owned.clear()

    # --- enqueue -----------------------------------------------------------------------

    async def enqueue_download_records_job(
        self,
        workbook_id: str,
        actor: Actor | Mapping[str, Any],
        table_ids: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        priority: int | None = None,
    ) -> JobRef:
        """Enqueue a download of the workbook's tables and return at once.

        Args:
            workbook_id: the workbook whose tables to download.
            actor: who asks (user id + organization id); the workbook must be theirs.
            table_ids: tables to download; None for all of the workbook's tables.
            metadata: a JSON object carried with the job (size-capped).
            priority: 1 (runs first) to 5 (runs last) when jobs wait for workers; None
                for the default, 3. On Temporal it is the task-queue priority of the
                job and of its activities; the in-process backend starts every job at
                once and ignores it.

        Returns:
            The job reference (job id = Temporal workflow id).

        Raises:
            InvalidJobError: a parameter is invalid (``field`` names it).
            WorkbookNotFoundError: no such workbook for the actor's organization.
            TableNotFoundError: table ids not in the workbook.
            JobConflictError: a table is already being downloaded by a running job.
            QueueFullError: the pending-jobs cap is reached.
            EnqueueConnectionError: the Temporal server cannot be reached in time.

        """
        job = self._validate(workbook_id, actor, table_ids, metadata)
        priority = _priority(priority)
        job_id = f"download-records-{uuid.uuid4().hex[:16]}"
        # One trip to the store thread: look the workbook up, check the tables, lock them.
        # The store gives up within the enqueue timeout (StoreUnavailableError).
        wanted, held = await self._in_store(self._reserve_tables, job, job_id)
        try:
            if held:
                await self._take_over_stale_locks(wanted, job_id, held)
            running = await self.backend.count_running()
            if running >= self.settings.jobs.max_pending:
                raise QueueFullError(running, self.settings.jobs.max_pending)
            summary = (
                f"Download {len(wanted)} table{'s' * (len(wanted) != 1)} of workbook "
                f"{job.workbook_id} for user {job.actor.user_id}"
            )
            starting = asyncio.ensure_future(
                self.backend.start(self._workflow_input(job_id, job, wanted, priority), summary)
            )
            try:
                run_id = await asyncio.shield(starting)
            except asyncio.CancelledError:
                # The caller gave up, but the server may accept the start all the same:
                # let it finish, then keep the locks (the job runs) or give them back.
                starting.add_done_callback(
                    lambda done: self._after_abandoned_start(done, wanted, job_id)
                )
                raise _Abandoned from None
        except _Abandoned:
            raise asyncio.CancelledError from None
        except BaseException:
            # Nothing half-started: whatever stopped the job, its locks go back. If the
            # store is out too, the lock goes stale and the next enqueue takes it over.
            with contextlib.suppress(StoreUnavailableError):
                await self._in_store(self.store.unlock_tables, wanted, job_id)
            raise
        log.info(
            "job_enqueued",
            job_id=job_id,
            workbook_id=job.workbook_id,
            user_id=job.actor.user_id,
            organization_id=job.actor.organization_id,
            tables=len(wanted),
            backend=self.backend.kind.value,
        )
        return JobRef(
            job_id=job_id,
            run_id=run_id,
            workbook_id=job.workbook_id,
            table_ids=wanted,
            backend=self.backend.kind,
        )

    def _after_abandoned_start(
        self, start: asyncio.Future[str | None], tables: list[str], job_id: str
    ) -> None:
        """A start whose caller was cancelled has ended: settle its locks in the background."""
        settle = asyncio.ensure_future(self._settle_abandoned(tables, job_id))
        self._cleanups.add(settle)
        settle.add_done_callback(self._cleanups.discard)

    async def _settle_abandoned(self, tables: list[str], job_id: str) -> None:
        """Keep the locks if the job exists (it runs, or ran), give them back if it does not.

        When the backend cannot say, the locks stay: a job that does not exist leaves a
        lock that the next enqueue takes over after the grace, while a job that runs
        without its locks could not write at all.
        """
        try:
            state = await self.backend.holder_state(job_id)
        except SpinnerError:
            return
        if state == "unknown":
            await self._in_store(self.store.unlock_tables, tables, job_id)
        else:
            log.warning("job_started_after_enqueue_cancelled", job_id=job_id, tables=tables)

    async def _in_store(self, call: Callable[..., T], *args: Any) -> T:
        """Run a store call in a thread, waiting for the store no longer than an enqueue."""
        limit = self.settings.enqueue_timeout.total_seconds()

        def bounded() -> T:
            with self.store.waiting_at_most(limit):
                return call(*args)

        return await asyncio.to_thread(bounded)

    def _validate(
        self,
        workbook_id: str,
        actor: Actor | Mapping[str, Any],
        table_ids: Sequence[str] | None,
        metadata: Mapping[str, Any] | None,
    ) -> DownloadRecordsJobInput:
        if metadata is not None and not isinstance(metadata, Mapping):
            raise InvalidJobError("metadata", "must be a JSON object (a mapping)")
        if table_ids is not None:
            # A str or a dict is iterable too: "xy" must not mean tables "x" and "y".
            if not isinstance(table_ids, list | tuple):
                raise InvalidJobError(
                    "table_ids", f"must be a list of table ids, not {type(table_ids).__name__}"
                )
            strange = [t for t in table_ids if not isinstance(t, str)]
            if strange:
                raise InvalidJobError(
                    "table_ids", f"must be table id strings, not {type(strange[0]).__name__}"
                )
            repeated = sorted({t for t in table_ids if table_ids.count(t) > 1})
            if repeated:
                raise InvalidJobError("table_ids", f"repeated ids {repeated}; list each table once")
        try:
            job = DownloadRecordsJobInput.model_validate(
                {
                    "workbook_id": workbook_id,
                    "actor": actor,
                    "table_ids": list(table_ids) if table_ids is not None else None,
                    "metadata": dict(metadata) if metadata is not None else None,
                }
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise InvalidJobError(field, first["msg"]) from None
        if job.metadata is not None:
            try:
                encoded = json.dumps(job.metadata, separators=(",", ":"), allow_nan=False)
            except ValueError:
                raise InvalidJobError(
                    "metadata", "must be strict JSON (no NaN or Infinity)"
                ) from None
            size = len(encoded.encode())
            cap = self.settings.jobs.max_metadata_bytes
            if size > cap:
                raise InvalidJobError("metadata", f"{size} bytes of JSON, over the {cap}-byte cap")
        if job.table_ids is not None and not job.table_ids:
            raise InvalidJobError("table_ids", "empty list; pass None for all tables")
        return job

    def _reserve_tables(
        self, job: DownloadRecordsJobInput, job_id: str
    ) -> tuple[list[str], dict[str, HeldLock]]:
        """Check the workbook and tables against the catalog, then lock the tables.

        Returns:
            The table ids of the job, and the locks other jobs hold on them (``{}``
            when the tables are now locked for ``job_id``).
        """
        workbook = self.store.get_workbook(job.workbook_id)
        if workbook is None or workbook.organization_id != job.actor.organization_id:
            raise WorkbookNotFoundError(job.workbook_id)
        known = [t.id for t in workbook.tables]
        wanted = list(job.table_ids) if job.table_ids is not None else known
        unknown = [t for t in wanted if t not in known]
        if unknown:
            raise TableNotFoundError(job.workbook_id, unknown)
        if not wanted:
            raise InvalidJobError("table_ids", f"workbook {job.workbook_id!r} has no tables")
        return wanted, self.store.lock_tables(wanted, job_id)

    @property
    def lock_grace(self) -> float:
        """Seconds a lock of a job the backend does not know yet is respected.

        An enqueue locks its tables before it starts the job, so for a moment the
        holder exists only in the store. Every enqueue either starts its job or gives
        the lock back within a few enqueue timeouts; a lock older than this whose job
        the backend still does not know was left by a caller that died in between.
        """
        return 3 * self.settings.enqueue_timeout.total_seconds() + 5.0

    async def _take_over_stale_locks(
        self, table_ids: list[str], job_id: str, held: dict[str, HeldLock]
    ) -> None:
        """Take over locks whose holders are gone, or raise JobConflictError.

        A holder is gone when the backend knows its job closed, or when it does not
        know the job and the lock is older than :attr:`lock_grace`. The takeover is one
        compare-and-set in the store (and fences the old holder's writes): if anything
        changed meanwhile, the new holder wins and this enqueue gets the conflict.
        """
        by_holder: dict[str, list[str]] = {}
        for table_id, lock in held.items():
            by_holder.setdefault(lock.job_id, []).append(table_id)
        stale: dict[str, str] = {}
        for holder, tables in sorted(by_holder.items()):
            state = await self.backend.holder_state(holder)
            youngest = min(held[t].age for t in tables)
            if state == "running" or (state == "unknown" and youngest < self.lock_grace):
                raise JobConflictError(holder, tables)
            stale.update(dict.fromkeys(tables, holder))
        log.warning("stale_locks_taken_over", job_id=job_id, stale=stale)
        again = await self._in_store(
            functools.partial(self.store.lock_tables, take_over=stale), table_ids, job_id
        )
        if again:
            holder = sorted({lock.job_id for lock in again.values()})[0]
            raise JobConflictError(
                holder, [t for t, lock in again.items() if lock.job_id == holder]
            )

    def _workflow_input(
        self,
        job_id: str,
        job: DownloadRecordsJobInput,
        table_ids: list[str],
        priority: int = DEFAULT_PRIORITY,
    ) -> DownloadRecordsWorkflowInput:
        s = self.settings
        webhook_retry = None
        if s.webhook.url:
            webhook_retry = RetryOptions(
                maximum_attempts=s.webhook.maximum_attempts,
                initial_interval=s.retry.initial_interval,
                backoff_coefficient=s.retry.backoff_coefficient,
                maximum_interval=s.retry.maximum_interval,
            )
        return DownloadRecordsWorkflowInput(
            job_id=job_id,
            job=job,
            table_ids=table_ids,
            retry=RetryOptions(**s.retry.model_dump()),
            table_parallelism=s.jobs.table_parallelism,
            heartbeat_timeout=s.jobs.heartbeat_timeout,
            table_timeout=s.jobs.table_timeout,
            webhook_retry=webhook_retry,
            priority=priority,
            fairness_weight=s.fairness_weights.get(job.actor.organization_id),
        )

    # --- follow ------------------------------------------------------------------------

    async def progress(self, job_id: str, *, actor: Actor | Mapping[str, Any]) -> JobProgress:
        """Live progress: total records and per-table name, connector, count, status.

        Raises:
            JobNotFoundError: no such job for the actor's organization.
            WorkerUnavailableError: the job runs but no worker answered in time.

        """
        return await self.backend.progress(job_id, _organization(actor))

    async def wait(self, job_id: str, *, actor: Actor | Mapping[str, Any]) -> JobResult:
        """Wait until the job closes; its result says completed, failed or cancelled."""
        return await self.backend.wait(job_id, _organization(actor))

    async def stats(self, organization_id: str | None = None) -> JobStats:
        """Job counts by status, success/failure rates, processing-time p50/p95, queue depth.

        On Temporal the figures cover the jobs of ``settings.temporal.task_queue`` as the
        server's visibility holds them (eventually consistent, within about a second);
        in-process they cover the jobs this process ran. ``organization_id`` limits
        them to one organization's jobs.
        """
        return await self.backend.stats(organization_id)

    async def cancel(self, job_id: str, *, actor: Actor | Mapping[str, Any]) -> None:
        """Stop the job; its table locks are released.

        Raises:
            JobNotFoundError: no such job for the actor's organization.
            JobAlreadyClosedError: the job has already closed (nothing to cancel).

        """
        await self.backend.cancel(job_id, _organization(actor))
        log.info("job_cancel_requested", job_id=job_id)

    async def events(
        self, job_id: str, *, actor: Actor | Mapping[str, Any], interval: float = 0.5
    ) -> AsyncIterator[JobEvent]:
        """Yield progress and completion events until the job closes.

        Progress events come when counts or statuses change; each table's completion
        or failure and the job's end come once, with stable event ids. While no worker
        answers (a worker restarting), the stream waits instead of failing.
        """
        organization_id = _organization(actor)
        statuses: dict[str, TableStatus] = {}
        last: JobProgress | None = None
        seq = 0
        while True:
            try:
                progress = await self.backend.progress(job_id, organization_id)
            except WorkerUnavailableError:
                await asyncio.sleep(interval)
                continue
            now = datetime.now(UTC)
            if last is None or progress != last:
                seq += 1
                yield JobEvent(
                    event_id=f"{job_id}:progress:{seq}",
                    kind=EventKind.PROGRESS,
                    job_id=job_id,
                    workbook_id=progress.workbook_id,
                    records=progress.total_records,
                    at=now,
                    progress=progress,
                )
            for table in progress.tables.values():
                kind = _TABLE_EVENTS.get(table.status)
                if kind and statuses.get(table.table_id) != table.status:
                    yield JobEvent(
                        event_id=JobEvent.stable_id(job_id, kind, table.table_id),
                        kind=kind,
                        job_id=job_id,
                        workbook_id=progress.workbook_id,
                        table_id=table.table_id,
                        records=table.records,
                        error=table.error,
                        at=now,
                    )
                statuses[table.table_id] = table.status
            if progress.status in _JOB_EVENTS:
                kind = _JOB_EVENTS[progress.status]
                yield JobEvent(
                    event_id=JobEvent.stable_id(job_id, kind),
                    kind=kind,
                    job_id=job_id,
                    workbook_id=progress.workbook_id,
                    records=progress.total_records,
                    error=progress.error,
                    at=now,
                    progress=progress,
                )
                return
            last = progress
            await asyncio.sleep(interval)


class _Abandoned(Exception):  # noqa: N818
    """The caller cancelled an enqueue while its start was in flight (handled there)."""


def _organization(actor: Actor | Mapping[str, Any]) -> str:
    """The organization a read or control call is scoped to."""
    if isinstance(actor, Actor):
        return actor.organization_id
    try:
        return Actor.model_validate(actor).organization_id
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(["actor", *(str(p) for p in first["loc"])])
        raise InvalidJobError(field, first["msg"]) from None


def _priority(priority: object) -> int:
    """The job's task-queue priority: an int from 1 to 5, or None for the default."""
    if priority is None:
        return DEFAULT_PRIORITY
    # bool is an int subclass: True must not pass for priority 1.
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not HIGHEST_PRIORITY <= priority <= LOWEST_PRIORITY
    ):
        raise InvalidJobError(
            "priority",
            f"{priority!r} is not an integer from {HIGHEST_PRIORITY} (runs first) to "
            f"{LOWEST_PRIORITY} (runs last); pass None for the default, {DEFAULT_PRIORITY}",
        )
    return priority
