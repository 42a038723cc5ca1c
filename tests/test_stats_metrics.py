"""Operating it: job stats (Temporal and in-process) and the worker's Prometheus endpoint."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from enqueuer import Actor, Enqueuer, JobNotFoundError, JobStats, JobStatus
from enqueuer.backends.temporal import TemporalBackend
from enqueuer.settings import RetentionSettings, Settings
from enqueuer.stats import percentile
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.core.models import Backend
from spinner_jobs.store.sqlite import SqliteStore
from spinner_jobs.worker.main import build_worker
from spinner_jobs.worker.metrics import metrics_runtime
from tests.helpers import demo, eventually, temporal_enqueuer

ACTOR = Actor(user_id="u_1", organization_id="org_1")
FAILING = demo(10, fail_page=1, fail_kind="permanent")
SLOW = demo(100_000, page_size=10, page_delay=0.05)


async def stats_where(enqueuer: Enqueuer, wanted: Callable[[JobStats], bool]) -> JobStats:
    """The first stats satisfying ``wanted`` (visibility is eventually consistent)."""
    latest: list[JobStats] = []

    async def check() -> None:
        latest[:] = [await enqueuer.stats()]
        assert wanted(latest[0]), f"stats not as wanted yet: {latest[0]}"

    await eventually(check, within=15, interval=0.1)
    return latest[0]


async def started(enqueuer: Enqueuer, job_id: str) -> None:
    """Wait until the job has committed a page."""

    async def check() -> None:
        progress = await enqueuer.progress(job_id, actor=ACTOR)
        assert progress.total_records > 0, progress

    await eventually(check)


async def test_stats_count_a_known_mix_of_jobs(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
    make_workbook,
    tmp_path: Path,
) -> None:
    backend = TemporalBackend(settings.temporal, settings.enqueue_timeout, client=dev_env.client)
    enqueuer = Enqueuer(settings, sqlite_store, backend)
    empty = await enqueuer.stats()
    assert empty.backend == Backend.TEMPORAL
    assert empty.task_queue == settings.temporal.task_queue
    assert (empty.enqueued, empty.running, empty.completed, empty.queue_depth) == (0, 0, 0, 0)
    assert empty.success_rate is None
    assert empty.processing_time_p50 is None

    began = time.monotonic()
    # No worker polls the fresh queue yet: these jobs wait in its backlog.
    tiny = [
        await enqueuer.enqueue_download_records_job(make_workbook(t=demo(50)).id, ACTOR)
        for _ in range(3)
    ]
    waiting = await stats_where(enqueuer, lambda s: s.running == 3 and s.queue_depth == 3)
    assert waiting.workers == 0

    async with build_worker(dev_env.client, settings, sqlite_store, connectors):
        failing = [
            await enqueuer.enqueue_download_records_job(make_workbook(t=FAILING).id, ACTOR)
            for _ in range(2)
        ]
        results = [await enqueuer.wait(ref.job_id, actor=ACTOR) for ref in tiny + failing]
        assert [r.status for r in results] == [JobStatus.COMPLETED] * 3 + [JobStatus.FAILED] * 2

        slow = await enqueuer.enqueue_download_records_job(make_workbook(t=SLOW).id, ACTOR)
        await started(enqueuer, slow.job_id)
        busy = await stats_where(enqueuer, lambda s: s.running == 1 and s.failed == 2)
        assert busy.workers is not None
        assert busy.workers >= 1
        await enqueuer.cancel(slow.job_id, actor=ACTOR)
        assert (await enqueuer.wait(slow.job_id, actor=ACTOR)).status == JobStatus.CANCELLED
    elapsed = timedelta(seconds=time.monotonic() - began)

    final = await stats_where(enqueuer, lambda s: s.cancelled == 1 and s.running == 0)
    # Every task was taken: the backlog the server reports is drained.
    await stats_where(enqueuer, lambda s: s.queue_depth == 0)
    assert final.enqueued == 6
    assert (final.completed, final.failed, final.cancelled) == (3, 2, 1)
    assert (final.terminated, final.timed_out) == (0, 0)
    # Cancelled jobs count in neither rate: 3 of the 5 jobs that ran to an end succeeded.
    assert final.success_rate == pytest.approx(0.6)
    assert final.failure_rate == pytest.approx(0.4)
    assert final.processing_time_sample == 5
    assert final.processing_time_p50 is not None
    assert final.processing_time_p95 is not None
    shortest = min(r.duration for r in results if r.duration is not None)
    assert shortest <= final.processing_time_p50 <= final.processing_time_p95 <= elapsed

    # The command line reports the same figures for the same task queue.
    env = {
        **os.environ,
        "SPINNER_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "SPINNER_TEMPORAL_NAMESPACE": dev_env.client.namespace,
        "SPINNER_TEMPORAL_TASK_QUEUE": settings.temporal.task_queue,
        "SPINNER_DATA_DIR": str(tmp_path / "cli"),
        "SPINNER_LOG_LEVEL": "warning",
    }
    cli = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "spinner-jobs"),
        "stats",
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await cli.communicate()
    assert cli.returncode == 0, err.decode()
    shown = JobStats.model_validate_json(out)
    assert shown.model_dump(exclude={"measured_at", "queue_depth", "workers"}) == final.model_dump(
        exclude={"measured_at", "queue_depth", "workers"}
    )


# --- Prometheus endpoint -----------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of a Prometheus text exposition, names exactly as exported."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = dict(_LABEL.findall(match["labels"] or ""))
            samples.append((match["name"], labels, float(match["value"])))
    return samples


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(
        value
        for sample, have, value in samples
        if sample == name and all(have.get(k) == v for k, v in labels.items())
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_worker_metrics_endpoint_serves_sdk_and_job_metrics(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
    make_workbook,
) -> None:
    assert metrics_runtime(None) is metrics_runtime(None)
    port = free_port()
    runtime = metrics_runtime(port, host="127.0.0.1")
    assert runtime is not None
    client = await Client.connect(
        dev_env.client.service_client.config.target_host,
        namespace=dev_env.client.namespace,
        data_converter=pydantic_data_converter,
        runtime=runtime,
    )
    # Table b fails once on page 2 and resumes: its first page must not count twice.
    ok = make_workbook(a=demo(250), b=demo(130, page_size=50, fail_page=2))
    bad = make_workbook(good=demo(40), bad=FAILING)
    async with temporal_enqueuer(client, settings, sqlite_store, connectors) as enqueuer:
        done = await enqueuer.wait(
            (await enqueuer.enqueue_download_records_job(ok.id, ACTOR)).job_id, actor=ACTOR
        )
        failed = await enqueuer.wait(
            (await enqueuer.enqueue_download_records_job(bad.id, ACTOR)).job_id, actor=ACTOR
        )
    assert (done.status, failed.status) == (JobStatus.COMPLETED, JobStatus.FAILED)
    downloaded = done.progress.total_records + failed.progress.total_records
    assert downloaded == 250 + 130 + 40

    queue = settings.temporal.task_queue
    samples: list[tuple[str, dict[str, str], float]] = []

    async def scraped() -> None:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{port}/metrics")
        samples[:] = scrape(response.text)
        jobs = total(samples, "spinner_job_duration_seconds_count", task_queue=queue)
        assert jobs == 2, f"{jobs} job durations on /metrics, want 2"

    await eventually(scraped, within=10, interval=0.2)
    assert total(samples, "spinner_records_downloaded", connector="demo") == downloaded
    assert (
        total(
            samples,
            "spinner_tables_completed",
            connector="demo",
            task_queue=queue,
            job_type="download-records",
        )
        == 3
    )
    assert total(samples, "spinner_tables_failed", connector="demo", task_queue=queue) == 1
    for status in ("completed", "failed"):
        assert total(samples, "spinner_job_duration_seconds_count", status=status) == 1
    durations = total(samples, "spinner_job_duration_seconds_sum", task_queue=queue)
    assert 0 < durations < 60
    assert total(samples, "spinner_job_duration_seconds_bucket", le="+Inf") == 2
    # The SDK's own metrics come through the same endpoint.
    assert total(samples, "temporal_workflow_completed", task_queue=queue) == 1
    assert total(samples, "temporal_workflow_failed", task_queue=queue) == 1
    # Table b's failed first attempt and the permanent failure: b was resumed, yet its
    # records counted once (the exact total above).
    # (a first attempt runs as a local activity: its failures have their own metric).
    failed_attempts = total(samples, "temporal_activity_execution_failed", task_queue=queue)
    failed_attempts += total(samples, "temporal_local_activity_execution_failed", task_queue=queue)
    assert failed_attempts == 2


# --- in-process ----------------------------------------------------------------------------


async def test_in_process_stats_tally_the_jobs_of_this_process(
    settings: Settings, sqlite_store: SqliteStore, make_workbook
) -> None:
    # Retention keeps no closed job record; the tallies must not shrink with it.
    local = settings.model_copy(
        update={"use_jobs": False, "retention": RetentionSettings(keep_completed=0, keep_failed=0)}
    )
    async with Enqueuer.from_settings(local, store=sqlite_store) as enqueuer:
        empty = await enqueuer.stats()
        assert empty.backend == Backend.IN_PROCESS
        assert (empty.enqueued, empty.running, empty.queue_depth) == (0, 0, 0)
        assert empty.success_rate is None
        assert empty.processing_time_p95 is None

        slow = await enqueuer.enqueue_download_records_job(make_workbook(t=SLOW).id, ACTOR)
        await started(enqueuer, slow.job_id)
        busy = await enqueuer.stats()
        assert (busy.enqueued, busy.running, busy.queue_depth) == (1, 1, 1)

        refs = [
            await enqueuer.enqueue_download_records_job(make_workbook(t=cfg).id, ACTOR)
            for cfg in (demo(50), demo(70), FAILING)
        ]
        # Not enqueuer.wait: retention may drop a job's record before we could ask.
        await stats_where(enqueuer, lambda s: s.completed == 2 and s.failed == 1)
        await enqueuer.cancel(slow.job_id, actor=ACTOR)
        assert (await enqueuer.wait(slow.job_id, actor=ACTOR)).status == JobStatus.CANCELLED

        final = await enqueuer.stats()
        for ref in refs:
            with pytest.raises(JobNotFoundError):
                await enqueuer.progress(
                    ref.job_id, actor=ACTOR
                )  # swept by retention, still counted
    assert (final.enqueued, final.running, final.queue_depth) == (4, 0, 0)
    assert (final.completed, final.failed, final.cancelled) == (2, 1, 1)
    assert final.success_rate == pytest.approx(2 / 3)
    assert final.failure_rate == pytest.approx(1 / 3)
    assert final.processing_time_sample == 3
    assert final.processing_time_p50 is not None
    assert final.processing_time_p95 is not None
    assert timedelta(0) < final.processing_time_p50 <= final.processing_time_p95


def test_percentiles_are_nearest_rank() -> None:
    times = [timedelta(seconds=s) for s in range(1, 21)]
    assert percentile(times, 0.50) == timedelta(seconds=10)
    assert percentile(times, 0.95) == timedelta(seconds=19)
    assert percentile(times[:1], 0.95) == timedelta(seconds=1)
    assert percentile([], 0.5) is None


async def test_stats_count_only_the_workers_that_are_alive(
    dev_env: WorkflowEnvironment, settings: Settings, sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "SPINNER_SERVICE_TYPE": "worker",  # three monoliths would race for the API port
        "SPINNER_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "SPINNER_TEMPORAL_TASK_QUEUE": settings.temporal.task_queue,
        "SPINNER_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
    }
    root = Path(__file__).resolve().parents[1]  # noqa: ASYNC240
    workers = [
        subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-c", "from spinner_jobs.shell.cli import main; main()", "worker"],
            env=env,
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(3)
    ]
    backend = TemporalBackend(settings.temporal, settings.enqueue_timeout, client=dev_env.client)
    enqueuer = Enqueuer(settings, sqlite_store, backend)
    try:

        async def workers_are(n: int) -> bool:
            return (await enqueuer.stats()).workers == n

        await eventually(lambda: workers_are(3), within=60, interval=0.5)
        # Until its first heartbeat (within 5 s) a worker is known by its pollers only,
        # which the server lists for minutes after the worker is gone.
        await asyncio.sleep(6)
        workers[0].kill()  # SIGKILL: its pollers linger on the server, its heartbeats stop
        workers[1].terminate()  # SIGTERM: shuts down and says so
        for process in workers[:2]:
            process.wait(15)
        await eventually(lambda: workers_are(1), within=40, interval=0.5)
    finally:
        for process in workers:
            if process.poll() is None:
                process.terminate()
                process.wait(15)
