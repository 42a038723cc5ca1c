"""Job types as the extension point: the registry, the generic enqueue and its options.

Each guarantee runs on both backends where it applies (the ``enqueuer`` fixture), with a
real dev server and worker for Temporal.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import ScheduleActionStartWorkflow
from temporalio.testing import WorkflowEnvironment

from enqueuer.backends.temporal import TemporalBackend
from enqueuer.client import Enqueuer, caller_job_id
from enqueuer.jobtypes import JOB_TYPES, JobTypeRegistry, queue_config
from enqueuer.settings import Settings
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.core.errors import InvalidJobError, JobConflictError, UnknownJobTypeError
from spinner_jobs.core.models import (
    Actor,
    DownloadRecordsInput,
    JobOptions,
    JobStatus,
    JobWorkflowInput,
    QueueSettings,
    RetentionSweepInput,
    RetryOverride,
)
from spinner_jobs.store.sqlite import SqliteStore
from spinner_jobs.worker.main import build_workers
from spinner_jobs.worker.schedules import ensure_retention_schedule, retention_schedule_id
from tests.conftest import WorkbookFactory
from tests.helpers import demo, eventually, temporal_enqueuer
from workflows.download_records import DOWNLOAD_RECORDS

ACTOR = Actor(user_id="u1", organization_id="org_1")


async def _started_input(enqueuer: Enqueuer, job_id: str) -> JobWorkflowInput:
    """The workflow input a Temporal job was started with, from its history."""
    assert isinstance(enqueuer.backend, TemporalBackend)
    client = await enqueuer.backend.client()
    history = await client.get_workflow_handle(job_id).fetch_history()
    first = history.events[0]
    assert first.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED
    [started] = await client.data_converter.decode(
        first.workflow_execution_started_event_attributes.input.payloads, [JobWorkflowInput]
    )
    assert isinstance(started, JobWorkflowInput)
    return started


# --- the generic enqueue ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["name", "declaration", "model"])
async def test_the_generic_enqueue_runs_a_job_of_the_named_type(
    enqueuer: Enqueuer, make_workbook: WorkbookFactory, how: str
) -> None:
    wb = make_workbook(t1=demo(30, page_size=10))
    job_type: Any = DOWNLOAD_RECORDS if how == "declaration" else "download-records"
    input: Any = (
        DownloadRecordsInput(workbook_id=wb.id) if how == "model" else {"workbook_id": wb.id}
    )
    ref = await enqueuer.enqueue(job_type, input, actor=ACTOR)
    assert ref.job_type == "download-records"
    assert ref.job_id.startswith("download-records-")
    result = await enqueuer.wait(ref.job_id, actor=ACTOR)
    assert result.status == JobStatus.COMPLETED
    assert result.progress.job_type == "download-records"
    assert result.progress.total_records == 30


async def test_an_unknown_job_type_is_a_typed_error_and_locks_nothing(
    enqueuer: Enqueuer, make_workbook: WorkbookFactory, sqlite_store: SqliteStore
) -> None:
    wb = make_workbook(t1=demo(5))
    with pytest.raises(UnknownJobTypeError) as caught:
        await enqueuer.enqueue("download-everything", {"workbook_id": wb.id}, actor=ACTOR)
    assert isinstance(caught.value, InvalidJobError)
    assert caught.value.field == "job_type"
    assert "download-records" in str(caught.value)
    assert sqlite_store.get_workbook(wb.id).tables[0].locked_by is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("input", "options", "field"),
    [
        ({"workbook_id": "wb", "tables": ["t"]}, None, "tables"),  # a misspelt field
        ({"table_ids": ["t"]}, None, "workbook_id"),
        ("wb", None, "input"),
        ({"workbook_id": "wb"}, {"priority": 9}, "priority"),
        (
            {"workbook_id": "wb"},
            {"retry": {"maximum_attempts": 0}},
            "options.retry.maximum_attempts",
        ),
        ({"workbook_id": "wb"}, {"delay": timedelta(days=31)}, "options.delay"),
        ({"workbook_id": "wb"}, {"delay": timedelta(seconds=-1)}, "options.delay"),
        ({"workbook_id": "wb"}, {"job_id": "a\x00b"}, "options.job_id"),
        ({"workbook_id": "wb"}, {"colour": "red"}, "options.colour"),
    ],
)
async def test_bad_input_or_options_name_the_field(
    enqueuer: Enqueuer, input: Any, options: Any, field: str
) -> None:
    with pytest.raises(InvalidJobError) as caught:
        await enqueuer.enqueue("download-records", input, actor=ACTOR, options=options)
    assert caught.value.field == field


# --- idempotent enqueue with a caller's job id --------------------------------------------


async def test_the_same_key_returns_the_same_job(
    enqueuer: Enqueuer, make_workbook: WorkbookFactory
) -> None:
    wb = make_workbook(t1=demo(20, page_size=10))
    first = await enqueuer.enqueue(
        "download-records", {"workbook_id": wb.id}, actor=ACTOR, options={"job_id": "nightly-1"}
    )
    assert first.job_id == caller_job_id("download-records", ACTOR.organization_id, "nightly-1")
    await enqueuer.wait(first.job_id, actor=ACTOR)
    # Again after it closed: still that job, not a second one (the ids say so).
    again = await enqueuer.enqueue(
        "download-records", {"workbook_id": wb.id}, actor=ACTOR, options={"job_id": "nightly-1"}
    )
    assert again.job_id == first.job_id
    assert again.table_ids == first.table_ids
    assert again.workbook_id == wb.id


async def test_many_callers_with_one_key_start_one_job_that_keeps_its_locks(
    enqueuer: Enqueuer, make_workbook: WorkbookFactory, sqlite_store: SqliteStore
) -> None:
    """Twenty enqueues of one key at once: one job, every caller gets it, locks stay its."""
    wb = make_workbook(t1=demo(40, page_size=10, page_delay=0.2))
    refs = await asyncio.gather(
        *(
            enqueuer.enqueue(
                "download-records",
                {"workbook_id": wb.id},
                actor=ACTOR,
                options={"job_id": "same-key"},
            )
            for _ in range(20)
        ),
        return_exceptions=True,
    )
    job_ids = {r.job_id for r in refs if not isinstance(r, BaseException)}
    errors = [r for r in refs if isinstance(r, BaseException)]
    assert errors == [], errors
    assert len(job_ids) == 1, job_ids
    [job_id] = job_ids
    table = sqlite_store.get_workbook(wb.id).tables[0]  # type: ignore[union-attr]
    assert table.locked_by == job_id
    result = await enqueuer.wait(job_id, actor=ACTOR)
    assert result.status == JobStatus.COMPLETED
    assert result.progress.total_records == 40
    if isinstance(enqueuer.backend, TemporalBackend):
        client = await enqueuer.backend.client()
        started = await client.count_workflows(f'WorkbookId="{wb.id}"')
        assert started.count == 1


async def test_a_key_is_scoped_to_its_organization(
    enqueuer: Enqueuer, make_workbook: WorkbookFactory
) -> None:
    """Another organization using the same key gets its own job, and never sees the first."""
    wb_a = make_workbook(org="org_a", t1=demo(10))
    wb_b = make_workbook(org="org_b", t1=demo(10))
    a = Actor(user_id="ua", organization_id="org_a")
    b = Actor(user_id="ub", organization_id="org_b")
    options = {"job_id": "report"}
    ref_a = await enqueuer.enqueue(
        "download-records", {"workbook_id": wb_a.id}, actor=a, options=options
    )
    ref_b = await enqueuer.enqueue(
        "download-records", {"workbook_id": wb_b.id}, actor=b, options=options
    )
    assert ref_a.job_id != ref_b.job_id
    assert ref_b.workbook_id == wb_b.id
    for ref, actor in ((ref_a, a), (ref_b, b)):
        assert (await enqueuer.wait(ref.job_id, actor=actor)).status == JobStatus.COMPLETED


# --- options over the job type's defaults -------------------------------------------------


async def test_options_and_per_type_settings_reach_the_workflow(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
    make_workbook: WorkbookFactory,
) -> None:
    per_type = settings.model_copy(
        update={
            "job_types": {
                "download-records": QueueSettings(
                    priority=4, table_parallelism=2, retry=RetryOverride(maximum_attempts=5)
                )
            }
        }
    )
    wb = make_workbook(t1=demo(10))
    async with temporal_enqueuer(dev_env.client, per_type, sqlite_store, connectors) as enq:
        defaults = await enq.enqueue("download-records", {"workbook_id": wb.id}, actor=ACTOR)
        await enq.wait(defaults.job_id, actor=ACTOR)
        given = await enq.enqueue(
            "download-records",
            {"workbook_id": wb.id},
            actor=ACTOR,
            options=JobOptions(
                priority=1,
                retry=RetryOverride(initial_interval=timedelta(seconds=7)),
                metadata={"ticket": 42},
            ),
        )
        await enq.wait(given.job_id, actor=ACTOR)
        first = await _started_input(enq, defaults.job_id)
        second = await _started_input(enq, given.job_id)
    assert (first.priority, first.table_parallelism, first.retry.maximum_attempts) == (4, 2, 5)
    assert (second.priority, second.retry.maximum_attempts) == (1, 5)
    assert second.retry.initial_interval == timedelta(seconds=7)
    assert second.job.metadata == {"ticket": 42}
    assert first.job_type == second.job_type == "download-records"


async def test_a_delayed_job_starts_after_its_delay(
    enqueuer: Enqueuer, make_workbook: WorkbookFactory, sqlite_store: SqliteStore
) -> None:
    wb = make_workbook(t1=demo(10))
    before = datetime.now(UTC)
    ref = await enqueuer.enqueue(
        "download-records",
        {"workbook_id": wb.id},
        actor=ACTOR,
        options={"delay": timedelta(seconds=2)},
    )
    # Enqueued means reserved: the table is locked from the enqueue on.
    assert sqlite_store.get_workbook(wb.id).tables[0].locked_by == ref.job_id  # type: ignore[union-attr]
    result = await enqueuer.wait(ref.job_id, actor=ACTOR)
    assert result.status == JobStatus.COMPLETED
    assert result.progress.started_at is not None
    assert result.progress.started_at - before >= timedelta(seconds=2)


async def test_a_delayed_job_still_owns_its_tables(
    enqueuer: Enqueuer, make_workbook: WorkbookFactory
) -> None:
    """While a delayed job waits, another job of its tables is refused, and cancel frees them."""
    wb = make_workbook(t1=demo(10))
    ref = await enqueuer.enqueue(
        "download-records",
        {"workbook_id": wb.id},
        actor=ACTOR,
        options={"delay": timedelta(minutes=10)},
    )
    with pytest.raises(JobConflictError):
        await enqueuer.enqueue("download-records", {"workbook_id": wb.id}, actor=ACTOR)
    await enqueuer.cancel(ref.job_id, actor=ACTOR)
    assert (await enqueuer.wait(ref.job_id, actor=ACTOR)).status == JobStatus.CANCELLED

    async def free() -> None:
        again = await enqueuer.enqueue("download-records", {"workbook_id": wb.id}, actor=ACTOR)
        assert (await enqueuer.wait(again.job_id, actor=ACTOR)).status == JobStatus.COMPLETED

    await eventually(free, within=30)


# --- settings per job type ----------------------------------------------------------------


def test_queue_settings_layer_declaration_engine_and_per_type(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    declared = DOWNLOAD_RECORDS.queue.model_copy(update={"keep_completed": 77, "priority": 2})
    kind = type(DOWNLOAD_RECORDS)(**{**DOWNLOAD_RECORDS.__dict__, "queue": declared})
    # The declaration's default wins over the engine's default...
    plain = Settings(data_dir=settings.data_dir)
    assert queue_config(plain, kind).keep_completed == 77
    assert queue_config(plain, kind).priority == 2
    # ...an engine-wide setting given explicitly wins over the declaration...
    monkeypatch.setenv("SPINNER_RETENTION_KEEP_COMPLETED", "12")
    assert queue_config(Settings.load(), kind).keep_completed == 12
    # ...and the job type's own section wins over both.
    monkeypatch.setenv(
        "SPINNER_JOB_TYPES",
        '{"download-records": {"keep_completed": 3, "task_queue": "elsewhere", '
        '"retry": {"maximum_attempts": 9}}}',
    )
    config = queue_config(Settings.load(), kind)
    assert (config.keep_completed, config.task_queue, config.retry.maximum_attempts) == (
        3,
        "elsewhere",
        9,
    )


def test_settings_of_an_unknown_job_type_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINNER_JOB_TYPES", '{"download-record": {"priority": 1}}')
    with pytest.raises(UnknownJobTypeError, match="download-record"):
        queue_config(Settings.load(), DOWNLOAD_RECORDS)


def test_a_registry_refuses_two_types_of_one_name() -> None:
    with pytest.raises(ValueError, match="twice"):
        JobTypeRegistry([DOWNLOAD_RECORDS, DOWNLOAD_RECORDS])
    assert "download-records" in JOB_TYPES.names


async def test_a_job_type_on_its_own_queue_runs_there(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
    make_workbook: WorkbookFactory,
) -> None:
    own = f"{settings.temporal.task_queue}-downloads"
    moved = settings.model_copy(
        update={"job_types": {"download-records": QueueSettings(task_queue=own)}}
    )
    workers = build_workers(dev_env.client, moved, sqlite_store, connectors)
    assert sorted(w.task_queue for w in workers) == sorted([settings.temporal.task_queue, own])
    wb = make_workbook(t1=demo(10))
    backend = TemporalBackend(moved.temporal, moved.enqueue_timeout, client=dev_env.client)
    enq = Enqueuer(moved, sqlite_store, backend)
    async with workers[0], workers[1]:
        ref = await enq.enqueue("download-records", {"workbook_id": wb.id}, actor=ACTOR)
        assert (await enq.wait(ref.job_id, actor=ACTOR)).status == JobStatus.COMPLETED
        description = await dev_env.client.get_workflow_handle(ref.job_id).describe()
        assert description.task_queue == own
        stats = await enq.stats(job_type="download-records")
        assert stats.task_queue == own
        assert stats.job_types == ["download-records"]


async def test_each_job_type_has_its_own_retention_schedule(
    dev_env: WorkflowEnvironment, settings: Settings
) -> None:
    """Retention keeps the last N completed / M failed per job type, like BullMQ per queue."""
    per_type = settings.model_copy(
        update={
            "job_types": {
                "export-records": QueueSettings(keep_completed=50, keep_failed=7),
                "publish-changes": QueueSettings(keep_failed=0),
            }
        }
    )
    client = dev_env.client
    await ensure_retention_schedule(client, per_type)
    queue = settings.temporal.task_queue
    found: dict[str, tuple[int, int, str, str | None]] = {}
    try:
        for name in JOB_TYPES.names:
            handle = client.get_schedule_handle(retention_schedule_id(queue, name))
            action = (await handle.describe()).schedule.action
            assert isinstance(action, ScheduleActionStartWorkflow)
            [sweep] = await client.data_converter.decode(action.args, [RetentionSweepInput])
            found[name] = (
                sweep.keep_completed,
                sweep.keep_failed,
                sweep.workflow_type,
                sweep.query_filter,
            )
    finally:
        for name in JOB_TYPES.names:
            await client.get_schedule_handle(retention_schedule_id(queue, name)).delete()
    scope = f'TaskQueue="{queue}"'
    assert found == {
        "download-records": (10, 5, "download-records", scope),
        "publish-changes": (10, 0, "publish-changes", scope),
        "export-records": (50, 7, "export-records", scope),
    }


async def test_a_table_removed_before_its_job_starts_fails_clearly(
    enqueuer: Enqueuer, make_workbook: WorkbookFactory, sqlite_store: SqliteStore
) -> None:
    """The job carries its tables from the enqueue; one gone by the start fails, alone."""
    wb = make_workbook(keep=demo(10), drop=demo(10))
    ref = await enqueuer.enqueue(
        "download-records",
        {"workbook_id": wb.id},
        actor=ACTOR,
        options={"delay": timedelta(seconds=1)},
    )
    sqlite_store.put_workbook(wb.model_copy(update={"tables": wb.tables[:1]}))
    result = await enqueuer.wait(ref.job_id, actor=ACTOR)
    assert result.status == JobStatus.FAILED
    assert result.failed_tables == [f"{wb.id}_drop"]
    assert "no longer in workbook" in (result.progress.tables[f"{wb.id}_drop"].error or "")
    assert result.progress.tables[f"{wb.id}_keep"].records == 10
