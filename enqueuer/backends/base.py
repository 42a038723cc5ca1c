"""The port the :class:`enqueuer.Enqueuer` drives; one implementation per backend."""

from __future__ import annotations

from typing import Literal, Protocol

from spinner_jobs.core.models import (
    Backend,
    DownloadRecordsWorkflowInput,
    JobProgress,
    JobResult,
    JobStats,
)

HolderState = Literal["running", "closed", "unknown"]
"""What a backend knows of a lock holder: running, closed, or never seen (not started
yet, removed by retention, or run by another process's in-process backend)."""


class JobBackend(Protocol):
    """Starts, watches and stops download-records jobs.

    Every read and control call names the caller's organization: a job of another
    organization, or anything that is not one of the engine's jobs, raises
    ``JobNotFoundError`` exactly as an unknown id does.
    """

    kind: Backend

    async def start(self, input: DownloadRecordsWorkflowInput, summary: str) -> str | None:
        """Start the job at once; return its run id (if the backend has one).

        Raises:
            EnqueueConnectionError: the backend cannot be reached in time.

        """
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

    async def count_running(self) -> int:
        """Number of running download-records jobs (for the pending-jobs cap)."""
        ...

    async def stats(self, organization_id: str | None = None) -> JobStats:
        """Counts by status, rates, processing times and queue depth of the jobs."""
        ...

    async def aclose(self) -> None:
        """Release connections and stop background work."""
        ...
