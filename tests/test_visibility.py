"""What an operator sees of a job: search attributes, summaries and current details.

One real job runs on the dev server with a real worker; the tests then find it the
ways the design promises: the client's list/count by each search attribute, the
execution's static summary, the table activities' summaries in the history, the
current details behind the Web UI's "User Metadata" tab, and
``temporal workflow list --query`` with the real CLI. Visibility is eventually
consistent, so lookups poll (bounded) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowHandle, WorkflowQueryFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from enqueuer import Actor, JobStatus
from enqueuer.settings import Settings
from spinner_jobs.connectors.registry import default_connectors
from spinner_jobs.core import wire
from spinner_jobs.core.models import JOB_TYPE_DOWNLOAD_RECORDS, JobRef, Table, Workbook
from spinner_jobs.shell.devserver import temporal_cli
from spinner_jobs.store.sqlite import SqliteStore
from tests.helpers import demo, eventually, temporal_enqueuer

TABLES = {
    # About 1.5 s of pages: long enough to read the details while the job runs.
    "orders": demo(300, page_size=20, page_delay=0.1),
    "customers": demo(50),
}


@dataclass(frozen=True)
class FinishedJob:
    """A job run to its end, and what the tests need to look it up."""

    ref: JobRef
    workbook: Workbook
    actor: Actor
    client: Client
    details_while_running: str

    @property
    def handle(self) -> WorkflowHandle[Any, Any]:
        """Handle of the job's workflow execution."""
        return self.client.get_workflow_handle(self.ref.job_id, run_id=self.ref.run_id)


async def current_details(handle: WorkflowHandle[Any, Any]) -> str:
    """The workflow's current details, read as the Web UI does (built-in metadata query)."""
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return str(metadata.current_details)


@pytest.fixture(scope="module")
async def job(
    dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FinishedJob]:
    """One two-table job on the dev server; the worker stays up so queries are answered."""
    # Module scope (one job for every test here), so it builds its own store and settings.
    unique = uuid.uuid4().hex[:8]
    tmp = tmp_path_factory.mktemp("visibility")
    settings = Settings(data_dir=tmp, temporal={"task_queue": f"tq-vis-{unique}"})
    actor = Actor(user_id=f"u_vis_{unique}", organization_id=f"org_vis_{unique}")
    wb_id = f"wb_vis_{unique}"
    workbook = Workbook(
        id=wb_id,
        organization_id=actor.organization_id,
        name="Visibility workbook",
        tables=[
            Table(id=f"{wb_id}_{name}", workbook_id=wb_id, name=name, connector="demo", config=cfg)
            for name, cfg in TABLES.items()
        ],
    )
    store = SqliteStore(tmp / "store.db")
    store.migrate()
    store.put_workbook(workbook)
    connectors = default_connectors()
    try:
        async with temporal_enqueuer(dev_env.client, settings, store, connectors) as enqueuer:
            ref = await enqueuer.enqueue_download_records_job(wb_id, actor)
            handle = dev_env.client.get_workflow_handle(ref.job_id)
            seen: list[str] = []

            async def details_show_a_table_downloading() -> bool:
                try:
                    seen.append(await current_details(handle))
                except (RPCError, WorkflowQueryFailedError):
                    return False  # no workflow task has run yet to answer queries
                return "| active |" in seen[-1]

            await eventually(details_show_a_table_downloading, within=15, interval=0.1)
            result = await enqueuer.wait(ref.job_id, actor=actor)
            assert result.status == JobStatus.COMPLETED
            yield FinishedJob(ref, workbook, actor, dev_env.client, seen[-1])
    finally:
        await connectors.aclose()
        store.close()


async def find(client: Client, query: str) -> list[str]:
    """Ids of the workflows a visibility query matches, once the count agrees (polled)."""
    found: list[str] = []

    async def listed() -> None:
        found[:] = [w.id async for w in client.list_workflows(query)]
        count = (await client.count_workflows(query)).count
        assert found, f"nothing listed for {query!r} yet"
        assert count == len(found), f"{query!r}: listed {found}, counted {count}"

    await eventually(listed, within=10, interval=0.1)
    return found


@pytest.mark.parametrize("key", [a.name for a in wire.SEARCH_ATTRIBUTES])
async def test_found_by_each_search_attribute(job: FinishedJob, key: str) -> None:
    values = {
        wire.SA_WORKBOOK_ID.name: job.workbook.id,
        wire.SA_USER_ID.name: job.actor.user_id,
        wire.SA_ORGANIZATION_ID.name: job.actor.organization_id,
        wire.SA_JOB_TYPE.name: JOB_TYPE_DOWNLOAD_RECORDS,
    }
    # Scoped to this job's id: the shared dev server holds other tests' jobs too.
    query = f'{key}="{values[key]}" AND WorkflowId="{job.ref.job_id}"'
    assert await find(job.client, query) == [job.ref.job_id]
    # A wrong value of the same attribute does not match.
    miss = f'{key}="not-{values[key]}" AND WorkflowId="{job.ref.job_id}"'
    assert (await job.client.count_workflows(miss)).count == 0

    [execution] = [w async for w in job.client.list_workflows(query)]
    attributes = execution.typed_search_attributes
    assert {k.name: attributes.get(k) for k in wire.SEARCH_ATTRIBUTES} == values


