"""The snapshot store port: workbook catalog, download locks, records, checkpoints.

Implementations are synchronous and thread-safe; async callers run them in a
thread (``asyncio.to_thread``). Every method is one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from connectors.base import RecordRow
from enqueuer.models import AccountSummary, ConnectorAccount, TableCheckpoint, Workbook


@dataclass(frozen=True, slots=True)
class SyncSummary:
    """What finishing a table's sync did."""

    deleted: int
    kept_dirty: int


class Store(Protocol):
    """Catalog + records. Records are keyed by (table id, remote id)."""

    url: str

    def migrate(self) -> None:
        """Create the schema if missing (idempotent)."""
        ...

    def close(self) -> None:
        """Close every connection."""
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

    def lock_tables(self, table_ids: Sequence[str], job_id: str) -> dict[str, str]:
        """Lock every table for ``job_id``, all or none.

        Returns:
            ``{}`` when locked; otherwise ``{table_id: holder_job_id}`` of the tables
            held by another job, and nothing is locked.
        """
        ...

    def unlock_tables(self, table_ids: Sequence[str], job_id: str) -> None:
        """Release the tables' locks held by ``job_id`` (others' locks stay)."""
        ...

    def locks_held_by(self, job_id: str) -> list[str]:
        """Table ids locked by ``job_id``."""
        ...

    # --- records ---------------------------------------------------------------------

    def write_page(
        self, table_id: str, job_id: str, records: Sequence[RecordRow], checkpoint: TableCheckpoint
    ) -> None:
        """Upsert ``records`` and save ``checkpoint`` in one transaction.

        Upserting marks each record as seen by ``job_id``. A record edited locally
        (dirty) keeps its local fields.
        """
        ...

    def get_checkpoint(self, table_id: str, job_id: str) -> TableCheckpoint | None:
        """The last committed checkpoint of ``job_id`` on the table, or None."""
        ...

    def finish_sync(self, table_id: str, job_id: str, synced_at: datetime) -> SyncSummary:
        """Complete a table's download in one transaction.

        Deletes records not seen by ``job_id`` unless dirty, stamps the last sync time,
        drops the checkpoint and releases the lock held by ``job_id``.
        """
        ...

    # --- reading and local edits (services, tests) -----------------------------------

    def count_records(self, table_id: str) -> int:
        """Number of records stored for the table."""
        ...

    def record_ids(self, table_id: str) -> list[str]:
        """Remote ids of the table's records, sorted."""
        ...

    def get_record(self, table_id: str, remote_id: str) -> Mapping[str, Any] | None:
        """A record's fields, or None."""
        ...

    def edit_record(self, table_id: str, remote_id: str, fields: Mapping[str, Any]) -> None:
        """Edit a record locally: its fields change and it is flagged dirty."""
        ...
