"""RetentionSweepWorkflow: keep the newest N completed and M failed jobs, delete the rest.

Started by the retention schedule (:mod:`worker.schedules`) every sweep interval.
Deterministic and thin: the listing and deleting happen in one activity
(:meth:`RetentionActivities.sweep_closed_jobs`), which is idempotent, so a retried
or overlapping sweep does no harm.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.retention import RetentionActivities
    from spinner_jobs.core import wire
    from spinner_jobs.core.models import RetentionSweepInput, RetentionSweepResult

# Generous: a sweep over thousands of jobs deletes them one RPC at a time.
_SWEEP_TIMEOUT = timedelta(minutes=10)
# The activity heartbeats per listed and per deleted run; silence means a stuck worker.
_SWEEP_HEARTBEAT = timedelta(seconds=30)
# Bounded: the next scheduled sweep tries again anyway.
_SWEEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=5,
)


@workflow.defn(name=wire.WORKFLOW_RETENTION_SWEEP)
class RetentionSweepWorkflow:
    """Delete closed jobs of one type beyond the newest ``keep_*`` of each bucket."""

    @workflow.run
    async def run(self, input: RetentionSweepInput) -> RetentionSweepResult:
        """Run one sweep and return what it deleted and kept."""
        return await workflow.execute_activity_method(
            RetentionActivities.sweep_closed_jobs,
            input,
            start_to_close_timeout=_SWEEP_TIMEOUT,
            heartbeat_timeout=_SWEEP_HEARTBEAT,
            retry_policy=_SWEEP_RETRY,
            summary=(
                f"Keep the newest {input.keep_completed} completed and "
                f"{input.keep_failed} failed {input.workflow_type} jobs"
            ),
        )
