"""The specification every registered job type meets, on both backends.

A job type added to the registry joins these tests without a line here: it runs to
completion, a delayed job of it can be cancelled and gives its tables back, it holds
its tables against jobs of every other type, and it never crosses organizations.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from enqueuer.client import Enqueuer
from enqueuer.jobtypes import JOB_TYPES
from spinner_jobs.core.errors import (
    JobConflictError,
    JobNotFoundError,
    TableNotFoundError,
    WorkbookNotFoundError,
)
from spinner_jobs.core.models import Actor, JobStatus, LockPolicy, TableStatus
from spinner_jobs.store.sqlite import SqliteStore
from tests.conftest import WorkbookFactory
from tests.helpers import demo

ACTOR = Actor(user_id="u1", organization_id="org_1")
OTHER = Actor(user_id="u9", organization_id="org_9")
LATER = {"delay": timedelta(minutes=10)}

every_type = pytest.mark.parametrize("job_type", JOB_TYPES.names)
locking_types = pytest.mark.parametrize(
    "job_type", [t.name for t in JOB_TYPES if t.locks == LockPolicy.TABLES]
)


async def _downloaded_workbook(enqueuer: Enqueuer, make_workbook: WorkbookFactory) -> str:
    wb = make_workbook(t1=demo(30, page_size=10), t2=demo(5))
    ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR)
    assert (await enqueuer.wait(ref.job_id, actor=ACTOR)).status == JobStatus.COMPLETED
    return wb.id


@every_type
async def test_a_job_runs_to_completion_and_gives_its_tables_back(
    enqueuer: Enqueuer,
    make_workbook: WorkbookFactory,
    sqlite_store: SqliteStore,
    job_type: str,
) -> None:
    wb_id = await _downloaded_workbook(enqueuer, make_workbook)
    ref = await enqueuer.enqueue(job_type, {"workbook_id": wb_id}, actor=ACTOR)
    result = await enqueuer.wait(ref.job_id, actor=ACTOR)
    assert result.status == JobStatus.COMPLETED, result.progress.error
    assert result.progress.job_type == job_type
    assert {t.status for t in result.progress.tables.values()} == {TableStatus.COMPLETED}
    workbook = sqlite_store.get_workbook(wb_id)
    assert workbook is not None
    assert [t.locked_by for t in workbook.tables] == [None, None]
    # The stored records are untouched by any job type but the download.
    assert sqlite_store.count_records(f"{wb_id}_t1") == 30


@every_type
async def test_a_waiting_job_can_be_cancelled_and_its_tables_are_free_again(
    enqueuer: Enqueuer,
    make_workbook: WorkbookFactory,
    sqlite_store: SqliteStore,
    job_type: str,
) -> None:
    wb = make_workbook(t1=demo(5))
    ref = await enqueuer.enqueue(job_type, {"workbook_id": wb.id}, actor=ACTOR, options=LATER)
    await enqueuer.cancel(ref.job_id, actor=ACTOR)
    result = await enqueuer.wait(ref.job_id, actor=ACTOR)
    assert result.status == JobStatus.CANCELLED
    assert sqlite_store.get_workbook(wb.id).tables[0].locked_by is None  # type: ignore[union-attr]


@locking_types
async def test_a_job_holds_its_tables_against_every_job_type(
    enqueuer: Enqueuer, make_workbook: WorkbookFactory, job_type: str
) -> None:
    wb = make_workbook(t1=demo(5))
    holder = await enqueuer.enqueue(job_type, {"workbook_id": wb.id}, actor=ACTOR, options=LATER)
    try:
        for other in JOB_TYPES.names:
            with pytest.raises(JobConflictError) as caught:
                await enqueuer.enqueue(other, {"workbook_id": wb.id}, actor=ACTOR)
            assert caught.value.running_job_id == holder.job_id
    finally:
        await enqueuer.cancel(holder.job_id, actor=ACTOR)
        await enqueuer.wait(holder.job_id, actor=ACTOR)


@every_type
async def test_a_job_never_crosses_organizations(
    enqueuer: Enqueuer, make_workbook: WorkbookFactory, job_type: str
) -> None:
    wb = make_workbook(t1=demo(5))
    with pytest.raises(WorkbookNotFoundError):
        await enqueuer.enqueue(job_type, {"workbook_id": wb.id}, actor=OTHER)
    with pytest.raises(TableNotFoundError):
        await enqueuer.enqueue(
            job_type, {"workbook_id": wb.id, "table_ids": ["not-there"]}, actor=ACTOR
        )
    # A caller's key is scoped too: another organization cannot find the job by it.
    options = {**LATER, "job_id": "k"}
    ref = await enqueuer.enqueue(job_type, {"workbook_id": wb.id}, actor=ACTOR, options=options)
    try:
        for call in (enqueuer.progress, enqueuer.cancel, enqueuer.wait):
            with pytest.raises(JobNotFoundError) as caught:
                await call(ref.job_id, actor=OTHER)
            unknown = JobNotFoundError(ref.job_id)
            assert str(caught.value) == str(unknown)
        assert await enqueuer.backend.find(ref.job_id, OTHER.organization_id) is None
        assert await enqueuer.backend.find(ref.job_id, ACTOR.organization_id) is not None
    finally:
        await enqueuer.cancel(ref.job_id, actor=ACTOR)
        await enqueuer.wait(ref.job_id, actor=ACTOR)
