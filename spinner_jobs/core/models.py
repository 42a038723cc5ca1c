"""Pydantic models shared by the enqueuer, workflows, activities and store.

Public inputs and outputs first, then the catalog, then the wire models that travel
between workflow and activities (one model in and out of each).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, overload

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SecretStr,
    StrictInt,
    StringConstraints,
)

NonEmptyStr = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        min_length=1,
        max_length=200,
        # No control characters (NUL among them): ids travel to SQL, logs and headers.
        pattern=r"^[^\x00-\x1f\x7f]+$",
    ),
]

JOB_TYPE_DOWNLOAD_RECORDS = "download-records"
# Task-queue priorities: 1 runs first, 5 last; a job that names none gets the middle one.
HIGHEST_PRIORITY = 1
LOWEST_PRIORITY = 5
DEFAULT_PRIORITY = 3

RecordRow = tuple[str, Mapping[str, Any]]
"""A stored record as a bare ``(remote_id, fields)`` pair, as the store reads it back."""

PageRecord = tuple[str, Mapping[str, Any] | str]
"""A record a connector read, on its way to the store: ``(remote_id, fields)``.

The fields are a mapping, or a ``str`` of the record's JSON object text as the source
sent it, which the store keeps as it is (no decoding and encoding on the hot path).
"""


class RecordTexts(Sequence[PageRecord]):
    """A page's records as two parallel lists: remote ids and JSON object texts.

    It reads as the ``(remote_id, text)`` pairs it holds, so any caller of a page works
    with it unchanged; a store writes it from the two lists without a tuple per record
    built in Python (the SQLite upsert binds ``zip`` of the columns).
    """

    __slots__ = ("ids", "texts")

    def __init__(self, ids: list[str], texts: list[str]) -> None:
        if len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} record texts")
        self.ids = ids
        self.texts = texts

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[PageRecord]:
        return zip(self.ids, self.texts, strict=True)

    @overload
    def __getitem__(self, index: int) -> PageRecord: ...
    @overload
    def __getitem__(self, index: slice) -> RecordTexts: ...
    def __getitem__(self, index: int | slice) -> PageRecord | RecordTexts:
        if isinstance(index, slice):
            return RecordTexts(self.ids[index], self.texts[index])
        return self.ids[index], self.texts[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RecordTexts):
            return self.ids == other.ids and self.texts == other.texts
        if isinstance(other, Sequence) and not isinstance(other, str):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable lists inside

    def __repr__(self) -> str:
        return f"RecordTexts({len(self)} records)"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- public inputs and outputs -----------------------------------------------------------


class Actor(_Model):
    """Who asks for a job: the user and the organization they act for."""

    user_id: NonEmptyStr
    organization_id: NonEmptyStr


class TableJobInput(_Model):
    """What every job type works on: some or all tables of one workbook.

    A job type's input model subclasses it; its own fields travel to the job's
    table activities as ``options``.
    """

    workbook_id: NonEmptyStr
    table_ids: list[NonEmptyStr] | None = Field(
        None, description="Tables the job works on; None for every table of the workbook."
    )


class DownloadRecordsInput(TableJobInput):
    """Input of a download-records job: the tables whose records to download."""


class RetryOverride(_Model):
    """A job's own table retry policy, over its job type's (unset fields keep it)."""

    maximum_attempts: int | None = Field(None, ge=1, le=100)
    initial_interval: timedelta | None = None
    backoff_coefficient: float | None = Field(None, ge=1.0, le=10.0)
    maximum_interval: timedelta | None = None


class JobOptions(_Model):
    """How to run one job, over its job type's defaults."""

    job_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
        description="Caller's idempotency key (letters, digits, '.', '_', ':', '-'; at "
        "most 128): enqueueing the same key again (same organization and job type) "
        "returns the existing job instead of a second one.",
    )
    priority: StrictInt | None = Field(
        None,
        ge=HIGHEST_PRIORITY,
        le=LOWEST_PRIORITY,
        description="1 (runs first) to 5 (runs last); None for the job type's default.",
    )
    retry: RetryOverride | None = None
    metadata: dict[str, JsonValue] | None = Field(
        None, description="Caller's JSON object carried with the job (size-capped)."
    )
    delay: timedelta | None = Field(
        None, description="Start the job this long after the enqueue (at most 30 days)."
    )


