"""The job type: everything the engine needs to know of one kind of job, declared once.

A job type is a workflow type (its name), a typed input, the Temporal workflow that
orchestrates it, the table work that runs each table (and its activity), its queue
settings and what it locks. The backends, stats, retention, the CLI and the
``Enqueuer`` read job types from the registry (``enqueuer.jobtypes``); none of them
names one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from spinner_jobs.core.models import JobSpec, LockPolicy, QueueSettings, TableJobInput

if TYPE_CHECKING:
    from activities.tables import TableWork, WorkParts


@dataclass(frozen=True)
class JobType:
    """One kind of job that works table by table on a workbook."""

    name: str
    """Job type and Temporal workflow type, e.g. ``"export-records"``."""
    input_model: type[TableJobInput]
    """The typed input a caller gives; fields beyond the base reach each table attempt."""
    workflow: type[Any]
    """The ``@workflow.defn`` class (a :class:`workflows.table_job.TableJobWorkflow`)."""
    work: Callable[[WorkParts], TableWork]
    """Builds the table work (engine-neutral core + its activity) from the worker's parts."""
    verb: str
    """How a summary starts: ``"Download"`` gives "Download 3 tables of workbook …"."""
    description: str
    """One line for the CLI and the docs."""
    queue: QueueSettings = field(default_factory=QueueSettings)
    """Defaults of its queue settings (unset fields: the engine's)."""
    locks: LockPolicy = LockPolicy.TABLES
    brief_attempt: timedelta | None = None
    """Run each table's first attempt inside the workflow task for at most this long
    (its work must stop after a step once ``TableTaskInput.budget`` has passed and
    return ``finished=False``); None: regular attempts only."""
    store_counts: bool = True
    """A stopped table's figure is the store's count of records the job wrote to it
    (true of downloads); False keeps the count its attempts reported."""

    def summary(self, job: JobSpec, tables: list[str]) -> str:
        """The one-line summary of a job, shown in the Temporal Web UI."""
        plural = "s" * (len(tables) != 1)
        return (
            f"{self.verb} {len(tables)} table{plural} of workbook {job.workbook_id} "
            f"for user {job.actor.user_id}"
        )

    def options_of(self, input: TableJobInput) -> dict[str, Any]:
        """The job type's own input fields, as JSON, for its table attempts."""
        return input.model_dump(mode="json", exclude=set(TableJobInput.model_fields))
