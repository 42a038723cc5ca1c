"""Task-queue priorities and per-organization fairness, on the real dev server.

These check dispatch order, not timing. A backlog is queued while no worker runs; then
one worker with a single workflow-task slot and a single activity slot works through
it. A job's dispatch is its first workflow task's start (from its history); the
download activities' start order comes from a recording connector. Eager activity
execution is off so that every activity goes through the task queue, where its
inherited priority and fairness key decide.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.common import Priority
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.download import DownloadActivities
from activities.tables import TableActivities, WorkParts
from enqueuer import Actor, Enqueuer, InvalidJobError, JobRef
from enqueuer.backends.temporal import TemporalBackend
from enqueuer.settings import Settings
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.store.sqlite import SqliteStore
from tests.conftest import WorkbookFactory
from tests.helpers import RecordingDemo, demo, eventually
from workflows.download_records import DownloadRecordsWorkflow

ORG_A = Actor(user_id="u_a", organization_id="org_a")
ORG_B = Actor(user_id="u_b", organization_id="org_b")


@asynccontextmanager
async def one_slot_worker(
    client: Client, task_queue: str, store: SqliteStore, recorder: RecordingDemo
) -> AsyncIterator[None]:
    """The download-records workflow and activities, one task of each kind at a time."""
    registry = ConnectorRegistry([recorder])
    download = DownloadActivities(WorkParts(store, registry))
    tables = TableActivities(store)
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[DownloadRecordsWorkflow],
        activities=[tables.resolve_tables, download.download_table, tables.release_locks],
        max_concurrent_workflow_tasks=1,
        max_concurrent_activities=1,
        max_concurrent_activity_task_polls=1,
        disable_eager_activity_execution=True,
    )
    async with worker:
        yield


async def dispatched_at(client: Client, job_id: str) -> datetime | None:
    """When the job's first workflow task was handed to a worker; None if not yet."""
    history = await client.get_workflow_handle(job_id).fetch_history()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            return event.event_time.ToDatetime()
    return None


async def dispatch_order(client: Client, refs: Sequence[JobRef]) -> list[str]:
    """Job ids in the order their first workflow task was dispatched (started ones only)."""
    times = await asyncio.gather(*(dispatched_at(client, r.job_id) for r in refs))
    started = [(t, r.job_id) for t, r in zip(times, refs, strict=True) if t is not None]
    return [job_id for _, job_id in sorted(started)]


def others_before(order: list[str], wanted: set[str]) -> int:
    """How many others came before the last of ``wanted``: all of them if one never came."""
    if not wanted <= set(order):
        return len(set(order) - wanted)
    last = max(order.index(w) for w in wanted)
    return sum(1 for x in order[:last] if x not in wanted)


def download_order(recorder: RecordingDemo) -> list[str]:
    """Table ids in the order their download activities started (server times)."""
    started = [(c.started, c.table_id) for c in recorder.calls if c.started is not None]
    return [table_id for _, table_id in sorted(started)]


async def until_downloads(
    recorder: RecordingDemo, done: Callable[[list[str]], bool], within: float = 25.0
) -> None:
    """Wait until ``done(download_order(recorder))`` holds."""

    async def check() -> bool:
        return done(download_order(recorder))

    await eventually(check, within=within)


async def terminate_open(client: Client, refs: Sequence[JobRef]) -> None:
    """End the jobs the test no longer needs, so the backlog does not outlive it."""

    async def end(job_id: str) -> None:
        try:
            await client.get_workflow_handle(job_id).terminate("test over")
        except RPCError as exc:  # closed already
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise

    await asyncio.gather(*(end(r.job_id) for r in refs))


async def enqueue_each_table(
    enq: Enqueuer, workbook_id: str, table_ids: Sequence[str], actor: Actor, priority: int | None
) -> list[JobRef]:
    return [
        await enq.enqueue_download_records_job(workbook_id, actor, [t], priority=priority)
        for t in table_ids
    ]


def temporal_enqueuer(client: Client, settings: Settings, store: SqliteStore) -> Enqueuer:
    backend = TemporalBackend(settings.temporal, settings.enqueue_timeout, client=client)
    return Enqueuer(settings, store, backend)


async def test_priority_and_fairness_reach_the_server(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    make_workbook: WorkbookFactory,
) -> None:
    wb = make_workbook(org="org_a", t=demo(10, page_size=10))
    weighted = settings.model_copy(update={"fairness_weights": {"org_a": 2.5}})
    enq = temporal_enqueuer(dev_env.client, weighted, sqlite_store)
    ref = await enq.enqueue_download_records_job(wb.id, ORG_A, priority=1)
    info = (await dev_env.client.get_workflow_handle(ref.job_id).describe()).raw_description
    priority = Priority._from_proto(info.workflow_execution_info.priority)
    assert priority == Priority(priority_key=1, fairness_key="org_a", fairness_weight=2.5)
    await terminate_open(dev_env.client, [ref])


@pytest.mark.parametrize("bad", [0, 6, -1, True, "1", 2.0, [1]])
async def test_an_invalid_priority_is_refused_before_anything_starts(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    make_workbook: WorkbookFactory,
    bad: object,
) -> None:
    wb = make_workbook(org="org_a", t=demo(10))
    enq = temporal_enqueuer(dev_env.client, settings, sqlite_store)
    with pytest.raises(InvalidJobError) as caught:
        await enq.enqueue_download_records_job(wb.id, ORG_A, priority=bad)  # type: ignore[arg-type]
    assert caught.value.field == "priority"
    assert "from 1 (runs first) to 5 (runs last)" in str(caught.value)
    assert sqlite_store.get_workbook(wb.id).tables[0].locked_by is None  # type: ignore[union-attr]
    # The default priority is accepted, and so is the whole range.
    for good in (None, 1, 5):
        ref = await enq.enqueue_download_records_job(wb.id, ORG_A, priority=good)
        await terminate_open(dev_env.client, [ref])
        sqlite_store.unlock_tables(ref.table_ids, ref.job_id)


