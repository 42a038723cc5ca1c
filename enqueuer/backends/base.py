"""The port the :class:`enqueuer.Enqueuer` drives; one implementation per backend."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, Protocol

from spinner_jobs.core.errors import SpinnerError
from spinner_jobs.core.models import (
    Backend,
    JobProgress,
    JobRef,
    JobResult,
    JobStats,
    JobStatus,
    JobSummary,
    JobWorkflowInput,
)
from workflows.jobtype import JobType

HolderState = Literal["running", "closed", "unknown"]
"""What a backend knows of a lock holder: running, closed, or never seen (not started
yet, removed by retention, or run by another process's in-process backend)."""


@dataclass(frozen=True)
class StartRequest:
    """A job to start: its workflow input and how to start it."""

    input: JobWorkflowInput
    job_type: JobType
    summary: str
    task_queue: str
    delay: timedelta | None = None


class JobIdTakenError(SpinnerError):
    """A job with this id exists already (a caller's key enqueued twice at once)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id!r} exists already")


class JobBackend(Protocol):
    """Starts, watches and stops jobs of the registered job types.

    Every read and control call names the caller's organization: a job of another
    organization, or anything that is not one of the engine's jobs, raises
    ``JobNotFoundError`` exactly as an unknown id does.
    """

    kind: Backend

    async def start(self, request: StartRequest) -> str | None:
        """Start the job (after ``request.delay``); return its run id, if any.

        Raises:
            JobIdTakenError: a job with the same id exists (running or closed).
            EnqueueConnectionError: the backend cannot be reached in time.

        """
        ...

    async def find(self, job_id: str, organization_id: str) -> JobRef | None:
        """The ref of an existing job of the organization, or None."""
        ...

    async def progress(self, job_id: str, organization_id: str) -> JobProgress:
        """Live progress of a job (raises JobNotFoundError, WorkerUnavailableError)."""
        ...

    async def wait(self, job_id: str, organization_id: str) -> JobResult:
        """Wait for the job to close and return its result (raises JobNotFoundError)."""
        ...

    async def cancel(self, job_id: str, organization_id: str) -> None:
        """Ask the job to stop; its locks are released.

        Raises:
            JobNotFoundError: no such job for the organization.
            JobAlreadyClosedError: the job has already closed.

        """
        ...

    async def holder_state(self, job_id: str) -> HolderState:
        """Whether a lock holder's job is running, closed or unknown to the backend."""
        ...

    async def count_running(self, job_type: str, task_queue: str) -> int:
        """Number of running jobs of the type on its queue (the pending-jobs cap)."""
        ...

    async def stats(
        self, job_types: list[str], task_queue: str | None, organization_id: str | None = None
    ) -> JobStats:
        """Counts by status, rates, processing times and queue depth of the jobs.

        Args:
            job_types: the job types counted.
            task_queue: the queue whose backlog and workers are measured (Temporal).
            organization_id: only this organization's jobs; None for all.

        """
        ...

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
        """One page of the organization's jobs, running ones first, then the most recently closed.

        Args:
            organization_id: whose jobs.
            job_types: only jobs of these types.
            workbook_id: only jobs of this workbook.
            status: only jobs in this status (failed includes terminated and timed out).
            page_token: where the previous page ended; None for the first page.
            page_size: at most this many jobs.

        Returns:
            The jobs, and the token of the next page (None after the last one).

        Raises:
            InvalidJobError: a filter value or the page token is not valid.

        """
        ...

    async def aclose(self) -> None:
        """Release connections and stop background work."""
        ...
