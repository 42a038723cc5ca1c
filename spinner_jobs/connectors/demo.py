"""Built-in demo source: deterministic synthetic records, with a fault knob.

Table config (all optional)::

    records      how many records the table has            (default 1000)
    page_size    records per page                          (default 100)
    seed         varies the generated values                (default 0)
    fail_page    1-based page that fails                    (default none)
    fail_times   attempts (1-based) on which it fails       (default 1)
    fail_kind    "retryable" | "permanent"                  (default "retryable")
    page_delay   seconds to sleep before each page          (default 0)

Page ``fail_page`` fails on attempts ``1..fail_times``, so a later attempt gets
past it: retries and resume can be shown and tested without a real outage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from spinner_jobs.connectors.base import Page, ReadContext, Record
from spinner_jobs.core.errors import (
    InvalidTableConfigError,
    SourceRequestError,
    SourceUnavailableError,
)
from spinner_jobs.core.models import ConnectorAccount, Table

_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")


class DemoConfig(BaseModel):
    """Validated demo table configuration."""

    model_config = ConfigDict(extra="forbid")

    records: int = Field(1000, ge=0)
    page_size: int = Field(100, ge=1, le=100_000)
    seed: int = 0
    fail_page: int | None = Field(None, ge=1)
    fail_times: int = Field(1, ge=0)
    fail_kind: Literal["retryable", "permanent"] = "retryable"
    page_delay: float = Field(0.0, ge=0)


def demo_record(seed: int, index: int) -> Record:
    """The ``index``-th record of a demo table (pure: the same inputs, the same record)."""
    n = index * 2654435761 + seed
    return Record(
        f"rec_{index:07d}",
        {
            "index": index,
            "name": f"{_WORDS[n % 8]} {index}",
            "amount": (n % 100_000) / 100,
            "active": n % 3 != 0,
        },
    )


class DemoConnector:
    """Synthetic records computed from the table config; the cursor is the page offset."""

    name = "demo"

    def validate_config(self, config: Mapping[str, Any]) -> None:
        """Raise ``InvalidTableConfigError`` when ``config`` is not a demo config."""
        _parse(config)

    async def pages(
        self,
        table: Table,
        account: ConnectorAccount | None,
        cursor: str | None,
        context: ReadContext,
    ) -> AsyncIterator[Page]:
        """Yield the table's pages from record offset ``cursor``."""
        cfg = _parse(table.config)
        start = int(cursor) if cursor else 0
        while start < cfg.records or (start == 0 and cfg.records == 0):
            page_no = start // cfg.page_size + 1
            if cfg.page_delay:
                await asyncio.sleep(cfg.page_delay)
            if cfg.fail_page == page_no and context.attempt <= cfg.fail_times:
                if cfg.fail_kind == "permanent":
                    raise SourceRequestError(
                        f"demo table {table.id!r}: page {page_no} rejected (permanent fault)"
                    )
                raise SourceUnavailableError(
                    f"demo table {table.id!r}: page {page_no} unavailable "
                    f"(fault on attempt {context.attempt})"
                )
            end = min(start + cfg.page_size, cfg.records)
            records = [demo_record(cfg.seed, i) for i in range(start, end)]
            yield Page(records, str(end) if end < cfg.records else None)
            if end >= cfg.records:
                return
            start = end

    async def aclose(self) -> None:
        """Nothing pooled."""


def _parse(config: Mapping[str, Any]) -> DemoConfig:
    try:
        return DemoConfig.model_validate(dict(config))
    except ValidationError as exc:
        raise InvalidTableConfigError(f"invalid demo table config: {exc}") from exc
