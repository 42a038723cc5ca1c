"""Shared fixtures: real Temporal servers from the wheels, real stores, workbook factories."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from enqueuer import Enqueuer
from enqueuer.backends.inprocess import InProcessBackend
from enqueuer.logs import configure_logging
from enqueuer.settings import Settings
from enqueuer.wiring import work_parts
from spinner_jobs.connectors.registry import ConnectorRegistry, default_connectors
from spinner_jobs.core import wire
from spinner_jobs.core.models import Backend, Table, Workbook
from spinner_jobs.shell.devserver import (
    ensure_search_attributes,
    scheduling_flags,
    temporal_cli,
    temporal_test_server,
)
from spinner_jobs.store.base import Store
from spinner_jobs.store.postgres import PostgresStore
from spinner_jobs.store.sqlite import SqliteStore
from tests.helpers import temporal_enqueuer
from tests.pg import fresh_schema, postgres_url  # noqa: F401  (session fixture)

# The HTTP API tests' fixtures (api, local_enqueuer, local_api), without imports.
pytest_plugins = ["tests.api_support"]

configure_logging("console", "warning")


@pytest.fixture(scope="session")
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """One time-skipping test server for the session (tests run one at a time)."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=str(temporal_test_server()),
    )
    await ensure_search_attributes(env.client)
    try:
        yield env
    finally:
        await env.shutdown()


# DeleteWorkflowExecution is asynchronous: a closed run goes once the history queues
# have checkpointed past its close, which with the defaults takes up to about a minute
# (measured here: 31-51 s). Checkpointing every second makes retention tests quick.
_FAST_DELETE_FLAGS = [
    "--dynamic-config-value",
    'history.transferProcessorUpdateAckInterval="1s"',
    "--dynamic-config-value",
    'history.visibilityProcessorUpdateAckInterval="1s"',
    # Task-queue priorities and fairness, as `spinner-jobs dev` sets them.
    *scheduling_flags(),
]


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """One real dev server (in-memory) for the session's integration tests."""
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(temporal_cli()),
        search_attributes=wire.SEARCH_ATTRIBUTES,
        dev_server_log_level="error",
        dev_server_extra_args=_FAST_DELETE_FLAGS,
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def task_queue() -> str:
    """A fresh task queue per test, so workers of different tests never mix."""
    return f"tq-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(tmp_path: Path, task_queue: str) -> Settings:
    """Settings for tests: fast retries, a private data folder and task queue."""
    return Settings(
        data_dir=tmp_path,
        http_allowed_networks="127.0.0.0/8",  # the tests' sources listen on loopback
        temporal={"task_queue": task_queue},
        retry={
            "initial_interval": timedelta(milliseconds=100),
            "maximum_interval": timedelta(seconds=1),
        },
        jobs={
            "progress_interval": timedelta(milliseconds=200),
            "heartbeat_timeout": timedelta(seconds=10),
        },
    )


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteStore]:
    """A fresh SQLite store in the test's folder."""
    store = SqliteStore(tmp_path / "store.db")
    store.migrate()
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each store kind in turn: a fresh SQLite file, or a fresh schema on real PostgreSQL."""
    if request.param == "sqlite":
        store: Store = SqliteStore(tmp_path / "store.db")
        store.migrate()
        yield store
        store.close()
        return
    with fresh_schema(request.getfixturevalue("postgres_url")) as url:
        store = PostgresStore(url)
        store.migrate()
        yield store
        store.close()


@pytest.fixture
async def connectors() -> AsyncIterator[ConnectorRegistry]:
    """The built-in connectors (their HTTP pools closed after the test)."""
    registry = default_connectors(http_allowed_networks=["127.0.0.0/8"])  # loopback sources
    yield registry
    await registry.aclose()


WorkbookFactory = Callable[..., Workbook]


@pytest.fixture
def make_workbook(sqlite_store: SqliteStore) -> WorkbookFactory:
    """Create a demo workbook in the store: ``make_workbook(t1={...demo config}, ...)``."""

    def make(org: str = "org_1", **tables: dict[str, Any]) -> Workbook:
        wb_id = f"wb_{uuid.uuid4().hex[:8]}"
        workbook = Workbook(
            id=wb_id,
            organization_id=org,
            name="Test workbook",
            tables=[
                Table(
                    id=f"{wb_id}_{name}", workbook_id=wb_id, name=name, connector="demo", config=cfg
                )
                for name, cfg in tables.items()
            ],
        )
        sqlite_store.put_workbook(workbook)
        return workbook

    return make


@pytest.fixture(params=[Backend.TEMPORAL, Backend.IN_PROCESS], ids=["temporal", "in-process"])
async def enqueuer(
    request: pytest.FixtureRequest,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
    dev_env: WorkflowEnvironment,
) -> AsyncIterator[Enqueuer]:
    """An Enqueuer on each backend in turn: Temporal with a real worker, and in-process."""
    if request.param == Backend.TEMPORAL:
        async with temporal_enqueuer(dev_env.client, settings, sqlite_store, connectors) as enq:
            yield enq
    else:
        backend = InProcessBackend(work_parts(settings, sqlite_store, connectors), settings)
        enq = Enqueuer(settings.model_copy(update={"use_jobs": False}), sqlite_store, backend)
        yield enq
        await enq.aclose()
