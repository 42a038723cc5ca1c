"""The port the :class:`enqueuer.Enqueuer` drives; one implementation per backend."""

from __future__ import annotations

from typing import Protocol

from enqueuer.models import (
    Backend,
    DownloadRecordsWorkflowInput,
    JobProgress,
    JobResult,
    JobStats,
)


class JobBackend(Protocol):
    """Starts, watches and stops download-records jobs."""

    kind: Backend

    async def start(self, input: DownloadRecordsWorkflowInput, summary: str) -> str | None:
        """Start the job at once; return its run id (if the backend has one).

        Raises:
            EnqueueConnectionError: the backend cannot be reached in time.

        """
        ...

    async def progress(self, job_id: str) -> JobProgress:
        """Live progress of a job (raises JobNotFoundError)."""
        ...

    async def wait(self, job_id: str) -> JobResult:
        """Wait for the job to close and return its result (raises JobNotFoundError)."""
        ...

    async def cancel(self, job_id: str) -> None:
        """Ask the job to stop; its locks are released (raises JobNotFoundError)."""
        ...

    async def is_running(self, job_id: str) -> bool:
        """Whether the job exists and has not closed."""
        ...

    async def count_running(self) -> int:
        """Number of running download-records jobs (for the pending-jobs cap)."""
        ...

    async def stats(self) -> JobStats:
        """Counts by status, rates, processing times and queue depth of the jobs."""
        ...

    async def aclose(self) -> None:
        """Release connections and stop background work."""
        ...
