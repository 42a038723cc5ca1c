"""A process that used the Enqueuer and ran a worker exits with its own status, every time.

The Temporal SDK runs its client and worker I/O on Rust (Tokio) threads. If any of them
is alive when the interpreter finalizes, one that touches Python then kills the process
(``Fatal Python error: PyGILState_Release`` → status 134, or a segfault → 139) after the
work is done. ``tests/exit_script.py`` is a plain library user; it is run 50 times
against one dev server, a few at a time.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

ROOT = Path(__file__).resolve().parents[1]
RUNS = 50
AT_ONCE = 4
STATUS = 3
CRASH_SIGNS = ("Fatal Python error", "Segmentation fault", "Aborted", "panicked")


@dataclass(frozen=True)
class Run:
    status: int | None
    stdout: str
    stderr: str

    @property
    def crashed(self) -> bool:
        return self.status != STATUS or any(sign in self.stderr for sign in CRASH_SIGNS)


async def _run_script(address: str, folder: Path, n: int, slots: asyncio.Semaphore) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINNER_")}
    env |= {
        "PYTHONPATH": str(ROOT),
        "SPINNER_TEMPORAL_ADDRESS": address,
        "SPINNER_TEMPORAL_TASK_QUEUE": f"exit-{n}-{folder.name}",
        "SPINNER_DATA_DIR": str(folder / f"run{n}"),
    }
    async with slots:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.exit_script",
            str(STATUS),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
    return Run(process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


@pytest.mark.timeout(900)
async def test_library_users_exit_with_their_own_status_every_time(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    address = dev_env.client.service_client.config.target_host
    slots = asyncio.Semaphore(AT_ONCE)
    started = time.monotonic()
    done = await asyncio.gather(*(_run_script(address, tmp_path, n, slots) for n in range(RUNS)))
    elapsed = time.monotonic() - started

    bad = [(n, run) for n, run in enumerate(done) if run.crashed]
    report = "\n".join(f"run {n}: status {run.status}\n{run.stderr[-1500:]}" for n, run in bad[:3])
    assert not bad, f"{len(bad)} of {RUNS} runs did not exit cleanly ({elapsed:.0f}s):\n{report}"
    assert all("job_completed" in run.stdout for run in done)
    # Finalization began with no SDK thread left that could touch Python.
    lingering = [
        n for n, run in enumerate(done) if "sdk_threads_at_finalization=0" not in run.stdout
    ]
    assert not lingering, (
        f"{len(lingering)} of {RUNS} runs reached finalization with SDK threads alive, e.g.: "
        + done[lingering[0]].stdout[-300:]
    )
