"""Jobs disabled (``SPINNER_USE_JOBS=false``): run jobs in the calling process.

The same orchestration (:class:`workflows.orchestration.JobRun`), the same activity
core (:meth:`DownloadActivities.sync_table`), the same retry policy and progress
model as on Temporal; no server involved. Jobs live as asyncio tasks of the caller's
event loop, so they end with the process: use Temporal for durability.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from activities.download import PERMANENT_ERRORS, DownloadActivities, TableAttemptError
from activities.notify import WebhookSender
from enqueuer.backends.base import HolderState
from enqueuer.settings import RetentionSettings
from enqueuer.stats import DEFAULT_SAMPLE, job_stats
from spinner_jobs.core.errors import JobAlreadyClosedError, JobNotFoundError, StoreUnavailableError
from spinner_jobs.core.models import (
    Backend,
    DownloadRecordsWorkflowInput,
    DownloadTableInput,
    DownloadTableResult,
    JobEvent,
    JobProgress,
    JobResult,
    JobStats,
    JobStatus,
    ReleaseLocksInput,
    ReleaseLocksResult,
    ResolveTablesInput,
    ResolveTablesResult,
    RetryOptions,
    TableCheckpoint,
    TableStatus,
)
from workflows.orchestration import JobRun, TableAttemptFailedError, TableFailedError

log = structlog.get_logger(__name__)

LOCK_TOUCH_INTERVAL = 2.0
"""Seconds between two touches of a running job's locks (under the 5 s minimum grace)."""


