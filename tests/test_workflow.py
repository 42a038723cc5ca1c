"""DownloadRecordsWorkflow on the time-skipping test server, with the real activities."""

from __future__ import annotations

from datetime import timedelta

from temporalio.testing import WorkflowEnvironment

from enqueuer.settings import Settings
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.core.models import Actor, JobStatus, TableStatus
from spinner_jobs.store.sqlite import SqliteStore
from tests.helpers import RecordingDemo, demo, eventually, temporal_enqueuer

ACTOR = Actor(user_id="u_1", organization_id="org_1")


def _with_retry(settings: Settings, **retry: object) -> Settings:
    return settings.model_copy(update={"retry": settings.retry.model_copy(update=retry)})


async def test_failing_table_is_tried_three_times_with_growing_waits(
    ts_env: WorkflowEnvironment, settings: Settings, sqlite_store: SqliteStore, make_workbook
) -> None:
    settings = _with_retry(
        settings,
        initial_interval=timedelta(seconds=2),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(minutes=1),
    )
    source = RecordingDemo()
    wb = make_workbook(
        good=demo(250), broken=demo(300, fail_page=2, fail_times=99), other=demo(120)
    )
    broken = f"{wb.id}_broken"
    async with temporal_enqueuer(
        ts_env.client, settings, sqlite_store, ConnectorRegistry([source])
    ) as enqueuer:
        ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR)
        result = await enqueuer.wait(ref.job_id, actor=ACTOR)

    attempts = [c for c in source.calls if c.table_id == broken]
    # Attempt 1 committed page 1 before failing: progress, so it uses up no retry.
    # Attempts 2-4 resume at page 2 and fail there: three failures without progress.
    assert [c.attempt for c in attempts] == [1, 2, 3, 4]
    assert attempts[0].cursor is None
    assert len({c.cursor for c in attempts[1:]}) == 1
    assert attempts[1].cursor is not None
    # The waits are durable workflow timers (the time-skipping server skips them):
    # 2 s after the progressing attempt, then 2 s and 4 s after each failure.
    history = await ts_env.client.get_workflow_handle(ref.job_id).fetch_history()
    timers = [
        e.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta()
        for e in history.events
        if e.HasField("timer_started_event_attributes")
    ]
    assert timers == [timedelta(seconds=2), timedelta(seconds=2), timedelta(seconds=4)]

    assert result.status == JobStatus.FAILED
    assert result.failed_tables == [broken]
    tables = result.progress.tables
    assert tables[f"{wb.id}_good"].status == TableStatus.COMPLETED
    assert tables[f"{wb.id}_other"].status == TableStatus.COMPLETED
    assert "page 2 unavailable" in (tables[broken].error or "")
    # The failed table reports what it wrote (page 1), as the store holds it.
    assert tables[broken].records == sqlite_store.count_records(broken) == 100
    assert tables[broken].attempt == 4
    assert sqlite_store.get_checkpoint(broken, ref.job_id) is None
    assert sqlite_store.count_records(f"{wb.id}_good") == 250
    assert sqlite_store.count_records(f"{wb.id}_other") == 120
    assert sqlite_store.locks_held_by(ref.job_id) == []


async def test_non_retryable_error_is_attempted_once(
    ts_env: WorkflowEnvironment, settings: Settings, sqlite_store: SqliteStore, make_workbook
) -> None:
    source = RecordingDemo()
    wb = make_workbook(bad=demo(100, fail_page=1, fail_kind="permanent"))
    async with temporal_enqueuer(
        ts_env.client, settings, sqlite_store, ConnectorRegistry([source])
    ) as enqueuer:
        ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR)
        result = await enqueuer.wait(ref.job_id, actor=ACTOR)
    assert [c.attempt for c in source.calls] == [1]
    assert result.status == JobStatus.FAILED
    assert "rejected (permanent fault)" in (result.progress.tables[f"{wb.id}_bad"].error or "")
    assert sqlite_store.locks_held_by(ref.job_id) == []