class QueueSettings(_Model):
    """A job type's queue settings; every unset field falls back to the engine's.

    A job type declares its defaults in one; ``SPINNER_JOB_TYPES`` overrides them per
    job type (see ``enqueuer.settings``).
    """

    task_queue: str | None = Field(
        None, min_length=1, description="Task queue of its jobs; None: the engine's queue."
    )
    priority: int | None = Field(
        None, ge=HIGHEST_PRIORITY, le=LOWEST_PRIORITY, description="Default job priority."
    )
    table_parallelism: int | None = Field(None, ge=1, le=64, description="Tables run at once.")
    table_timeout: timedelta | None = Field(None, description="Longest attempt at one table.")
    heartbeat_timeout: timedelta | None = Field(
        None, description="A silent table attempt is resumed elsewhere after this long."
    )
    max_pending: int | None = Field(None, ge=1, description="Cap on its running jobs.")
    keep_completed: int | None = Field(None, ge=0, description="Completed jobs kept.")
    keep_failed: int | None = Field(None, ge=0, description="Failed jobs kept.")
    retry: RetryOverride | None = Field(None, description="Table retry policy.")


class LockPolicy(StrEnum):
    """What a job of a job type owns while it runs."""

    TABLES = "tables"
    """Its tables, exclusively: no other job of any type works on them meanwhile."""
    NONE = "none"
    """Nothing: jobs of the type may overlap with any other job."""


class JobSpec(_Model):
    """The job as enqueued: workbook, tables, who asked, and the caller's metadata."""

    workbook_id: NonEmptyStr
    actor: Actor
    table_ids: list[NonEmptyStr] | None = Field(
        None, description="Tables of the job; None for every table of the workbook."
    )
    metadata: dict[str, JsonValue] | None = Field(
        None, description="Caller's JSON object carried with the job (size-capped)."
    )


class Backend(StrEnum):
    """Where a job runs."""

    TEMPORAL = "temporal"
    IN_PROCESS = "in-process"


class JobRef(_Model):
    """Handle returned at once by enqueue."""

    job_id: str
    job_type: str = JOB_TYPE_DOWNLOAD_RECORDS
    run_id: str | None = None
    workbook_id: str
    table_ids: list[str]
    backend: Backend


class TableStatus(StrEnum):
    """Life of one table inside a job."""

    PENDING = "pending"
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobStatus(StrEnum):
    """Life of a job."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TableProgress(_Model):
    """Progress of one table of a job."""

    table_id: str
    name: str
    connector: str
    records: int = 0
    status: TableStatus = TableStatus.PENDING
    attempt: int = 0
    total: int | None = Field(
        None, description="Items the table has to do, when known (publish: its changes)."
    )
    deleted: int = 0
    kept_dirty: int = Field(0, description="Records gone at the source but kept: edited locally.")
    error: str | None = None
    details: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="What the job type reports of a finished table (an export: its file).",
    )


class JobProgress(_Model):
    """Progress of a job: items done (records) and per-table state, keyed by table id."""

    job_id: str
    job_type: str = JOB_TYPE_DOWNLOAD_RECORDS
    workbook_id: str
    status: JobStatus = JobStatus.RUNNING
    total_records: int = 0
    tables: dict[str, TableProgress] = Field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = Field(None, description="Why the job failed, naming the failed tables.")

    @property
    def duration(self) -> timedelta | None:
        """Run time, once the job has finished."""
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    @property
    def failed_tables(self) -> list[str]:
        """Ids of the tables that failed."""
        return [t.table_id for t in self.tables.values() if t.status == TableStatus.FAILED]

    def with_table(self, table: TableProgress) -> JobProgress:
        """Return a copy with ``table`` replaced and the total recomputed."""
        tables = {**self.tables, table.table_id: table}
        return self.model_copy(
            update={"tables": tables, "total_records": sum(t.records for t in tables.values())}
        )


class JobResult(_Model):
    """The outcome of a finished job (what ``wait`` returns)."""

    job_id: str
    status: JobStatus
    progress: JobProgress
    failed_tables: list[str] = Field(default_factory=list)
    duration: timedelta | None = None


class EventKind(StrEnum):
    """Kinds of notification events."""

    PROGRESS = "progress"
    TABLE_COMPLETED = "table.completed"
    TABLE_FAILED = "table.failed"
    JOB_COMPLETED = "job.completed"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"


class JobEvent(_Model):
    """A notification: a stable ``event_id`` lets receivers drop redelivered duplicates."""

    event_id: str
    kind: EventKind
    job_id: str
    job_type: str = JOB_TYPE_DOWNLOAD_RECORDS
    workbook_id: str
    table_id: str | None = None
    records: int | None = None
    error: str | None = None
    at: datetime
    progress: JobProgress | None = None

    @staticmethod
    def stable_id(job_id: str, kind: EventKind, table_id: str | None = None) -> str:
        """The id of a job's table or job event: the same on every delivery."""
        return f"{job_id}:{kind.value}" + (f":{table_id}" if table_id else "")


