"""Test helpers shared by several test modules."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
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
from spinner_jobs.store.postgres import PostgresStore
from spinner_jobs.store.sqlite import SqliteStore
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
    check: Callable[[], Awaitable[object] | object],
    within: float = 20.0,
    interval: float = 0.05,
) -> None:
    """Wait until ``check()`` passes, failing after ``within`` seconds with what it saw.

    ``check`` (sync or async) fails a try by raising AssertionError or by returning
    False; anything else passes. On time-out the last AssertionError is raised again,
    with its own message and a note of how long and how often it was tried (as
    sdk-python's ``assert_eventually`` does); a check that only ever returned False
    fails with its name and docstring, so write the assertion inside the check when the
    failure should say what was seen. Other exceptions propagate at once.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    tries = 0
    while True:
        tries += 1
        last: AssertionError | None = None
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
        except AssertionError as exc:
            last = exc
        else:
            if result is not False:
                return
        waited = loop.time() - started
        if waited > within:
            note = f"eventually(): still failing after {waited:.1f}s and {tries} tries"
            if last is not None:
                last.add_note(note)
                raise last
            name = getattr(check, "__qualname__", repr(check))
            what = inspect.getdoc(check) or "returned False"
            raise AssertionError(f"{name}: {what} ({note})")
        await asyncio.sleep(interval)


def demo(records: int, page_size: int = 100, **extra: Any) -> Mapping[str, Any]:
    """A demo table config."""
    return {"records": records, "page_size": page_size, **extra}


def run_sql(store: Store, statement: str, *params: Any) -> None:
    """A statement on the store's database behind its back (``?`` placeholders)."""
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as conn:
            conn.execute(statement, params)
        return
    assert isinstance(store, PostgresStore)
    with psycopg.connect(store._conninfo) as conn:
        conn.execute(statement.replace("?", "%s"), params)
