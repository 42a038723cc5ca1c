"""The SQLite store copies its WAL into the database file in a thread of its own.

A writer that checkpoints inside its commit (SQLite's default, every 1,000 pages) holds
the event loop through the copy and two fsyncs. The store's checkpoint thread makes the
copy a fraction of a second after writes; a writer still checkpoints itself once the
WAL passes ``_WRITER_CHECKPOINT_PAGES``, which lets the WAL start over, so it stays
bounded under writes that never pause. These tests read the files themselves: what
reached the database file, and how big the WAL grew.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from spinner_jobs.core.models import RecordTexts
from spinner_jobs.store import sqlite as sqlite_module
from spinner_jobs.store.sqlite import SqliteStore
from tests.test_page_writes import prepare, write

PAGE_RECORDS = 1000


def write_page(store: SqliteStore, page: int) -> None:
    """Page ``page``: 1,000 new records of about 250 bytes each."""
    ids = [f"r{page * PAGE_RECORDS + i:08d}" for i in range(PAGE_RECORDS)]
    write(store, RecordTexts(ids, [json.dumps({"id": i, "filler": "x" * 200}) for i in ids]))


def write_pages(store: SqliteStore, pages: int) -> None:
    for page in range(pages):
        write_page(store, page)


def checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sqlite-checkpoint"]


def test_writes_reach_the_database_file_without_the_writer_checkpointing(
    sqlite_store: SqliteStore,
) -> None:
    prepare(sqlite_store)
    before = sqlite_store.path.stat().st_size
    write_pages(sqlite_store, 8)  # about 2 MB: far below any writer's own checkpoint
    deadline = time.monotonic() + 10
    while sqlite_store.path.stat().st_size < before + 1_500_000:
        if time.monotonic() > deadline:
            pytest.fail(
                f"the database file stayed at {sqlite_store.path.stat().st_size} bytes: "
                "the pages are still only in the WAL"
            )
        time.sleep(0.05)
    assert sqlite_store.count_records("tbl_pages") == 8 * PAGE_RECORDS


def test_the_checkpoint_thread_runs_while_the_store_is_open_and_ends_with_it(
    tmp_path: Path,
) -> None:
    others = set(checkpoint_threads())
    store = SqliteStore(tmp_path / "store.db")
    try:
        store.migrate()
        prepare(store)
        write_pages(store, 1)
        assert len(set(checkpoint_threads()) - others) == 1
    finally:
        store.close()
    assert set(checkpoint_threads()) - others == set()


def test_a_store_written_after_close_checkpoints_again(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    try:
        store.migrate()
        prepare(store)
        store.close()
        others = set(checkpoint_threads())
        write_pages(store, 1)
        assert len(set(checkpoint_threads()) - others) == 1
        assert store.count_records("tbl_pages") == PAGE_RECORDS
    finally:
        store.close()


def test_the_wal_starts_over_under_writes_that_never_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A writer checkpoints itself past 64 pages (1 MB) of WAL here, not 8,192.
    monkeypatch.setattr(sqlite_module, "_WRITER_CHECKPOINT_PAGES", 64)
    store = SqliteStore(tmp_path / "store.db")
    wal = store.path.with_name(store.path.name + "-wal")
    try:
        store.migrate()
        prepare(store)
        largest = 0
        for page in range(24):  # about 6 MB of records, one page after another
            write_page(store, page)
            largest = max(largest, wal.stat().st_size)
        assert store.count_records("tbl_pages") == 24 * PAGE_RECORDS
    finally:
        store.close()
    # The WAL went back to its start instead of holding all 6 MB: 1 MB of frames before
    # a writer checkpoints, plus the page that crossed the line.
    assert largest < 3 * 1024 * 1024, f"the WAL grew to {largest} bytes"