class _Deliveries:
    """Delivers webhook events in order, in the background, with their own retries.

    Like the notifier workflow on Temporal: a receiver that is down never holds a
    table slot or delays a job's end; an event whose retries run out is dropped with
    a ``webhook_given_up`` log line.
    """

    def __init__(self, webhook: WebhookSender) -> None:
        self._webhook = webhook
        self._queue: asyncio.Queue[tuple[JobEvent, RetryOptions]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def put(self, event: JobEvent, retry: RetryOptions) -> None:
        self._queue.put_nowait((event, retry))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="webhook-deliveries")

    async def _run(self) -> None:
        while not self._queue.empty():
            event, retry = self._queue.get_nowait()
            await self._deliver(event, retry)

    async def _deliver(self, event: JobEvent, retry: RetryOptions) -> None:
        for attempt in range(1, retry.maximum_attempts + 1):
            try:
                await self._webhook.send(event)
                return
            except Exception as exc:
                log.warning(
                    "webhook_failed",
                    event_id=event.event_id,
                    job_id=event.job_id,
                    workbook_id=event.workbook_id,
                    table_id=event.table_id,
                    attempt=attempt,
                    error=str(exc),
                )
                if attempt < retry.maximum_attempts:
                    await asyncio.sleep(retry.backoff(attempt).total_seconds())
        log.warning(
            "webhook_given_up",
            event_id=event.event_id,
            job_id=event.job_id,
            workbook_id=event.workbook_id,
            table_id=event.table_id,
            attempts=retry.maximum_attempts,
        )

    async def drain(self, within: float) -> None:
        """Give queued deliveries up to ``within`` seconds, then stop."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), within)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@dataclass
class _Job:
    run: JobRun
    live: dict[str, tuple[TableCheckpoint, int]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    result: JobResult | None = None


class InProcessBackend:
    """JobBackend that runs jobs as tasks of the current event loop."""

    kind = Backend.IN_PROCESS

    def __init__(
        self,
        activities: DownloadActivities,
        retention: RetentionSettings,
        webhook: WebhookSender | None = None,
    ) -> None:
        self._activities = activities
        self._retention = retention
        self._deliveries = _Deliveries(webhook) if webhook is not None else None
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        # Tallies for stats(): retention drops job records, the counts must not drop.
        self._closed: Counter[tuple[str, JobStatus]] = Counter()
        self._durations: deque[tuple[str, timedelta]] = deque(maxlen=DEFAULT_SAMPLE * 8)

    async def start(self, input: DownloadRecordsWorkflowInput, summary: str) -> str | None:
        """Start the job as a task; returns no run id.

        Every job starts at once (there is no queue to wait in), so the job's
        ``priority`` and its organization's fairness weight play no part here.
        """
        live: dict[str, tuple[TableCheckpoint, int]] = {}
        ops = _LocalOps(input, self._activities, live, self._deliveries)
        job = _Job(run=JobRun(input, ops), live=live)
        job.task = asyncio.create_task(self._run(job), name=f"job:{input.job_id}")
        self._jobs[input.job_id] = job
        log.info(
            "job_started", job_id=input.job_id, workbook_id=input.job.workbook_id, summary=summary
        )
        return None

    async def _keep_locks(self, job_id: str) -> None:
        """While the job runs, keep its locks young.

        Another process's enqueuer cannot see this process's jobs; it takes a lock
        over only once it has aged past the grace (see ``Enqueuer.lock_grace``).
        """
        while True:
            await asyncio.sleep(LOCK_TOUCH_INTERVAL)
            try:
                await self._activities.touch_locks(job_id)
            except Exception as exc:  # the store is out: the next touch may succeed
                log.warning("lock_touch_failed", job_id=job_id, error=str(exc))

    async def _run(self, job: _Job) -> None:
        job_id = job.run.progress.job_id
        keeper = asyncio.create_task(self._keep_locks(job_id), name=f"locks:{job_id}")
        try:
            job.result = await job.run.run()
        except asyncio.CancelledError:
            job.result = JobResult(
                job_id=job_id, status=JobStatus.CANCELLED, progress=job.run.progress
            )
        except Exception as exc:  # an engine fault: the job fails, the process goes on
            log.exception("job_crashed", job_id=job_id, error=str(exc))
            progress = job.run.progress.model_copy(update={"status": JobStatus.FAILED})
            job.result = JobResult(job_id=job_id, status=JobStatus.FAILED, progress=progress)
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        org = job.run.organization_id
        self._closed[org, job.result.status] += 1
        if job.result.duration is not None:
            self._durations.append((org, job.result.duration))
        self._apply_retention()

    def _apply_retention(self) -> None:
        """Keep the most recent N completed and M failed jobs, like the Temporal sweep.

        As there, "failed" means closed without success (failed or cancelled), and
        recency is by finish time.
        """
        buckets: dict[bool, list[tuple[datetime, str]]] = {True: [], False: []}
        for job_id, job in self._jobs.items():
            if job.result is not None:
                finished = job.result.progress.finished_at or datetime.min.replace(tzinfo=UTC)
                buckets[job.result.status == JobStatus.COMPLETED].append((finished, job_id))
        for completed, limit in (
            (True, self._retention.keep_completed),
            (False, self._retention.keep_failed),
        ):
            closed = sorted(buckets[completed])
            for _, job_id in closed[: max(0, len(closed) - limit)]:
                del self._jobs[job_id]

    def _job(self, job_id: str, organization_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None or job.run.organization_id != organization_id:
            raise JobNotFoundError(job_id)
        return job

    async def progress(self, job_id: str, organization_id: str) -> JobProgress:
        """Statuses from the run, live counts from the last committed page."""
        job = self._job(job_id, organization_id)
        progress = job.result.progress if job.result else job.run.progress
        for table_id, (checkpoint, attempt) in job.live.items():
            table = progress.tables[table_id]
            if table.status == TableStatus.ACTIVE:
                progress = progress.with_table(
                    table.model_copy(update={"records": checkpoint.records, "attempt": attempt})
                )
        return progress

    async def wait(self, job_id: str, organization_id: str) -> JobResult:
        """Wait for the job's task to end."""
        job = self._job(job_id, organization_id)
        if job.task is not None:
            await asyncio.shield(job.task)
        assert job.result is not None
        return job.result

    async def cancel(self, job_id: str, organization_id: str) -> None:
        """Cancel the job's task; the run releases its locks.

        Raises:
            JobAlreadyClosedError: the job has already closed.

        """
        job = self._job(job_id, organization_id)
        if job.task is None or job.task.done():
            status = job.result.status.value if job.result else "closed"
            raise JobAlreadyClosedError(job_id, status)
        job.task.cancel()

    async def holder_state(self, job_id: str) -> HolderState:
        """Running or closed for this process's jobs; unknown for any other."""
        job = self._jobs.get(job_id)
        if job is None:
            return "unknown"
        return "running" if job.task and not job.task.done() else "closed"

    async def count_running(self) -> int:
        """Jobs whose task is still going."""
        return sum(1 for j in self._jobs.values() if j.task and not j.task.done())

    async def stats(self, organization_id: str | None = None) -> JobStats:
        """Figures of the jobs this process ran; queue depth = jobs running here.

        ``organization_id`` limits the figures to that organization's jobs.
        """

        def mine(org: str) -> bool:
            return organization_id is None or org == organization_id

        running = sum(
            1
            for j in self._jobs.values()
            if j.task and not j.task.done() and mine(j.run.organization_id)
        )
        closed: Counter[JobStatus] = Counter()
        for (org, status), n in self._closed.items():
            if mine(org):
                closed[status] += n
        durations = [d for org, d in self._durations if mine(org)][-DEFAULT_SAMPLE:]
        return job_stats(
            self.kind,
            task_queue=None,
            counts={
                "running": running,
                "completed": closed[JobStatus.COMPLETED],
                "failed": closed[JobStatus.FAILED],
                "cancelled": closed[JobStatus.CANCELLED],
            },
            durations=durations,
            queue_depth=running,
        )

    async def aclose(self) -> None:
        """Cancel running jobs and wait for them to release their locks."""
        tasks = [j.task for j in self._jobs.values() if j.task and not j.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._deliveries is not None:
            await self._deliveries.drain(within=2.0)


class _LocalOps:
    """JobOps by direct calls."""

    def __init__(
        self,
        input: DownloadRecordsWorkflowInput,
        activities: DownloadActivities,
        live: dict[str, tuple[TableCheckpoint, int]],
        deliveries: _Deliveries | None,
    ) -> None:
        self._input = input
        self._activities = activities
        self._live = live  # last committed checkpoint and attempt per table
        self._deliveries = deliveries

    async def resolve_tables(self, input: ResolveTablesInput) -> ResolveTablesResult:
        return await self._activities.resolve_tables(input)

    async def download_table(self, input: DownloadTableInput) -> DownloadTableResult:
        def report(checkpoint: TableCheckpoint) -> None:
            self._live[input.table_id] = (checkpoint, input.attempt)

        try:
            return await self._activities.sync_table(input, report=report)
        except TableAttemptError as exc:
            if isinstance(exc.cause, PERMANENT_ERRORS):
                raise TableFailedError(str(exc), exc.records) from exc
            raise TableAttemptFailedError(
                str(exc),
                infrastructure=isinstance(exc.cause, StoreUnavailableError),
                progressed=exc.progressed,
                records=exc.records,
            ) from exc
        except Exception as exc:  # an unexpected fault: counts as a failed attempt
            log.warning(
                "table_attempt_failed",
                job_id=input.job_id,
                workbook_id=input.workbook_id,
                table_id=input.table_id,
                attempt=input.attempt,
                error=str(exc),
            )
            raise TableAttemptFailedError(
                str(exc), infrastructure=False, progressed=False, records=None
            ) from exc

    async def release_locks(self, input: ReleaseLocksInput) -> ReleaseLocksResult:
        return await self._activities.release_locks(input)

    async def sleep(self, delay: timedelta) -> None:
        await asyncio.sleep(delay.total_seconds())

    def notify(self, event: JobEvent) -> None:
        log.info(
            "job_event",
            kind=event.kind.value,
            job_id=event.job_id,
            workbook_id=event.workbook_id,
            table_id=event.table_id,
            records=event.records,
            error=event.error,
        )
        retry = self._input.webhook_retry
        if self._deliveries is not None and retry is not None:
            self._deliveries.put(event, retry)

    async def flush_notifications(self) -> None:
        """Nothing to wait for: deliveries run in the backend's own task."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def progress_changed(self, progress: JobProgress) -> None:
        """Nothing to publish: progress() reads the run directly."""
