"""A worker process killed mid-table: a second worker resumes from the last cursor.

Real parts only: the dev server, two `spinner-jobs worker` processes, a loopback HTTP
source, a SQLite store file shared by the test and the workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from enqueuer import Actor, Enqueuer, JobStatus
from enqueuer.backends.temporal import TemporalBackend
from enqueuer.settings import Settings
from spinner_jobs.core.models import Table, Workbook
from spinner_jobs.shell.sample_api import SampleApi, SampleTable
from spinner_jobs.store.sqlite import SqliteStore
from tests.helpers import eventually

RECORDS = 30_000


@pytest.fixture
def source() -> Iterator[SampleApi]:
    with SampleApi({"big": SampleTable(records=RECORDS, style="json_link", page_size=100)}) as api:
        yield api


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", "from spinner_jobs.shell.cli import main; main()", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1],
        )


def _events(log: Path) -> list[dict[str, Any]]:
    lines = log.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


async def test_sigkilled_worker_is_replaced_and_the_table_resumes_exactly(
    dev_env: WorkflowEnvironment, settings: Settings, tmp_path: Path, source: SampleApi
) -> None:
    db = tmp_path / "shared.db"
    store = SqliteStore(db)
    store.migrate()
    store.put_workbook(
        Workbook(
            id="wb_crash",
            organization_id="org_1",
            name="crash",
            tables=[
                Table(
                    id="tbl_big",
                    workbook_id="wb_crash",
                    name="big",
                    connector="http",
                    # 100 records a page at 40 pages/s: the table takes several seconds.
                    config=source.config("big", requests_per_second=40),
                )
            ],
        )
    )
    settings = settings.model_copy(
        update={
            "jobs": settings.jobs.model_copy(update={"heartbeat_timeout": timedelta(seconds=3)})
        }
    )
    env = {
        **os.environ,
        "SPINNER_SERVICE_TYPE": "worker",  # a monolith would also serve the HTTP API
        "SPINNER_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "SPINNER_TEMPORAL_TASK_QUEUE": settings.temporal.task_queue,
        "SPINNER_DATABASE_URL": f"sqlite:///{db}",
        "SPINNER_HTTP_ALLOWED_NETWORKS": "127.0.0.0/8",
        "SPINNER_LOG_FORMAT": "json",
        "SPINNER_JOBS_PROGRESS_INTERVAL": "PT0.2S",
    }
    first_log, second_log = tmp_path / "worker1.log", tmp_path / "worker2.log"
    first = _start_worker(env, first_log)
    second = None
    try:
        backend = TemporalBackend(
            settings.temporal, settings.enqueue_timeout, client=dev_env.client
        )
        enqueuer = Enqueuer(settings, store, backend)
        ref = await enqueuer.enqueue_download_records_job(
            "wb_crash", Actor(user_id="u", organization_id="org_1")
        )

        async def a_quarter_done() -> None:
            assert store.count_records("tbl_big") >= RECORDS // 4

        await eventually(a_quarter_done, within=60)
        first.send_signal(signal.SIGKILL)
        first.wait()
        written_before_kill = store.count_records("tbl_big")
        assert written_before_kill < RECORDS

        second = _start_worker(env, second_log)
        result = await enqueuer.wait(ref.job_id, actor=Actor(user_id="u", organization_id="org_1"))
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(10)

    assert result.status == JobStatus.COMPLETED, result
    # Exactly the source's records: same ids, same count, no duplicates.
    assert store.record_ids("tbl_big") == source.record_ids("big")
    assert store.count_records("tbl_big") == RECORDS
    assert result.progress.tables["tbl_big"].records == RECORDS

    # The second worker resumed from a cursor instead of starting again at page one.
    resumed = [e for e in _events(second_log) if e.get("event") == "table_download_resumed"]
    assert resumed, second_log.read_text()[-2000:]
    assert resumed[0]["table_id"] == "tbl_big"
    assert resumed[0]["job_id"] == ref.job_id
    assert resumed[0]["cursor"]
    assert resumed[0]["pages"] > 0
    started = [e for e in _events(second_log) if e.get("event") == "table_download_started"]
    assert started == []
    # Pages fetched again after the kill are at most those not yet checkpointed.
    page_requests = [r for r in source.requests if r.table == "big"]
    assert len(page_requests) <= RECORDS // 100 + 5
    store.close()
