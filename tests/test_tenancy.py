"""Tenant isolation: every read and control call is scoped to the caller's organization.

One organization never reads, streams, waits on or cancels another's job, and nothing
that is not one of the engine's jobs can be reached through the engine at all: all of
these look exactly like an unknown job id. Accounts are used only by their own
organization's tables, even if the catalog was written behind the engine's back.
"""

from __future__ import annotations

import sqlite3
import uuid

import pytest
from temporalio import workflow
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from enqueuer import Actor, Enqueuer, JobNotFoundError, JobStatus
from enqueuer.settings import Settings
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.core.models import ConnectorAccount, Table, TableStatus, Workbook
from spinner_jobs.shell.sample_api import SampleApi, SampleTable
from spinner_jobs.store.sqlite import SqliteStore
from tests.helpers import demo, eventually, temporal_enqueuer

OWNER = Actor(user_id="u_a", organization_id="org_a")
INTRUDER = Actor(user_id="u_b", organization_id="org_b")


async def _first_event(enqueuer: Enqueuer, job_id: str, actor: Actor) -> object:
    async for event in enqueuer.events(job_id, actor=actor):
        return event
    return None


def _same_error(a: BaseException, a_id: str, b: BaseException, b_id: str) -> bool:
    return type(a) is type(b) and str(a).replace(a_id, "?") == str(b).replace(b_id, "?")


async def test_another_organizations_job_looks_exactly_like_an_unknown_one(
    enqueuer: Enqueuer, sqlite_store: SqliteStore, make_workbook
) -> None:
    wb = make_workbook(org="org_a", slow=demo(2000, page_size=50, page_delay=0.02))
    ref = await enqueuer.enqueue_download_records_job(wb.id, OWNER)
    unknown = "download-records-0000000000000000"

    for call in ("progress", "wait", "cancel"):
        with pytest.raises(JobNotFoundError) as theirs:
            await getattr(enqueuer, call)(ref.job_id, actor=INTRUDER)
        with pytest.raises(JobNotFoundError) as nobodys:
            await getattr(enqueuer, call)(unknown, actor=INTRUDER)
        assert _same_error(theirs.value, ref.job_id, nobodys.value, unknown), call
    with pytest.raises(JobNotFoundError):
        await _first_event(enqueuer, ref.job_id, INTRUDER)

    # The intruder's cancel did nothing: the owner's job runs on and completes.
    assert (await enqueuer.progress(ref.job_id, actor=OWNER)).status != JobStatus.CANCELLED
    result = await enqueuer.wait(ref.job_id, actor=OWNER)
    assert result.status == JobStatus.COMPLETED
    assert sqlite_store.count_records(f"{wb.id}_slow") == 2000


@workflow.defn(name="not-a-spinner-job")
class _Bystander:
    """A workflow of someone else in the same namespace."""

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


async def test_a_workflow_that_is_not_a_job_cannot_be_read_or_cancelled(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
) -> None:
    client = dev_env.client
    queue = f"bystander-{uuid.uuid4().hex[:8]}"
    workflow_id = f"bystander-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[_Bystander],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        handle = await client.start_workflow(_Bystander.run, id=workflow_id, task_queue=queue)
        async with temporal_enqueuer(client, settings, sqlite_store, connectors) as enq:
            for actor in (OWNER, INTRUDER):
                for call in ("progress", "cancel", "wait"):
                    with pytest.raises(JobNotFoundError):
                        await getattr(enq, call)(workflow_id, actor=actor)
        description = await handle.describe()
        assert description.status == WorkflowExecutionStatus.RUNNING
        await handle.terminate("test over")


async def test_stats_can_be_scoped_to_one_organization(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
    make_workbook,
) -> None:
    unique = uuid.uuid4().hex[:8]
    org_a, org_b = f"org_a_{unique}", f"org_b_{unique}"
    async with temporal_enqueuer(dev_env.client, settings, sqlite_store, connectors) as enq:
        for org, jobs in ((org_a, 2), (org_b, 1)):
            actor = Actor(user_id="u", organization_id=org)
            for _ in range(jobs):
                wb = make_workbook(org=org, t=demo(5))
                ref = await enq.enqueue_download_records_job(wb.id, actor)
                await enq.wait(ref.job_id, actor=actor)

        async def counted() -> bool:
            a, b = await enq.stats(org_a), await enq.stats(org_b)
            return (a.completed, b.completed) == (2, 1)

        await eventually(counted)


async def test_a_table_naming_another_organizations_account_never_gets_its_secret(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
) -> None:
    secret = "tok-of-org-a-only"
    tables = {"t": SampleTable(records=50, style="cursor", page_size=10)}
    with SampleApi(tables, bearer_token=secret) as api:
        sqlite_store.put_account(
            ConnectorAccount(id="acct_a", organization_id="org_a", auth="bearer", secret=secret)
        )
        sqlite_store.put_workbook(
            Workbook(
                id="wb_b",
                organization_id="org_b",
                name="b",
                tables=[
                    Table(
                        id="tbl_b",
                        workbook_id="wb_b",
                        name="t",
                        connector="http",
                        config=api.config("t"),
                    )
                ],
            )
        )
        # Written behind the engine's back (put_workbook refuses it): the activity
        # checks again before it loads the account.
        with sqlite3.connect(sqlite_store.path) as conn:
            conn.execute("UPDATE workbook_tables SET account_id = 'acct_a' WHERE id = 'tbl_b'")
        async with temporal_enqueuer(dev_env.client, settings, sqlite_store, connectors) as enq:
            ref = await enq.enqueue_download_records_job("wb_b", INTRUDER)
            result = await enq.wait(ref.job_id, actor=INTRUDER)

    assert result.status == JobStatus.FAILED
    table = result.progress.tables["tbl_b"]
    assert table.status == TableStatus.FAILED
    assert "acct_a" in (table.error or "")
    assert secret not in (table.error or "")
    assert [r for r in api.requests if r.headers.get("authorization")] == []
    assert sqlite_store.count_records("tbl_b") == 0
