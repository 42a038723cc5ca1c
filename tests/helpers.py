"""Test helpers shared by several test modules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from temporalio import activity
from temporalio.client import Client

from enqueuer.backends.temporal import TemporalBackend
from enqueuer.client import Enqueuer
from enqueuer.settings import Settings
from spinner_jobs.connectors.base import Page, ReadContext
from spinner_jobs.connectors.demo import DemoConnector
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.core.models import ConnectorAccount, Table
from spinner_jobs.store.base import Store
from spinner_jobs.worker.main import build_worker


@dataclass(frozen=True)
class Call:
    table_id: str
    attempt: int
    scheduled: datetime | None
    started: datetime | None
    cursor: str | None


class RecordingDemo(DemoConnector):
    """The demo connector, noting each attempt with the server's times.

    For a retry, ``scheduled`` is when the server scheduled the attempt (the previous
    attempt's failure) and ``started`` when it began: the difference is the backoff.
    """

    def __init__(self) -> None:
        self.calls: list[Call] = []

    async def pages(
        self,
        table: Table,
        account: ConnectorAccount | None,
        cursor: str | None,
        context: ReadContext,
    ) -> AsyncIterator[Page]:
        scheduled = (
            activity.info().current_attempt_scheduled_time if activity.in_activity() else None
        )
        started = activity.info().started_time if activity.in_activity() else None
        self.calls.append(Call(table.id, context.attempt, scheduled, started, cursor))
        async for page in super().pages(table, account, cursor, context):
            yield page


@asynccontextmanager
async def temporal_enqueuer(
    client: Client, settings: Settings, store: Store, connectors: ConnectorRegistry
) -> AsyncIterator[Enqueuer]:
    """An Enqueuer on ``client`` with a real worker on the settings' task queue."""
    worker = build_worker(client, settings, store, connectors)
    backend = TemporalBackend(settings.temporal, settings.enqueue_timeout, client=client)
    async with worker:
        yield Enqueuer(settings, store, backend)


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float = 20.0, interval: float = 0.05
) -> None:
    """Wait until ``check()`` is true, failing after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def demo(records: int, page_size: int = 100, **extra: Any) -> Mapping[str, Any]:
    """A demo table config."""
    return {"records": records, "page_size": page_size, **extra}
