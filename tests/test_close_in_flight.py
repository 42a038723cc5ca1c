"""Closing while a cancelled job still releases its tables neither crashes nor leaks locks.

A job cancelled just before its enqueuer closes is still giving its tables back in a
store thread. Closing the enqueuer must let that finish (not cancel it again halfway),
and closing the SQLite store must wait for the call in flight: closing a connection
another thread is using crashes the interpreter (rc 139), so this runs in a child.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from spinner_jobs.store.sqlite import SqliteStore

CHILD = textwrap.dedent(
    """
    import asyncio, os, sys
    from datetime import timedelta
    from enqueuer.client import Enqueuer
    from enqueuer.settings import Settings
    from spinner_jobs.core.models import Actor, Table, Workbook
    from spinner_jobs.store.sqlite import SqliteStore

    async def main(folder):
        actor = Actor(user_id="u", organization_id="org")
        for round in range(30):
            store = SqliteStore(os.path.join(folder, "store.db"))
            store.migrate()
            wb = f"wb_{round}"
            tables = [
                Table(id=f"{wb}_t{i}", workbook_id=wb, name="t", connector="demo")
                for i in range(300)
            ]
            store.put_workbook(Workbook(id=wb, organization_id="org", name=wb, tables=tables))
            settings = Settings(data_dir=folder, use_jobs=False)
            enqueuer = Enqueuer.from_settings(settings, store)
            ref = await enqueuer.enqueue(
                "download-records", {"workbook_id": wb}, actor=actor,
                options={"delay": timedelta(minutes=5)},
            )
            await enqueuer.cancel(ref.job_id, actor=actor)
            await asyncio.sleep(0)  # the job starts giving its tables back
            await asyncio.sleep(0)
            await enqueuer.aclose()
            store.close()
        sys.stdout.write("done\\n")

    asyncio.run(main(sys.argv[1]))
    """
)


def test_closing_right_after_a_cancel_waits_for_the_release(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "done"
    store = SqliteStore(tmp_path / "store.db")
    try:
        for round in range(30):
            workbook = store.get_workbook(f"wb_{round}")
            assert workbook is not None
            assert [t.locked_by for t in workbook.tables] == [None] * 300
    finally:
        store.close()


STORE_CHILD = textwrap.dedent(
    """
    import os, sys, threading
    from spinner_jobs.core.models import Table, Workbook
    from spinner_jobs.store.sqlite import SqliteStore

    folder = sys.argv[1]
    for round in range(40):
        store = SqliteStore(os.path.join(folder, "store.db"))
        store.migrate()
        tables = [
            Table(id=f"t{i}", workbook_id="wb", name="t", connector="demo")
            for i in range(400)
        ]
        store.put_workbook(Workbook(id="wb", organization_id="org", name="wb", tables=tables))
        ids = [t.id for t in tables]
        store.lock_tables(ids, "job")
        worker = threading.Thread(target=store.unlock_tables, args=(ids, "job"))
        worker.start()
        store.close()  # while the other thread is inside its call
        worker.join()
    sys.stdout.write("done\\n")
    """
)


def test_closing_the_sqlite_store_waits_for_a_call_in_another_thread(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", STORE_CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip().splitlines()[-1] == "done"
