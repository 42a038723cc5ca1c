"""spinner-jobs public API: enqueue download-records jobs and follow them."""

from enqueuer.client import Enqueuer
from enqueuer.settings import Settings
from spinner_jobs.core.errors import (
    EnqueueConnectionError,
    InvalidJobError,
    JobConflictError,
    JobNotFoundError,
    QueueFullError,
    ServerSetupError,
    SpinnerError,
    TableNotFoundError,
    WorkbookNotFoundError,
)
from spinner_jobs.core.models import (
    Actor,
    EventKind,
    JobEvent,
    JobProgress,
    JobRef,
    JobResult,
    JobStats,
    JobStatus,
    TableProgress,
    TableStatus,
)

__all__ = [
    "Actor",
    "EnqueueConnectionError",
    "Enqueuer",
    "EventKind",
    "InvalidJobError",
    "JobConflictError",
    "JobEvent",
    "JobNotFoundError",
    "JobProgress",
    "JobRef",
    "JobResult",
    "JobStats",
    "JobStatus",
    "QueueFullError",
    "ServerSetupError",
    "Settings",
    "SpinnerError",
    "TableNotFoundError",
    "TableProgress",
    "TableStatus",
    "WorkbookNotFoundError",
]
