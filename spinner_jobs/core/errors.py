"""The one exception tree of spinner-jobs.

Every failure a caller can cause or meet is a :class:`SpinnerError` subclass with a
one-line message that says what to do. Activities raise Temporal
``ApplicationError``s whose ``type`` is the name of the matching class here, so a
failure keeps its meaning across the wire (see :func:`error_type_name`).
"""

from __future__ import annotations


class SpinnerError(Exception):
    """Base of every error spinner-jobs raises on purpose."""


# --- enqueue-side errors -------------------------------------------------------------


class InvalidJobError(SpinnerError, ValueError):
    """The job's parameters are invalid; ``field`` names the offending one."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"invalid job parameter {field!r}: {message}")


class UnknownJobTypeError(InvalidJobError):
    """No job type of that name is registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__("job_type", f"unknown job type {name!r}; known: {', '.join(known)}")


class WorkbookNotFoundError(SpinnerError, LookupError):
    """The workbook does not exist or belongs to another organization.

    Both cases give the same message so that nothing leaks across organizations.
    """

    def __init__(self, workbook_id: str) -> None:
        self.workbook_id = workbook_id
        super().__init__(f"workbook {workbook_id!r} not found for this organization; check the id")


class TableNotFoundError(SpinnerError, LookupError):
    """Requested table ids are not tables of the workbook."""

    def __init__(self, workbook_id: str, table_ids: list[str]) -> None:
        self.workbook_id = workbook_id
        self.table_ids = table_ids
        super().__init__(
            f"tables {', '.join(table_ids)} are not in workbook {workbook_id!r}; "
            "pass ids of the workbook's tables or none for all"
        )


class JobNotFoundError(SpinnerError, LookupError):
    """No job with this id is known to the backend."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id!r} not found; it may have been removed by retention")


class JobConflictError(SpinnerError):
    """A requested table is held by another running job (of any job type)."""

    def __init__(self, running_job_id: str, table_ids: list[str]) -> None:
        self.running_job_id = running_job_id
        self.table_ids = table_ids
        super().__init__(
            f"tables {', '.join(table_ids)} are held by running job {running_job_id!r} "
            "(one job per table at a time); watch or cancel that job instead"
        )


class QueueFullError(SpinnerError):
    """The cap on pending jobs is reached."""

    def __init__(self, pending: int, cap: int) -> None:
        self.pending = pending
        self.cap = cap
        super().__init__(
            f"{pending} jobs are pending (cap {cap}); retry later or raise SPINNER_JOBS_MAX_PENDING"
        )


class EnqueueConnectionError(SpinnerError, ConnectionError):
    """The Temporal server could not be reached within the enqueue timeout."""

    def __init__(self, address: str, detail: str) -> None:
        self.address = address
        super().__init__(
            f"cannot reach the Temporal server at {address} ({detail}); start it "
            "(`spinner-jobs dev`) or fix SPINNER_TEMPORAL_ADDRESS"
        )


class ServerSetupError(SpinnerError):
    """The Temporal namespace lacks what the engine needs (its search attributes)."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the Temporal namespace is not set up for spinner-jobs ({detail}); start a "
            "worker once (it registers the search attributes) or create them with "
            "`temporal operator search-attribute create --name WorkbookId --type Keyword` "
            "(and UserId, OrganizationId, JobType)"
        )


class StoreUnavailableError(SpinnerError, ConnectionError):
    """The snapshot store did not answer in time (down, restarting, or write-locked)."""

    def __init__(self, store: str, detail: str) -> None:
        self.store = store
        super().__init__(
            f"the snapshot store {store} is unavailable ({detail}); retry shortly, or check "
            "that the database is up and SPINNER_DATABASE_URL points at it"
        )


class LockLostError(SpinnerError):
    """A job tried to write a table whose download lock it no longer holds."""

    def __init__(self, table_id: str, job_id: str) -> None:
        self.table_id = table_id
        self.job_id = job_id
        super().__init__(
            f"job {job_id!r} no longer holds the download lock of table {table_id!r} "
            "(another job took it over); nothing was written, start a new job if needed"
        )


