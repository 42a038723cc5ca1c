"""A page reaches the store whole, whatever its size and however its records come.

SQLite upserts a page a few hundred rows per statement (powers of two, bounded by the
connection's variable limit), and a page can come as ``(remote_id, fields)`` pairs or
as :class:`RecordTexts` columns. Every size around the chunk bounds must land exactly,
with a repeated id keeping its last fields, on both stores.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

import pytest

from spinner_jobs.core.models import PageRecord, RecordTexts, Table, TableCheckpoint, Workbook
from spinner_jobs.store.base import Store
from spinner_jobs.store.sqlite import SqliteStore

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
