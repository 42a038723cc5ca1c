"""Workers that die or are stopped mid-table, with the engine's default settings.

Real ``spinner-jobs worker`` processes logging JSON, a rate-limited loopback source
(so the table is still running across the faults), a SQLite file shared by the test
and the workers. Retry and heartbeat settings are the defaults: the point is what a
deployment gets out of the box.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from enqueuer import JobStatus
from enqueuer.settings import Settings
from spinner_jobs.shell.sample_api import SampleApi, SampleTable
from spinner_jobs.store.sqlite import SqliteStore
from tests.chaos_support import (
    ACTOR,
    WorkerProcess,
    event_time,
    job_progress,
    job_result,
    put_workbook,
    report,
    sample_records,
    store_differences,
    temporal_enqueuer_on,
    worker_env,
    workers,
)
from tests.helpers import eventually

PAGE = 100
RATE = 20  # pages per second while a worker downloads: 2,000 records/s


def _setup(
    tmp_path: Path, task_queue: str, dev_env: WorkflowEnvironment, api: SampleApi
) -> tuple[SqliteStore, str, str, dict[str, str], Settings]:
    db = tmp_path / "shared.db"
    store = SqliteStore(db)
    store.migrate()
    wb = f"wb_{uuid.uuid4().hex[:8]}"
    table_id = f"{wb}_big"
    put_workbook(store, wb, {table_id: ("http", api.config("big", requests_per_second=RATE))})
    address = dev_env.client.service_client.config.target_host
    env = worker_env(
        address=address,
        task_queue=task_queue,
        database_url=f"sqlite:///{db}",
        data_dir=tmp_path,
    )
    # Default retry, heartbeat and progress settings: only the queue and data folder differ.
    settings = Settings(data_dir=tmp_path, temporal={"task_queue": task_queue, "address": address})
    return store, wb, table_id, env, settings


KILL_RECORDS = 12_000
# Seconds from a SIGKILL to the replacement worker resuming the table, its start-up
# included: the target is 15 s (about 32 s with a 30 s heartbeat timeout); 20 s leaves
# room for a busy machine.
RESUME_BOUND = 20.0


@pytest.mark.timeout(300)
async def test_three_sigkills_of_the_only_worker_neither_fail_nor_corrupt_the_table(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    with SampleApi({"big": SampleTable(records=KILL_RECORDS, page_size=PAGE)}) as api:
        store, wb, table_id, env, settings = _setup(tmp_path, task_queue, dev_env, api)
        enqueuer = temporal_enqueuer_on(dev_env.client, settings, store)
        resumes: list[float | None] = []
        written_at_kill: list[int] = []
        with workers(WorkerProcess(env, tmp_path / "worker-0.log")) as running:
            ref = await enqueuer.enqueue_download_records_job(wb, ACTOR)
            threshold = KILL_RECORDS // 6
            for kill in range(1, 4):

                async def passed(at_least: int = threshold) -> bool:
                    return store.count_records(table_id) >= at_least

                await eventually(passed, within=90)
                killed_at = running[-1].kill()
                written_at_kill.append(store.count_records(table_id))
                # The only worker is gone: start its replacement at once.
                running.append(WorkerProcess(env, tmp_path / f"worker-{kill}.log"))
                resumed = await running[-1].wait_for(
                    "table_download_resumed", within=45, job_id=ref.job_id, table_id=table_id
                )
                resumes.append(
                    None if resumed is None else (event_time(resumed) - killed_at).total_seconds()
                )
                if resumed is None:
                    break
                threshold = written_at_kill[-1] + KILL_RECORDS // 8
            result = await asyncio.wait_for(job_result(enqueuer, ref.job_id), 150)
            progress = await job_progress(enqueuer, ref.job_id)
        differences = store_differences(store, table_id, sample_records(api, "big"))
        checkpoint = store.get_checkpoint(table_id, ref.job_id)
        store.close()
    report(
        "sigkill-x3",
        resume_seconds=[None if s is None else round(s, 1) for s in resumes],
        written_at_kill=written_at_kill,
        status=result.status.value,
        progress_records=progress.tables[table_id].records,
        store=differences or "exact",
        checkpoint_left=checkpoint,
    )
    problems = []
    if any(n >= KILL_RECORDS for n in written_at_kill):
        problems.append(f"a kill came after the table was done: {written_at_kill}")
    if result.status != JobStatus.COMPLETED:
        problems.append(
            f"job {result.status.value}: {result.progress.tables[table_id].error or result}"
        )
    slow = [s for s in resumes if s is None or s > RESUME_BOUND]
    if len(resumes) != 3 or slow:
        problems.append(
            f"SIGKILL → resume took {resumes} s (want 3 resumes, each ≤ {RESUME_BOUND:g} s)"
        )
    if differences:
        problems.append(differences)
    if checkpoint is not None:
        problems.append(f"checkpoint left for the job: {checkpoint}")
    if progress.tables[table_id].records != KILL_RECORDS or progress.total_records != KILL_RECORDS:
        problems.append(
            f"progress() says {progress.tables[table_id].records} records "
            f"(total {progress.total_records}), want {KILL_RECORDS}"
        )
    assert not problems, "; ".join(problems)


# 8 s of downloading: what is left at the SIGTERM outlasts the worker's 5 s grace.
TERM_RECORDS = 16_000
HANDOVER = 5.0  # seconds from SIGTERM to the other worker resuming: "at once", with slack


@pytest.mark.timeout(180)
async def test_sigterm_hands_the_table_over_to_the_other_worker_at_once(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    with SampleApi({"big": SampleTable(records=TERM_RECORDS, page_size=PAGE)}) as api:
        store, wb, table_id, env, settings = _setup(tmp_path, task_queue, dev_env, api)
        enqueuer = temporal_enqueuer_on(dev_env.client, settings, store)
        first = WorkerProcess(env, tmp_path / "worker-a.log")
        second = WorkerProcess(env, tmp_path / "worker-b.log")
        with workers(first, second):
            for process in (first, second):
                assert await process.wait_for("worker_started", within=60), process.tail()
            ref = await enqueuer.enqueue_download_records_job(wb, ACTOR)

            async def someone_started() -> bool:
                return any(p.find("table_download_started") for p in (first, second))

            await eventually(someone_started, within=60)
            holder, other = (
                (first, second) if first.find("table_download_started") else (second, first)
            )

            async def a_tenth_done() -> bool:
                return store.count_records(table_id) >= TERM_RECORDS // 10

            await eventually(a_tenth_done, within=60)
            termed_at = holder.terminate()
            written_at_term = store.count_records(table_id)
            resumed = await other.wait_for(
                "table_download_resumed", within=60, job_id=ref.job_id, table_id=table_id
            )
            handover = (
                None if resumed is None else (event_time(resumed) - termed_at).total_seconds()
            )
            exited = await asyncio.to_thread(_exit_status, holder, 30)
            result = await asyncio.wait_for(job_result(enqueuer, ref.job_id), 120)
        restarted = other.find("table_download_started", job_id=ref.job_id)
        differences = store_differences(store, table_id, sample_records(api, "big"))
        store.close()
    report(
        "sigterm-handover",
        handover_seconds=handover,
        written_at_term=written_at_term,
        holder_exit=exited,
        status=result.status.value,
        store=differences or "exact",
    )
    problems = []
    if written_at_term >= TERM_RECORDS:
        problems.append("SIGTERM came after the table was done")
    if handover is None or handover > HANDOVER:
        problems.append(
            f"SIGTERM → other worker resumed after {handover} s (want ≤ {HANDOVER:g} s)"
            + (" (it started the table over instead)" if restarted else "")
        )
    if exited is None:
        problems.append("the SIGTERMed worker did not exit within 30 s")
    if result.status != JobStatus.COMPLETED:
        problems.append(f"job {result.status.value}: {result.progress.tables[table_id].error}")
    if differences:
        problems.append(differences)
    assert not problems, "; ".join(problems)


def _exit_status(process: WorkerProcess, within: float) -> int | None:
    try:
        return process.process.wait(within)
    except subprocess.TimeoutExpired:
        return None
