"""The port every source implements, and the record/page shapes it yields."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from spinner_jobs.core.models import ConnectorAccount, RecordRow, Table


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

    records: Sequence[RecordRow]
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
