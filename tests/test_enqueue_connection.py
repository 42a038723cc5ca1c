"""Enqueue against a server that is not there: a typed error in bounded time, nothing left."""

from __future__ import annotations

import socket
import time
from datetime import timedelta

import pytest

from enqueuer import Actor, EnqueueConnectionError, Enqueuer
from enqueuer.settings import Settings
from store.sqlite import SqliteStore
from tests.helpers import demo


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_server_raises_connection_error_within_timeout(
    settings: Settings, sqlite_store: SqliteStore, make_workbook
) -> None:
    settings = settings.model_copy(
        update={
            "enqueue_timeout": timedelta(seconds=1.5),
            "temporal": settings.temporal.model_copy(
                update={"address": f"127.0.0.1:{_closed_port()}"}
            ),
        }
    )
    wb = make_workbook(t=demo(10))
    async with Enqueuer.from_settings(settings, sqlite_store) as enqueuer:
        began = time.monotonic()
        with pytest.raises(EnqueueConnectionError) as caught:
            await enqueuer.enqueue_download_records_job(
                wb.id, Actor(user_id="u", organization_id="org_1")
            )
        elapsed = time.monotonic() - began
    assert elapsed < 5.0
    assert "cannot reach the Temporal server" in str(caught.value)
    assert sqlite_store.get_workbook(wb.id).tables[0].locked_by is None  # type: ignore[union-attr]
