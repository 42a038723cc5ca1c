"""spinner-jobs public API: enqueue jobs of the registered job types and follow them."""

from activities.export import ExportRecordsInput
from activities.publish import PublishChangesInput
from enqueuer.client import Enqueuer
from enqueuer.jobtypes import JOB_TYPES
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
    UnknownJobTypeError,
    WorkbookNotFoundError,
)
from spinner_jobs.core.models import (
    Actor,
    DownloadRecordsInput,
    EventKind,
    JobEvent,
    JobOptions,
    JobProgress,
    JobRef,
    JobResult,
    JobStats,
    JobStatus,
    TableProgress,
    TableStatus,
)

__all__ = [
    "JOB_TYPES",
    "Actor",
    "DownloadRecordsInput",
    "EnqueueConnectionError",
    "Enqueuer",
    "EventKind",
    "ExportRecordsInput",
    "InvalidJobError",
    "JobConflictError",
    "JobEvent",
    "JobNotFoundError",
    "JobOptions",
    "JobProgress",
    "JobRef",
    "JobResult",
    "JobStats",
    "JobStatus",
    "PublishChangesInput",
    "QueueFullError",
    "ServerSetupError",
    "Settings",
    "SpinnerError",
    "TableNotFoundError",
    "TableProgress",
    "TableStatus",
    "UnknownJobTypeError",
    "WorkbookNotFoundError",
]
