"""The Enqueuer: what services call to enqueue and follow jobs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from pydantic import BaseModel, ValidationError

from enqueuer.backends.base import JobBackend, JobIdTakenError, StartRequest
from enqueuer.jobtypes import JOB_TYPES, queue_config, with_retry
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
    EventKind,
    JobEvent,
    JobOptions,
    JobProgress,
    JobRef,
    JobResult,
    JobSpec,
    JobStats,
    JobStatus,
    JobSummary,
    JobWorkflowInput,
    LockPolicy,
    RetryOptions,
    TableJobInput,
    TableRef,
    TableStatus,
)
from workflows.jobtype import JobType

if TYPE_CHECKING:
    from enqueuer.tracing import Tracing
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
    """Enqueue jobs of every registered job type and follow them, on Temporal or in-process.

    Build one per process with :meth:`from_env` (or :meth:`from_settings`) and close
    it with :meth:`aclose` (or ``async with``).
    """

    def __init__(self, settings: Settings, store: Store, backend: JobBackend) -> None:
        self.settings = settings
        self.store = store
        self._cleanups: set[asyncio.Future[Any]] = set()
        self.backend = backend
        self._owned: list[Any] = []
        # Progress fetches shared by the event streams of one job (see _shared_progress).
        self._progress_polls: dict[tuple[str, str], tuple[float, asyncio.Future[JobProgress]]] = {}

    @classmethod
    def from_env(cls) -> Enqueuer:
        """Build from ``SPINNER_*`` environment variables (see :class:`Settings`)."""
        return cls.from_settings(Settings.load())

    @classmethod
    def from_settings(
        cls, settings: Settings, store: Store | None = None, *, tracing: Tracing | None = None
    ) -> Enqueuer:
        """Build the backend that ``settings.use_jobs`` selects, over the configured store.

        No connection is made here: the Temporal client connects on first use, within
        ``settings.enqueue_timeout``. With ``tracing`` (``Tracing.from_settings``), each
        enqueue continues the caller's current span into the job's workflow.
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
                interceptors=tracing.interceptors() if tracing is not None else (),
            )
        else:
            from enqueuer.backends.inprocess import InProcessBackend
            from enqueuer.wiring import open_connectors, open_webhook, work_parts

            connectors = open_connectors(settings)
            webhook, http = open_webhook(settings)
            if http is not None:
                owned.append(http)
            owned.append(connectors)
            backend = InProcessBackend(work_parts(settings, store, connectors), settings, webhook)
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

    async def enqueue(
        self,
        job_type: str | JobType,
        input: TableJobInput | Mapping[str, Any],
        *,
        actor: Actor | Mapping[str, Any],
        options: JobOptions | Mapping[str, Any] | None = None,
    ) -> JobRef:
        """Enqueue a job of any registered job type and return at once.

        Args:
            job_type: the job type's name (e.g. ``"export-records"``) or declaration.
            input: the job type's input model, or a mapping of its fields.
            actor: who asks (user id + organization id); the workbook must be theirs.
            options: how to run this job, over the job type's defaults: ``job_id`` (an
                idempotency key: the same key again returns the existing job),
                ``priority`` (1 runs first … 5 last), ``retry``, ``metadata``, ``delay``.

        Returns:
            The job reference (job id = Temporal workflow id).

        Raises:
            UnknownJobTypeError: no such job type (an ``InvalidJobError``).
            InvalidJobError: a parameter is invalid (``field`` names it).
            WorkbookNotFoundError: no such workbook for the actor's organization.
            TableNotFoundError: table ids not in the workbook.
            JobConflictError: a table is held by another running job.
            QueueFullError: the job type's pending-jobs cap is reached.
            EnqueueConnectionError: the Temporal server cannot be reached in time.
            StoreUnavailableError: the store did not answer within the enqueue timeout.

        """
        kind = JOB_TYPES.get(job_type)
        _check_raw(
            input.get("table_ids") if isinstance(input, Mapping) else None,
            options.get("metadata") if isinstance(options, Mapping) else None,
        )
        if isinstance(options, Mapping) and options.get("priority") is not None:
            _priority(options["priority"])  # the plain answer, before the model's
        params = _validated(kind.input_model, input, "input")
        opts = _validated(JobOptions, options or {}, "options")
        job = self._validate(params.workbook_id, actor, params.table_ids, opts.metadata)
        queue = queue_config(self.settings, kind)
        priority = _priority(opts.priority) if opts.priority is not None else queue.priority
        if opts.delay is not None and not timedelta(0) <= opts.delay <= MAX_DELAY:
            raise InvalidJobError("options.delay", f"must be from 0 to {MAX_DELAY.days} days")
        if opts.job_id is not None:
            job_id = caller_job_id(kind.name, job.actor.organization_id, opts.job_id)
            existing = await self.backend.find(job_id, job.actor.organization_id)
            if existing is not None:
                log.info("job_enqueue_repeated", job_id=job_id, job_type=kind.name)
                return existing
        else:
            job_id = f"{kind.name}-{uuid.uuid4().hex[:16]}"
        # One trip to the store thread: look the workbook up, check the tables, lock them.
        # The store gives up within the enqueue timeout (StoreUnavailableError).
        refs, held = await self._in_store(self._reserve_tables, job, job_id, kind.locks)
        wanted = [ref.table_id for ref in refs]
        locked = wanted if kind.locks == LockPolicy.TABLES else []
        try:
            if held:
                await self._take_over_stale_locks(wanted, job_id, held)
            running = await self.backend.count_running(kind.name, queue.task_queue)
            if running >= queue.max_pending:
                raise QueueFullError(running, queue.max_pending)
            input_ = JobWorkflowInput(
                job_id=job_id,
                job_type=kind.name,
                job=job,
                table_ids=wanted,
                tables=refs,
                options=kind.options_of(params),
                store_counts=kind.store_counts,
                brief_attempt=kind.brief_attempt,
                retry=with_retry(queue.retry, opts.retry),
                table_parallelism=queue.table_parallelism,
                heartbeat_timeout=queue.heartbeat_timeout,
                table_timeout=queue.table_timeout,
                webhook_retry=self._webhook_retry(),
                priority=priority,
                fairness_weight=self.settings.fairness_weights.get(job.actor.organization_id),
            )
            request = StartRequest(
                input=input_,
                job_type=kind,
                summary=kind.summary(job, wanted),
                task_queue=queue.task_queue,
                delay=opts.delay,
            )
            starting = asyncio.ensure_future(self.backend.start(request))
            try:
                run_id = await asyncio.shield(starting)
            except asyncio.CancelledError:
                # The caller gave up, but the server may accept the start all the same:
                # let it finish, then keep the locks (the job runs) or give them back.
                starting.add_done_callback(
                    lambda done: self._after_abandoned_start(done, locked, job_id)
                )
                raise _Abandoned from None
        except _Abandoned:
            raise asyncio.CancelledError from None
        except JobIdTakenError:
            # The same key was enqueued at the same moment and that start won: the
            # locks are that job's now, and so is the answer.
            existing = await self.backend.find(job_id, job.actor.organization_id)
            if existing is None:
                raise
            return existing
        except BaseException:
            # Nothing half-started: whatever stopped the job, its locks go back. If the
            # store is out too, the lock goes stale and the next enqueue takes it over.
            # A caller's key may belong to a job that started meanwhile: keep its locks.
            if locked and (opts.job_id is None or await self._never_started(job_id)):
                with contextlib.suppress(StoreUnavailableError):
                    await self._in_store(self.store.unlock_tables, locked, job_id)
            raise
        log.info(
            "job_enqueued",
            job_id=job_id,
            job_type=kind.name,
            workbook_id=job.workbook_id,
            user_id=job.actor.user_id,
            organization_id=job.actor.organization_id,
            tables=len(wanted),
            priority=priority,
            backend=self.backend.kind.value,
        )
        return JobRef(
            job_id=job_id,
            job_type=kind.name,
            run_id=run_id,
            workbook_id=job.workbook_id,
            table_ids=wanted,
            backend=self.backend.kind,
        )

    async def enqueue_download_records_job(
        self,
        workbook_id: str,
        actor: Actor | Mapping[str, Any],
        table_ids: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        *,
        priority: int | None = None,
    ) -> JobRef:
        """Enqueue a download of the workbook's tables (``None``: all) and return at once.

        The typed form of :meth:`enqueue` for ``download-records``; ``priority`` and
        ``metadata`` are its options. Raises as :meth:`enqueue` does.
        """
        return await self.enqueue(
            "download-records",
            _table_job_fields(workbook_id, table_ids),
            actor=actor,
            options=_options(priority=priority, metadata=metadata),
        )

    async def enqueue_publish_changes_job(
        self,
        workbook_id: str,
        actor: Actor | Mapping[str, Any],
        table_ids: Sequence[str] | None = None,
        on_conflict: str = "report",
        *,
        metadata: Mapping[str, Any] | None = None,
        priority: int | None = None,
    ) -> JobRef:
        """Enqueue a publish of the tables' local edits: see :meth:`enqueue`."""
        fields = {**_table_job_fields(workbook_id, table_ids), "on_conflict": on_conflict}
        return await self.enqueue(
            "publish-changes",
            fields,
            actor=actor,
            options=_options(priority=priority, metadata=metadata),
        )

    async def enqueue_export_records_job(
        self,
        workbook_id: str,
        actor: Actor | Mapping[str, Any],
        table_ids: Sequence[str] | None = None,
        format: str = "csv",
        *,
        metadata: Mapping[str, Any] | None = None,
        priority: int | None = None,
    ) -> JobRef:
        """Enqueue an export of the tables to files (``csv`` or ``jsonl``): see :meth:`enqueue`."""
        fields = {**_table_job_fields(workbook_id, table_ids), "format": format}
        return await self.enqueue(
            "export-records",
            fields,
            actor=actor,
            options=_options(priority=priority, metadata=metadata),
        )

    async def _never_started(self, job_id: str) -> bool:
        """Whether the backend has never seen the job (its locks may be given back)."""
        try:
            return await self.backend.holder_state(job_id) == "unknown"
        except SpinnerError:
            return False  # cannot say: keep the locks; they go stale if unused

    def _webhook_retry(self) -> RetryOptions | None:
        s = self.settings
        if not s.webhook.url:
            return None
        return RetryOptions(
            maximum_attempts=s.webhook.maximum_attempts,
            initial_interval=s.retry.initial_interval,
            backoff_coefficient=s.retry.backoff_coefficient,
            maximum_interval=s.retry.maximum_interval,
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
        if state == "unknown" and tables:
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
    ) -> JobSpec:
        _check_raw(table_ids, metadata)
        try:
            job = JobSpec.model_validate(
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
        self, job: JobSpec, job_id: str, locks: LockPolicy
    ) -> tuple[list[TableRef], dict[str, HeldLock]]:
        """Check the workbook and tables against the catalog, then lock the tables.

        Returns:
            The tables of the job (their public face: id, name, connector), and the
            locks other jobs hold on them (``{}`` when the tables are now locked for
            ``job_id``, or the job type locks nothing).
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
        by_id = {t.id: t for t in workbook.tables}
        refs = [
            TableRef(table_id=t, name=by_id[t].name, connector=by_id[t].connector) for t in wanted
        ]
        if locks == LockPolicy.NONE:
            return refs, {}
        return refs, self.store.lock_tables(wanted, job_id)

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

    async def stats(
        self, organization_id: str | None = None, job_type: str | JobType | None = None
    ) -> JobStats:
        """Job counts by status, success/failure rates, processing-time p50/p95, queue depth.

        On Temporal the figures cover the jobs as the server's visibility holds them
        (eventually consistent, within about a second), with the backlog and workers
        of the job type's task queue (or of ``settings.temporal.task_queue`` when every
        job type runs there); in-process they cover the jobs this process ran.
        ``organization_id`` limits them to one organization's jobs, ``job_type`` to
        one job type's (None: every registered job type).
        """
        if job_type is not None:
            kind = JOB_TYPES.get(job_type)
            return await self.backend.stats(
                [kind.name], queue_config(self.settings, kind).task_queue, organization_id
            )
        queues = {queue_config(self.settings, kind).task_queue for kind in JOB_TYPES}
        queue = queues.pop() if len(queues) == 1 else None
        return await self.backend.stats(JOB_TYPES.names, queue, organization_id)

    async def list_jobs(
        self,
        organization_id: str,
        *,
        workbook_id: str | None = None,
        status: JobStatus | str | None = None,
        job_type: str | JobType | None = None,
        page_token: str | None = None,
        page_size: int = 50,
    ) -> tuple[list[JobSummary], str | None]:
        """One page of the organization's jobs: running ones first, then the latest closed.

        On Temporal the listing comes from visibility (a moment behind, like
        :meth:`stats`); in-process it covers the jobs this process ran and kept.

        Args:
            organization_id: whose jobs (only theirs are ever listed).
            workbook_id: only jobs of this workbook.
            status: only jobs in this status (``failed`` includes terminated and
                timed-out jobs).
            job_type: only jobs of this job type; None for every registered one.
            page_token: the token a previous page returned; None for the first page.
            page_size: jobs per page, 1 to :data:`MAX_PAGE_SIZE`.

        Returns:
            The page's jobs and the next page's token (None after the last page).

        Raises:
            InvalidJobError: a filter, the page size or the page token is invalid.
            UnknownJobTypeError: ``job_type`` is not registered.

        """
        if not isinstance(organization_id, str) or not organization_id.strip():
            raise InvalidJobError("organization_id", "must be a non-empty string")
        types = [JOB_TYPES.get(job_type).name] if job_type is not None else JOB_TYPES.names
        if workbook_id is not None and not workbook_id.strip():
            raise InvalidJobError("workbook_id", "must not be empty; leave it out for all")
        try:
            wanted = JobStatus(status) if status is not None else None
        except ValueError:
            known = ", ".join(s.value for s in JobStatus)
            raise InvalidJobError("status", f"{status!r} is not one of {known}") from None
        if isinstance(page_size, bool) or not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidJobError("page_size", f"must be from 1 to {MAX_PAGE_SIZE}")
        return await self.backend.list_jobs(
            organization_id,
            job_types=list(types),
            workbook_id=workbook_id,
            status=wanted,
            page_token=page_token,
            page_size=page_size,
        )

    async def cancel(self, job_id: str, *, actor: Actor | Mapping[str, Any]) -> None:
        """Stop the job; its table locks are released.

        Raises:
            JobNotFoundError: no such job for the actor's organization.
            JobAlreadyClosedError: the job has already closed (nothing to cancel).

        """
        await self.backend.cancel(job_id, _organization(actor))
        log.info("job_cancel_requested", job_id=job_id)

    async def _shared_progress(
        self, job_id: str, organization_id: str, max_age: float
    ) -> JobProgress:
        """The job's progress, fetched at most once per ``max_age`` for all its streams.

        Many streams of one job (a page open in many tabs, SSE clients) would each ask
        the backend every interval, which on Temporal is a query answered by a worker.
        They share one fetch instead: a stream that asks while a fetch of the same job
        for the same organization is running, or finished less than ``max_age`` ago,
        gets that fetch's answer (or error).
        """
        loop = asyncio.get_running_loop()
        key = (job_id, organization_id)
        now = loop.time()
        polled = self._progress_polls.get(key)
        if polled is None or (polled[1].done() and now - polled[0] >= max_age):
            fetch = asyncio.ensure_future(self.backend.progress(job_id, organization_id))
            fetch.add_done_callback(_retrieved)
            self._progress_polls[key] = polled = (now, fetch)
            if len(self._progress_polls) > 1024:  # forget fetches no stream can reuse
                for old, (at, done) in list(self._progress_polls.items()):
                    if done.done() and now - at >= max_age:
                        del self._progress_polls[old]
        return await asyncio.shield(polled[1])

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
                progress = await self._shared_progress(job_id, organization_id, interval)
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


def _retrieved(fetch: asyncio.Future[Any]) -> None:
    """Mark a shared fetch's error as seen (its streams may all have gone)."""
    if not fetch.cancelled():
        fetch.exception()


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


