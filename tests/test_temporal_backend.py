"""The Temporal backend answers for closed jobs from their history, with no worker up."""

from __future__ import annotations

from temporalio.testing import WorkflowEnvironment

from enqueuer import Actor, Enqueuer, JobStatus, TableStatus
from enqueuer.backends.temporal import TemporalBackend
from enqueuer.settings import Settings
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.store.sqlite import SqliteStore
from tests.helpers import demo, temporal_enqueuer

ACTOR = Actor(user_id="u_1", organization_id="org_1")


async def test_progress_and_result_of_closed_jobs_need_no_worker(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
    make_workbook,
) -> None:
    wb = make_workbook(ok=demo(300), bad=demo(10, fail_page=1, fail_kind="permanent"))
    async with temporal_enqueuer(dev_env.client, settings, sqlite_store, connectors) as enq:
        done = await enq.enqueue_download_records_job(wb.id, ACTOR, table_ids=[f"{wb.id}_ok"])
        failed = await enq.enqueue_download_records_job(wb.id, ACTOR, table_ids=[f"{wb.id}_bad"])
        await enq.wait(done.job_id, actor=ACTOR)
        await enq.wait(failed.job_id, actor=ACTOR)

    # The worker is gone: a frontend process still reads closed jobs.
    backend = TemporalBackend(settings.temporal, settings.enqueue_timeout, client=dev_env.client)
    frontend = Enqueuer(settings, sqlite_store, backend)
    completed = await frontend.progress(done.job_id, actor=ACTOR)
    assert completed.status == JobStatus.COMPLETED
    assert completed.tables[f"{wb.id}_ok"].records == 300
    assert completed.tables[f"{wb.id}_ok"].status == TableStatus.COMPLETED
    result = await frontend.wait(failed.job_id, actor=ACTOR)
    assert result.status == JobStatus.FAILED
    assert result.failed_tables == [f"{wb.id}_bad"]
    assert (await frontend.progress(failed.job_id, actor=ACTOR)).tables[f"{wb.id}_bad"].error
