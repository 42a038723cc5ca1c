"""A process that used the Enqueuer and ran a worker exits with its own status, every time.

The Temporal SDK runs its client and worker I/O on Rust (Tokio) threads. If any of them
is alive when the interpreter finalizes, one that touches Python then kills the process
(``Fatal Python error: PyGILState_Release`` → status 134, or a segfault → 139) after the
work is done. ``tests/exit_script.py`` is a plain library user; it is run 50 times
against one dev server, a few at a time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

ROOT = Path(__file__).resolve().parents[1]
RUNS = 50
AT_ONCE = 4
STATUS = 3
CRASH_SIGNS = ("Fatal Python error", "Segmentation fault", "Aborted", "panicked")


def _run_script(address: str, folder: Path, n: int) -> subprocess.CompletedProcess[str]:
    data = folder / f"run{n}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINNER_")}
    env |= {
        "PYTHONPATH": str(ROOT),
        "SPINNER_TEMPORAL_ADDRESS": address,
        "SPINNER_TEMPORAL_TASK_QUEUE": f"exit-{n}-{folder.name}",
        "SPINNER_DATA_DIR": str(data),
        "SPINNER_LOG_LEVEL": "warning",
    }
    return subprocess.run(
        [sys.executable, "-m", "tests.exit_script", str(STATUS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.timeout(900)
async def test_library_users_exit_with_their_own_status_every_time(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    address = dev_env.client.service_client.config.target_host
    started = time.monotonic()
    with ThreadPoolExecutor(AT_ONCE) as pool:
        done = list(pool.map(lambda n: _run_script(address, tmp_path, n), range(RUNS)))
    elapsed = time.monotonic() - started

    def crashed(run: subprocess.CompletedProcess[str]) -> bool:
        return run.returncode != STATUS or any(s in run.stderr for s in CRASH_SIGNS)

    bad = [(n, run) for n, run in enumerate(done) if crashed(run)]
    report = "\n".join(
        f"run {n}: status {run.returncode}\n{run.stderr[-1500:]}" for n, run in bad[:3]
    )
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
