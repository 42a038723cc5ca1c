"""Counts, statuses and errors a caller relies on: each must be true, each error typed.

Smaller cases, on both backends where both apply: records written by failed and
cancelled tables, real attempt numbers, the error of ``job.failed`` events, stored
counts with duplicate ids, cancelling a closed job, ``progress()`` of things that are not
running jobs, and the shapes of ``enqueue_download_records_job``'s inputs.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from enqueuer import Enqueuer, EventKind, JobStatus, TableStatus
from enqueuer.settings import Settings
from spinner_jobs.connectors.registry import ConnectorRegistry, default_connectors
from spinner_jobs.core.errors import InvalidJobError, SpinnerError
from spinner_jobs.core.models import Backend, JobEvent, JobProgress
from spinner_jobs.store.postgres import PostgresStore
from spinner_jobs.store.sqlite import SqliteStore
from tests.chaos_support import (
    ACTOR,
    WorkerProcess,
    cancel_job,
    demo_records,
    job_events,
    job_progress,
    job_result,
    put_workbook,
    report,
    store_differences,
    temporal_enqueuer_on,
    worker_env,
    workers,
)
from tests.helpers import demo, eventually, temporal_enqueuer
from tests.pg import fresh_schema

BACKENDS = pytest.mark.parametrize("backend", [Backend.TEMPORAL, Backend.IN_PROCESS], ids=str)


@asynccontextmanager
async def _enqueuer(
    backend: Backend,
    dev_env: WorkflowEnvironment,
    settings: Settings,
    store: SqliteStore,
    connectors: ConnectorRegistry,
) -> AsyncIterator[Enqueuer]:
    if backend == Backend.TEMPORAL:
        async with temporal_enqueuer(dev_env.client, settings, store, connectors) as enqueuer:
            yield enqueuer
        return
    local = settings.model_copy(update={"use_jobs": False})
    async with Enqueuer.from_settings(local, store=store) as enqueuer:
        yield enqueuer


def _new_workbook(store: SqliteStore, **config: Any) -> tuple[str, str]:
    wb = f"wb_{uuid.uuid4().hex[:8]}"
    table_id = f"{wb}_t"
    put_workbook(store, wb, {table_id: ("demo", config)})
    return wb, table_id


# Pages 1-3 are written, page 4 fails for good.
FAILING = demo(1000, page_size=100, fail_page=4, fail_kind="permanent")


@pytest.mark.timeout(60)
@BACKENDS
async def test_a_table_that_fails_after_writing_pages_reports_the_records_it_wrote(
    backend: Backend,
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
) -> None:
    wb, table_id = _new_workbook(sqlite_store, **FAILING)
    async with _enqueuer(backend, dev_env, settings, sqlite_store, connectors) as enqueuer:
        ref = await enqueuer.enqueue_download_records_job(wb, ACTOR)
        result = await job_result(enqueuer, ref.job_id)
        progress = await job_progress(enqueuer, ref.job_id)
        stored = sqlite_store.count_records(table_id)
        # The source is fixed; the next job must end exact, whatever the failed one left.
        put_workbook(sqlite_store, wb, {table_id: ("demo", demo(1000, page_size=100))})
        again = await job_result(
            enqueuer, (await enqueuer.enqueue_download_records_job(wb, ACTOR)).job_id
        )
    differences = store_differences(sqlite_store, table_id, demo_records(1000))
    report(
        f"failed-table-count-{backend}",
        status=result.status.value,
        result_records=result.progress.tables[table_id].records,
        progress_records=progress.tables[table_id].records,
        stored=stored,
    )
    assert result.status == JobStatus.FAILED
    assert stored == 300
    assert result.progress.tables[table_id].records == stored, "wait() result"
    assert progress.tables[table_id].records == stored, "progress() after the job closed"
    assert progress.total_records == stored
    assert again.status == JobStatus.COMPLETED
    assert not differences, differences


@pytest.mark.timeout(60)
@BACKENDS
async def test_a_cancelled_table_reports_the_records_it_wrote(
    backend: Backend,
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
) -> None:
    wb, table_id = _new_workbook(sqlite_store, **demo(3000, page_size=100, page_delay=0.1))
    async with _enqueuer(backend, dev_env, settings, sqlite_store, connectors) as enqueuer:
        ref = await enqueuer.enqueue_download_records_job(wb, ACTOR)

        async def some_pages() -> bool:
            return sqlite_store.count_records(table_id) >= 300

        await eventually(some_pages, within=30)
        await cancel_job(enqueuer, ref.job_id)
        result = await job_result(enqueuer, ref.job_id)
        progress = await job_progress(enqueuer, ref.job_id)
        stored = sqlite_store.count_records(table_id)
        again = await job_result(
            enqueuer, (await enqueuer.enqueue_download_records_job(wb, ACTOR)).job_id
        )
    differences = store_differences(sqlite_store, table_id, demo_records(3000))
    report(
        f"cancelled-table-count-{backend}",
        status=result.status.value,
        result_records=result.progress.tables[table_id].records,
        progress_records=progress.tables[table_id].records,
        stored=stored,
    )
    assert result.status == JobStatus.CANCELLED
    assert 0 < stored < 3000
    assert result.progress.tables[table_id].records == stored, "wait() result"
    assert progress.tables[table_id].records == stored, "progress() after the job closed"
    assert again.status == JobStatus.COMPLETED
    assert not differences, differences


@pytest.mark.timeout(60)
@BACKENDS
async def test_progress_shows_the_real_attempt_number_while_a_table_runs(
    backend: Backend,
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
) -> None:
    # Page 3 fails on the first attempt only; the second attempt goes on to the end.
    config = demo(1500, page_size=100, page_delay=0.1, fail_page=3, fail_times=1)
    wb, table_id = _new_workbook(sqlite_store, **config)
    seen: list[int] = []
    async with _enqueuer(backend, dev_env, settings, sqlite_store, connectors) as enqueuer:
        ref = await enqueuer.enqueue_download_records_job(wb, ACTOR)
        while True:
            progress = await job_progress(enqueuer, ref.job_id)
            table = progress.tables.get(table_id)
            if table is not None and table.status == TableStatus.ACTIVE and table.records > 0:
                seen.append(table.attempt)
            if progress.status != JobStatus.RUNNING:
                break
            await asyncio.sleep(0.1)
        result = await job_result(enqueuer, ref.job_id)
    report(f"attempts-{backend}", seen=sorted(set(seen)), status=result.status.value)
    assert result.status == JobStatus.COMPLETED
    assert seen, "the table was never seen active with records"
    assert min(seen) >= 1, f"attempt numbers seen while running: {sorted(set(seen))}"
    assert 2 in seen, f"the retry's attempt was not shown: {sorted(set(seen))}"
    assert not store_differences(sqlite_store, table_id, demo_records(1500))


@pytest.mark.timeout(60)
@BACKENDS
async def test_a_closed_table_reports_the_attempt_it_ended_on(
    backend: Backend,
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
) -> None:
    # Page 2 fails on the first attempt only: the table completes on its second attempt.
    config = demo(300, page_size=100, fail_page=2, fail_times=1)
    wb, table_id = _new_workbook(sqlite_store, **config)
    async with _enqueuer(backend, dev_env, settings, sqlite_store, connectors) as enqueuer:
        ref = await enqueuer.enqueue_download_records_job(wb, ACTOR)
        result = await job_result(enqueuer, ref.job_id)
        progress = await job_progress(enqueuer, ref.job_id)
    report(
        f"closed-attempt-{backend}",
        result_attempt=result.progress.tables[table_id].attempt,
        progress_attempt=progress.tables[table_id].attempt,
    )
    assert result.status == JobStatus.COMPLETED
    assert result.progress.tables[table_id].attempt == 2, "wait() result"
    assert progress.tables[table_id].attempt == 2, "progress() after the job closed"
    assert not store_differences(sqlite_store, table_id, demo_records(300))


@pytest.mark.timeout(60)
@BACKENDS
async def test_the_job_failed_event_carries_the_error(
    backend: Backend,
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
) -> None:
    wb, _ = _new_workbook(sqlite_store, **FAILING)
    events: list[JobEvent] = []
    async with _enqueuer(backend, dev_env, settings, sqlite_store, connectors) as enqueuer:
        ref = await enqueuer.enqueue_download_records_job(wb, ACTOR)

        async def follow() -> None:
            async for event in job_events(enqueuer, ref.job_id, interval=0.1):
                events.append(event)

        await asyncio.wait_for(follow(), 30)
    failed_table = [e for e in events if e.kind == EventKind.TABLE_FAILED]
    failed_job = [e for e in events if e.kind == EventKind.JOB_FAILED]
    report(
        f"job-failed-event-{backend}",
        table_failed_error=failed_table[0].error if failed_table else None,
        job_failed_error=failed_job[0].error if failed_job else None,
    )
    assert len(failed_job) == 1, [e.kind for e in events]
    assert failed_job[0].error, "job.failed came without its error"
    assert "page 4" in failed_job[0].error, failed_job[0].error
    assert failed_table, [e.kind for e in events]
    assert "page 4" in (failed_table[0].error or ""), failed_table[0].error


@pytest.mark.timeout(60)
@BACKENDS
async def test_a_page_with_a_duplicate_id_reports_the_records_stored(
    backend: Backend,
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    tmp_path: Path,
) -> None:
    lines = [{"id": "a", "v": 1}, {"id": "b", "v": 2}, {"id": "a", "v": 3}]
    root = tmp_path / "files"
    root.mkdir()
    (root / "dupes.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    wb = f"wb_{uuid.uuid4().hex[:8]}"
    table_id = f"{wb}_t"
    put_workbook(sqlite_store, wb, {table_id: ("files", {"path": "dupes.jsonl", "page_size": 10})})
    connectors = default_connectors(root)
    try:
        async with _enqueuer(backend, dev_env, settings, sqlite_store, connectors) as enqueuer:
            ref = await enqueuer.enqueue_download_records_job(wb, ACTOR)
            result = await job_result(enqueuer, ref.job_id)
            progress = await job_progress(enqueuer, ref.job_id)
    finally:
        await connectors.aclose()
    # The last occurrence of an id wins, as an upsert of the page in order would have it.
    expected = {"a": {"id": "a", "v": 3}, "b": {"id": "b", "v": 2}}
    differences = store_differences(sqlite_store, table_id, expected)
    report(
        f"duplicate-ids-{backend}",
        result_records=result.progress.tables[table_id].records,
        progress_total=progress.total_records,
        stored=sqlite_store.count_records(table_id),
    )
    assert result.status == JobStatus.COMPLETED
    assert not differences, differences
    assert result.progress.tables[table_id].records == 2
    assert progress.tables[table_id].records == 2
    assert progress.total_records == 2


@pytest.mark.timeout(60)
@BACKENDS
async def test_cancelling_a_closed_job_raises_a_typed_error(
    backend: Backend,
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
) -> None:
    wb, table_id = _new_workbook(sqlite_store, **demo(200))
    async with _enqueuer(backend, dev_env, settings, sqlite_store, connectors) as enqueuer:
        ref = await enqueuer.enqueue_download_records_job(wb, ACTOR)
        result = await job_result(enqueuer, ref.job_id)
        outcome: BaseException | None = None
        try:
            await cancel_job(enqueuer, ref.job_id)
        except Exception as exc:
            outcome = exc
        after = await job_progress(enqueuer, ref.job_id)
    report(f"cancel-closed-{backend}", outcome=repr(outcome), status_after=after.status.value)
    assert result.status == JobStatus.COMPLETED
    assert isinstance(outcome, SpinnerError), f"cancel of a completed job gave {outcome!r}"
    assert after.status == JobStatus.COMPLETED
    assert not store_differences(sqlite_store, table_id, demo_records(200))


@pytest.mark.timeout(90)
async def test_progress_of_a_workflow_that_is_not_a_job_raises_a_typed_error(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
) -> None:
    other_id = f"not-a-job-{uuid.uuid4().hex[:8]}"
    async with temporal_enqueuer(dev_env.client, settings, sqlite_store, connectors) as enqueuer:
        # Some other workflow on the same server and queue, as a shared namespace has.
        handle = await dev_env.client.start_workflow(
            "chaos-some-other-workflow", id=other_id, task_queue=settings.temporal.task_queue
        )
        try:
            outcome: BaseException | JobProgress
            try:
                outcome = await asyncio.wait_for(job_progress(enqueuer, other_id), 30)
            except Exception as exc:
                outcome = exc
        finally:
            await handle.terminate()
    report("progress-not-a-job", outcome=f"{type(outcome).__module__}.{type(outcome).__name__}")
    assert isinstance(outcome, SpinnerError), f"progress() of a non-job gave {outcome!r}"


@pytest.mark.timeout(120)
async def test_progress_right_after_the_only_worker_died_is_never_a_raw_rpc_error(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    tmp_path: Path,
) -> None:
    wb, table_id = _new_workbook(sqlite_store, **demo(20_000, page_size=100, page_delay=0.05))
    address = dev_env.client.service_client.config.target_host
    env = worker_env(
        address=address,
        task_queue=settings.temporal.task_queue,
        database_url=sqlite_store.url,
        data_dir=tmp_path,
    )
    enqueuer = temporal_enqueuer_on(dev_env.client, settings, sqlite_store)
    outcomes: list[BaseException | JobProgress] = []
    with workers(WorkerProcess(env, tmp_path / "worker.log")) as running:
        ref = await enqueuer.enqueue_download_records_job(wb, ACTOR)

        async def some_pages() -> bool:
            return sqlite_store.count_records(table_id) >= 300

        await eventually(some_pages, within=60)
        running[0].kill()
        for _ in range(2):
            try:
                outcomes.append(await asyncio.wait_for(job_progress(enqueuer, ref.job_id), 30))
            except Exception as exc:
                outcomes.append(exc)
            await asyncio.sleep(1)
    handle = dev_env.client.get_workflow_handle(ref.job_id)
    if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
        await handle.terminate("test over")
    shown = [type(o).__name__ for o in outcomes]
    report("progress-after-worker-died", outcomes=shown)
    raw = [
        o
        for o in outcomes
        if isinstance(o, RPCError) or not isinstance(o, JobProgress | SpinnerError)
    ]
    assert not raw, f"progress() right after the worker died gave {raw!r}"


# --- input shapes -------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("table_ids", "metadata", "field"),
    [
        ("xy", None, "table_ids"),
        ({"x": 1, "y": 2}, None, "table_ids"),
        (5, None, "table_ids"),
        (["a", "a"], None, "table_ids"),
        (None, {"v": math.nan}, "metadata"),
        (None, {"v": math.inf}, "metadata"),
    ],
    ids=["a-string", "a-dict", "an-int", "duplicates", "nan-metadata", "infinite-metadata"],
)
async def test_inputs_of_the_wrong_shape_are_invalid_job_errors(
    table_ids: Any, metadata: Any, field: str, settings: Settings, sqlite_store: SqliteStore
) -> None:
    wb = f"wb_{uuid.uuid4().hex[:8]}"
    put_workbook(sqlite_store, wb, {name: ("demo", demo(10)) for name in ("x", "y", "a")})
    local = settings.model_copy(update={"use_jobs": False})
    async with Enqueuer.from_settings(local, store=sqlite_store) as enqueuer:
        outcome: object
        try:
            outcome = await enqueuer.enqueue_download_records_job(
                wb, ACTOR, table_ids=table_ids, metadata=metadata
            )
        except Exception as exc:
            outcome = exc
    assert isinstance(outcome, InvalidJobError), f"got {outcome!r}"
    assert outcome.field == field, outcome


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["workbook_id", "table_ids"])
async def test_an_id_with_a_nul_on_postgres_is_an_invalid_job_error(
    where: str, settings: Settings, postgres_url: str
) -> None:
    with fresh_schema(postgres_url) as url:
        store = PostgresStore(url)
        store.migrate()
        wb = f"wb_{uuid.uuid4().hex[:8]}"
        put_workbook(store, wb, {f"{wb}_t": ("demo", demo(10))})
        local = settings.model_copy(update={"use_jobs": False, "database_url": url})
        async with Enqueuer.from_settings(local, store=store) as enqueuer:
            outcome: object
            try:
                if where == "workbook_id":
                    outcome = await enqueuer.enqueue_download_records_job(f"{wb}\x00", ACTOR)
                else:
                    outcome = await enqueuer.enqueue_download_records_job(
                        wb, ACTOR, table_ids=[f"{wb}_t\x00"]
                    )
            except Exception as exc:
                outcome = exc
        store.close()
    assert isinstance(outcome, InvalidJobError), f"got {type(outcome).__module__}: {outcome!r}"
    # The field, or an element of it (``table_ids.0``).
    assert outcome.field.split(".")[0] == where, outcome


@pytest.mark.timeout(60)
async def test_the_web_uis_current_details_show_live_counts_without_a_history_event_per_page(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
) -> None:
    pages = 100
    wb, table_id = _new_workbook(sqlite_store, **demo(3000, page_size=30, page_delay=0.03))
    row = re.compile(
        rf"\| {re.escape(table_id)} \(`{re.escape(table_id)}`\) \| demo \| (\w+) \| ([\d,]+) \|"
    )
    shown: list[tuple[str, int, int]] = []  # (status, records shown, records stored)
    async with temporal_enqueuer(dev_env.client, settings, sqlite_store, connectors) as enqueuer:
        ref = await enqueuer.enqueue_download_records_job(wb, ACTOR)
        handle = dev_env.client.get_workflow_handle(ref.job_id)
        while (await job_progress(enqueuer, ref.job_id)).status == JobStatus.RUNNING:
            try:
                metadata = await handle.query(
                    "__temporal_workflow_metadata", result_type=WorkflowMetadata
                )
            except (RPCError, WorkflowQueryFailedError):
                metadata = None  # no workflow task has run yet to answer queries
            stored = sqlite_store.count_records(table_id)
            match = row.search(str(metadata.current_details)) if metadata else None
            if match:
                shown.append((match[1], int(match[2].replace(",", "")), stored))
            await asyncio.sleep(0.1)
        result = await job_result(enqueuer, ref.job_id)
        events = [e async for e in handle.fetch_history_events()]
    # Live: once a page is stored, within the progress interval (0.2 s) plus slack.
    active = [(shown_n, stored) for status, shown_n, stored in shown if status == "active"]
    live = [shown_n for shown_n, stored in active if stored >= 300]
    report(
        "web-ui-details",
        active_samples=len(active),
        max_shown_while_active=max((n for n, _ in active), default=None),
        history_events=len(events),
        pages=pages,
    )
    assert result.status == JobStatus.COMPLETED
    assert live, f"no sample while active with 300+ records stored: {shown[:5]}"
    assert max(live) > 0, f"current details showed {sorted(set(live))} records while active"
    assert len(events) < pages, f"{len(events)} history events for {pages} pages"
