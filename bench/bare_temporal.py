"""The bare-Temporal baseline of the small-job benchmark: one workflow, one trivial activity.

No engine around it: no validation, store, locks, progress or notifications. What is
left is Temporal's own cost of a job: two workflow tasks and one activity task.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

BARE_WORKFLOW = "bench-bare-one-activity"
BARE_ACTIVITY = "bench-bare-echo"


@activity.defn(name=BARE_ACTIVITY)
async def echo(value: str) -> str:
    """Return the value unchanged."""
    return value


@workflow.defn(name=BARE_WORKFLOW)
class BareWorkflow:
    """Run :func:`echo` once and return its result."""

    @workflow.run
    async def run(self, value: str) -> str:
        """Run the one activity."""
        return await workflow.execute_activity(
            echo, value, start_to_close_timeout=timedelta(seconds=30)
        )
