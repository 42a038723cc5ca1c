"""The export-records job type on both backends: files, their digests, and the locks."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
from pathlib import Path

import pytest

from enqueuer.client import Enqueuer
from enqueuer.settings import Settings
from spinner_jobs.core.errors import InvalidJobError, JobConflictError
from spinner_jobs.core.models import Actor, JobStatus
from spinner_jobs.store.sqlite import SqliteStore
from tests.conftest import WorkbookFactory
from tests.helpers import demo

ACTOR = Actor(user_id="u1", organization_id="org_1")


async def _downloaded(enqueuer: Enqueuer, make_workbook: WorkbookFactory, **tables: object) -> str:
    wb = make_workbook(**tables)
    ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR)
    assert (await enqueuer.wait(ref.job_id, actor=ACTOR)).status == JobStatus.COMPLETED
    return wb.id


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_an_export_writes_one_complete_file_per_table(
    enqueuer: Enqueuer,
    make_workbook: WorkbookFactory,
    sqlite_store: SqliteStore,
    settings: Settings,
    fmt: str,
) -> None:
    wb_id = await _downloaded(
        enqueuer, make_workbook, t1=demo(250, page_size=50), t2=demo(3), t3=demo(0)
    )
    ref = await enqueuer.enqueue_export_records_job(wb_id, ACTOR, format=fmt)
    assert ref.job_type == "export-records"
    result = await enqueuer.wait(ref.job_id, actor=ACTOR)
    assert result.status == JobStatus.COMPLETED, result.progress.error
    exports = (settings.data_dir / "exports").resolve()
    for table_id, table in result.progress.tables.items():
        details = table.details
        path = Path(str(details["path"]))
        assert path.parent.parent == exports  # <data dir>/exports/<job>/<file>
        body = await asyncio.to_thread(path.read_bytes)
        assert details["bytes"] == len(body)
        assert details["sha256"] == hashlib.sha256(body).hexdigest()
        expected = sqlite_store.count_records(table_id)
        assert table.records == details["rows"] == expected
        text = body.decode()
        if fmt == "csv":
            rows = list(csv.DictReader(io.StringIO(text)))
            assert sorted(r["id"] for r in rows) == sqlite_store.record_ids(table_id)
        else:
            lines = [json.loads(line) for line in text.splitlines()]
            assert [line["id"] for line in lines] == sqlite_store.record_ids(table_id)
            for line in lines[:5]:
                assert line["fields"] == sqlite_store.get_record(table_id, line["id"])
    # Nothing half-written is left beside the files.
    assert not [p for p in exports.rglob("*") if p.name.startswith(".")]
    assert result.progress.total_records == 253


async def test_an_export_and_a_download_of_one_table_never_overlap(
    enqueuer: Enqueuer, make_workbook: WorkbookFactory, sqlite_store: SqliteStore
) -> None:
    wb = make_workbook(t1=demo(60, page_size=10, page_delay=0.3))
    download = await enqueuer.enqueue_download_records_job(wb.id, ACTOR)
    with pytest.raises(JobConflictError) as caught:
        await enqueuer.enqueue_export_records_job(wb.id, ACTOR)
    assert caught.value.running_job_id == download.job_id
    await enqueuer.wait(download.job_id, actor=ACTOR)
    export = await enqueuer.enqueue_export_records_job(wb.id, ACTOR, format="jsonl")
    # Held by the export now: a download must wait its turn.
    locked_by = sqlite_store.get_workbook(wb.id).tables[0].locked_by  # type: ignore[union-attr]
    if locked_by is not None:
        assert locked_by == export.job_id
    result = await enqueuer.wait(export.job_id, actor=ACTOR)
    assert result.status == JobStatus.COMPLETED
    assert sqlite_store.get_workbook(wb.id).tables[0].locked_by is None  # type: ignore[union-attr]


@pytest.mark.parametrize("key", ["../../etc", "a/b", ".hidden", "x" * 200, "ä"])
async def test_a_hostile_job_key_is_refused(
    enqueuer: Enqueuer, make_workbook: WorkbookFactory, key: str
) -> None:
    wb = make_workbook(t1=demo(3))
    with pytest.raises(InvalidJobError) as caught:
        await enqueuer.enqueue(
            "export-records", {"workbook_id": wb.id}, actor=ACTOR, options={"job_id": key}
        )
    assert caught.value.field == "options.job_id"


async def test_an_unknown_format_is_refused(
    enqueuer: Enqueuer, make_workbook: WorkbookFactory
) -> None:
    wb = make_workbook(t1=demo(3))
    with pytest.raises(InvalidJobError) as caught:
        await enqueuer.enqueue_export_records_job(wb.id, ACTOR, format="xlsx")
    assert caught.value.field == "format"
