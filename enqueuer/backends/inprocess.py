"""Jobs disabled (``SPINNER_USE_JOBS=false``): run jobs in the calling process.

The same orchestration (:class:`workflows.orchestration.JobRun`), the same activity
core (:meth:`DownloadActivities.sync_table`), the same retry policy and progress
model as on Temporal; no server involved. Jobs live as asyncio tasks of the caller's
event loop, so they end with the process: use Temporal for durability.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from activities.download import DownloadActivities
from activities.notify import WebhookSender
from enqueuer.errors import JobNotFoundError, PermanentSourceError
from enqueuer.models import (
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
    ResolveTablesInput,
    ResolveTablesResult,
    RetryOptions,
    TableCheckpoint,
    TableStatus,
)
from enqueuer.settings import RetentionSettings
from enqueuer.stats import DEFAULT_SAMPLE, job_stats
from workflows.orchestration import JobRun, TableFailedError

log = structlog.get_logger(__name__)


def backoff_delay(retry: RetryOptions, attempt: int) -> float:
    """Seconds to wait after failed ``attempt`` (1-based), as Temporal computes it."""
    delay = retry.initial_interval.total_seconds() * retry.backoff_coefficient ** (attempt - 1)
    return min(delay, retry.maximum_interval.total_seconds())


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
        self._webhook = webhook
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        # Tallies for stats(): retention drops job records, the counts must not drop.
        self._closed: Counter[JobStatus] = Counter()
        self._durations: deque[timedelta] = deque(maxlen=DEFAULT_SAMPLE)

    async def start(self, input: DownloadRecordsWorkflowInput, summary: str) -> str | None:
        """Start the job as a task; returns no run id."""
        live: dict[str, tuple[TableCheckpoint, int]] = {}
        ops = _LocalOps(input, self._activities, live, self._webhook)
        job = _Job(run=JobRun(input, ops), live=live)
        job.task = asyncio.create_task(self._run(job), name=f"job:{input.job_id}")
        self._jobs[input.job_id] = job
        log.info(
            "job_started", job_id=input.job_id, workbook_id=input.job.workbook_id, summary=summary
        )
        return None

    async def _run(self, job: _Job) -> None:
        job_id = job.run.progress.job_id
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
        self._closed[job.result.status] += 1
        if job.result.duration is not None:
            self._durations.append(job.result.duration)
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

    def _job(self, job_id: str) -> _Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFoundError(job_id) from None

    async def progress(self, job_id: str) -> JobProgress:
        """Statuses from the run, live counts from the last committed page."""
        job = self._job(job_id)
        progress = job.result.progress if job.result else job.run.progress
        for table_id, (checkpoint, attempt) in job.live.items():
            table = progress.tables[table_id]
            if table.status == TableStatus.ACTIVE:
                progress = progress.with_table(
                    table.model_copy(update={"records": checkpoint.records, "attempt": attempt})
                )
        return progress

    async def wait(self, job_id: str) -> JobResult:
        """Wait for the job's task to end."""
        job = self._job(job_id)
        if job.task is not None:
            await asyncio.shield(job.task)
        assert job.result is not None
        return job.result

    async def cancel(self, job_id: str) -> None:
        """Cancel the job's task; the run releases its locks."""
        job = self._job(job_id)
        if job.task is not None and not job.task.done():
            job.task.cancel()

    async def is_running(self, job_id: str) -> bool:
        """Whether the job's task is still going."""
        job = self._jobs.get(job_id)
        return bool(job and job.task and not job.task.done())

    async def count_running(self) -> int:
        """Jobs whose task is still going."""
        return sum(1 for j in self._jobs.values() if j.task and not j.task.done())

    async def stats(self) -> JobStats:
        """Figures of the jobs this process ran; queue depth = jobs running here."""
        running = await self.count_running()
        return job_stats(
            self.kind,
            task_queue=None,
            counts={
                "running": running,
                "completed": self._closed[JobStatus.COMPLETED],
                "failed": self._closed[JobStatus.FAILED],
                "cancelled": self._closed[JobStatus.CANCELLED],
            },
            durations=self._durations,
            queue_depth=running,
        )

    async def aclose(self) -> None:
        """Cancel running jobs and wait for them to release their locks."""
        tasks = [j.task for j in self._jobs.values() if j.task and not j.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class _LocalOps:
    """JobOps by direct calls, with the job's retry policy applied here."""

    def __init__(
        self,
        input: DownloadRecordsWorkflowInput,
        activities: DownloadActivities,
        live: dict[str, tuple[TableCheckpoint, int]],
        webhook: WebhookSender | None,
    ) -> None:
        self._input = input
        self._activities = activities
        self._live = live  # last committed checkpoint and attempt per table
        self._webhook = webhook

    async def resolve_tables(self, input: ResolveTablesInput) -> ResolveTablesResult:
        return await self._activities.resolve_tables(input)

    async def download_table(self, input: DownloadTableInput) -> DownloadTableResult:
        retry = self._input.retry
        resume: TableCheckpoint | None = None
        for attempt in range(1, retry.maximum_attempts + 1):

            def report(checkpoint: TableCheckpoint, attempt: int = attempt) -> None:
                self._live[input.table_id] = (checkpoint, attempt)

            report(resume or TableCheckpoint())
            try:
                return await self._activities.sync_table(
                    input, attempt=attempt, resume=resume, report=report
                )
            except PermanentSourceError as exc:
                raise TableFailedError(str(exc)) from exc
            except Exception as exc:
                log.warning(
                    "table_attempt_failed",
                    job_id=input.job_id,
                    workbook_id=input.workbook_id,
                    table_id=input.table_id,
                    attempt=attempt,
                    error=str(exc),
                )
                if attempt == retry.maximum_attempts:
                    raise TableFailedError(str(exc)) from exc
                resume = self._live[input.table_id][0]
                await asyncio.sleep(backoff_delay(retry, attempt))
        raise AssertionError("unreachable: maximum_attempts >= 1")

    async def release_locks(self, input: ReleaseLocksInput) -> None:
        await self._activities.release_locks(input)

    async def notify(self, event: JobEvent) -> None:
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
        if self._webhook is None or retry is None:
            return
        for attempt in range(1, retry.maximum_attempts + 1):
            try:
                await self._webhook.send(event)
                return
            except Exception as exc:
                log.warning(
                    "webhook_failed", event_id=event.event_id, attempt=attempt, error=str(exc)
                )
                if attempt < retry.maximum_attempts:
                    await asyncio.sleep(backoff_delay(retry, attempt))

    def now(self) -> datetime:
        return datetime.now(UTC)

    def progress_changed(self, progress: JobProgress) -> None:
        """Nothing to publish: progress() reads the run directly."""
