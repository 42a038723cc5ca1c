"""Enqueue against a server that is not there: a typed error in bounded time, nothing left."""

from __future__ import annotations

import socket
import time
from datetime import timedelta

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from enqueuer import Actor, EnqueueConnectionError, Enqueuer, ServerSetupError
from enqueuer.backends.temporal import TemporalBackend
from enqueuer.settings import Settings
from spinner_jobs.shell.devserver import temporal_cli
from spinner_jobs.store.sqlite import SqliteStore
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


async def test_a_server_without_the_search_attributes_is_a_setup_error(
    settings: Settings, sqlite_store: SqliteStore, make_workbook
) -> None:
    # A bare dev server that no worker of ours has set up yet.
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(temporal_cli()),
        dev_server_log_level="error",
    )
    try:
        backend = TemporalBackend(settings.temporal, settings.enqueue_timeout, client=env.client)
        enqueuer = Enqueuer(settings, sqlite_store, backend)
        wb = make_workbook(t=demo(10))
        with pytest.raises(ServerSetupError) as caught:
            await enqueuer.enqueue_download_records_job(
                wb.id, Actor(user_id="u", organization_id="org_1")
            )
        assert "search-attribute create" in str(caught.value)
        assert sqlite_store.get_workbook(wb.id).tables[0].locked_by is None  # type: ignore[union-attr]
    finally:
        await env.shutdown()
