"""The port every source implements, and the record/page shapes it yields."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from spinner_jobs.core.changes import Change, ChangeOutcome
from spinner_jobs.core.errors import InvalidTableConfigError
from spinner_jobs.core.models import ConnectorAccount, PageRecord, Table


class Record(NamedTuple):
    """One source record: its id at the source and its fields."""

    remote_id: str
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Page:
    """A page of records and the cursor that fetches the page after it.

    ``next_cursor`` is an opaque string the same connector accepts back as the
    starting cursor; ``None`` means this was the last page.
    """

    records: Sequence[PageRecord]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ReadContext:
    """What a connector may know about the attempt reading it."""

    job_id: str
    attempt: int = 1


class Connector(Protocol):
    """A source of records, configured per table.

    Implementations raise :class:`spinner_jobs.core.errors.SourceUnavailableError` for
    failures worth retrying and a :class:`spinner_jobs.core.errors.PermanentSourceError`
    subclass for those that are not.
    """

    name: str

    def validate_config(self, config: Mapping[str, Any]) -> None:
        """Raise ``InvalidTableConfigError`` when ``config`` cannot work."""
        ...

    def pages(
        self,
        table: Table,
        account: ConnectorAccount | None,
        cursor: str | None,
        context: ReadContext,
    ) -> AsyncIterator[Page]:
        """Yield pages from ``cursor`` (``None``: the beginning) to the end."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections."""
        ...


@runtime_checkable
class ChangeWriter(Protocol):
    """A source that local changes can be published to (publish-changes).

    ``apply_change`` sends one change and returns what the source made of it; it raises
    :class:`spinner_jobs.core.errors.SourceUnavailableError` when the source failed
    (5xx, network: the change may have been applied, so it is sent again later with
    the same idempotency key) and a ``PermanentSourceError`` subclass for what no
    retry can fix (credentials, config).
    """

    name: str

    def validate_write_config(self, config: Mapping[str, Any]) -> None:
        """Raise ``InvalidTableConfigError`` unless ``config`` can publish changes."""
        ...

    async def apply_change(
        self,
        table: Table,
        account: ConnectorAccount | None,
        change: Change,
        *,
        idempotency_key: str,
        overwrite: bool,
    ) -> ChangeOutcome:
        """Send ``change``; ``overwrite`` skips the check that the record did not move."""
        ...


def change_writer(connector: object, table_id: str) -> ChangeWriter:
    """``connector`` as a :class:`ChangeWriter`.

    Raises:
        InvalidTableConfigError: the connector cannot publish changes.

    """
    if not isinstance(connector, ChangeWriter):
        name = getattr(connector, "name", type(connector).__name__)
        raise InvalidTableConfigError(
            f"table {table_id!r}: its {name!r} connector cannot publish changes; only "
            "tables of connectors that write (http, with a write config) can"
        )
    return connector
