"""Enqueue storms: one job per table, however many callers race for it.

50 concurrent enqueues in one process (SQLite and PostgreSQL stores), and two OS
processes enqueuing at the same instant, round after round. Exactly one job starts;
every other caller gets ``JobConflictError`` naming it; the table ends with exactly
the source's records.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from enqueuer import JobStatus
from enqueuer.settings import Settings
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.core.errors import JobConflictError
from spinner_jobs.core.models import JobRef
from spinner_jobs.store.base import Store
from spinner_jobs.store.sqlite import SqliteStore
from tests.chaos_support import (
    ACTOR,
    ROOT,
    demo_records,
    job_progress,
    job_result,
    put_workbook,
    report,
    settled_jobs_of_workbook,
    store_differences,
)
from tests.helpers import demo, temporal_enqueuer

RECORDS = 2_000
# 20 pages, 150 ms apart: the job is still running when the storm's last callers arrive
# (else a late caller could rightly start a second job after the first one ended).
TABLE = demo(RECORDS, page_size=100, page_delay=0.3)


@pytest.mark.timeout(120)
async def test_fifty_concurrent_enqueues_start_exactly_one_job(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    any_store: Store,
    connectors: ConnectorRegistry,
) -> None:
    wb = f"wb_storm_{uuid.uuid4().hex[:6]}"
    table_id = f"{wb}_t"
    put_workbook(any_store, wb, {table_id: ("demo", TABLE)})
    async with temporal_enqueuer(dev_env.client, settings, any_store, connectors) as enqueuer:
        outcomes = await asyncio.gather(
            *(enqueuer.enqueue_download_records_job(wb, ACTOR) for _ in range(50)),
            return_exceptions=True,
        )
        started = [o for o in outcomes if isinstance(o, JobRef)]
        conflicts = [o for o in outcomes if isinstance(o, JobConflictError)]
        others = [o for o in outcomes if not isinstance(o, JobRef | JobConflictError)]
        still_running = [
            (await job_progress(enqueuer, ref.job_id)).status == JobStatus.RUNNING
            for ref in started
        ]
        results = [await job_result(enqueuer, ref.job_id) for ref in started]
        executions = await settled_jobs_of_workbook(dev_env.client, wb)
        differences = store_differences(any_store, table_id, demo_records(RECORDS))
    report(
        "storm-50",
        started=len(started),
        conflicts=len(conflicts),
        other_errors=len(others),
        executions=len(executions),
        statuses=[r.status.value for r in results],
        store=differences or "exact",
    )
    problems = []
    if not all(still_running):
        problems.append("a job ended before the storm did: make its table slower")
    if others:
        problems.append(f"untyped or unexpected outcomes: {others[:3]!r}")
    if len(started) != 1 or len(executions) != 1:
        problems.append(f"{len(started)} enqueues started a job, {len(executions)} executions")
    if len(conflicts) != 49:
        problems.append(f"{len(conflicts)} JobConflictError, not 49")
    owners = {c.running_job_id for c in conflicts}
    if started and owners != {started[0].job_id}:
        problems.append(f"conflicts name {sorted(owners)}, not the started {started[0].job_id}")
    if any(r.status != JobStatus.COMPLETED for r in results):
        problems.append(f"job statuses {[r.status.value for r in results]}")
    if differences:
        problems.append(differences)
    assert not problems, "; ".join(problems)


# The race is won or lost by microseconds: several rounds make a lost one likely to show.
ROUNDS = 5
# Both processes enqueue at the same instant: a job of about a second outlasts them both.
RACE_TABLE = demo(RECORDS, page_size=100, page_delay=0.05)


@pytest.mark.timeout(150)
async def test_two_processes_enqueuing_at_once_start_one_job_per_round(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    tmp_path: Path,
    connectors: ConnectorRegistry,
) -> None:
    db = tmp_path / "shared.db"
    store = SqliteStore(db)
    store.migrate()
    wb = f"wb_race_{uuid.uuid4().hex[:6]}"
    table_id = f"{wb}_t"
    put_workbook(store, wb, {table_id: ("demo", RACE_TABLE)})
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SPINNER_")},
        "SPINNER_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "SPINNER_TEMPORAL_TASK_QUEUE": settings.temporal.task_queue,
        "SPINNER_DATABASE_URL": f"sqlite:///{db}",
        "SPINNER_DATA_DIR": str(tmp_path),
        "SPINNER_LOG_LEVEL": "error",
    }
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    children = [_start_child(env, wb, barrier) for _ in range(2)]
    rounds: list[dict[str, object]] = []
    try:
        async with temporal_enqueuer(dev_env.client, settings, store, connectors) as enqueuer:
            for r in range(ROUNDS):
                await _files(barrier, f"ready-{r}-", len(children), children)
                # Both processes are connected and waiting: start them at the same instant.
                (barrier / f".go-{r}").write_text(str(time.time() + 0.3))
                (barrier / f".go-{r}").rename(barrier / f"go-{r}")
                outcomes = [
                    json.loads(p.read_text())
                    for p in await _files(barrier, f"result-{r}-", len(children), children)
                ]
                started = [o["job_id"] for o in outcomes if "job_id" in o]
                statuses = [(await job_result(enqueuer, job)).status.value for job in started]
                rounds.append(
                    {
                        "outcomes": outcomes,
                        "statuses": statuses,
                        "store": store_differences(store, table_id, demo_records(RECORDS)),
                    }
                )
        executions = await settled_jobs_of_workbook(dev_env.client, wb)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait()
            if child.stderr is not None:
                child.stderr.close()
        store.close()
    report("storm-2-processes", rounds=rounds, executions=len(executions))
    problems = []
    for r, outcome in enumerate(rounds):
        got = outcome["outcomes"]
        assert isinstance(got, list)
        started = [o["job_id"] for o in got if "job_id" in o]
        conflicts = [o["conflict"] for o in got if "conflict" in o]
        errors = [o for o in got if "error" in o]
        if errors:
            problems.append(f"round {r}: errors {errors}")
        if len(started) != 1 or conflicts != started:
            problems.append(f"round {r}: started {started}, conflicts naming {conflicts}")
        if outcome["statuses"] != ["completed"] * len(started):
            problems.append(f"round {r}: statuses {outcome['statuses']}")
        if outcome["store"]:
            problems.append(f"round {r}: {outcome['store']}")
    if len(executions) != ROUNDS:
        problems.append(f"{len(executions)} executions for {ROUNDS} rounds")
    assert not problems, "; ".join(problems)


def _start_child(env: dict[str, str], workbook_id: str, barrier: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.chaos.enqueue_child", workbook_id, str(ROUNDS), str(barrier)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _found(folder: Path, prefix: str) -> list[Path]:
    return sorted(folder.glob(f"{prefix}*"))


async def _files(
    folder: Path, prefix: str, count: int, children: list[subprocess.Popen[bytes]]
) -> list[Path]:
    """Wait until ``count`` files named ``prefix*`` exist in ``folder``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        found = _found(folder, prefix)
        if len(found) >= count:
            return found
        # A child that has exited must have written its file (named after its pid);
        # the others may still be writing theirs.
        dead = [
            c
            for c in children
            if c.poll() is not None and not (folder / f"{prefix}{c.pid}").exists()
        ]
        if dead or loop.time() > deadline:
            detail = b"".join(c.stderr.read() if c.stderr else b"" for c in dead).decode()
            raise AssertionError(f"enqueuing processes stopped before {prefix}*: {detail}")
        await asyncio.sleep(0.02)
