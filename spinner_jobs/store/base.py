"""The snapshot store port: workbook catalog, download locks, records, checkpoints.

Implementations are synchronous and thread-safe; async callers run them in a
thread (``asyncio.to_thread``). Every method is one transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import orjson

from spinner_jobs.core.changes import Change, ChangeState
from spinner_jobs.core.models import (
    AccountSummary,
    ApiKey,
    ConnectorAccount,
    PageRecord,
    RecordRow,
    TableCheckpoint,
    Workbook,
)


@dataclass(frozen=True, slots=True)
class SyncSummary:
    """What finishing a table's sync did.

    ``records`` is how many records the job wrote to the table (distinct remote ids),
    counted by the store: the true figure even when a source repeated an id.
    """

    deleted: int
    kept_dirty: int
    records: int = 0


@dataclass(frozen=True, slots=True)
class HeldLock:
    """A table's download lock as another caller sees it."""

    job_id: str
    age: float
    """Seconds since the lock was taken, by the store's clock."""


@dataclass(frozen=True, slots=True)
class Lease:
    """The right of one job to write one table: its lock, with the lock's generation.

    Every page commit is fenced on it: once the lock changes hands (a takeover bumps
    the generation), the old holder's writes fail with ``LockLostError``.
    """

    table_id: str
    job_id: str
    generation: int