async def test_workbook_and_user_alone_find_the_job(job: FinishedJob) -> None:
    # The values are unique to this module's job, so the plain queries a person would
    # type find exactly it.
    workbook = f'WorkbookId="{job.workbook.id}"'
    assert await find(job.client, workbook) == [job.ref.job_id]
    user = f'UserId="{job.actor.user_id}" AND JobType="{JOB_TYPE_DOWNLOAD_RECORDS}"'
    assert await find(job.client, user) == [job.ref.job_id]


async def test_static_summary_names_workbook_and_user(job: FinishedJob) -> None:
    description = await job.handle.describe()
    summary = await description.static_summary()
    assert summary == (
        f"Download 2 tables of workbook {job.workbook.id} for user {job.actor.user_id}"
    )


async def test_table_activities_carry_summaries(job: FinishedJob) -> None:
    summaries: dict[str, list[str]] = {}
    async for event in job.handle.fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            name = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.HasField("marker_recorded_event_attributes"):
            # A local activity (resolving tables, a brief first attempt) is a marker in
            # the history; the SDK's own version marker has no summary to give.
            name = "local:" + event.marker_recorded_event_attributes.marker_name
            if name == "local:core_patch":
                continue
        else:
            continue
        assert event.user_metadata.HasField("summary"), name
        [summary] = await job.client.data_converter.decode([event.user_metadata.summary], [str])
        summaries.setdefault(name, []).append(summary)
    # The tables come with the job (looked up at enqueue); each table's first attempt is
    # brief (inside the workflow task); a table not done within it goes on in a regular
    # attempt, summarised with its number.
    local = summaries["local:core_local_activity"]
    assert sorted(local) == sorted(
        f"Download table {t.id} of workbook {job.workbook.id} (brief first attempt)"
        for t in job.workbook.tables
    )
    for summary in summaries.get(wire.ACTIVITY_DOWNLOAD_TABLE, []):
        assert summary.startswith("Download table "), summary
        assert summary.endswith("(attempt 2)"), summary


async def test_current_details_show_per_table_progress(job: FinishedJob) -> None:
    # While it ran: a markdown table naming every table, one of them downloading.
    running = job.details_while_running
    assert running.startswith("**running**")
    for table in job.workbook.tables:
        assert f"| {table.name} (`{table.id}`) | demo |" in running
    # After it closed: the query still answers (replayed by the worker) with the end state.
    final = await current_details(job.handle)
    assert final.startswith("**completed**: 2/2 tables, 350 records")
    assert f"| orders (`{job.workbook.id}_orders`) | demo | completed | 300 |" in final
    assert f"| customers (`{job.workbook.id}_customers`) | demo | completed | 50 |" in final


async def test_temporal_cli_lists_the_job_by_workbook(
    job: FinishedJob, dev_env: WorkflowEnvironment
) -> None:
    address = dev_env.client.service_client.config.target_host
    args = [
        str(temporal_cli()),
        "workflow",
        "list",
        "--address",
        address,
        "--namespace",
        job.client.namespace,
        "--query",
        f'WorkbookId="{job.workbook.id}"',
        "--output",
        "json",
    ]
    listed: list[dict[str, Any]] = []

    async def cli_finds_it() -> bool:
        done = await asyncio.to_thread(
            subprocess.run, args, capture_output=True, text=True, timeout=20, check=True
        )
        listed[:] = json.loads(done.stdout or "[]")
        return bool(listed)

    await eventually(cli_finds_it, within=15, interval=0.2)
    [row] = listed
    assert row["execution"]["workflowId"] == job.ref.job_id
    assert row["type"]["name"] == wire.WORKFLOW_DOWNLOAD_RECORDS


async def test_current_details_count_records_live_without_an_event_per_page(
    dev_env: WorkflowEnvironment, settings: Settings, sqlite_store: SqliteStore, make_workbook
) -> None:
    # 100 pages of 20 records, 20 ms each: about two seconds of downloading.
    wb = make_workbook(t=demo(2000, page_size=20, page_delay=0.02))
    table = wb.tables[0]
    actor = Actor(user_id="u_live", organization_id="org_1")
    connectors = default_connectors()
    try:
        async with temporal_enqueuer(dev_env.client, settings, sqlite_store, connectors) as enq:
            ref = await enq.enqueue_download_records_job(wb.id, actor)
            handle = dev_env.client.get_workflow_handle(ref.job_id)
            counts: list[int] = []

            async def details_count_a_partial_table() -> bool:
                try:
                    details = await current_details(handle)
                except (RPCError, WorkflowQueryFailedError):
                    return False
                pattern = rf"\| {table.name} \(`{table.id}`\) \| demo \| active \| ([\d,]+) \|"
                row = re.search(pattern, details)
                if row:
                    counts.append(int(row.group(1).replace(",", "")))
                return any(0 < n < 2000 for n in counts)

            await eventually(details_count_a_partial_table, within=15, interval=0.05)
            assert (await enq.wait(ref.job_id, actor=actor)).status == JobStatus.COMPLETED
    finally:
        await connectors.aclose()
    history = await handle.fetch_history()
    signals = [
        e for e in history.events if e.HasField("workflow_execution_signaled_event_attributes")
    ]
    # Throttled to the progress interval (0.2 s here): a few signals, far fewer than pages.
    assert 0 < len(signals) < 100 / 4
