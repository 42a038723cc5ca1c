"""Names that travel over the wire: workflow/activity names and search attributes.

Defined once here so a rename in code never breaks a running history, and every side
(enqueuer, worker, tests, dev server flags) agrees on them.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import SearchAttributeKey

WORKFLOW_DOWNLOAD_RECORDS = "download-records"
WORKFLOW_RETENTION_SWEEP = "retention-sweep"
WORKFLOW_NOTIFY = "notify-events"
"""Per-job notifier: delivers the job's webhook events outside the job's table slots."""

ACTIVITY_RESOLVE_TABLES = "resolve-tables"
ACTIVITY_DOWNLOAD_TABLE = "download-table"
ACTIVITY_RELEASE_LOCKS = "release-locks"
ACTIVITY_NOTIFY = "notify"
ACTIVITY_SWEEP_CLOSED_JOBS = "sweep-closed-jobs"


def table_activity_id(table_id: str, attempt: int) -> str:
    """The activity id of one attempt at a table (``table_of_activity`` reverses it)."""
    return f"table:{attempt}:{table_id}"


def table_of_activity(activity_id: str) -> str | None:
    """The table id of a table attempt's activity id, or None for other activities."""
    kind, _, rest = activity_id.partition(":")
    if kind != "table":
        return None
    return rest.partition(":")[2]


WORKER_HEARTBEAT_INTERVAL = timedelta(seconds=5)
"""How often a worker process tells the server it is alive (``stats().workers``)."""

SCHEDULE_RETENTION_PREFIX = "spinner-jobs-retention"
"""Retention schedule id prefix; the id is ``<prefix>:<task queue>``, one per queue."""

MEMO_TABLES = "tables"
"""Memo key of a job's table ids (a repeated enqueue's ref is built from it)."""
MEMO_METADATA = "metadata"
"""Memo key of the caller's metadata."""

QUERY_PROGRESS = "progress"
SIGNAL_TABLE_LIVE = "table-live"
"""Signal of a table activity to its job: the live record count (Web UI details)."""
SIGNAL_NOTIFY_EVENT = "event"
"""Signal of a job to its notifier: one event to deliver."""

SA_WORKBOOK_ID = SearchAttributeKey.for_keyword("WorkbookId")
SA_USER_ID = SearchAttributeKey.for_keyword("UserId")
SA_ORGANIZATION_ID = SearchAttributeKey.for_keyword("OrganizationId")
SA_JOB_TYPE = SearchAttributeKey.for_keyword("JobType")

SEARCH_ATTRIBUTES = (SA_WORKBOOK_ID, SA_USER_ID, SA_ORGANIZATION_ID, SA_JOB_TYPE)
"""Custom search attributes the engine sets on every job (all Keyword)."""


def dev_server_search_attribute_flags() -> list[str]:
    """``temporal server start-dev`` flags registering :data:`SEARCH_ATTRIBUTES`."""
    flags: list[str] = []
    for key in SEARCH_ATTRIBUTES:
        flags += ["--search-attribute", f"{key.name}=Keyword"]
    return flags


# Prometheus metrics the worker exports besides the SDK's own (see worker/metrics.py).
METRIC_RECORDS_DOWNLOADED = "spinner_records_downloaded"
METRIC_TABLES_COMPLETED = "spinner_tables_completed"
METRIC_TABLES_FAILED = "spinner_tables_failed"
METRIC_JOB_DURATION = "spinner_job_duration_seconds"
