"""The engine-neutral core of publish-changes: one attempt at publishing one table.

:func:`publish_table` sends a table's unsettled changes to its source, in the order they
were made, each exactly as the store hands it out when marking it sent. Every store
write is fenced on the job's lease (a stale attempt gets ``LockLostError`` and writes
nothing). What makes each change go once:

- a change is marked ``sent`` before its request and settled after the answer, so a
  worker lost in between leaves it ``sent``; the next attempt sends it again with the
  same ``Idempotency-Key``, and the source answers without applying it twice;
- ``confirmed``, ``conflict`` and ``failed`` changes are never listed for sending;
- a source error (5xx, network) ends the attempt: the job's loop retries the table, and
  a 4xx for one change settles that change ``failed`` while the others go on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import structlog

from spinner_jobs.connectors.base import ChangeWriter
from spinner_jobs.core.changes import (
    UNSETTLED,
    ChangeOp,
    ChangeOutcome,
    ChangeState,
    PublishSummary,
    is_local_id,
)
from spinner_jobs.core.models import ConnectorAccount, Table
from spinner_jobs.store.base import Lease, Store

log = structlog.get_logger(__name__)

T = TypeVar("T")

BATCH = 200
"""Changes listed per store call."""

ReportChanges = Callable[[int, int], None]
"""Called with (changes done, total) at the start and after each settled change."""


class StoreRunner(Protocol):
    """Runs a synchronous store call off the event loop (waiting out store outages).

    ``DownloadActivities._store_call`` with the job id bound is one.
    """

    def __call__(self, call: Callable[..., T], /, *args: Any) -> Awaitable[T]:
        """Run ``call(*args)`` in a thread and return its result."""
        ...


async def publish_table(
    run: StoreRunner,
    store: Store,
    writer: ChangeWriter,
    table: Table,
    account: ConnectorAccount | None,
    lease: Lease,
    *,
    overwrite: bool,
    report: ReportChanges,
) -> PublishSummary:
    """One attempt at sending the table's pending (and sent, unconfirmed) changes.

    Args:
        run: runs store calls in a thread.
        store: the snapshot store holding the changes.
        writer: the table's connector, as a change writer.
        table: the table (its config says where changes go).
        account: the table's connector account, if any.
        lease: the job's fresh lease on the table's lock.
        overwrite: send updates and deletes even when the record moved at the source.
        report: progress, ``(done, total)`` over the job's changes of this table.

    Returns:
        The job's counts for the table (over its attempts so far).

    Raises:
        SourceUnavailableError: the source failed; the attempt ends, changes already
            settled stay settled and the one in flight stays ``sent``.
        PermanentSourceError: credentials, config or address refused.
        LockLostError: the lease was taken over; nothing more was written.
        StoreUnavailableError: the store stayed unavailable.

    """
    tlog = log.bind(job_id=lease.job_id, table_id=table.id, workbook_id=table.workbook_id)
    done, total = await _progress(run, store, table.id, lease.job_id)
    tlog.info("table_publish_started", done=done, total=total, overwrite=overwrite)
    report(done, total)
    sent = 0
    after = 0
    while True:
        listed = await run(store.list_changes, table.id, UNSETTLED, after, BATCH)
        if not listed:
            break
        for entry in listed:
            after = entry.seq
            # What is sent is what the store marked: edits made up to now are in it.
            change = await run(store.mark_change_sent, lease, entry.change_id)
            if change is None:  # coalesced away or settled meanwhile
                continue
            if change.op is not ChangeOp.CREATE and is_local_id(change.remote_id):
                outcome = ChangeOutcome.failed(
                    "the record was never created at the source (its create did not go "
                    "through); edit the record again to create it"
                )
            else:
                if entry.state is ChangeState.SENT:
                    tlog.info("change_resent", change_id=change.change_id, op=change.op.value)
                sent += 1
                outcome = await writer.apply_change(
                    table,
                    account,
                    change,
                    idempotency_key=change.idempotency_key,
                    overwrite=overwrite,
                )
            if outcome.state is ChangeState.CONFIRMED:
                await run(
                    store.confirm_change, lease, change.change_id, outcome.remote_id, outcome.fields
                )
            else:
                await run(
                    store.settle_change, lease, change.change_id, outcome.state, outcome.error
                )
                tlog.warning(
                    "change_not_published",
                    change_id=change.change_id,
                    op=change.op.value,
                    state=outcome.state.value,
                    error=outcome.error,
                )
            done += 1
            total = max(total, done)
            report(done, total)
        done, total = await _progress(run, store, table.id, lease.job_id)
    counts = await run(store.change_counts, table.id, lease.job_id)
    summary = PublishSummary(
        table_id=table.id,
        total=sum(counts.values()),
        confirmed=counts[ChangeState.CONFIRMED],
        conflicts=counts[ChangeState.CONFLICT],
        failed=counts[ChangeState.FAILED],
        attempt_sent=sent,
    )
    report(summary.total - counts[ChangeState.PENDING] - counts[ChangeState.SENT], summary.total)
    tlog.info(
        "table_publish_finished",
        confirmed=summary.confirmed,
        conflicts=summary.conflicts,
        failed=summary.failed,
        sent=sent,
    )
    return summary


async def _progress(run: StoreRunner, store: Store, table_id: str, job_id: str) -> tuple[int, int]:
    """(done, total) of the job's changes of the table: settled by it, and all to send."""
    counts = await run(store.change_counts, table_id, job_id)
    waiting = counts[ChangeState.PENDING] + counts[ChangeState.SENT]
    done = sum(counts.values()) - waiting
    return done, done + waiting
