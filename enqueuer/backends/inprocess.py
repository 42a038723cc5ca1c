"""Jobs disabled (``SPINNER_USE_JOBS=false``): run jobs in the calling process.

The same orchestration (:class:`workflows.orchestration.JobRun`), the same table work
(each job type's :meth:`TableWork.run_table`), the same retry policy and progress
model as on Temporal; no server involved. Jobs live as asyncio tasks of the caller's
event loop, so they end with the process: use Temporal for durability.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from activities.notify import WebhookSender
from activities.tables import (
    PERMANENT_ERRORS,
    TableActivities,
    TableAttemptError,
    TableWork,
    WorkParts,
)
from enqueuer.backends.base import HolderState, JobIdTakenError, StartRequest
from enqueuer.jobtypes import JOB_TYPES, queue_config
from enqueuer.settings import Settings
from enqueuer.stats import DEFAULT_SAMPLE, job_stats
from spinner_jobs.core.errors import (
    InvalidJobError,
    JobAlreadyClosedError,
    JobNotFoundError,
    StoreUnavailableError,
)
from spinner_jobs.core.models import (
    Backend,
    JobEvent,
    JobProgress,
    JobRef,
    JobResult,
    JobStats,
    JobStatus,
    JobSummary,
    JobWorkflowInput,
    ReleaseLocksInput,
    ReleaseLocksResult,
    ResolveTablesInput,
    ResolveTablesResult,
    RetryOptions,
    TableCheckpoint,
    TableStatus,
    TableTaskInput,
    TableTaskResult,
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
    ref: JobRef
    live: dict[str, tuple[TableCheckpoint, int]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    result: JobResult | None = None
    user_id: str | None = None
    enqueued_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class InProcessBackend:
    """JobBackend that runs jobs as tasks of the current event loop."""

    kind = Backend.IN_PROCESS

    def __init__(
        self,
        parts: WorkParts,
        settings: Settings,
        webhook: WebhookSender | None = None,
    ) -> None:
        self._tables = TableActivities(parts.store, store_outage_timeout=parts.store_outage_timeout)
        self._works: dict[str, TableWork] = {jt.name: jt.work(parts) for jt in JOB_TYPES}
        self._keep = {
            jt.name: (
                queue_config(settings, jt).keep_completed,
                queue_config(settings, jt).keep_failed,
            )
            for jt in JOB_TYPES
        }
        self._deliveries = _Deliveries(webhook) if webhook is not None else None
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        # Tallies for stats(): retention drops job records, the counts must not drop.
        self._closed: Counter[tuple[str, str, JobStatus]] = Counter()
        self._durations: deque[tuple[str, str, timedelta]] = deque(maxlen=DEFAULT_SAMPLE * 8)

    async def start(self, request: StartRequest) -> str | None:
        """Start the job as a task (after its delay); returns no run id.

        Every job starts at once (there is no queue to wait in), so the job's
        ``priority`` and its organization's fairness weight play no part here.

        Raises:
            JobIdTakenError: this process has a job with the same id.

        """
        input = request.input
        if input.job_id in self._jobs:
            raise JobIdTakenError(input.job_id)
        live: dict[str, tuple[TableCheckpoint, int]] = {}
        work = self._works[request.job_type.name]
        ops = _LocalOps(input, self._tables, work, live, self._deliveries)
        ref = JobRef(
            job_id=input.job_id,
            job_type=input.job_type,
            workbook_id=input.job.workbook_id,
            table_ids=input.table_ids,
            backend=self.kind,
        )
        job = _Job(run=JobRun(input, ops), ref=ref, live=live, user_id=input.job.actor.user_id)
        delay = request.delay.total_seconds() if request.delay else 0.0
        job.task = asyncio.create_task(self._run(job, delay), name=f"job:{input.job_id}")
        self._jobs[input.job_id] = job
        log.info(
            "job_started",
            job_id=input.job_id,
            job_type=input.job_type,
            workbook_id=input.job.workbook_id,
            summary=request.summary,
        )
        return None

    async def find(self, job_id: str, organization_id: str) -> JobRef | None:
        """The ref of this process's job with the id, if it is the organization's."""
        job = self._jobs.get(job_id)
        if job is None or job.run.organization_id != organization_id:
            return None
        return job.ref

    async def _keep_locks(self, job_id: str) -> None:
        """While the job runs, keep its locks young.

        Another process's enqueuer cannot see this process's jobs; it takes a lock
        over only once it has aged past the grace (see ``Enqueuer.lock_grace``).
        """
        while True:
            await asyncio.sleep(LOCK_TOUCH_INTERVAL)
            try:
                await self._tables.touch_locks(job_id)
            except Exception as exc:  # the store is out: the next touch may succeed
                log.warning("lock_touch_failed", job_id=job_id, error=str(exc))

    async def _run(self, job: _Job, delay: float) -> None:
        job_id = job.run.progress.job_id
        keeper = asyncio.create_task(self._keep_locks(job_id), name=f"locks:{job_id}")
        try:
            if delay > 0:
                try:
                    await asyncio.sleep(delay)
                except asyncio.CancelledError:
                    await job.run.cancel_unstarted()  # gives the reserved tables back
                    raise
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
        org, kind = job.run.organization_id, job.ref.job_type
        self._closed[org, kind, job.result.status] += 1
        if job.result.duration is not None:
            self._durations.append((org, kind, job.result.duration))
        self._apply_retention(kind)

    def _apply_retention(self, job_type: str) -> None:
        """Keep the most recent N completed and M failed jobs of the type, like the sweep.

        As there, "failed" means closed without success (failed or cancelled), and
        recency is by finish time.
        """
        buckets: dict[bool, list[tuple[datetime, str]]] = {True: [], False: []}
        for job_id, job in self._jobs.items():
            if job.result is not None and job.ref.job_type == job_type:
                finished = job.result.progress.finished_at or datetime.min.replace(tzinfo=UTC)
                buckets[job.result.status == JobStatus.COMPLETED].append((finished, job_id))
        keep_completed, keep_failed = self._keep[job_type]
        for completed, limit in ((True, keep_completed), (False, keep_failed)):
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
                    table.model_copy(
                        update={
                            "records": checkpoint.records,
                            "attempt": attempt,
                            "total": checkpoint.total
                            if checkpoint.total is not None
                            else table.total,
                        }
                    )
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

    async def count_running(self, job_type: str, task_queue: str) -> int:
        """Jobs of the type whose task is still going (there are no queues here)."""
        return sum(
            1
            for j in self._jobs.values()
            if j.ref.job_type == job_type and j.task and not j.task.done()
        )

    async def stats(
        self, job_types: list[str], task_queue: str | None, organization_id: str | None = None
    ) -> JobStats:
        """Figures of the jobs this process ran; queue depth = jobs running here.

        ``organization_id`` limits the figures to that organization's jobs.
        """

        def mine(org: str, kind: str) -> bool:
            return kind in job_types and (organization_id is None or org == organization_id)

        running = sum(
            1
            for j in self._jobs.values()
            if j.task and not j.task.done() and mine(j.run.organization_id, j.ref.job_type)
        )
        closed: Counter[JobStatus] = Counter()
        for (org, kind, status), n in self._closed.items():
            if mine(org, kind):
                closed[status] += n
        durations = [d for org, kind, d in self._durations if mine(org, kind)][-DEFAULT_SAMPLE:]
        return job_stats(
            self.kind,
            task_queue=None,
            job_types=job_types,
            counts={
                "running": running,
                "completed": closed[JobStatus.COMPLETED],
                "failed": closed[JobStatus.FAILED],
                "cancelled": closed[JobStatus.CANCELLED],
            },
            durations=durations,
            queue_depth=running,
        )

    async def list_jobs(
        self,
        organization_id: str,
        *,
        job_types: list[str],
        workbook_id: str | None = None,
        status: JobStatus | None = None,
        page_token: str | None = None,
        page_size: int = 50,
    ) -> tuple[list[JobSummary], str | None]:
        """One page of this process's jobs of the organization, in visibility's order.

        Running jobs first (newest enqueue first), then closed ones (most recently
        closed first), as on Temporal. The page token is the sort key of the page's
        last job, so a job that closes meanwhile is neither repeated nor skipped twice.
        """
        after = _list_key_of_token(page_token) if page_token is not None else None
        listed: list[tuple[tuple[int, float, str], JobSummary]] = []
        for job in self._jobs.values():
            summary = self._summary(job)
            if (
                job.run.organization_id != organization_id
                or summary.job_type not in job_types
                or (workbook_id is not None and summary.workbook_id != workbook_id)
                or (status is not None and summary.status != status)
            ):
                continue
            key = _list_key(summary)
            if after is None or key > after:
                listed.append((key, summary))
        listed.sort(key=lambda pair: pair[0])
        page = listed[:page_size]
        token = None
        if len(listed) > page_size:
            raw = json.dumps(list(page[-1][0]), separators=(",", ":")).encode()
            token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        return [summary for _, summary in page], token

    def _summary(self, job: _Job) -> JobSummary:
        result = job.result
        return JobSummary(
            job_id=job.ref.job_id,
            job_type=job.ref.job_type,
            workbook_id=job.ref.workbook_id,
            user_id=job.user_id,
            status=result.status if result is not None else JobStatus.RUNNING,
            started_at=job.enqueued_at,
            finished_at=result.progress.finished_at if result is not None else None,
        )

    async def aclose(self) -> None:
        """Cancel running jobs and wait for them to release their locks."""
        tasks = [j.task for j in self._jobs.values() if j.task and not j.task.done()]
        for task in tasks:
            # A job cancelled already is releasing its locks: cancelling it again
            # would abandon that release halfway.
            if not task.cancelling():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._deliveries is not None:
            await self._deliveries.drain(within=2.0)


def _list_key(job: JobSummary) -> tuple[int, float, str]:
    """Sort key of a listing: running first, newest first, then by id."""
    if job.status == JobStatus.RUNNING or job.finished_at is None:
        at = job.started_at or datetime.min.replace(tzinfo=UTC)
        return (0, -at.timestamp(), job.job_id)
    return (1, -job.finished_at.timestamp(), job.job_id)


def _list_key_of_token(token: str) -> tuple[int, float, str]:
    """The sort key a page token carries (InvalidJobError for anything else)."""
    try:
        rank, at, job_id = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return (int(rank), float(at), str(job_id))
    except (binascii.Error, ValueError, TypeError):
        raise InvalidJobError("page_token", "is not a token this API gave out") from None


class _LocalOps:
    """JobOps by direct calls."""

    def __init__(
        self,
        input: JobWorkflowInput,
        tables: TableActivities,
        work: TableWork,
        live: dict[str, tuple[TableCheckpoint, int]],
        deliveries: _Deliveries | None,
    ) -> None:
        self._input = input
        self._tables = tables
        self._work = work
        self._live = live  # last committed checkpoint and attempt per table
        self._deliveries = deliveries

    async def resolve_tables(self, input: ResolveTablesInput) -> ResolveTablesResult:
        return await self._tables.resolve_tables(input)

    async def run_table(self, input: TableTaskInput) -> TableTaskResult:
        def report(checkpoint: TableCheckpoint) -> None:
            self._live[input.table_id] = (checkpoint, input.attempt)

        try:
            return await self._work.run_table(input, report=report)
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

    async def run_table_briefly(self, input: TableTaskInput) -> TableTaskResult:
        return await self.run_table(input)

    def brief_attempts(self) -> bool:
        """No: in-process there is no round trip to save."""
        return False

    async def release_locks(self, input: ReleaseLocksInput) -> ReleaseLocksResult:
        return await self._tables.release_locks(input)

    async def sleep(self, delay: timedelta) -> None:
        await asyncio.sleep(delay.total_seconds())

    def notify(self, event: JobEvent) -> None:
        log.info(
            "job_event",
            kind=event.kind.value,
            job_type=event.job_type,
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