async def test_an_urgent_job_overtakes_a_backlog_of_low_priority_jobs(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    make_workbook: WorkbookFactory,
) -> None:
    backlog = make_workbook(org="org_a", **{f"t{i:02d}": demo(5, page_size=5) for i in range(50)})
    urgent_wb = make_workbook(org="org_a", urgent=demo(5, page_size=5))
    [urgent_table] = [t.id for t in urgent_wb.tables]
    enq = temporal_enqueuer(dev_env.client, settings, sqlite_store)
    refs = await enqueue_each_table(
        enq, backlog.id, [t.id for t in backlog.tables], ORG_A, priority=5
    )
    [urgent] = await enqueue_each_table(enq, urgent_wb.id, [urgent_table], ORG_A, priority=1)
    recorder = RecordingDemo()
    try:
        async with one_slot_worker(
            dev_env.client, settings.temporal.task_queue, sqlite_store, recorder
        ):
            # Until the urgent download starts, or clearly will not be among the first.
            await until_downloads(recorder, lambda seen: urgent_table in seen or len(seen) >= 10)
            dispatched = await dispatch_order(dev_env.client, [*refs, urgent])
            await terminate_open(dev_env.client, [*refs, urgent])
    finally:
        await terminate_open(dev_env.client, [*refs, urgent])
    # Enqueued last of 51, it is among the next two jobs handed to the worker, and its
    # download (an activity inheriting the priority) among the next two downloads.
    assert others_before(dispatched, {urgent.job_id}) <= 1, dispatched
    assert others_before(download_order(recorder), {urgent_table}) <= 1, download_order(recorder)


async def test_one_organizations_burst_does_not_starve_another(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    make_workbook: WorkbookFactory,
) -> None:
    burst = make_workbook(org="org_a", **{f"a{i:03d}": demo(5, page_size=5) for i in range(100)})
    few = make_workbook(org="org_b", **{f"b{i}": demo(5, page_size=5) for i in range(5)})
    enq = temporal_enqueuer(dev_env.client, settings, sqlite_store)
    a_refs = await enqueue_each_table(enq, burst.id, [t.id for t in burst.tables], ORG_A, None)
    b_refs = await enqueue_each_table(enq, few.id, [t.id for t in few.tables], ORG_B, None)
    recorder = RecordingDemo()
    try:
        async with one_slot_worker(
            dev_env.client, settings.temporal.task_queue, sqlite_store, recorder
        ):
            # Until all of B's downloads start, or half of A's backlog has gone first.
            b_tables = {t.id for t in few.tables}
            await until_downloads(
                recorder, lambda seen: b_tables <= set(seen) or len(set(seen) - b_tables) >= 50
            )
            dispatched = await dispatch_order(dev_env.client, [*a_refs, *b_refs])
            await terminate_open(dev_env.client, [*a_refs, *b_refs])
    finally:
        await terminate_open(dev_env.client, [*a_refs, *b_refs])
    # All of B's five jobs were handed out before half of A's hundred, and so were
    # their downloads (activities inheriting the fairness key).
    a_jobs = others_before(dispatched, {r.job_id for r in b_refs})
    assert a_jobs < 50, f"{a_jobs} of A's jobs went before B's last: {dispatched}"
    a_downloads = others_before(download_order(recorder), b_tables)
    assert a_downloads < 50, f"{a_downloads} of A's downloads went first"


async def test_an_organizations_weight_sets_its_share(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    make_workbook: WorkbookFactory,
) -> None:
    heavy = make_workbook(org="org_a", **{f"a{i:02d}": demo(5, page_size=5) for i in range(30)})
    light = make_workbook(org="org_b", **{f"b{i:02d}": demo(5, page_size=5) for i in range(30)})
    weighted = settings.model_copy(update={"fairness_weights": {"org_a": 3.0}})
    enq = temporal_enqueuer(dev_env.client, weighted, sqlite_store)
    # B queues first: in enqueue order A would wait for all of B.
    b_refs = await enqueue_each_table(enq, light.id, [t.id for t in light.tables], ORG_B, None)
    a_refs = await enqueue_each_table(enq, heavy.id, [t.id for t in heavy.tables], ORG_A, None)
    recorder = RecordingDemo()
    try:
        async with one_slot_worker(
            dev_env.client, settings.temporal.task_queue, sqlite_store, recorder
        ):
            await until_downloads(recorder, lambda seen: len(seen) >= 20)
            dispatched = await dispatch_order(dev_env.client, [*a_refs, *b_refs])
            await terminate_open(dev_env.client, [*a_refs, *b_refs])
    finally:
        await terminate_open(dev_env.client, [*a_refs, *b_refs])
    a_ids = {r.job_id for r in a_refs}
    first = dispatched[:20]
    a_share = sum(1 for j in first if j in a_ids)
    # Weight 3 against 1: about 15 of the first 20 (equal weights would give 10).
    assert a_share >= 13, f"A had {a_share} of the first 20 dispatches"
