"""A short library user: run a worker, enqueue a tiny demo job, wait, close, exit.

Run by tests/test_clean_exit.py as ``python -m tests.exit_script STATUS`` with the
``SPINNER_*`` settings in the environment. It uses the library the plain way (an
``Enqueuer`` kept in a module global, ``run_worker`` in a task, ``sys.exit(STATUS)``)
and does nothing special to leave. Its last act, an atexit probe registered before the
library is imported (so it runs after every hook the library registers), prints how
many of the SDK's Rust threads are still alive when interpreter finalization begins.
"""

from __future__ import annotations

import atexit
import os
import sys


def _sdk_threads() -> int:
    """Threads of the SDK's Tokio runtime alive in this process (Linux)."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        count += name.startswith("tokio")
    return count


def _probe() -> None:
    print(f"sdk_threads_at_finalization={_sdk_threads()}", flush=True)


atexit.register(_probe)

import asyncio  # noqa: E402
import uuid  # noqa: E402

from enqueuer.backends.temporal import connect_client  # noqa: E402
from enqueuer.client import Enqueuer  # noqa: E402
from enqueuer.settings import Settings  # noqa: E402
from spinner_jobs.core.models import JobStatus, Table, Workbook  # noqa: E402
from spinner_jobs.worker.main import run_worker  # noqa: E402

settings = Settings.load()
enqueuer = Enqueuer.from_settings(settings)


async def main() -> None:
    wb = f"wb_{uuid.uuid4().hex[:8]}"
    table = Table(id=f"{wb}_t", workbook_id=wb, name="t", connector="demo", config={"records": 20})
    enqueuer.store.put_workbook(
        Workbook(id=wb, organization_id="org_1", name="exit", tables=[table])
    )
    client = await connect_client(settings.temporal)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, client, stop))
    actor = {"user_id": "u_1", "organization_id": "org_1"}
    ref = await enqueuer.enqueue_download_records_job(wb, actor)
    result = await enqueuer.wait(ref.job_id, actor=actor)
    stop.set()
    await worker
    await enqueuer.aclose()
    if result.status != JobStatus.COMPLETED:
        raise SystemExit(f"job ended {result.status}")
    print("job_completed", flush=True)


asyncio.run(main())
sys.exit(int(sys.argv[1]))