class Store(Protocol):
    """Catalog + records. Records are keyed by (table id, remote id)."""

    url: str
    quick_calls: bool
    """Whether a call that need not wait is quick local work (SQLite: a file here).

    Then a caller on an event loop makes the short calls of a download (``lease``,
    ``write_page``, ``finish_sync``...) on the loop's own thread, within a few
    milliseconds' ``waiting_at_most``, and waits in a worker thread only when the
    store stays busy: a page written on another thread fights the loop for the GIL at
    every row it inserts, which costs more than the write itself.
    """

    def migrate(self) -> None:
        """Create the schema if missing (idempotent)."""
        ...

    def close(self) -> None:
        """Close every connection."""
        ...

    def waiting_at_most(self, seconds: float) -> AbstractContextManager[None]:
        """Within the block, the calling thread's store calls wait at most ``seconds``.

        The enqueuer runs its store calls in one, so an enqueue against a busy or
        unavailable store fails within the enqueue timeout (``StoreUnavailableError``)
        whatever the store waits for otherwise.
        """
        ...

    # --- catalog ---------------------------------------------------------------------

    def put_workbook(self, workbook: Workbook) -> None:
        """Create or replace a workbook and its tables (locks and sync times are kept).

        Raises ``AccountNotFoundError`` when a table names an account that is unknown
        or of another organization.
        """
        ...

    def get_workbook(self, workbook_id: str) -> Workbook | None:
        """The workbook with its tables (catalog order), or None."""
        ...

    def put_account(self, account: ConnectorAccount) -> None:
        """Create or replace a connector account, its secret encrypted (``store.secrets``).

        Raises ``AccountConflictError`` when the id is another organization's account.
        """
        ...

    def get_account(self, account_id: str) -> ConnectorAccount | None:
        """A connector account with its secret decrypted, or None."""
        ...

    def list_accounts(self, organization_id: str | None = None) -> list[AccountSummary]:
        """Accounts of one organization (or all), sorted by id, without secrets."""
        ...

    # --- download locks --------------------------------------------------------------

    def lock_tables(
        self,
        table_ids: Sequence[str],
        job_id: str,
        *,
        take_over: Mapping[str, str] | None = None,
    ) -> dict[str, HeldLock]:
        """Lock every table for ``job_id``, all or none, in one transaction.

        Args:
            table_ids: the tables to lock.
            job_id: the new holder.
            take_over: ``{table_id: stale_holder}``: a table still held by exactly that
                holder counts as free (its holder is known to be gone); the takeover
                bumps the lock's generation, so the stale holder can no longer write.

        Returns:
            ``{}`` when locked; otherwise ``{table_id: HeldLock}`` of the tables held
            by another job, and nothing is locked.
        """
        ...

    def unlock_tables(self, table_ids: Sequence[str], job_id: str) -> dict[str, int]:
        """Release the tables' locks held by ``job_id`` (others' locks stay).

        Also drops the job's checkpoints on those tables (the job is done with them).

        Returns:
            ``{table_id: records}``: how many records of each table ``job_id`` wrote.
        """
        ...

    def restart_table(self, lease: Lease) -> None:
        """Forget what the lease's job read of the table so far, fenced on the lease.

        The job's checkpoint goes and its records count as not seen, so the next read
        starts over and the final sync removes what the new read does not bring back
        (a table whose config changed while its job retried ends as the new source).
        """
        ...

    def touch_locks(self, job_id: str) -> None:
        """Mark ``job_id``'s locks as still held now (their age restarts).

        A lock's age is what tells a waiting enqueue that a holder the backend cannot
        see is gone; a holder that only this process can see keeps its locks young.
        """
        ...

    def lease(self, table_id: str, job_id: str) -> Lease:
        """A fresh lease of ``job_id`` on the table it holds locked.

        Each call bumps the lock's generation: an earlier attempt of the same job (a
        worker that lost contact but still runs) can no longer write.

        Raises:
            LockLostError: the table is not locked by ``job_id`` (any more).
        """
        ...

    def locks_held_by(self, job_id: str) -> list[str]:
        """Table ids locked by ``job_id``."""
        ...

    # --- records ---------------------------------------------------------------------

    def write_page(
        self, lease: Lease, records: Sequence[PageRecord], checkpoint: TableCheckpoint
    ) -> None:
        """Upsert ``records`` and save ``checkpoint`` in one transaction, fenced on ``lease``.

        Fields given as text (JSON object text from the source) are stored as that
        text; a mapping is encoded. Upserting marks each record as seen by the lease's
        job. A record edited locally (dirty) keeps its local fields; one deleted
        locally stays deleted while its delete is pending or sent.

        Raises:
            LockLostError: the lease is no longer valid; nothing was written.
        """
        ...

    def get_checkpoint(self, table_id: str, job_id: str) -> TableCheckpoint | None:
        """The last committed checkpoint of ``job_id`` on the table, or None."""
        ...

    def finish_sync(self, lease: Lease, synced_at: datetime) -> SyncSummary:
        """Complete a table's download in one transaction, fenced on ``lease``.

        Deletes records not seen by the lease's job unless dirty, stamps the last sync
        time, drops the checkpoint and releases the lock. Calling it again after it
        committed (a retry after a lost connection) returns the same counts.

        Raises:
            LockLostError: the lease is no longer valid and the job never finished.
        """
        ...

    # --- local edits and their publishing (publish-changes) ---------------------------
    #
    # A local edit changes the record at once and records (or coalesces into) one
    # change per record; the record stays dirty until the source confirms its change.
    # Coalescing, while the record's change is pending: update+update merge fields,
    # create+update stays a create, update+delete becomes a delete, create+delete
    # removes both. An edit of a record whose change is already sent starts a new
    # change after it; one whose change is in conflict or failed replaces it with a new
    # pending change (new idempotency key) carrying the unpublished edits.

    def update_record(self, table_id: str, remote_id: str, fields: Mapping[str, Any]) -> None:
        """Merge ``fields`` into a record locally; the record becomes dirty.

        Raises:
            UnknownTableError: no such table.
            RecordNotFoundError: no such record (or it was deleted locally).
            InvalidEditError: ``fields`` is not a JSON object with string keys.
        """
        ...

    def create_record(self, table_id: str, fields: Mapping[str, Any]) -> str:
        """Create a record locally; return its local id (``local:<hex>``).

        The source assigns the real id when the create is published; the record then
        takes that id.

        Raises:
            UnknownTableError: no such table.
            InvalidEditError: ``fields`` is not a JSON object with string keys.
        """
        ...

    def delete_record(self, table_id: str, remote_id: str) -> None:
        """Delete a record locally; a download does not bring it back while it is pending.

        Raises:
            UnknownTableError: no such table.
            RecordNotFoundError: no such record (or it was deleted locally already).
        """
        ...

    def list_changes(
        self,
        table_id: str,
        states: Sequence[ChangeState] | None = None,
        after: int = 0,
        limit: int = 1000,
    ) -> list[Change]:
        """The table's changes in ``states`` (None: all) with ``seq > after``, by ``seq``."""
        ...

    def change_counts(self, table_id: str, job_id: str | None = None) -> dict[ChangeState, int]:
        """How many of the table's changes are in each state (every state present).

        With ``job_id``, settled states (confirmed, conflict, failed) count only the
        changes that job settled; pending and sent count all.
        """
        ...

    def mark_change_sent(self, lease: Lease, change_id: str) -> Change | None:
        """Mark a pending (or already sent) change sent, fenced on ``lease``.

        Returns:
            The change as it is now, to be sent as returned (edits coalesced before this
            call are in it; later edits start a new change); None when it is no longer
            pending or sent (coalesced away, or settled).

        Raises:
            LockLostError: the lease is no longer valid; nothing was written.
        """
        ...

    def confirm_change(
        self,
        lease: Lease,
        change_id: str,
        remote_id: str | None,
        fields: Mapping[str, Any] | None,
    ) -> None:
        """The source applied a sent change: settle it confirmed, fenced on ``lease``.

        The record's dirty flag is cleared (unless a later change of it is waiting); a
        create's record takes ``remote_id``, the id the source assigned; a delete's
        record is gone; ``fields`` the source returned are merged into the record.
        Confirming a confirmed change again does nothing.

        Raises:
            LockLostError: the lease is no longer valid; nothing was written.
            ChangeStateError: the change is unknown, not sent, or (a create) lacks
                ``remote_id``.
        """
        ...

    def settle_change(
        self, lease: Lease, change_id: str, state: ChangeState, error: str | None
    ) -> None:
        """Settle a change as ``conflict`` or ``failed`` with its reason, fenced on ``lease``.

        The record stays dirty with its local edits.

        Raises:
            LockLostError: the lease is no longer valid; nothing was written.
            ChangeStateError: the change is unknown or already settled.
            ValueError: ``state`` is not conflict or failed.
        """
        ...

    # --- reading (services, tests) ----------------------------------------------------

    def count_records(self, table_id: str) -> int:
        """Number of records stored for the table."""
        ...

    def record_ids(self, table_id: str) -> list[str]:
        """Remote ids of the table's records, sorted."""
        ...

    def get_record(self, table_id: str, remote_id: str) -> Mapping[str, Any] | None:
        """A record's fields, or None."""
        ...

    # --- HTTP API keys (spinner_jobs.api) ---------------------------------------------

    def put_api_key(self, key: ApiKey) -> bool:
        """Store a new API key (its hash only).

        Returns:
            False, and nothing is written, when a key with the same id exists.
        """
        ...

    def get_api_key(self, key_id: str) -> ApiKey | None:
        """The key with this id (revoked or not), or None."""
        ...

    def list_api_keys(self, organization_id: str | None = None) -> list[ApiKey]:
        """Keys of one organization (or all), oldest first."""
        ...

    def revoke_api_key(self, key_id: str, revoked_at: datetime) -> ApiKey | None:
        """Revoke the key (a second revocation keeps the first time); None if unknown."""
        ...

    # --- export reads -----------------------------------------------------------------

    def read_records(self, table_id: str, after: str | None, limit: int) -> list[RecordRow]:
        """One keyset page of the table's records, ordered by remote id (byte order).

        One transaction. Pages never overlap or skip a record that stays in the table:
        pass the last remote id of a page as ``after`` to read the next one.

        Args:
            table_id: the table.
            after: only records whose remote id sorts strictly after this one; None
                starts at the first record.
            limit: at most this many records (at least 1).

        Returns:
            ``(remote_id, fields)`` pairs; fewer than ``limit`` (or none) at the end.

        Raises:
            InvalidJobError: ``limit`` is below 1.
        """
        ...


def json_text(value: Any) -> str:
    """Compact JSON text, as the stores keep it (orjson: records are on the hot path)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def fields_text(fields: Mapping[str, Any] | str) -> str:
    """A page record's fields as the JSON text a store keeps (text is kept as it is)."""
    return fields if isinstance(fields, str) else json_text(fields)


def seen_mark(job_id: str) -> str:
    """What a download writes beside each record it reads: ``#`` and 16 hex digits.

    The sweep at the end of a table deletes the records whose mark is not the job's,
    so the mark must tell jobs apart; a 64-bit digest of the job id does so as surely
    as the id's own random part, in 17 bytes a row instead of the whole id (a tenth
    of a downloaded row). Rows written before the mark existed carry the job id
    itself, and the stores count both as the job's (``seen_by IN (mark, job id)``),
    so a job resumed across the upgrade keeps what it read.
    """
    return "#" + hashlib.blake2b(job_id.encode(), digest_size=8).hexdigest()
