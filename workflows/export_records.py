"""ExportRecordsWorkflow and the export-records job type (report generation).

Writes a snapshot of a workbook's tables to files (CSV or JSON Lines) under
``<data dir>/exports/<job>/``: one file per table, streamed page by page and written
atomically; each table's result lists the file's path, rows, bytes and SHA-256.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.export import ACTIVITY_EXPORT_TABLE, ExportActivities, ExportRecordsInput
    from spinner_jobs.core.models import JobResult, JobWorkflowInput, QueueSettings
    from workflows.jobtype import JobType
    from workflows.table_job import TableJobWorkflow

WORKFLOW_EXPORT_RECORDS = "export-records"


@workflow.defn(name=WORKFLOW_EXPORT_RECORDS)
class ExportRecordsWorkflow(TableJobWorkflow):
    """Export a workbook's tables to files, one per table."""

    table_activity = ACTIVITY_EXPORT_TABLE
    verb = "Export"

    @workflow.init
    def __init__(self, input: JobWorkflowInput) -> None:
        self._setup(input)

    @workflow.run
    async def run(self, input: JobWorkflowInput) -> JobResult:
        """Run the job; fail (naming the failed tables) if any table failed."""
        return await self._run_job()


EXPORT_RECORDS = JobType(
    name=WORKFLOW_EXPORT_RECORDS,
    input_model=ExportRecordsInput,
    workflow=ExportRecordsWorkflow,
    work=ExportActivities,
    verb=ExportRecordsWorkflow.verb,
    description="Write a snapshot of a workbook's tables to CSV or JSON Lines files.",
    # Reports can wait for interactive work; keep more of them for people to fetch.
    queue=QueueSettings(priority=4, keep_completed=20),
    store_counts=False,
)