class JobAlreadyClosedError(SpinnerError):
    """A control call (cancel) reached a job that has already closed."""

    def __init__(self, job_id: str, status: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(f"job {job_id!r} has already closed ({status}); nothing to cancel")


class WorkerUnavailableError(SpinnerError):
    """No worker answered for a running job in time (all workers down or busy)."""

    def __init__(self, job_id: str, detail: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"no worker answered for job {job_id!r} ({detail}); the job waits for a worker: "
            "start one (`spinner-jobs worker`) or retry shortly"
        )


class JobBackendError(SpinnerError):
    """The Temporal server refused a request for a reason other than not-found."""

    def __init__(self, address: str, status: str, detail: str) -> None:
        self.address = address
        self.status = status
        super().__init__(
            f"the Temporal server at {address} refused the request ({status}: {detail}); "
            "check the server's health and the namespace settings"
        )


class AccountNotFoundError(SpinnerError, LookupError):
    """A table names a connector account that does not exist or belongs to another organization.

    Both cases give the same message so that nothing leaks across organizations.
    """

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        super().__init__(
            f"connector account {account_id!r} not found for this organization; create it "
            "with `spinner-jobs account create` or fix the table's account_id"
        )


class AccountConflictError(SpinnerError):
    """An account id is already used by another organization's account."""

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        super().__init__(f"connector account id {account_id!r} is taken; choose another id")


class WorkbookConflictError(SpinnerError):
    """A workbook id is already used by another organization's workbook."""

    def __init__(self, workbook_id: str) -> None:
        self.workbook_id = workbook_id
        super().__init__(f"workbook id {workbook_id!r} is taken; choose another id")


class TableConflictError(SpinnerError):
    """Table ids already belong to another workbook (a table lives in one workbook)."""

    def __init__(self, table_ids: list[str]) -> None:
        self.table_ids = table_ids
        super().__init__(
            f"table ids {', '.join(table_ids)} are taken by another workbook; choose other ids"
        )


class SecretKeyError(SpinnerError):
    """A key for encrypted secrets or payloads is missing, malformed or does not match.

    The message names the setting to fix (``SPINNER_SECRET_KEY`` or
    ``SPINNER_PAYLOAD_KEY``) and never a key or a secret.
    """


class TracingSetupError(SpinnerError):
    """Tracing is configured (``SPINNER_OTLP_ENDPOINT``) but cannot start.

    The message says what to fix: the endpoint's form, or the missing ``tracing`` extra.
    """


class JobFailedError(SpinnerError):
    """Raised by ``wait`` when a job ended failed; names the failed tables."""

    def __init__(self, job_id: str, failed_tables: list[str], message: str) -> None:
        self.job_id = job_id
        self.failed_tables = failed_tables
        super().__init__(message)


# --- local edits and publishing ----------------------------------------------------------


class UnknownTableError(SpinnerError, LookupError):
    """A local edit names a table that is not in the catalog."""

    def __init__(self, table_id: str) -> None:
        self.table_id = table_id
        super().__init__(f"table {table_id!r} is not in the catalog; check the table id")


class RecordNotFoundError(SpinnerError, LookupError):
    """A local edit names a record the table does not have (or that was deleted locally)."""

    def __init__(self, table_id: str, remote_id: str) -> None:
        self.table_id = table_id
        self.remote_id = remote_id
        super().__init__(
            f"table {table_id!r} has no record {remote_id!r}; check the id, or download "
            "the table again"
        )


class InvalidEditError(SpinnerError, ValueError):
    """A local edit's fields are not a JSON object with string keys."""

    def __init__(self, table_id: str, problem: str) -> None:
        self.table_id = table_id
        super().__init__(f"invalid local edit of table {table_id!r}: {problem}")


class ChangeStateError(SpinnerError):
    """A publish step does not fit the change's state (unknown, or already settled)."""

    def __init__(self, change_id: str, state: str, action: str) -> None:
        self.change_id = change_id
        self.state = state
        super().__init__(
            f"change {change_id!r} is {state}, so it cannot be {action}; list the table's "
            "changes again"
        )


# --- source / download errors ----------------------------------------------------------


class SourceError(SpinnerError):
    """A source failed; ``retryable`` says whether trying again can help."""

    retryable: bool = True


class SourceUnavailableError(SourceError):
    """Transient source failure (5xx, timeout, dropped connection, rate limit)."""

    retryable = True


class PermanentSourceError(SourceError):
    """A source failure that retrying cannot fix."""

    retryable = False


class SourceAuthError(PermanentSourceError):
    """The source rejected the credentials (401/403)."""


class SourceNotFoundError(PermanentSourceError):
    """The table is gone at the source (404)."""


class SourceRequestError(PermanentSourceError):
    """The source rejected the request as malformed (400 and other 4xx)."""


class InvalidTableConfigError(PermanentSourceError):
    """The table's connector configuration is invalid."""


class SourceAddressRefusedError(PermanentSourceError):
    """A source URL leads to an address connectors may not reach (private, loopback, ...)."""


class PaginationCycleError(SourceRequestError):
    """The source's pages repeat (a next URL, a cursor, or a whole page came back)."""


class SourcePageTooLargeError(PermanentSourceError):
    """A page's body is larger than the table's cap (``max_page_bytes``)."""


class TableGoneError(PermanentSourceError):
    """The table was removed from the catalog while the job was queued."""


def error_type_name(error: BaseException) -> str:
    """Return the ``ApplicationError.type`` used on the wire for ``error``."""
    return type(error).__name__