# --- catalog -----------------------------------------------------------------------------


class Table(_Model):
    """A workbook table and where its records come from."""

    id: NonEmptyStr
    workbook_id: NonEmptyStr
    name: NonEmptyStr
    connector: NonEmptyStr
    config: dict[str, Any] = Field(default_factory=dict)
    account_id: str | None = Field(None, description="Connector account holding credentials.")
    locked_by: str | None = Field(None, description="Job id currently downloading the table.")
    last_synced_at: datetime | None = None


class Workbook(_Model):
    """A workbook of one organization and its tables."""

    id: NonEmptyStr
    organization_id: NonEmptyStr
    name: NonEmptyStr
    tables: list[Table] = Field(default_factory=list)


class ConnectorAccount(_Model):
    """Credentials for a source; read by activities only, never put in a workflow input.

    The secret is a ``SecretStr``: it prints as ``**********`` and is encrypted in the
    store (see ``store.secrets``); only the connector that sends it reads the value.
    """

    id: NonEmptyStr
    organization_id: NonEmptyStr
    auth: Literal["bearer", "api_key", "none"] = "none"
    secret: SecretStr = Field(SecretStr(""), description="Token or API key; empty for none.")
    header: str = Field("X-API-Key", description="Header name for api_key auth.")


class AccountSummary(_Model):
    """What may be shown of a connector account: never its secret."""

    id: str
    organization_id: str
    auth: str
    header: str
    key_id: str | None = Field(
        None, description="Id of the key its secret is encrypted under; None if plain or empty."
    )


# --- workflow / activity wire models ----------------------------------------------------


class RetryOptions(_Model):
    """The table retry policy, carried in the workflow input.

    ``maximum_attempts`` counts attempts that failed because of the source or the data
    and committed nothing new; attempts lost to the infrastructure (a worker that died
    or shut down, a store outage) do not count, up to ``maximum_interruptions`` of them
    in a row.
    """

    maximum_attempts: int
    initial_interval: timedelta
    backoff_coefficient: float
    maximum_interval: timedelta
    maximum_interruptions: int = 20

    def backoff(self, failures: int) -> timedelta:
        """The wait after the ``failures``-th failed attempt in a row (1-based)."""
        seconds = self.initial_interval.total_seconds() * self.backoff_coefficient ** (failures - 1)
        return min(timedelta(seconds=seconds), self.maximum_interval)


