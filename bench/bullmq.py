"""spinner-jobs next to BullMQ, on the same machine and the same workloads, in one run.

1. Download. ``node ../shared/peers/dataserver.js PORT`` serves 20 datasets of 10 pages
   x 1,000 records by cursor. BullMQ (``shared/peers/run-bullmq.sh download``) runs 20
   jobs, 4 at once, upserting into SQLite. spinner-jobs downloads the same datasets as
   20 ``http`` tables (cursor paginator) of one job with parallelism 4, into a SQLite
   store, on a private dev server with one (or more: ``--workers``) separate
   ``spinner-jobs worker`` processes. The sides take turns, one run each. Printed:
   records/s and worker CPU per record (the worker processes' CPU time from the first
   enqueue to the last result, as the BullMQ side measures it), the source's CPU per
   record and how busy the machine was, and the ratios.
2. Small jobs, one at a time (enqueue, then wait for the result), worker already
   running: a job of 1 table of 10 records in (a) one process holding enqueuer and
   worker, (b) a separate worker process; (c) a bare Temporal workflow with one trivial
   activity; and BullMQ's one-job-at-a-time round trip for reference. Printed: p50 and
   p95 of enqueue -> result, and the history events and workflow tasks of one job.

    ./run bench          or    .venv/bin/python bench/bullmq.py [--reps 3] [--jobs 50]

Needs node and npm (BullMQ side); ``run-bullmq.sh`` installs redis-server with apt-get
when it is missing and the user is root. ``--no-bullmq`` runs the spinner-jobs side only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from temporalio.api.enums.v1 import EventType  # noqa: E402
from temporalio.client import Client  # noqa: E402
from temporalio.worker import Worker  # noqa: E402

from bench.bare_temporal import BareWorkflow, echo  # noqa: E402
from bench.common import dev_server, free_port, percentile, print_table  # noqa: E402
from enqueuer import Actor, Enqueuer, JobStatus  # noqa: E402
from enqueuer.backends.temporal import TemporalBackend, connect_client  # noqa: E402
from enqueuer.logs import configure_logging  # noqa: E402
from enqueuer.settings import Settings  # noqa: E402
from spinner_jobs.connectors.registry import default_connectors  # noqa: E402
from spinner_jobs.core.models import Table, Workbook  # noqa: E402
from spinner_jobs.store import Store, open_store  # noqa: E402
from spinner_jobs.worker.main import build_worker  # noqa: E402

ACTOR = Actor(user_id="u_bench", organization_id="org_bench")
DATASETS = 20
RECORDS_PER_DATASET = 10 * 1000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def peers_dir(given: str | None) -> Path:
    """The peers folder: ``--peers``, else ``../shared/peers`` from the repository root."""
    folder = Path(given) if given else ROOT.parent / "shared" / "peers"
    if not (folder / "run-bullmq.sh").is_file():
        raise SystemExit(f"no run-bullmq.sh in {folder}; pass --peers FOLDER")
    return folder


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine so far, from ``/proc/stat``."""
    fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


@dataclass
class Window:
    """CPU of the worker processes, the source and the machine over one timed download."""

    pids: list[int]
    source_pid: int
    worker_cpu: float = 0.0
    source_cpu: float = 0.0
    busy_pct: float = 0.0
    per_worker_cpu: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._each = [cpu_seconds(pid) for pid in self.pids]
        self._source = cpu_seconds(self.source_pid)
        self._machine = machine_ticks()

    def close(self) -> None:
        self.per_worker_cpu = [
            cpu_seconds(pid) - before for pid, before in zip(self.pids, self._each, strict=True)
        ]
        self.worker_cpu = sum(self.per_worker_cpu)
        self.source_cpu = cpu_seconds(self.source_pid) - self._source
        busy, total = machine_ticks()
        self.busy_pct = 100 * (busy - self._machine[0]) / max(1, total - self._machine[1])


@dataclass
class DataServer:
    url: str
    pid: int


