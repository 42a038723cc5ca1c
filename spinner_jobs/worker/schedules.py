"""The retention schedule: a Temporal Schedule starting RetentionSweepWorkflow.

One schedule per task queue (id ``spinner-jobs-retention:<task queue>``), sweeping
only the jobs of that queue, the way BullMQ's removeOnComplete / removeOnFail are
options of one queue. Every worker makes sure it exists at start
(:func:`ensure_retention_schedule`), so the settings of the last started worker win.
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
from enqueuer.settings import Settings
from spinner_jobs.core import wire
from spinner_jobs.core.models import RetentionSweepInput
from workflows.retention import RetentionSweepWorkflow

log = structlog.get_logger(__name__)

_MIN_CATCHUP = timedelta(minutes=1)


def retention_schedule_id(task_queue: str) -> str:
    """Id of the retention schedule of ``task_queue``."""
    return f"{wire.SCHEDULE_RETENTION_PREFIX}:{task_queue}"


def retention_sweep_input(settings: Settings, task_queue: str) -> RetentionSweepInput:
    """The sweep the schedule starts: the settings' keep counts, jobs of ``task_queue``."""
    return RetentionSweepInput(
        keep_completed=settings.retention.keep_completed,
        keep_failed=settings.retention.keep_failed,
        query_filter=f'TaskQueue="{task_queue}"',
    )


def retention_schedule(settings: Settings, task_queue: str) -> Schedule:
    """The schedule: one sweep every ``settings.retention.sweep_interval``."""
    sweep = retention_sweep_input(settings, task_queue)
    interval = settings.retention.sweep_interval
    return Schedule(
        action=ScheduleActionStartWorkflow(
            RetentionSweepWorkflow.run,
            sweep,
            # The server appends the scheduled time, so each sweep has its own id.
            id=f"{wire.WORKFLOW_RETENTION_SWEEP}:{task_queue}",
            task_queue=task_queue,
            static_summary=(
                f"Retention of {task_queue}: keep the newest {sweep.keep_completed} completed "
                f"and {sweep.keep_failed} failed jobs"
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
    """Create the retention schedule, or update it to the current settings (idempotent).

    An update keeps the schedule's state, so a schedule an operator paused stays paused.

    Args:
        client: connected client (pydantic data converter).
        settings: engine settings (retention counts and interval).
        task_queue: override of ``settings.temporal.task_queue`` (tests).

    """
    queue = task_queue or settings.temporal.task_queue
    schedule_id = retention_schedule_id(queue)
    schedule = retention_schedule(settings, queue)
    fields = {
        "schedule_id": schedule_id,
        "keep_completed": settings.retention.keep_completed,
        "keep_failed": settings.retention.keep_failed,
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
