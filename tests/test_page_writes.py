"""A page reaches the store whole, whatever its size and however its records come.

SQLite upserts a page a few hundred rows per statement (powers of two, bounded by the
connection's variable limit), and a page can come as ``(remote_id, fields)`` pairs or
as :class:`RecordTexts` columns. Every size around the chunk bounds must land exactly,
with a repeated id keeping its last fields, on both stores.

Each row carries the mark of the job that read it (``seen_mark``), which the end of a
table's download sweeps by; rows written before the mark existed carry the job id.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from spinner_jobs.core.models import PageRecord, RecordTexts, Table, TableCheckpoint, Workbook
from spinner_jobs.store.base import Store, seen_mark
from spinner_jobs.store.sqlite import SqliteStore
from tests.helpers import run_sql

SIZES = [0, 1, 2, 3, 127, 255, 256, 257, 511, 1000, 1537]


def prepare(store: Store) -> None:
    store.put_workbook(
        Workbook(
            id="wb_pages",
            organization_id="org_1",
            name="pages",
            tables=[Table(id="tbl_pages", workbook_id="wb_pages", name="t", connector="demo")],
        )
    )
    assert store.lock_tables(["tbl_pages"], "job_1") == {}


def write(store: Store, records: Sequence[PageRecord]) -> None:
    lease = store.lease("tbl_pages", "job_1")
    store.write_page(lease, records, TableCheckpoint(cursor="c", records=len(records), pages=1))


def stored(store: Store) -> dict[str, Any]:
    rows = store.read_records("tbl_pages", None, 10_000)
    return {remote_id: dict(fields) for remote_id, fields in rows}


def texts_page(size: int, version: int) -> RecordTexts:
    ids = [f"r{i:05d}" for i in range(size)]
    return RecordTexts(ids, [json.dumps({"i": i, "v": version}) for i in range(size)])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("shape", ["columns", "pairs"])
def test_every_record_of_a_page_lands_once(any_store: Store, size: int, shape: str) -> None:
    prepare(any_store)
    page = texts_page(size, 1)
    records: Sequence[PageRecord] = page if shape == "columns" else list(page)

    write(any_store, records)

    expected = {f"r{i:05d}": {"i": i, "v": 1} for i in range(size)}
    assert stored(any_store) == expected
    # A second pass over the same ids updates them in place: no duplicates, new fields.
    write(any_store, texts_page(size, 2))
    assert stored(any_store) == {rid: {**f, "v": 2} for rid, f in expected.items()}
    assert any_store.count_records("tbl_pages") == size


@pytest.mark.parametrize("shape", ["columns", "pairs"])
def test_a_repeated_id_keeps_its_last_fields_across_statement_bounds(
    any_store: Store, shape: str
) -> None:
    prepare(any_store)
    # 300 records: the repeat of r00000 falls in the second statement of the page.
    ids = [f"r{i:05d}" for i in range(299)] + ["r00000"]
    texts = [json.dumps({"n": n}) for n in range(300)]
    page = RecordTexts(ids, texts)

    write(any_store, page if shape == "columns" else list(page))

    got = stored(any_store)
    assert len(got) == 299
    assert got["r00000"] == {"n": 299}
    assert got["r00298"] == {"n": 298}


@pytest.mark.parametrize("ids", [["a", "a"], ["a", "b", "a", "c"], ["x", "a", "a", "a"]])
def test_a_repeated_id_within_one_statement_keeps_its_last_fields(
    any_store: Store, ids: list[str]
) -> None:
    prepare(any_store)
    # Pages of 2 and 4 records: one statement each.
    write(any_store, RecordTexts(ids, [json.dumps({"n": n}) for n in range(len(ids))]))

    last = {rid: {"n": n} for n, rid in enumerate(ids)}
    assert stored(any_store) == last


@pytest.mark.parametrize("limit", [7, 999, 4000])
def test_a_low_variable_limit_still_writes_the_whole_page(
    sqlite_store: SqliteStore, limit: int
) -> None:
    prepare(sqlite_store)
    # The connection this thread writes with; the page must fit its limit.
    conn: sqlite3.Connection = sqlite_store._conn()
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)

    write(sqlite_store, texts_page(1000, 1))

    assert sqlite_store.count_records("tbl_pages") == 1000
    assert stored(sqlite_store)["r00999"] == {"i": 999, "v": 1}


def test_record_texts_reads_as_its_pairs() -> None:
    page = RecordTexts(["a", "b", "c"], ['{"x": 1}', '{"x": 2}', '{"x": 3}'])

    assert len(page) == 3
    assert list(page) == [("a", '{"x": 1}'), ("b", '{"x": 2}'), ("c", '{"x": 3}')]
    assert page[1] == ("b", '{"x": 2}')
    assert page[-1] == ("c", '{"x": 3}')
    assert page[1:] == RecordTexts(["b", "c"], ['{"x": 2}', '{"x": 3}'])
    assert page == [("a", '{"x": 1}'), ("b", '{"x": 2}'), ("c", '{"x": 3}')]
    assert dict(page) == {"a": '{"x": 1}', "b": '{"x": 2}', "c": '{"x": 3}'}


def test_record_texts_refuses_columns_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="2 ids for 1 record texts"):
        RecordTexts(["a", "b"], ['{"x": 1}'])


def test_rows_are_marked_with_the_digest_of_the_job_id(sqlite_store: SqliteStore) -> None:
    prepare(sqlite_store)
    write(sqlite_store, texts_page(3, 1))

    with sqlite3.connect(sqlite_store.path) as conn:
        marks = {m for (m,) in conn.execute("SELECT seen_by FROM records")}
    assert marks == {seen_mark("job_1")}
    assert seen_mark("job_1") != seen_mark("job_2")
    assert len(seen_mark("job_1")) == 17


def test_rows_a_job_wrote_before_the_upgrade_still_count_as_its_own(any_store: Store) -> None:
    prepare(any_store)
    write(any_store, RecordTexts(["a1", "a2", "a3"], ['{"p": 1}'] * 3))
    # As the version before the mark wrote them: the job id itself.
    run_sql(any_store, "UPDATE records SET seen_by = ?", "job_1")
    write(any_store, RecordTexts(["b1", "b2"], ['{"p": 2}'] * 2))

    summary = any_store.finish_sync(any_store.lease("tbl_pages", "job_1"), datetime.now(UTC))

    assert (summary.records, summary.deleted) == (5, 0)
    assert sorted(stored(any_store)) == ["a1", "a2", "a3", "b1", "b2"]


def test_rows_of_earlier_jobs_are_swept_whichever_way_they_are_marked(any_store: Store) -> None:
    prepare(any_store)
    write(any_store, RecordTexts(["gone-1", "gone-2", "kept"], ['{"v": 0}'] * 3))
    run_sql(any_store, "UPDATE records SET seen_by = ? WHERE remote_id = ?", "job_0", "gone-1")
    run_sql(
        any_store,
        "UPDATE records SET seen_by = ? WHERE remote_id != ?",
        seen_mark("job_0"),
        "gone-1",
    )
    any_store.unlock_tables(["tbl_pages"], "job_1")
    assert any_store.lock_tables(["tbl_pages"], "job_2") == {}
    lease = any_store.lease("tbl_pages", "job_2")
    any_store.write_page(lease, RecordTexts(["kept"], ['{"v": 2}']), TableCheckpoint(pages=1))

    summary = any_store.finish_sync(any_store.lease("tbl_pages", "job_2"), datetime.now(UTC))

    assert (summary.records, summary.deleted) == (1, 2)
    assert stored(any_store) == {"kept": {"v": 2}}


def test_a_new_database_has_pages_that_fit_many_records(sqlite_store: SqliteStore) -> None:
    prepare(sqlite_store)
    with sqlite3.connect(sqlite_store.path) as conn:
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    assert size == 16384


def test_a_database_made_with_small_pages_keeps_them_and_takes_pages(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA page_size=4096")
        conn.execute("PRAGMA journal_mode=WAL")
    store = SqliteStore(path)
    try:
        store.migrate()
        prepare(store)
        write(store, texts_page(300, 1))
        assert len(stored(store)) == 300
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA page_size").fetchone() == (4096,)
    finally:
        store.close()