MAX_DELAY = timedelta(days=30)
"""Longest ``options.delay``."""

MAX_PAGE_SIZE = 500
"""Most jobs one :meth:`Enqueuer.list_jobs` page holds."""


def caller_job_id(job_type: str, organization_id: str, key: str) -> str:
    """The job id of a caller's idempotency key.

    Scoped to the organization (by a digest of its id) and the job type, so one
    organization's key can neither find nor block another's job.
    """
    org = hashlib.sha256(organization_id.encode()).hexdigest()[:12]
    return f"{job_type}-{org}-{key}"


M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], value: object, field: str) -> M:
    """``value`` as ``model`` (an instance of it, or a mapping of its fields).

    Raises:
        InvalidJobError: naming the offending field.

    """
    if isinstance(value, model):
        return value
    if isinstance(value, BaseModel) or not isinstance(value, Mapping):
        raise InvalidJobError(
            field,
            f"must be a {model.__name__} or a mapping of its fields, not {type(value).__name__}",
        )
    try:
        return model.model_validate(dict(value))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidJobError(
            where if field == "input" else f"{field}.{where}", first["msg"]
        ) from None


def _check_raw(table_ids: object, metadata: object) -> None:
    """Type checks with plain answers, before the models coerce anything."""
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidJobError("metadata", "must be a JSON object (a mapping)")
    if table_ids is None:
        return
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


def _table_job_fields(workbook_id: object, table_ids: object) -> dict[str, Any]:
    """The fields every table job's input has, as given (validated by ``enqueue``)."""
    _check_raw(table_ids, None)
    return {
        "workbook_id": workbook_id,
        "table_ids": list(table_ids) if isinstance(table_ids, list | tuple) else table_ids,
    }


def _options(**given: Any) -> dict[str, Any]:
    """Job options from the typed conveniences' keyword arguments (None: the default)."""
    return {name: value for name, value in given.items() if value is not None}