class JobWorkflowInput(_Model):
    """Input of a job's workflow: the job plus the engine options it runs with."""

    job_id: str
    job_type: str = JOB_TYPE_DOWNLOAD_RECORDS
    job: JobSpec
    options: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="The job type's own input fields, handed to each table attempt.",
    )
    tables: list[TableRef] | None = Field(
        None,
        description="The tables as the enqueue found them in the catalog (name, connector); "
        "None: the job looks them up when it starts.",
    )
    brief_attempt: timedelta | None = Field(
        None,
        description="Run each table's first attempt inside the workflow task (a local "
        "activity) for at most this long; a table not done by then goes on in a regular "
        "attempt. None: regular attempts only.",
    )
    store_counts: bool = Field(
        True,
        description="A stopped table's figure is the store's count of records the job "
        "wrote to it (downloads); False keeps the count its attempts reported.",
    )
    table_ids: list[str]
    retry: RetryOptions
    table_parallelism: int
    heartbeat_timeout: timedelta
    table_timeout: timedelta
    webhook_retry: RetryOptions | None = Field(
        None, description="Retry policy of webhook deliveries; None when no webhook is set."
    )
    priority: int = Field(
        DEFAULT_PRIORITY,
        ge=HIGHEST_PRIORITY,
        le=LOWEST_PRIORITY,
        description="Task-queue priority of the job and its activities: 1 first, 5 last.",
    )
    fairness_weight: float | None = Field(
        None,
        gt=0,
        description="Share of dispatch of the job's organization against the others "
        "(its fairness key); None for the server's default of 1.0.",
    )


class ResolveTablesInput(_Model):
    """Which tables of a workbook a job downloads."""

    job_id: str
    workbook_id: str
    table_ids: list[str]


class TableRef(_Model):
    """The public face of a table inside a job (no config, no credentials)."""

    table_id: str
    name: str
    connector: str


class ResolveTablesResult(_Model):
    """Tables a job downloads, in catalog order, and requested ids no longer there."""

    tables: list[TableRef]
    missing: list[str] = Field(default_factory=list)


class TableTaskInput(_Model):
    """One attempt at one table of one job."""

    job_id: str
    workbook_id: str
    table_id: str
    attempt: int = Field(1, description="1-based, counting every attempt at the table.")
    options: dict[str, JsonValue] = Field(
        default_factory=dict, description="The job type's own input fields."
    )
    budget: timedelta | None = Field(
        None,
        description="A brief attempt: stop after the step that passes this much time and "
        "return unfinished (the next attempt resumes from the stored checkpoint).",
    )


class TableCheckpoint(_Model):
    """Where a table download stands after a committed page (heartbeat details)."""

    cursor: str | None = Field(None, description="Cursor of the next page; None after the last.")
    records: int = 0
    total: int | None = Field(None, description="Items the table has to do, when known.")
    pages: int = 0
    config: str | None = Field(
        None, description="Fingerprint of the table config the pages were read with."
    )

    @property
    def finished(self) -> bool:
        """True once the last page is committed (pages written, no next cursor)."""
        return self.pages > 0 and self.cursor is None


class TableTaskResult(_Model):
    """What one table attempt did: ``records`` is the items done (records, changes, rows)."""

    table_id: str
    records: int
    pages: int = 0
    deleted: int = 0
    kept_dirty: int = 0
    resumed_from: str | None = None
    total: int | None = None
    details: dict[str, JsonValue] = Field(default_factory=dict)
    finished: bool = Field(True, description="False: a brief attempt ran out of its budget.")


class ReleaseLocksInput(_Model):
    """Tables whose download lock a job gives back."""

    job_id: str
    table_ids: list[str]


class ReleaseLocksResult(_Model):
    """Records each released table holds from the job (what it wrote before stopping)."""

    records: dict[str, int] = Field(default_factory=dict)


class TableAttemptFailure(_Model):
    """Details of a failed table attempt (the activity's ApplicationError details)."""

    records: int = Field(description="Records the job had committed to the table.")
    progressed: bool = Field(description="Whether this attempt committed new pages.")
    retryable: bool = Field(True, description="False when no other attempt can succeed.")


class TableLive(_Model):
    """Live count of an active table, signalled by its activity (Web UI details)."""

    table_id: str
    attempt: int
    records: int


class NotifyWorkflowInput(_Model):
    """The notifier of one job: delivers its events in order, outside the job."""

    job_id: str
    retry: RetryOptions


class NotifyInput(_Model):
    """An event to deliver to the configured sinks."""

    event: JobEvent


# --- retention sweep (RetentionSweepWorkflow and its activity) ---------------------------


