"""The publish-changes job type on both backends, against a real writable loopback source."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from enqueuer.client import Enqueuer
from spinner_jobs.core.changes import ChangeState
from spinner_jobs.core.models import (
    Actor,
    ConnectorAccount,
    JobStatus,
    Table,
    TableStatus,
    Workbook,
)
from spinner_jobs.shell.sample_api import Fault, SampleApi, SampleTable
from spinner_jobs.store.sqlite import SqliteStore
from tests.conftest import WorkbookFactory
from tests.helpers import demo

ACTOR = Actor(user_id="u1", organization_id="org_1")
TOKEN = "tok-publish-0123456789"
RECORDS = "/tables/people/records"
WRITE: dict[str, Any] = {
    "create": {"method": "POST", "path": RECORDS},
    "update": {"method": "PATCH", "path": RECORDS + "/{id}"},
    "delete": {"method": "DELETE", "path": RECORDS + "/{id}"},
    "read": {"path": RECORDS + "/{id}"},
    "version_field": "version",
}


@pytest.fixture
def api() -> Iterator[SampleApi]:
    tables = {"people": SampleTable(records=6, style="json_link", page_size=2, writable=True)}
    with SampleApi(tables, bearer_token=TOKEN) as served:
        yield served


async def _downloaded(enqueuer: Enqueuer, store: SqliteStore, api: SampleApi) -> Table:
    """A workbook with the people table (writable, with its account), downloaded."""
    store.put_account(
        ConnectorAccount(id="acc_pub", organization_id="org_1", auth="bearer", secret=TOKEN)
    )
    table = Table(
        id="tbl_people",
        workbook_id="wb_pub",
        name="people",
        connector="http",
        config=api.config("people", write=WRITE),
        account_id="acc_pub",
    )
    store.put_workbook(Workbook(id="wb_pub", organization_id="org_1", name="wb", tables=[table]))
    ref = await enqueuer.enqueue_download_records_job("wb_pub", ACTOR)
    result = await enqueuer.wait(ref.job_id, actor=ACTOR)
    assert result.status == JobStatus.COMPLETED, result.progress.error
    return table


def _same_as_source(store: SqliteStore, api: SampleApi, table: Table) -> None:
    assert store.record_ids(table.id) == sorted(api.record_ids("people"))
    for rid in store.record_ids(table.id):
        assert store.get_record(table.id, rid) == api.remote_record("people", rid), rid


async def test_a_publish_sends_each_edit_once_and_the_store_then_agrees_with_the_source(
    enqueuer: Enqueuer, sqlite_store: SqliteStore, api: SampleApi
) -> None:
    table = await _downloaded(enqueuer, sqlite_store, api)
    sqlite_store.update_record(table.id, "rec_0000001", {"name": "Ada"})
    sqlite_store.create_record(table.id, {"name": "Grace"})
    sqlite_store.delete_record(table.id, "rec_0000002")
    ref = await enqueuer.enqueue_publish_changes_job("wb_pub", ACTOR)
    assert ref.job_type == "publish-changes"
    result = await enqueuer.wait(ref.job_id, actor=ACTOR)
    assert result.status == JobStatus.COMPLETED, result.progress.error
    done = result.progress.tables[table.id]
    assert (done.records, done.total) == (3, 3)
    assert done.details == {"confirmed": 3, "conflicts": 0, "failed": 0}
    assert sorted(w.method for w in api.applied_writes) == ["DELETE", "PATCH", "POST"]
    _same_as_source(sqlite_store, api, table)
    # Nothing is left to send: a second publish sends nothing at all.
    writes = len(api.applied_writes)
    again = await enqueuer.enqueue_publish_changes_job("wb_pub", ACTOR)
    second = await enqueuer.wait(again.job_id, actor=ACTOR)
    assert second.progress.tables[table.id].total == 0
    assert len(api.applied_writes) == writes


async def test_a_refused_change_fails_alone_and_a_conflict_is_not_overwritten(
    enqueuer: Enqueuer, sqlite_store: SqliteStore, api: SampleApi
) -> None:
    table = await _downloaded(enqueuer, sqlite_store, api)
    for rid in ("rec_0000000", "rec_0000001", "rec_0000003"):
        sqlite_store.update_record(table.id, rid, {"name": f"local {rid}"})
    api.edit_remote("people", "rec_0000003", {"name": "changed at the source"})
    api.inject(Fault(status=422, method="PATCH", skip=1, body='{"error": "no"}'))
    ref = await enqueuer.enqueue_publish_changes_job("wb_pub", ACTOR)
    result = await enqueuer.wait(ref.job_id, actor=ACTOR)
    # A change's own failure or conflict does not fail the table or the job.
    assert result.status == JobStatus.COMPLETED, result.progress.error
    table_progress = result.progress.tables[table.id]
    assert table_progress.status == TableStatus.COMPLETED
    assert table_progress.details == {"confirmed": 1, "conflicts": 1, "failed": 1}
    assert (api.remote_record("people", "rec_0000003") or {})["name"] == "changed at the source"
    [conflict] = sqlite_store.list_changes(table.id, [ChangeState.CONFLICT])
    assert conflict.remote_id == "rec_0000003"
    # The same edit again with overwrite chosen for the job is sent.
    sqlite_store.update_record(table.id, "rec_0000003", {"name": "mine after all"})
    forced = await enqueuer.enqueue_publish_changes_job("wb_pub", ACTOR, on_conflict="overwrite")
    assert (await enqueuer.wait(forced.job_id, actor=ACTOR)).status == JobStatus.COMPLETED
    assert (api.remote_record("people", "rec_0000003") or {})["name"] == "mine after all"


async def test_a_failing_source_is_retried_and_a_change_is_applied_once(
    enqueuer: Enqueuer, sqlite_store: SqliteStore, api: SampleApi
) -> None:
    """The source answers 503 after applying the write: the retry re-sends with the
    same key and the source does not apply it twice."""
    table = await _downloaded(enqueuer, sqlite_store, api)
    sqlite_store.update_record(table.id, "rec_0000004", {"name": "once"})
    api.inject(Fault(status=503, method="PATCH", times=2))
    ref = await enqueuer.enqueue_publish_changes_job("wb_pub", ACTOR)
    result = await enqueuer.wait(ref.job_id, actor=ACTOR)
    assert result.status == JobStatus.COMPLETED, result.progress.error
    assert result.progress.tables[table.id].attempt == 3
    patches = [w for w in api.applied_writes if w.method == "PATCH"]
    assert len(patches) == 1
    keys = {r.headers["idempotency-key"] for r in api.requests if r.method == "PATCH"}
    assert len(keys) == 1
    _same_as_source(sqlite_store, api, table)


async def test_a_table_of_a_read_only_source_with_edits_fails_with_a_clear_error(
    enqueuer: Enqueuer, make_workbook: WorkbookFactory, sqlite_store: SqliteStore
) -> None:
    wb = make_workbook(t1=demo(4))
    ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR)
    await enqueuer.wait(ref.job_id, actor=ACTOR)
    table_id = wb.tables[0].id
    [first, *_] = sqlite_store.record_ids(table_id)
    sqlite_store.update_record(table_id, first, {"name": "edited"})
    publish = await enqueuer.enqueue_publish_changes_job(wb.id, ACTOR)
    result = await enqueuer.wait(publish.job_id, actor=ACTOR)
    assert result.status == JobStatus.FAILED
    error = result.progress.tables[table_id].error or ""
    assert "cannot publish changes" in error
    assert result.progress.tables[table_id].attempt == 1  # no retry can help
    # The edit is kept, still waiting to be published.
    assert sqlite_store.get_record(table_id, first)["name"] == "edited"  # type: ignore[index]
