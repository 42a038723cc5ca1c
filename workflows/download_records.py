"""DownloadRecordsWorkflow and the download-records job type.

The workflow is the shared table-job workflow (:mod:`workflows.table_job`) with the
``download-table`` activity; the declaration below is all the engine needs to know.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.download import DownloadActivities
    from spinner_jobs.core import wire
    from spinner_jobs.core.models import DownloadRecordsInput, JobResult, JobWorkflowInput
    from workflows.jobtype import JobType
    from workflows.table_job import TableJobWorkflow, render_details

__all__ = ["DOWNLOAD_RECORDS", "DownloadRecordsWorkflow", "render_details"]


@workflow.defn(name=wire.WORKFLOW_DOWNLOAD_RECORDS)
class DownloadRecordsWorkflow(TableJobWorkflow):
    """Download the records of a workbook's tables into the snapshot store."""

    table_activity = wire.ACTIVITY_DOWNLOAD_TABLE
    verb = "Download"

    @workflow.init
    def __init__(self, input: JobWorkflowInput) -> None:
        self._setup(input)

    @workflow.run
    async def run(self, input: JobWorkflowInput) -> JobResult:
        """Run the job; fail (naming the failed tables) if any table failed."""
        return await self._run_job()


DOWNLOAD_RECORDS = JobType(
    name=wire.WORKFLOW_DOWNLOAD_RECORDS,
    input_model=DownloadRecordsInput,
    workflow=DownloadRecordsWorkflow,
    work=DownloadActivities,
    verb=DownloadRecordsWorkflow.verb,
    description="Download the records of a workbook's tables from their sources.",
    # A small table finishes inside the job's first workflow task; a big one goes on
    # in regular (heartbeating) attempts after a second.
    brief_attempt=timedelta(seconds=1),
)