class RetentionSweepInput(_Model):
    """Which closed jobs a retention sweep keeps: the newest of each bucket.

    Buckets, like BullMQ's removeOnComplete / removeOnFail: *completed* is the
    Completed status; *failed* is every other way a job closes without success
    (Failed, TimedOut, Terminated, Canceled). Running executions are never touched,
    nor continued-as-new runs (download-records never makes any).
    """

    keep_completed: int = Field(ge=0, description="Most recent completed jobs kept.")
    keep_failed: int = Field(ge=0, description="Most recent failed jobs kept (see buckets).")
    workflow_type: str = Field(
        # The job type is the workflow type name ("download-records").
        JOB_TYPE_DOWNLOAD_RECORDS,
        description="Workflow type swept.",
    )
    query_filter: str | None = Field(
        None,
        description='Visibility clause ANDed to the listing, e.g. TaskQueue="spinner-jobs"; '
        "None sweeps the whole namespace.",
    )
    max_deletions: int = Field(
        1000,
        ge=1,
        description="Deletions per sweep at most, oldest first; the rest wait for the next "
        "sweep (bounds the activity and the size of its result).",
    )


class RetentionSweepResult(_Model):
    """What a sweep deleted (workflow ids, oldest first) and kept, per bucket."""

    deleted_completed: list[str] = Field(default_factory=list)
    deleted_failed: list[str] = Field(default_factory=list)
    kept_completed: int = 0
    kept_failed: int = 0
    deferred: int = Field(0, description="Over-limit executions left for the next sweep.")


# --- monitoring --------------------------------------------------------------------------


class JobStats(_Model):
    """Counts, rates, processing times and queue depth of jobs (of some job types).

    On Temporal the counts are the executions visibility still holds (the retention
    sweep and the namespace retention remove old closed ones); in-process they are
    tallies for the life of the process. Rates and percentiles are None until a job
    they cover has closed.
    """

    backend: Backend
    task_queue: str | None = Field(
        None, description="Task queue the figures cover; None for the whole namespace."
    )
    job_types: list[str] = Field(default_factory=list, description="Job types the figures cover.")
    enqueued: int = Field(0, description="Jobs on record: running plus closed.")
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    terminated: int = Field(0, description="Stopped by an operator (Temporal only).")
    timed_out: int = Field(0, description="Hit the workflow's run timeout (Temporal only).")
    success_rate: float | None = Field(
        None,
        description="completed / (completed + failed + terminated + timed_out). Cancelled "
        "jobs were stopped on request, so they count in neither rate.",
    )
    failure_rate: float | None = Field(
        None, description="(failed + terminated + timed_out) over the same jobs; 1 - success."
    )
    processing_time_p50: timedelta | None = Field(
        None, description="Median enqueue-to-close time of recent completed or failed jobs."
    )
    processing_time_p95: timedelta | None = Field(
        None, description="95th percentile (nearest rank) of the same times."
    )
    processing_time_sample: int = Field(
        0, description="How many recent completed or failed jobs the percentiles cover."
    )
    queue_depth: int | None = Field(
        None,
        description="Temporal: tasks backlogged on the task queue (workflow + activity), as "
        "the server approximates it (and caches for a few seconds); in-process: jobs "
        "running in this process. None when not scoped to one task queue.",
    )
    workers: int | None = Field(
        None, description="Distinct worker identities polling the task queue (Temporal only)."
    )
    measured_at: datetime


# --- listings and API keys (the HTTP API) ------------------------------------------------


class JobSummary(_Model):
    """One job as a listing shows it (``Enqueuer.list_jobs``): no per-table progress."""

    job_id: str
    job_type: str
    workbook_id: str
    user_id: str | None = Field(None, description="Who enqueued it, when the backend knows.")
    status: JobStatus = Field(
        description="running, completed, failed (terminated and timed out count as failed) "
        "or cancelled."
    )
    started_at: datetime | None = Field(None, description="When the job was enqueued.")
    finished_at: datetime | None = Field(None, description="When it closed; None while running.")


class ApiKey(_Model):
    """An HTTP API key of one organization, as stored: its hash, never the key itself."""

    id: NonEmptyStr = Field(description="Public part of the key (``sj_<id>_<secret>``).")
    organization_id: NonEmptyStr
    name: NonEmptyStr = Field(description="What the key is for (a service's name).")
    key_hash: str = Field(repr=False, description="SHA-256 (hex) of the whole key.")
    created_at: datetime
    revoked_at: datetime | None = None
