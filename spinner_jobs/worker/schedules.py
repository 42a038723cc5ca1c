"""The retention schedules: Temporal Schedules starting RetentionSweepWorkflow.

One schedule per job type (id ``spinner-jobs-retention:<task queue>:<job type>``),
sweeping only that type's jobs on its queue with its own keep counts, the way
BullMQ's removeOnComplete / removeOnFail are options of one queue. Every worker makes
sure they exist at start (:func:`ensure_retention_schedule`), so the settings of the
last started worker win.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import structlog
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from activities.retention import RetentionActivities, TemporalJobIndex
from enqueuer.jobtypes import JOB_TYPES, queue_config
from enqueuer.settings import Settings
from spinner_jobs.core import wire
from spinner_jobs.core.models import QueueSettings, RetentionSweepInput
from workflows.retention import RetentionSweepWorkflow

log = structlog.get_logger(__name__)

_MIN_CATCHUP = timedelta(minutes=1)


def retention_schedule_id(task_queue: str, job_type: str) -> str:
    """Id of the retention schedule of ``job_type``'s jobs on ``task_queue``."""
    return f"{wire.SCHEDULE_RETENTION_PREFIX}:{task_queue}:{job_type}"


def retention_sweep_input(settings: Settings, job_type: str) -> RetentionSweepInput:
    """The sweep of one job type: its keep counts, its jobs on its queue."""
    queue = queue_config(settings, JOB_TYPES.get(job_type))
    return RetentionSweepInput(
        keep_completed=queue.keep_completed,
        keep_failed=queue.keep_failed,
        workflow_type=job_type,
        query_filter=f'TaskQueue="{queue.task_queue}"',
    )


def retention_schedule(settings: Settings, job_type: str, sweep_queue: str) -> Schedule:
    """The schedule: one sweep every ``settings.retention.sweep_interval``.

    The sweep itself runs on ``sweep_queue``, the engine's own queue.
    """
    sweep = retention_sweep_input(settings, job_type)
    interval = settings.retention.sweep_interval
    return Schedule(
        action=ScheduleActionStartWorkflow(
            RetentionSweepWorkflow.run,
            sweep,
            # The server appends the scheduled time, so each sweep has its own id.
            id=f"{wire.WORKFLOW_RETENTION_SWEEP}:{sweep_queue}:{job_type}",
            task_queue=sweep_queue,
            static_summary=(
                f"Retention of {job_type} jobs: keep the newest {sweep.keep_completed} "
                f"completed and {sweep.keep_failed} failed"
            ),
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=interval)]),
        policy=SchedulePolicy(
            # A sweep still running makes the next one pointless, and after an outage
            # one catch-up sweep does the work of all the missed ones.
            overlap=ScheduleOverlapPolicy.SKIP,
            catchup_window=max(interval, _MIN_CATCHUP),
        ),
        state=ScheduleState(note="Managed by spinner-jobs: set again at each worker start."),
    )


async def ensure_retention_schedule(
    client: Client, settings: Settings, *, task_queue: str | None = None
) -> None:
    """Create each job type's retention schedule, or update it to the settings (idempotent).

    An update keeps the schedule's state, so a schedule an operator paused stays paused.

    Args:
        client: connected client (pydantic data converter).
        settings: engine settings (retention counts and interval, per job type).
        task_queue: override of ``settings.temporal.task_queue`` (tests): the sweeps
            run there and cover the jobs of every job type on it.

    """
    sweep_queue = task_queue or settings.temporal.task_queue
    for job_type in JOB_TYPES:
        if task_queue is not None:
            settings = _on_queue(settings, job_type.name, task_queue)
        await _ensure_one(client, settings, job_type.name, sweep_queue)


def _on_queue(settings: Settings, job_type: str, task_queue: str) -> Settings:
    """Settings with ``job_type`` on ``task_queue`` (the tests' own queues)."""
    current = settings.job_types.get(job_type, QueueSettings())
    job_types = {
        **settings.job_types,
        job_type: current.model_copy(update={"task_queue": task_queue}),
    }
    return settings.model_copy(update={"job_types": job_types})


async def _ensure_one(client: Client, settings: Settings, job_type: str, sweep_queue: str) -> None:
    queue = queue_config(settings, JOB_TYPES.get(job_type)).task_queue
    schedule_id = retention_schedule_id(queue, job_type)
    schedule = retention_schedule(settings, job_type, sweep_queue)
    sweep = retention_sweep_input(settings, job_type)
    fields = {
        "schedule_id": schedule_id,
        "job_type": job_type,
        "keep_completed": sweep.keep_completed,
        "keep_failed": sweep.keep_failed,
        "every": str(settings.retention.sweep_interval),
    }
    try:
        await client.create_schedule(schedule_id, schedule)
    except ScheduleAlreadyRunningError:
        pass
    else:
        log.info("retention_schedule_created", **fields)
        return

    def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
        state = current.description.schedule.state
        return ScheduleUpdate(schedule=dataclasses.replace(schedule, state=state))

    await client.get_schedule_handle(schedule_id).update(update)
    log.info("retention_schedule_updated", **fields)


def retention_worker_parts(
    client: Client,
) -> tuple[Sequence[type], Sequence[Callable[..., Any]]]:
    """Workflows and activities a worker registers to run the retention sweep.

    Returns:
        ``([RetentionSweepWorkflow], [sweep_closed_jobs bound to a TemporalJobIndex])``.

    """
    retention = RetentionActivities(TemporalJobIndex(client))
    return [RetentionSweepWorkflow], [retention.sweep_closed_jobs]
