"""The job-type registry and each job type's effective queue settings.

Registering a job type is one line in :data:`JOB_TYPES`. Everything else (the
backends, the worker, stats, retention, the CLI, the ``Enqueuer``) iterates it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

from enqueuer.settings import Settings
from spinner_jobs.core.errors import UnknownJobTypeError
from spinner_jobs.core.models import DEFAULT_PRIORITY, QueueSettings, RetryOptions, RetryOverride
from workflows.download_records import DOWNLOAD_RECORDS
from workflows.export_records import EXPORT_RECORDS
from workflows.jobtype import JobType
from workflows.publish_changes import PUBLISH_CHANGES


class JobTypeRegistry:
    """Job types by name, in registration order."""

    def __init__(self, job_types: Iterable[JobType]) -> None:
        self._types: dict[str, JobType] = {}
        for job_type in job_types:
            if job_type.name in self._types:
                raise ValueError(f"job type {job_type.name!r} is registered twice")
            self._types[job_type.name] = job_type

    def get(self, job_type: str | JobType) -> JobType:
        """The registered job type of that name (or that declaration).

        Raises:
            UnknownJobTypeError: no such job type is registered.

        """
        name = job_type.name if isinstance(job_type, JobType) else job_type
        found = self._types.get(name) if isinstance(name, str) else None
        if found is None:
            raise UnknownJobTypeError(str(name), self.names)
        return found

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[JobType]:
        return iter(self._types.values())

    @property
    def names(self) -> list[str]:
        """Names of the registered job types."""
        return list(self._types)


JOB_TYPES = JobTypeRegistry([DOWNLOAD_RECORDS, PUBLISH_CHANGES, EXPORT_RECORDS])
"""Every job type the engine runs. Adding one is one more entry here."""


@dataclass(frozen=True)
class QueueConfig:
    """A job type's effective queue settings (declaration, engine settings, overrides)."""

    task_queue: str
    priority: int
    table_parallelism: int
    table_timeout: timedelta
    heartbeat_timeout: timedelta
    max_pending: int
    keep_completed: int
    keep_failed: int
    retry: RetryOptions


def queue_config(settings: Settings, job_type: JobType) -> QueueConfig:
    """Resolve a job type's queue settings.

    From weakest to strongest: the engine's defaults, the job type's declared defaults,
    engine-wide settings set explicitly (``SPINNER_JOBS_*``, ``SPINNER_RETRY_*``,
    ``SPINNER_RETENTION_*``, ``SPINNER_TEMPORAL_TASK_QUEUE``), and the job type's own
    section of ``SPINNER_JOB_TYPES``.

    Raises:
        UnknownJobTypeError: ``SPINNER_JOB_TYPES`` names a job type that is not registered.

    """
    check_job_type_settings(settings)
    declared = job_type.queue
    override = settings.job_types.get(job_type.name, QueueSettings())

    def pick(section: object, name: str, declared_value: object, override_value: object) -> object:
        if override_value is not None:
            return override_value
        explicit = name in getattr(section, "model_fields_set", set())
        if declared_value is not None and not explicit:
            return declared_value
        return getattr(section, name)

    retry = settings.retry.model_dump()
    for layer, explicit in (
        (declared.retry, False),
        (override.retry, True),
    ):
        if layer is None:
            continue
        for name, value in layer.model_dump(exclude_none=True).items():
            if explicit or name not in settings.retry.model_fields_set:
                retry[name] = value
    jobs, retention, temporal = settings.jobs, settings.retention, settings.temporal
    return QueueConfig(
        task_queue=str(pick(temporal, "task_queue", declared.task_queue, override.task_queue)),
        priority=override.priority or declared.priority or DEFAULT_PRIORITY,
        table_parallelism=int(
            pick(jobs, "table_parallelism", declared.table_parallelism, override.table_parallelism)  # type: ignore[call-overload]
        ),
        table_timeout=_duration(
            pick(jobs, "table_timeout", declared.table_timeout, override.table_timeout)
        ),
        heartbeat_timeout=_duration(
            pick(jobs, "heartbeat_timeout", declared.heartbeat_timeout, override.heartbeat_timeout)
        ),
        max_pending=int(pick(jobs, "max_pending", declared.max_pending, override.max_pending)),  # type: ignore[call-overload]
        keep_completed=int(
            pick(retention, "keep_completed", declared.keep_completed, override.keep_completed)  # type: ignore[call-overload]
        ),
        keep_failed=int(
            pick(retention, "keep_failed", declared.keep_failed, override.keep_failed)  # type: ignore[call-overload]
        ),
        retry=RetryOptions(**retry),
    )


def with_retry(retry: RetryOptions, override: RetryOverride | None) -> RetryOptions:
    """A job's retry policy: its job type's, with the job's own fields over it."""
    if override is None:
        return retry
    return retry.model_copy(update=override.model_dump(exclude_none=True))


def check_job_type_settings(settings: Settings) -> None:
    """Refuse per-type settings of a job type that is not registered (a typo)."""
    for name in settings.job_types:
        if name not in JOB_TYPES:
            raise UnknownJobTypeError(name, JOB_TYPES.names)


def task_queues(settings: Settings) -> dict[str, list[JobType]]:
    """The job types of each task queue the engine uses."""
    queues: dict[str, list[JobType]] = {settings.temporal.task_queue: []}
    for job_type in JOB_TYPES:
        queues.setdefault(queue_config(settings, job_type).task_queue, []).append(job_type)
    return queues


def _duration(value: object) -> timedelta:
    assert isinstance(value, timedelta)
    return value
