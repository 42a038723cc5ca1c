"""One of several OS processes enqueuing the same workbook at the same moment.

Run as ``python -m tests.chaos.enqueue_child WORKBOOK_ID ROUNDS FOLDER`` with the
engine's ``SPINNER_*`` settings in the environment. The process connects first, then
for each round ``r``: writes ``FOLDER/ready-<r>-<pid>``, waits for ``FOLDER/go-<r>``
(a Unix time), spins until that instant, enqueues once, and writes what happened to
``FOLDER/result-<r>-<pid>`` as JSON: ``{"job_id"}``, ``{"conflict"}`` (the running
job's id) or ``{"error", "type"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from enqueuer import Enqueuer
from enqueuer.settings import Settings
from spinner_jobs.core.errors import JobConflictError, JobNotFoundError
from tests.chaos_support import ACTOR, job_progress


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


async def _wait_for_file(path: Path, within: float = 120.0) -> str:
    deadline = time.monotonic() + within
    while (text := _read(path)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        await asyncio.sleep(0.005)
    return text


async def _main(workbook_id: str, rounds: int, folder: Path) -> None:
    async with Enqueuer.from_settings(Settings.load()) as enqueuer:
        # Connect and warm up before the race, so the race is the enqueue itself.
        with contextlib.suppress(JobNotFoundError):
            await job_progress(enqueuer, "warm-up-no-such-job")
        for r in range(rounds):
            (folder / f"ready-{r}-{os.getpid()}").write_text("")
            go = float(await _wait_for_file(folder / f"go-{r}"))
            while time.time() < go:
                pass
            outcome: dict[str, Any]
            try:
                ref = await enqueuer.enqueue_download_records_job(workbook_id, ACTOR)
                outcome = {"job_id": ref.job_id}
            except JobConflictError as exc:
                outcome = {"conflict": exc.running_job_id}
            except Exception as exc:  # reported to the test, which fails on it
                outcome = {"error": str(exc), "type": type(exc).__name__}
            tmp = folder / f".result-{r}-{os.getpid()}"
            tmp.write_text(json.dumps(outcome))
            tmp.rename(folder / f"result-{r}-{os.getpid()}")


if __name__ == "__main__":
    _workbook, _rounds, _folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    status = 0
    try:
        asyncio.run(_main(_workbook, _rounds, _folder))
    except BaseException as exc:
        print(f"enqueue_child failed: {exc!r}", file=sys.stderr, flush=True)
        status = 1
    sys.stdout.flush()
    # The SDK's threads can abort a finishing interpreter (see tests/hard_exit.py).
    os._exit(status)
