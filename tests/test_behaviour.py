"""One behavioural suite, run against both backends: Temporal (dev server) and in-process."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from enqueuer import (
    Actor,
    Enqueuer,
    EventKind,
    InvalidJobError,
    JobConflictError,
    JobNotFoundError,
    JobStatus,
    QueueFullError,
    TableNotFoundError,
    TableStatus,
    WorkbookNotFoundError,
)
from enqueuer.backends.temporal import TemporalBackend
from spinner_jobs.store.sqlite import SqliteStore
from tests.helpers import demo, eventually

ACTOR = Actor(user_id="u_1", organization_id="org_1")


async def test_enqueue_returns_at_once_and_downloads_every_record(
    enqueuer: Enqueuer, sqlite_store: SqliteStore, make_workbook
) -> None:
    wb = make_workbook(a=demo(3000, page_size=100, page_delay=0.1), b=demo(700), c=demo(0))
    ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR, metadata={"reason": "test"})
    assert ref.backend == enqueuer.backend.kind
    assert ref.table_ids == [t.id for t in wb.tables]
    # Returned before the download finished (table a needs 30 pages x 100 ms at least).
    assert (await enqueuer.progress(ref.job_id, actor=ACTOR)).status == JobStatus.RUNNING

    result = await enqueuer.wait(ref.job_id, actor=ACTOR)
    assert result.status == JobStatus.COMPLETED
    assert result.failed_tables == []
    assert result.progress.total_records == 3700
    assert sqlite_store.record_ids(f"{wb.id}_a") == [f"rec_{i:07d}" for i in range(3000)]
    assert sqlite_store.count_records(f"{wb.id}_b") == 700
    assert sqlite_store.count_records(f"{wb.id}_c") == 0
    synced = sqlite_store.get_workbook(wb.id)
    assert synced is not None
    assert all(t.last_synced_at is not None and t.locked_by is None for t in synced.tables)


async def test_one_failed_table_fails_the_job_but_not_the_others(
    enqueuer: Enqueuer, sqlite_store: SqliteStore, make_workbook
) -> None:
    wb = make_workbook(ok=demo(500), bad=demo(500, fail_page=2, fail_kind="permanent"))
    ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR)
    result = await enqueuer.wait(ref.job_id, actor=ACTOR)
    assert result.status == JobStatus.FAILED
    assert result.failed_tables == [f"{wb.id}_bad"]
    assert result.progress.tables[f"{wb.id}_ok"].status == TableStatus.COMPLETED
    assert sqlite_store.count_records(f"{wb.id}_ok") == 500
    assert sqlite_store.locks_held_by(ref.job_id) == []


async def test_transient_fault_is_retried_without_duplicates(
    enqueuer: Enqueuer, sqlite_store: SqliteStore, make_workbook
) -> None:
    wb = make_workbook(t=demo(1000, page_size=100, fail_page=5, fail_times=2))
    ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR)
    result = await enqueuer.wait(ref.job_id, actor=ACTOR)
    assert result.status == JobStatus.COMPLETED
    assert result.progress.tables[f"{wb.id}_t"].records == 1000
    assert sqlite_store.record_ids(f"{wb.id}_t") == [f"rec_{i:07d}" for i in range(1000)]


async def test_selected_tables_only(
    enqueuer: Enqueuer, sqlite_store: SqliteStore, make_workbook
) -> None:
    wb = make_workbook(a=demo(10), b=demo(20))
    ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR, table_ids=[f"{wb.id}_b"])
    result = await enqueuer.wait(ref.job_id, actor=ACTOR)
    assert list(result.progress.tables) == [f"{wb.id}_b"]
    assert sqlite_store.count_records(f"{wb.id}_a") == 0
    assert sqlite_store.count_records(f"{wb.id}_b") == 20


async def test_live_progress_while_a_table_downloads(enqueuer: Enqueuer, make_workbook) -> None:
    wb = make_workbook(slow=demo(2000, page_size=20, page_delay=0.02))
    table_id = f"{wb.id}_slow"
    ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR)

    async def counting() -> None:
        table = (await enqueuer.progress(ref.job_id, actor=ACTOR)).tables[table_id]
        assert table.status == TableStatus.ACTIVE, table
        assert 0 < table.records < 2000, table

    await eventually(counting)
    p = await enqueuer.progress(ref.job_id, actor=ACTOR)
    assert p.tables[table_id].name == "slow"
    assert p.tables[table_id].connector == "demo"
    assert p.total_records == p.tables[table_id].records
    await enqueuer.cancel(ref.job_id, actor=ACTOR)
    await enqueuer.wait(ref.job_id, actor=ACTOR)


async def test_a_table_being_downloaded_is_not_downloaded_twice(
    enqueuer: Enqueuer, sqlite_store: SqliteStore, make_workbook
) -> None:
    wb = make_workbook(slow=demo(5000, page_size=50, page_delay=0.02), other=demo(10))
    first = await enqueuer.enqueue_download_records_job(wb.id, ACTOR)
    with pytest.raises(JobConflictError) as caught:
        await enqueuer.enqueue_download_records_job(wb.id, ACTOR, table_ids=[f"{wb.id}_slow"])
    assert caught.value.running_job_id == first.job_id
    assert "held by running job" in str(caught.value)
    await enqueuer.cancel(first.job_id, actor=ACTOR)
    result = await enqueuer.wait(first.job_id, actor=ACTOR)
    assert result.status == JobStatus.CANCELLED
    assert sqlite_store.locks_held_by(first.job_id) == []
    second = await enqueuer.enqueue_download_records_job(wb.id, ACTOR, table_ids=[f"{wb.id}_other"])
    assert (await enqueuer.wait(second.job_id, actor=ACTOR)).status == JobStatus.COMPLETED


async def test_stale_lock_of_a_vanished_job_is_taken_over_after_the_grace(
    enqueuer: Enqueuer, sqlite_store: SqliteStore, make_workbook
) -> None:
    wb = make_workbook(t=demo(10))
    table = f"{wb.id}_t"
    # A caller that locked, then died before its job started: the lock names a job no
    # backend knows. While young it may still be starting, so it is respected.
    assert sqlite_store.lock_tables([table], "download-records-gone") == {}
    with pytest.raises(JobConflictError):
        await enqueuer.enqueue_download_records_job(wb.id, ACTOR)
    # Older than the grace: the caller is gone; the lock is taken over.
    old = (datetime.now(UTC) - timedelta(seconds=enqueuer.lock_grace + 1)).isoformat()
    with sqlite3.connect(sqlite_store.path) as conn:
        conn.execute("UPDATE workbook_tables SET locked_at = ? WHERE id = ?", (old, table))
    ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR)
    assert (await enqueuer.wait(ref.job_id, actor=ACTOR)).status == JobStatus.COMPLETED
    assert sqlite_store.count_records(table) == 10


async def test_events_follow_the_job_to_its_end(enqueuer: Enqueuer, make_workbook) -> None:
    wb = make_workbook(a=demo(300, page_delay=0.01), b=demo(200))
    ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR)
    events = [e async for e in enqueuer.events(ref.job_id, interval=0.05, actor=ACTOR)]
    kinds = [e.kind for e in events]
    assert kinds[-1] == EventKind.JOB_COMPLETED
    completed = sorted(e.table_id or "" for e in events if e.kind == EventKind.TABLE_COMPLETED)
    assert completed == [f"{wb.id}_a", f"{wb.id}_b"]
    assert EventKind.PROGRESS in kinds
    assert len({e.event_id for e in events}) == len(events)
    assert events[-1].records == 500


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"actor": {"user_id": "", "organization_id": "org_1"}}, InvalidJobError, "actor.user_id"),
        (
            {"actor": {"user_id": "u_1", "organization_id": " "}},
            InvalidJobError,
            "actor.organization_id",
        ),
        ({"metadata": ["not", "an", "object"]}, InvalidJobError, "metadata"),
        ({"metadata": {"blob": "x" * 20_000}}, InvalidJobError, "over the"),
        ({"table_ids": []}, InvalidJobError, "table_ids"),
        ({"table_ids": ["nope"]}, TableNotFoundError, "nope"),
        ({"workbook_id": "wb_missing"}, WorkbookNotFoundError, "not found"),
        (
            {"actor": {"user_id": "u_1", "organization_id": "org_other"}},
            WorkbookNotFoundError,
            "not found",
        ),
    ],
    ids=[
        "empty-user",
        "blank-org",
        "metadata-list",
        "metadata-too-big",
        "no-tables",
        "unknown-table",
        "unknown-workbook",
        "other-organization",
    ],
)
async def test_bad_input_is_a_typed_error_and_starts_nothing(
    enqueuer: Enqueuer,
    sqlite_store: SqliteStore,
    make_workbook,
    kwargs: dict[str, Any],
    error: type[Exception],
    words: str,
) -> None:
    wb = make_workbook(t=demo(10))
    call = {"workbook_id": wb.id, "actor": ACTOR, **kwargs}
    with pytest.raises(error) as caught:
        await enqueuer.enqueue_download_records_job(**call)
    assert words in str(caught.value)
    if isinstance(enqueuer.backend, TemporalBackend):
        client = await enqueuer.backend.client()
        started = await client.count_workflows(f'WorkbookId="{wb.id}"')
        assert started.count == 0
    else:
        assert await enqueuer.backend.count_running("download-records", "any") == 0
    table = sqlite_store.get_workbook(wb.id).tables[0]  # type: ignore[union-attr]
    assert table.locked_by is None


async def test_other_organization_gets_the_same_error_as_unknown(
    enqueuer: Enqueuer, make_workbook
) -> None:
    wb = make_workbook(t=demo(10))
    with pytest.raises(WorkbookNotFoundError) as other:
        await enqueuer.enqueue_download_records_job(
            wb.id, Actor(user_id="u", organization_id="org_x")
        )
    with pytest.raises(WorkbookNotFoundError) as unknown:
        await enqueuer.enqueue_download_records_job(
            "wb_nope", Actor(user_id="u", organization_id="org_x")
        )
    assert str(other.value).replace(wb.id, "?") == str(unknown.value).replace("wb_nope", "?")


async def test_unknown_job(enqueuer: Enqueuer) -> None:
    with pytest.raises(JobNotFoundError):
        await enqueuer.progress("download-records-nope", actor=ACTOR)
    with pytest.raises(JobNotFoundError):
        await enqueuer.cancel("download-records-nope", actor=ACTOR)


async def test_cancel_releases_locks_mid_download(
    enqueuer: Enqueuer, sqlite_store: SqliteStore, make_workbook
) -> None:
    wb = make_workbook(
        a=demo(5000, page_size=20, page_delay=0.02), b=demo(5000, page_size=20, page_delay=0.02)
    )
    ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR)

    async def started() -> None:
        progress = await enqueuer.progress(ref.job_id, actor=ACTOR)
        assert progress.total_records > 0, progress

    await eventually(started)
    await enqueuer.cancel(ref.job_id, actor=ACTOR)
    result = await asyncio.wait_for(enqueuer.wait(ref.job_id, actor=ACTOR), 30)
    assert result.status == JobStatus.CANCELLED
    assert sqlite_store.locks_held_by(ref.job_id) == []
    assert all(t.status == TableStatus.CANCELLED for t in result.progress.tables.values())
    assert timedelta(0) < (result.progress.finished_at - result.progress.started_at)  # type: ignore[operator]


async def test_queue_full_when_the_pending_cap_is_reached(
    enqueuer: Enqueuer, sqlite_store: SqliteStore, make_workbook
) -> None:
    enqueuer.settings = enqueuer.settings.model_copy(
        update={"jobs": enqueuer.settings.jobs.model_copy(update={"max_pending": 1})}
    )
    wb = make_workbook(slow=demo(5000, page_size=20, page_delay=0.02), other=demo(10))
    first = await enqueuer.enqueue_download_records_job(wb.id, ACTOR, table_ids=[f"{wb.id}_slow"])
    with pytest.raises(QueueFullError) as caught:
        await enqueuer.enqueue_download_records_job(wb.id, ACTOR, table_ids=[f"{wb.id}_other"])
    assert "cap 1" in str(caught.value)
    # Nothing of the refused job was left behind: its table is not locked.
    assert sqlite_store.get_workbook(wb.id).tables[1].locked_by is None  # type: ignore[union-attr]
    await enqueuer.cancel(first.job_id, actor=ACTOR)
    await enqueuer.wait(first.job_id, actor=ACTOR)