@contextlib.contextmanager
def data_server(peers: Path) -> Iterator[DataServer]:
    """``node dataserver.js PORT``: the deterministic cursor-paged source of both sides."""
    port = free_port()
    process = subprocess.Popen(
        ["node", str(peers / "dataserver.js"), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("READY"):
            raise SystemExit(f"dataserver.js did not start: {line!r}")
        yield DataServer(f"http://127.0.0.1:{port}", process.pid)
    finally:
        process.terminate()
        process.wait(10)


def run_bullmq(peers: Path, bench: str, reps: int, source: DataServer) -> list[dict[str, Any]]:
    """Run ``run-bullmq.sh BENCH REPS`` against the shared data server; its JSON lines.

    The source's pid goes along (``BENCH_PIDS``), so each line counts its CPU too.
    """
    done = subprocess.run(
        [str(peers / "run-bullmq.sh"), bench, str(reps)],
        env={**os.environ, "DATA_URL": source.url, "BENCH_PIDS": f"source={source.pid}"},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"run-bullmq.sh {bench} failed: {done.stderr.strip()[-500:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def http_table(workbook_id: str, data_url: str, i: int) -> Table:
    """Dataset ``job-i`` of dataserver.js as an ``http`` table with the cursor paginator."""
    return Table(
        id=f"{workbook_id}_job{i:02d}",
        workbook_id=workbook_id,
        name=f"job-{i}",
        connector="http",
        config={
            "base_url": data_url,
            "path": "records",
            "params": {"dataset": f"job-{i}", "limit": 1000},
            "data_selector": "records",
            "paginator": {
                "type": "cursor",
                "cursor_path": "next_cursor",
                "cursor_param": "cursor",
            },
        },
    )


def probe_workbook(workbook_id: str, data_url: str, tables: int) -> Workbook:
    """Tables of one page of 10 records of dataset ``job-999``, the untimed job first.

    The BullMQ side warms its worker the same way (a probe job on ``job-999``), so both
    time a worker whose download path has run once: an HTTP client with its TLS
    context, a SQLite connection, the decoders. Several tables, so that each worker
    process on the task queue likely takes one.
    """
    probe = http_table(workbook_id, data_url, 999)
    config = {**probe.config, "params": {"dataset": "job-999", "limit": 10, "cursor": 9990}}
    return Workbook(
        id=workbook_id,
        organization_id=ACTOR.organization_id,
        name="probe",
        tables=[
            probe.model_copy(update={"id": f"{probe.id}_{i}", "config": config})
            for i in range(tables)
        ],
    )


def demo_workbook(workbook_id: str, records: int = 10) -> Workbook:
    return Workbook(
        id=workbook_id,
        organization_id=ACTOR.organization_id,
        name=workbook_id,
        tables=[
            Table(
                id=f"{workbook_id}_t",
                workbook_id=workbook_id,
                name="t",
                connector="demo",
                config={"records": records, "page_size": records},
            )
        ],
    )


@dataclass
class WorkerProcess:
    """A ``spinner-jobs worker`` child process on its own task queue."""

    process: subprocess.Popen[bytes]
    task_queue: str

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(15)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def worker_process(
    address: str,
    db_url: str,
    folder: Path,
    parallelism: int = 4,
    task_queue: str | None = None,
) -> Iterator[WorkerProcess]:
    task_queue = task_queue or f"bench-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "SPINNER_SERVICE_TYPE": "worker",
        "SPINNER_TEMPORAL_ADDRESS": address,
        "SPINNER_TEMPORAL_TASK_QUEUE": task_queue,
        "SPINNER_DATABASE_URL": db_url,
        "SPINNER_JOBS_TABLE_PARALLELISM": str(parallelism),
        "SPINNER_LOG_LEVEL": "warning",
        # dataserver.js listens on loopback, which the http connector refuses by default.
        "SPINNER_HTTP_ALLOWED_NETWORKS": "127.0.0.0/8",
    }
    with (folder / f"worker-{task_queue}-{uuid.uuid4().hex[:4]}.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", "from spinner_jobs.shell.cli import main; main()", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    worker = WorkerProcess(process, task_queue)
    try:
        yield worker
    finally:
        worker.stop()


def enqueuer_for(client: Client, settings: Settings, store: Store) -> Enqueuer:
    backend = TemporalBackend(settings.temporal, settings.enqueue_timeout, client)
    return Enqueuer(settings, store, backend)


def bench_settings(folder: Path, address: str, db_url: str, task_queue: str) -> Settings:
    return Settings(
        data_dir=folder,
        database_url=db_url,
        temporal={"address": address, "task_queue": task_queue},
        jobs={"table_parallelism": 4},
    )


async def run_job(enq: Enqueuer, workbook_id: str, within: float = 600.0) -> str:
    """Enqueue a job of the workbook's tables, wait for it to complete; its id."""
    ref = await enq.enqueue_download_records_job(workbook_id, ACTOR)
    result = await asyncio.wait_for(enq.wait(ref.job_id, actor=ACTOR), within)
    if result.status != JobStatus.COMPLETED:
        raise RuntimeError(f"job {ref.job_id} ended {result.status}: {result.progress.error}")
    return ref.job_id


# --- 1. download ----------------------------------------------------------------------


@dataclass
class DownloadRun:
    records: int
    seconds: float
    worker_cpu: float
    source_cpu: float
    busy_pct: float
    per_worker_cpu: list[float]

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    @property
    def cpu_us_per_record(self) -> float:
        return self.worker_cpu / self.records * 1e6

    @property
    def source_us_per_record(self) -> float:
        return self.source_cpu / self.records * 1e6


async def spinner_download(
    address: str, folder: Path, source: DataServer, rep: int, workers: int
) -> DownloadRun:
    """One download of the workload by ``workers`` worker processes on one task queue.

    The job's tables are shared out among the processes (4 at once in all); the CPU
    figure is the sum of theirs.
    """
    db_url = f"sqlite:///{folder}/download-{workers}-{rep}.db"
    data_url = source.url
    store = open_store(db_url)
    workbook_id = f"wb_dl_{workers}_{rep}"
    store.put_workbook(
        Workbook(
            id=workbook_id,
            organization_id=ACTOR.organization_id,
            name="download",
            tables=[http_table(workbook_id, data_url, i) for i in range(DATASETS)],
        )
    )
    warm = f"wb_warm_{workers}_{rep}"
    store.put_workbook(probe_workbook(warm, data_url, tables=2 * workers))
    task_queue = f"bench-{uuid.uuid4().hex[:6]}"
    try:
        with contextlib.ExitStack() as stack:
            pids = [
                stack.enter_context(
                    worker_process(address, db_url, folder, task_queue=task_queue)
                ).process.pid
                for _ in range(workers)
            ]
            settings = bench_settings(folder, address, db_url, task_queue)
            enq = enqueuer_for(await connect_client(settings.temporal), settings, store)
            await run_job(enq, warm, within=120)  # a worker is up and polling
            await asyncio.sleep(1.0 if workers > 1 else 0)  # and the others
            window = Window(pids, source.pid)
            began = time.perf_counter()
            await run_job(enq, workbook_id)
            seconds = time.perf_counter() - began
            window.close()
        workbook = store.get_workbook(workbook_id)
        assert workbook is not None
        records = sum(store.count_records(t.id) for t in workbook.tables)
    finally:
        store.close()
    if records != DATASETS * RECORDS_PER_DATASET:
        raise RuntimeError(f"spinner-jobs stored {records} records, not {DATASETS * 10_000}")
    return DownloadRun(
        records,
        seconds,
        window.worker_cpu,
        window.source_cpu,
        window.busy_pct,
        window.per_worker_cpu,
    )


# --- 2. small jobs --------------------------------------------------------------------


@dataclass
class LatencyRun:
    latencies_ms: list[float]
    events: float | None = None
    workflow_tasks: float | None = None


async def timed(
    call: Callable[[], Awaitable[str]], jobs: int, warmup: int
) -> tuple[list[float], list[str]]:
    """Latencies (ms) of ``jobs`` calls after ``warmup`` untimed ones; the timed calls' ids."""
    for _ in range(warmup):
        await call()
    latencies, ids = [], []
    for _ in range(jobs):
        began = time.perf_counter()
        ids.append(await call())
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies, ids


async def history_shape(client: Client, workflow_ids: list[str]) -> tuple[float, float]:
    """Mean history events and completed workflow tasks per workflow, over the last ten.

    Both vary a little from job to job: activities that finish close together are
    reported in one workflow task or in two.
    """
    events, tasks = [], []
    for workflow_id in workflow_ids[-10:]:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        events.append(len(history.events))
        tasks.append(
            sum(
                1
                for e in history.events
                if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
            )
        )
    return statistics.fmean(events), statistics.fmean(tasks)


async def small_monolith(address: str, folder: Path, jobs: int, warmup: int) -> LatencyRun:
    db_url = f"sqlite:///{folder}/small-monolith.db"
    store = open_store(db_url)
    store.put_workbook(demo_workbook("wb_small_a"))
    connectors = default_connectors()
    settings = bench_settings(folder, address, db_url, f"bench-{uuid.uuid4().hex[:6]}")
    client = await connect_client(settings.temporal)
    try:
        async with build_worker(client, settings, store, connectors):
            enq = enqueuer_for(client, settings, store)
            latencies, ids = await timed(lambda: run_job(enq, "wb_small_a"), jobs, warmup)
    finally:
        await connectors.aclose()
        store.close()
    return LatencyRun(latencies, *await history_shape(client, ids))


async def small_separate(address: str, folder: Path, jobs: int, warmup: int) -> LatencyRun:
    db_url = f"sqlite:///{folder}/small-separate.db"
    store = open_store(db_url)
    store.put_workbook(demo_workbook("wb_small_b"))
    try:
        with worker_process(address, db_url, folder) as worker:
            settings = bench_settings(folder, address, db_url, worker.task_queue)
            client = await connect_client(settings.temporal)
            enq = enqueuer_for(client, settings, store)
            await run_job(enq, "wb_small_b", within=120)  # the worker is up and polling
            latencies, ids = await timed(lambda: run_job(enq, "wb_small_b"), jobs, warmup)
    finally:
        store.close()
    return LatencyRun(latencies, *await history_shape(client, ids))


async def small_bare(address: str, jobs: int, warmup: int) -> LatencyRun:
    client = await Client.connect(address)
    task_queue = f"bench-bare-{uuid.uuid4().hex[:6]}"

    async def one() -> str:
        workflow_id = f"bare-{uuid.uuid4().hex[:12]}"
        await client.execute_workflow(BareWorkflow.run, "x", id=workflow_id, task_queue=task_queue)
        return workflow_id

    async with Worker(client, task_queue=task_queue, workflows=[BareWorkflow], activities=[echo]):
        latencies, ids = await timed(one, jobs, warmup)
    return LatencyRun(latencies, *await history_shape(client, ids))


# --- report ---------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def bull_cpu_us_per_record(run: dict[str, Any]) -> float:
    """A BullMQ download line's worker CPU per record, in µs."""
    return float(run["cpu_s"]["worker"]) / float(run["records"]) * 1e6


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "—" if value is None or math.isnan(value) else format(value, spec)


def report_download(
    spinner: dict[int, list[DownloadRun]], bull: list[dict[str, Any]], reps: int
) -> None:
    rows = []
    figures: dict[int, tuple[float, float]] = {}
    for workers, runs in spinner.items():
        s_rate = median([r.rate for r in runs])
        s_cpu = median([r.cpu_us_per_record for r in runs])
        figures[workers] = (s_rate, s_cpu)
        plural = "process" if workers == 1 else "processes"
        rows.append(
            [
                f"spinner-jobs (dev server + {workers} worker {plural})",
                fmt(median([r.seconds for r in runs]), ".2f"),
                fmt(s_rate),
                fmt(median([r.worker_cpu for r in runs]), ".2f"),
                fmt(s_cpu, ".1f"),
                fmt(median([r.source_us_per_record for r in runs]), ".1f"),
                fmt(median([r.busy_pct for r in runs]), ".0f"),
            ]
        )
    b_rate = b_cpu = None
    if bull:
        b_rate = median([float(b["records_per_s"]) for b in bull])
        b_cpu = median([bull_cpu_us_per_record(b) for b in bull])
        sources = [
            b["cpu_s"]["source"] / b["records"] * 1e6 for b in bull if "source" in b["cpu_s"]
        ]
        rows.insert(
            0,
            [
                "BullMQ (Redis + 1 worker process, concurrency 4)",
                fmt(median([float(b["wall_s"]) for b in bull]), ".2f"),
                fmt(b_rate),
                fmt(median([float(b["cpu_s"]["worker"]) for b in bull]), ".2f"),
                fmt(b_cpu, ".1f"),
                fmt(median(sources) if sources else None, ".1f"),
                fmt(median([float(b["machine_busy_pct"]) for b in bull]), ".0f"),
            ],
        )
    print_table(
        f"Download: {DATASETS} datasets x 10 pages x 1,000 records from dataserver.js, "
        f"cursor paging, 4 at once, SQLite (median of {reps})",
        [
            "path",
            "seconds",
            "records/s",
            "worker CPU s",
            "worker CPU µs/record",
            "source CPU µs/record",
            "machine busy %",
        ],
        rows,
    )
    print("(source: dataserver.js, the same process for both; machine busy: both cores = 100%)")
    for workers, runs in spinner.items():
        if workers > 1:
            # One job's tables run in the worker that runs its workflow (a table's first
            # attempt is a local activity of the workflow's task), so this shows the split.
            splits = "; ".join(" + ".join(f"{c:.2f}" for c in r.per_worker_cpu) for r in runs)
            print(f"({workers} worker processes, CPU seconds of each, per run: {splits})")
    if b_rate and b_cpu:
        print()
        for workers, (s_rate, s_cpu) in figures.items():
            print(
                f"spinner-jobs ({workers} worker) / BullMQ: records/s {s_rate / b_rate:.2f}x "
                f"(target >= 1.20), worker CPU per record {s_cpu / b_cpu:.2f}x (target <= 1.00)"
            )


def report_small(runs: dict[str, LatencyRun], bull_rtt: list[dict[str, Any]], jobs: int) -> None:
    rows = [
        [
            name,
            str(len(run.latencies_ms)),
            f"{percentile(run.latencies_ms, 50):.1f}",
            f"{percentile(run.latencies_ms, 95):.1f}",
            fmt(run.events, ".1f"),
            fmt(run.workflow_tasks, ".1f"),
        ]
        for name, run in runs.items()
    ]
    if bull_rtt:
        rows.append(
            [
                "BullMQ one job at a time (reference)",
                str(sum(int(b["n"]) for b in bull_rtt)),
                f"{median([float(b['p50_ms']) for b in bull_rtt]):.1f}",
                # The BullMQ script reports p50, p99 and max, no p95.
                f"— (p99 {median([float(b['p99_ms']) for b in bull_rtt]):.1f})",
                "—",
                "—",
            ]
        )
    print_table(
        f"Small jobs, one at a time, worker running: enqueue -> result ({jobs} timed each)",
        [
            "path",
            "jobs",
            "p50 ms",
            "p95 ms",
            "history events/job",
            "workflow tasks/job",
        ],
        rows,
    )
    bare = percentile(runs["(c) bare Temporal, 1 trivial activity"].latencies_ms, 50)
    for name, target in (
        ("(a) monolith, 1 table x 10 records", 40),
        ("(b) separate worker, 1 table x 10 records", 60),
    ):
        p50 = percentile(runs[name].latencies_ms, 50)
        print(f"{name}: p50 {p50:.1f} ms = {p50 / bare:.2f}x bare Temporal (target <= {target} ms)")


async def amain() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=1, help="download runs per side (median)")
    parser.add_argument("--jobs", type=int, default=50, help="timed small jobs per path")
    parser.add_argument("--warmup", type=int, default=5, help="untimed small jobs first")
    parser.add_argument("--peers", help="folder of run-bullmq.sh (default ../shared/peers)")
    parser.add_argument("--no-bullmq", action="store_true", help="spinner-jobs side only")
    parser.add_argument(
        "--workers",
        default="1,2",
        help="worker process counts of the spinner-jobs download, comma-separated",
    )
    parser.add_argument("--no-small", action="store_true", help="the download only")
    args = parser.parse_args()
    configure_logging("console", "warning")
    peers = peers_dir(args.peers)
    bull_download: list[dict[str, Any]] = []
    bull_rtt: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, data_server(peers) as source:
        folder = Path(tmp)
        async with dev_server(folder) as address:
            # The two sides take turns, run by run: a machine that drifts (other tenants,
            # a warmer page cache) weighs on both alike.
            spinner: dict[int, list[DownloadRun]] = {}
            counts = [int(n) for n in args.workers.split(",")]
            for rep in range(args.reps):
                if not args.no_bullmq:
                    print(f"BullMQ: download, {rep + 1}/{args.reps}...", end=" ", flush=True)
                    bull = run_bullmq(peers, "download", 1, source)
                    bull_download.extend(bull)
                    print(
                        f"{bull[0]['records_per_s']:,} records/s, "
                        f"{bull_cpu_us_per_record(bull[0]):.1f} µs/record"
                    )
                for workers in counts:
                    print(
                        f"spinner-jobs: download, {workers} worker(s), {rep + 1}/{args.reps}...",
                        end=" ",
                        flush=True,
                    )
                    run = await spinner_download(address, folder, source, rep, workers)
                    print(f"{run.rate:,.0f} records/s, {run.cpu_us_per_record:.1f} µs/record")
                    spinner.setdefault(workers, []).append(run)
            if not args.no_bullmq and not args.no_small:
                print("BullMQ: one job at a time...", flush=True)
                bull_rtt = run_bullmq(peers, "rtt", 1, source)
            small: dict[str, LatencyRun] = {}
            if not args.no_small:
                print("small jobs: monolith, separate worker, bare Temporal...", flush=True)
                small = {
                    "(a) monolith, 1 table x 10 records": await small_monolith(
                        address, folder, args.jobs, args.warmup
                    ),
                    "(b) separate worker, 1 table x 10 records": await small_separate(
                        address, folder, args.jobs, args.warmup
                    ),
                    "(c) bare Temporal, 1 trivial activity": await small_bare(
                        address, args.jobs, args.warmup
                    ),
                }
    report_download(spinner, bull_download, args.reps)
    if small:
        report_small(small, bull_rtt, args.jobs)


if __name__ == "__main__":
    asyncio.run(amain())
    sys.stdout.flush()
    os._exit(0)
