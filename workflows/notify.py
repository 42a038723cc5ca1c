"""NotifyWorkflow: delivers one job's webhook events, in order, outside the job.

A receiver that is slow or down must not hold a table slot or delay the job's end, so
the job hands each event to this workflow (a child that outlives its parent) by signal
and goes on. Each event is one notify activity with the webhook's retry policy; an
event whose retries run out is dropped with a ``webhook_given_up`` log line and the
next one is tried. The workflow ends after the job's final event.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.notify import NotifyActivities
    from spinner_jobs.core import wire
    from spinner_jobs.core.models import EventKind, JobEvent, NotifyInput, NotifyWorkflowInput

_FINAL = {EventKind.JOB_COMPLETED, EventKind.JOB_FAILED, EventKind.JOB_CANCELLED}
# A notifier whose job never sends its final event (the job was terminated) stops
# after this long without an event.
_IDLE = timedelta(days=1)


@workflow.defn(name=wire.WORKFLOW_NOTIFY)
class NotifyWorkflow:
    """Deliver the events signalled by one job, one at a time."""

    def __init__(self) -> None:
        self._queue: list[JobEvent] = []
        self._closed = False

    @workflow.signal(name=wire.SIGNAL_NOTIFY_EVENT)
    def event(self, event: JobEvent) -> None:
        """Queue an event of the job."""
        self._queue.append(event)

    @workflow.run
    async def run(self, input: NotifyWorkflowInput) -> int:
        """Deliver events until the job's final one; return how many were delivered."""
        r = input.retry
        policy = RetryPolicy(
            maximum_attempts=r.maximum_attempts,
            initial_interval=r.initial_interval,
            backoff_coefficient=r.backoff_coefficient,
            maximum_interval=r.maximum_interval,
        )
        delivered = 0
        while self._queue or not self._closed:
            try:
                await workflow.wait_condition(lambda: bool(self._queue), timeout=_IDLE)
            except TimeoutError:
                return delivered
            event = self._queue.pop(0)
            self._closed = self._closed or event.kind in _FINAL
            try:
                await workflow.execute_activity_method(
                    NotifyActivities.notify,
                    NotifyInput(event=event),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=policy,
                    summary=f"Notify {event.kind.value}",
                )
                delivered += 1
            except ActivityError:
                workflow.logger.warning(
                    "webhook_given_up",
                    extra={
                        "event_id": event.event_id,
                        "job_id": event.job_id,
                        "workbook_id": event.workbook_id,
                        "table_id": event.table_id,
                        "attempts": r.maximum_attempts,
                    },
                )
        return delivered
