"""Source credentials stay in the catalog: never in workflow inputs, histories or logs."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from temporalio.testing import WorkflowEnvironment

from enqueuer import Actor, JobStatus
from enqueuer.logs import configure_logging
from enqueuer.settings import Settings
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.core.models import ConnectorAccount, Table, Workbook
from spinner_jobs.shell.sample_api import SampleApi, SampleTable
from spinner_jobs.store.sqlite import SqliteStore
from tests.helpers import temporal_enqueuer

SECRET = "tok-7f3a9c1e-very-secret"


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    configure_logging("json", "debug", stream=buffer)
    yield buffer
    configure_logging("console", "warning")


async def test_bearer_token_reaches_the_source_but_no_history_or_log(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
    logs: io.StringIO,
) -> None:
    tables = {"a": SampleTable(records=500, style="cursor", page_size=100)}
    with SampleApi(tables, bearer_token=SECRET) as api:
        sqlite_store.put_account(
            ConnectorAccount(id="acct_1", organization_id="org_1", auth="bearer", secret=SECRET)
        )
        sqlite_store.put_workbook(
            Workbook(
                id="wb_auth",
                organization_id="org_1",
                name="auth",
                tables=[
                    Table(
                        id="tbl_a",
                        workbook_id="wb_auth",
                        name="a",
                        connector="http",
                        config=api.config("a"),
                        account_id="acct_1",
                    )
                ],
            )
        )
        async with temporal_enqueuer(dev_env.client, settings, sqlite_store, connectors) as enq:
            ref = await enq.enqueue_download_records_job(
                "wb_auth", Actor(user_id="u", organization_id="org_1")
            )
            result = await enq.wait(ref.job_id, actor=Actor(user_id="u", organization_id="org_1"))
        served = [r for r in api.requests if r.table == "a"]

    assert result.status == JobStatus.COMPLETED
    assert sqlite_store.count_records("tbl_a") == 500
    # The source did get the token...
    assert served
    assert all(r.headers.get("authorization") == f"Bearer {SECRET}" for r in served)
    # ...but nothing Temporal stores or we log contains it.
    history = await dev_env.client.get_workflow_handle(ref.job_id).fetch_history()
    assert SECRET not in history.to_json()
    assert all(SECRET.encode() not in e.SerializeToString() for e in history.events)
    assert "table_download_finished" in logs.getvalue()
    assert SECRET not in logs.getvalue()
