"""The publish-changes job's table work: send a table's local edits to its source.

The sending itself is :func:`activities.publish_core.publish_table` (each change once,
with its idempotency key, the dirty flag cleared only when the source confirms); this
module runs it for one table of a job: loads the table and its account, leases the
table (fencing out any earlier attempt), and gives the table back when done.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import structlog
from temporalio import activity

from activities.publish_core import publish_table
from activities.tables import ReportProgress, TableAttemptError, TableWork, WorkParts
from spinner_jobs.connectors.base import ChangeWriter, change_writer
from spinner_jobs.core.changes import Change, ChangeOutcome
from spinner_jobs.core.errors import SpinnerError
from spinner_jobs.core.models import (
    ConnectorAccount,
    Table,
    TableCheckpoint,
    TableJobInput,
    TableTaskInput,
    TableTaskResult,
)

log = structlog.get_logger(__name__)

ACTIVITY_PUBLISH_TABLE = "publish-table"


class PublishChangesInput(TableJobInput):
    """Input of a publish-changes job: which tables, and what to do on a conflict."""

    on_conflict: Literal["report", "overwrite"] = "report"
    """``report``: a change whose record moved at the source since the download is
    reported as a conflict and not sent; ``overwrite``: it is sent anyway."""


class PublishActivities(TableWork):
    """Table work of the publish-changes job."""

    def __init__(self, parts: WorkParts) -> None:
        super().__init__(parts)

    def table_activity(self) -> Callable[..., Awaitable[TableTaskResult]]:
        """The ``publish-table`` activity."""
        return self.publish_table

    @activity.defn(name=ACTIVITY_PUBLISH_TABLE)
    async def publish_table(self, input: TableTaskInput) -> TableTaskResult:
        """Publish one table's changes (one attempt)."""
        return await self.as_activity(input)

    async def run_table(self, input: TableTaskInput, *, report: ReportProgress) -> TableTaskResult:
        """Send the table's unsettled changes, then give the table back.

        A change the source refused (4xx) or that conflicts is settled as such and the
        table goes on; the source failing (5xx, network) ends the attempt, and the next
        one re-sends the change in flight with the same idempotency key.
        """
        options = PublishChangesInput.model_validate(
            {"workbook_id": input.workbook_id, **input.options}
        )
        done = 0

        def changes_done(settled: int, total: int) -> None:
            nonlocal done
            done = settled
            report(TableCheckpoint(records=settled, total=total))

        run = functools.partial(self._store_call, job_id=input.job_id)

        try:
            table, account = await run(self.load_table, input)
            connector = self._connectors.get(table.connector)
            writer = (
                connector if isinstance(connector, ChangeWriter) else _ReadOnly(connector, table.id)
            )
            lease = await run(self._store.lease, table.id, input.job_id)
            summary = await publish_table(
                run,
                self._store,
                writer,
                table,
                account,
                lease,
                overwrite=options.on_conflict == "overwrite",
                report=changes_done,
            )
            await run(self._store.unlock_tables, [table.id], input.job_id)
        except SpinnerError as exc:
            raise TableAttemptError(exc, done, progressed=done > 0) from exc
        settled = summary.confirmed + summary.conflicts + summary.failed
        return TableTaskResult(
            table_id=input.table_id,
            records=settled,
            total=summary.total,
            details={
                "confirmed": summary.confirmed,
                "conflicts": summary.conflicts,
                "failed": summary.failed,
            },
        )


class _ReadOnly:
    """The writer of a read-only connector: a table with changes fails at once.

    A table without changes completes; one with changes gets the refusal of
    :func:`change_writer` (permanent: no retry can help).
    """

    def __init__(self, connector: object, table_id: str) -> None:
        self.name = getattr(connector, "name", type(connector).__name__)
        self._connector = connector
        self._table_id = table_id

    def validate_write_config(self, config: Any) -> None:
        change_writer(self._connector, self._table_id)

    async def apply_change(
        self,
        table: Table,
        account: ConnectorAccount | None,
        change: Change,
        *,
        idempotency_key: str,
        overwrite: bool,
    ) -> ChangeOutcome:
        writer = change_writer(self._connector, self._table_id)  # refuses: it cannot write
        return await writer.apply_change(
            table, account, change, idempotency_key=idempotency_key, overwrite=overwrite
        )
