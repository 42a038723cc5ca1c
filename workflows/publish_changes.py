"""PublishChangesWorkflow and the publish-changes job type (data synchronization).

Pushes the local edits of a workbook's tables back to their sources, each change once;
progress per table is changes done out of the table's total.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.publish import ACTIVITY_PUBLISH_TABLE, PublishActivities, PublishChangesInput
    from spinner_jobs.core.models import JobResult, JobWorkflowInput, QueueSettings
    from workflows.jobtype import JobType
    from workflows.table_job import TableJobWorkflow

WORKFLOW_PUBLISH_CHANGES = "publish-changes"


@workflow.defn(name=WORKFLOW_PUBLISH_CHANGES)
class PublishChangesWorkflow(TableJobWorkflow):
    """Publish the local edits of a workbook's tables to their sources."""

    table_activity = ACTIVITY_PUBLISH_TABLE
    verb = "Publish changes of"

    @workflow.init
    def __init__(self, input: JobWorkflowInput) -> None:
        self._setup(input)

    @workflow.run
    async def run(self, input: JobWorkflowInput) -> JobResult:
        """Run the job; fail (naming the failed tables) if any table failed."""
        return await self._run_job()


PUBLISH_CHANGES = JobType(
    name=WORKFLOW_PUBLISH_CHANGES,
    input_model=PublishChangesInput,
    workflow=PublishChangesWorkflow,
    work=PublishActivities,
    verb=PublishChangesWorkflow.verb,
    description="Push the local edits of a workbook's tables back to their sources.",
    # A person waits for their edits to land: ahead of downloads and exports.
    queue=QueueSettings(priority=2),
    store_counts=False,
)