async def test_retry_resumes_from_last_committed_page(
    ts_env: WorkflowEnvironment, settings: Settings, sqlite_store: SqliteStore, make_workbook
) -> None:
    source = RecordingDemo()
    wb = make_workbook(t=demo(1000, page_size=100, fail_page=4, fail_times=1))
    table_id = f"{wb.id}_t"
    async with temporal_enqueuer(
        ts_env.client, settings, sqlite_store, ConnectorRegistry([source])
    ) as enqueuer:
        ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR)
        result = await enqueuer.wait(ref.job_id, actor=ACTOR)
    assert result.status == JobStatus.COMPLETED
    # The second attempt starts at page 4 (offset 300), not from the beginning.
    assert [(c.attempt, c.cursor) for c in source.calls] == [(1, None), (2, "300")]
    assert result.progress.tables[table_id].records == 1000
    assert sqlite_store.record_ids(table_id) == [f"rec_{i:07d}" for i in range(1000)]


async def test_cancel_stops_the_job_and_frees_locks(
    ts_env: WorkflowEnvironment, settings: Settings, sqlite_store: SqliteStore, make_workbook
) -> None:
    wb = make_workbook(
        slow=demo(10_000, page_size=10, page_delay=0.05),
        slower=demo(10_000, page_size=10, page_delay=0.05),
    )
    async with temporal_enqueuer(
        ts_env.client, settings, sqlite_store, ConnectorRegistry([RecordingDemo()])
    ) as enqueuer:
        ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR)
        assert sorted(sqlite_store.locks_held_by(ref.job_id)) == sorted(ref.table_ids)

        async def some_records() -> bool:
            return (await enqueuer.progress(ref.job_id, actor=ACTOR)).total_records > 0

        await eventually(some_records)
        await enqueuer.cancel(ref.job_id, actor=ACTOR)
        result = await enqueuer.wait(ref.job_id, actor=ACTOR)
        assert result.status == JobStatus.CANCELLED
        assert {t.status for t in result.progress.tables.values()} == {TableStatus.CANCELLED}
        assert sqlite_store.locks_held_by(ref.job_id) == []


async def test_progress_reports_statuses_and_live_counts(
    ts_env: WorkflowEnvironment, settings: Settings, sqlite_store: SqliteStore, make_workbook
) -> None:
    settings = settings.model_copy(
        update={"jobs": settings.jobs.model_copy(update={"table_parallelism": 1})}
    )
    wb = make_workbook(
        first=demo(2000, page_size=50, page_delay=0.06), second=demo(500, page_size=100)
    )
    first, second = f"{wb.id}_first", f"{wb.id}_second"
    async with temporal_enqueuer(
        ts_env.client, settings, sqlite_store, ConnectorRegistry([RecordingDemo()])
    ) as enqueuer:
        ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR)

        async def first_is_live() -> bool:
            p = await enqueuer.progress(ref.job_id, actor=ACTOR)
            return (
                p.tables[first].status == TableStatus.ACTIVE and 0 < p.tables[first].records < 2000
            )

        await eventually(first_is_live)
        mid = await enqueuer.progress(ref.job_id, actor=ACTOR)
        # Parallelism 1: the second table waits its turn.
        assert mid.tables[second].status == TableStatus.PENDING
        assert mid.tables[first].name == "first"
        assert mid.tables[first].connector == "demo"
        assert mid.total_records == mid.tables[first].records

        result = await enqueuer.wait(ref.job_id, actor=ACTOR)
        final = await enqueuer.progress(ref.job_id, actor=ACTOR)
    assert result.status == JobStatus.COMPLETED
    assert final.status == JobStatus.COMPLETED
    assert {t: final.tables[t].records for t in (first, second)} == {first: 2000, second: 500}
    assert final.total_records == 2500
    assert all(t.status == TableStatus.COMPLETED for t in final.tables.values())
