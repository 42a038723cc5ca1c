"""Several processes writing one SQLite store: they take turns through the writers' lock.

Worker processes on one file each hold a lock file (``<db>-writer.lock``) while they
write, so the one waiting is handed the store within a fraction of a millisecond instead
of sleeping in SQLite's busy handler; a holder that never lets go is waited out for the
store's busy timeout, then reported as a typed outage.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest

from activities.tables import StoreCalls
from spinner_jobs.core.errors import StoreUnavailableError
from spinner_jobs.core.models import Table, TableCheckpoint, Workbook
from spinner_jobs.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[1]


def workbook(n_tables: int) -> Workbook:
    return Workbook(
        id="wb_w",
        organization_id="org_1",
        name="writers",
        tables=[
            Table(id=f"t{i}", workbook_id="wb_w", name=f"t{i}", connector="demo", config={})
            for i in range(n_tables)
        ],
    )


HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.readline()  # until the test lets go
    """
)


def test_a_write_waits_for_another_process_and_fails_typed_past_the_timeout(
    sqlite_store: SqliteStore,
) -> None:
    lock_file = sqlite_store.path.with_name(sqlite_store.path.name + "-writer.lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lock_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        with (
            sqlite_store.waiting_at_most(0.3),
            pytest.raises(StoreUnavailableError, match=r"another process held the store for 0\.3s"),
        ):
            sqlite_store.put_workbook(workbook(1))
        assert sqlite_store.get_workbook("wb_w") is None  # nothing half-written
    finally:
        holder.communicate(timeout=10)  # closes its stdin: it lets go and exits

    sqlite_store.put_workbook(workbook(1))  # let go: the next write goes through
    assert sqlite_store.get_workbook("wb_w") is not None


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from spinner_jobs.core.models import TableCheckpoint
    from spinner_jobs.store.sqlite import SqliteStore

    store = SqliteStore(sys.argv[2], busy_timeout=60)
    table, job = sys.argv[3], "job_" + sys.argv[3]
    store.lock_tables([table], job)
    lease = store.lease(table, job)
    for page in range(100):
        rows = [(f"{page:03d}-{i:03d}", {"page": page, "i": i}) for i in range(100)]
        store.write_page(lease, rows, TableCheckpoint(cursor=str(page), records=0, pages=page + 1))
    store.close()
    """
)


def test_processes_writing_pages_at_once_all_land(sqlite_store: SqliteStore) -> None:
    sqlite_store.put_workbook(workbook(3))
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(ROOT), str(sqlite_store.path), f"t{i}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    # This process writes between theirs too, until they are done.
    writes = 0
    while any(writer.poll() is None for writer in writers):
        other = workbook(1).model_copy(update={"id": f"wb_here_{writes}", "tables": []})
        sqlite_store.put_workbook(other)
        writes += 1
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err

    for i in range(3):
        assert sqlite_store.count_records(f"t{i}") == 100 * 100
    assert sqlite_store.get_workbook(f"wb_here_{writes - 1}") is not None
    checkpoint = sqlite_store.get_checkpoint("t1", "job_t1")
    assert checkpoint == TableCheckpoint(cursor="99", records=0, pages=100)


async def test_a_busy_store_is_waited_for_in_a_thread_not_on_the_event_loop(
    sqlite_store: SqliteStore,
) -> None:
    # A page write is tried on the event loop's thread first (no GIL fight with a
    # worker thread); when another process holds the store, it must wait elsewhere.
    calls = StoreCalls(sqlite_store, timedelta(seconds=30))
    lock_file = sqlite_store.path.with_name(sqlite_store.path.name + "-writer.lock")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        str(lock_file),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert await holder.stdout.readline() == b"held\n"
        ticker = asyncio.create_task(tick())
        write = asyncio.create_task(
            calls._quick_store_call(sqlite_store.put_workbook, workbook(2), job_id="job_1")
        )
        await asyncio.sleep(1.0)
        ticks_while_held = ticks
        assert not write.done()
    finally:
        holder.stdin.close()  # lets go
        await holder.wait()
    await asyncio.wait_for(write, 30)
    ticker.cancel()

    assert ticks_while_held >= 10  # about 100 unless the loop was blocked
    assert [t.id for t in sqlite_store.get_workbook("wb_w").tables] == ["t0", "t1"]  # type: ignore[union-attr]


def test_stores_opening_a_new_file_at_once_all_open(tmp_path: Path) -> None:
    # Each round: eight stores open one new file together and set it up. Their first
    # connections race to switch it to WAL mode; SQLite refuses all but one at once
    # ("database is locked", no busy wait), about one round in thirty before.
    def open_migrate_close(path: Path) -> None:
        store = SqliteStore(path)
        try:
            store.migrate()
        finally:
            store.close()

    with ThreadPoolExecutor(8) as pool:
        for round_ in range(100):
            path = tmp_path / f"new-{round_}.db"
            list(pool.map(open_migrate_close, [path] * 8))
            opened = SqliteStore(path)
            try:
                assert opened.count_records("t") == 0
            finally:
                opened.close()
