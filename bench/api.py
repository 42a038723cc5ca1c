"""The HTTP API's cost: enqueue over HTTP vs. the Python Enqueuer, and 200 open event streams.

One dev server and one SQLite store, started here. The API runs as `spinner-jobs api`
(SPINNER_SERVICE_TYPE=frontend) in its own process, so its RSS and CPU are its own;
the Python Enqueuer and the HTTP client run in this process.

1. Event streams: with a worker (in this process) running one long job, the API
   process's RSS and CPU idle, then with 200 streams open on that job.
2. Enqueue: the same single-table jobs through ``Enqueuer.enqueue_download_records_job``
   and through ``POST /v1/jobs/download-records``, timed one by one and at concurrency
   32, in A-B-B-A order (no worker polls by then: only the enqueue path is measured).

    .venv/bin/python bench/api.py [--sequential 200 --jobs 600 --streams 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench.common import dev_server, free_port, print_table
from bench.enqueue import ACTOR, compare
from enqueuer.backends.temporal import TemporalBackend, connect_client
from enqueuer.client import Enqueuer
from enqueuer.logs import configure_logging
from enqueuer.settings import Settings
from spinner_jobs.api import create_api_key
from spinner_jobs.connectors.registry import default_connectors
from spinner_jobs.core.models import Table, Workbook
from spinner_jobs.store.sqlite import SqliteStore
from spinner_jobs.worker.main import build_worker

CLI = Path(sys.executable).parent / "spinner-jobs"
TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


async def sample(pid: int, seconds: float) -> tuple[float, float]:
    """(RSS MB at the end, CPU % of one core) of ``pid`` over ``seconds``."""
    cpu, began = cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(seconds)
    used, wall = cpu_seconds(pid) - cpu, time.perf_counter() - began
    return rss_mb(pid), 100 * used / wall


def add_workbook(store: SqliteStore, wb: str, config: dict[str, object] | None = None) -> None:
    store.put_workbook(
        Workbook(
            id=wb,
            organization_id=ACTOR.organization_id,
            name=wb,
            tables=[
                Table(id=f"{wb}_t", workbook_id=wb, name="t", connector="demo", config=config or {})
            ],
        )
    )


def start_api(env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(CLI), "api"], env=env, stdout=log, stderr=log)


async def wait_until_up(url: str, api: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as probe:
        for _ in range(300):
            if api.poll() is not None:
                raise RuntimeError(f"the API process exited with {api.returncode}")
            try:
                if (await probe.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the API did not become ready in 30 s")


async def streams_phase(
    url: str, key: str, pid: int, settings: Settings, store: SqliteStore, count: int
) -> list[list[str]]:
    """RSS and CPU of the API process idle, then with ``count`` streams open on one job."""
    client = await connect_client(settings.temporal)
    connectors = default_connectors()
    add_workbook(store, "wb_long", {"records": 200_000, "page_size": 100, "page_delay": 0.05})
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=count + 10)
    rows: list[list[str]] = []
    async with (
        build_worker(client, settings, store, connectors),
        httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=120) as http,
    ):
        created = await http.post(
            "/v1/jobs/download-records",
            json={"user_id": ACTOR.user_id, "input": {"workbook_id": "wb_long"}},
        )
        created.raise_for_status()
        job_id = created.json()["job_id"]
        await asyncio.sleep(2)  # the job under way, the API warm
        rss, cpu = await sample(pid, 10)
        rows.append(["idle (one job running)", "0", f"{rss:.0f}", f"{cpu:.1f}"])
        opened = 0
        events = 0
        ready = asyncio.Event()

        async def follow() -> None:
            nonlocal opened, events
            async with http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
                response.raise_for_status()
                opened += 1
                if opened == count:
                    ready.set()
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        events += 1

        followers = [asyncio.create_task(follow()) for _ in range(count)]
        await asyncio.wait_for(ready.wait(), 60)
        await asyncio.sleep(2)
        before = events
        rss, cpu = await sample(pid, 10)
        rows.append([f"{count} event streams open", str(count), f"{rss:.0f}", f"{cpu:.1f}"])
        rate = (events - before) / 10
        (await http.post(f"/v1/jobs/{job_id}/cancel")).raise_for_status()
        await asyncio.wait_for(asyncio.gather(*followers), 60)
        print(f"events delivered while sampled: {rate:,.0f}/s across {count} streams")
    await connectors.aclose()
    del client
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequential", type=int, default=200, help="calls timed one by one")
    parser.add_argument("--jobs", type=int, default=600, help="calls in the throughput run")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight at once")
    parser.add_argument("--streams", type=int, default=200, help="event streams held open")
    args = parser.parse_args()
    per_side = 2 * (args.sequential + args.jobs)

    configure_logging("console", "warning")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        async with dev_server(folder) as address:
            queue = f"bench-{uuid.uuid4().hex[:6]}"
            store_url = f"sqlite:///{folder / 'store.db'}"
            settings = Settings(
                data_dir=folder,
                database_url=store_url,
                temporal={"address": address, "task_queue": queue},
                jobs={"max_pending": 10 * per_side},
            )
            store = SqliteStore(folder / "store.db")
            store.migrate()
            for i in range(2 * per_side):
                add_workbook(store, f"wb_{i}")
            _, key = create_api_key(store, ACTOR.organization_id, "bench")
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("SPINNER_")}
            env.update(
                SPINNER_SERVICE_TYPE="frontend",
                SPINNER_DATA_DIR=str(folder),
                SPINNER_DATABASE_URL=store_url,
                SPINNER_TEMPORAL_ADDRESS=address,
                SPINNER_TEMPORAL_TASK_QUEUE=queue,
                SPINNER_JOBS_MAX_PENDING=str(10 * per_side),
                SPINNER_API_PORT=str(port),
                SPINNER_API_MAX_STREAMS_PER_KEY=str(args.streams + 10),
                SPINNER_LOG_FORMAT="json",
            )
            log = (folder / "api.log").open("wb")
            api = start_api(env, log)
            url = f"http://127.0.0.1:{port}"
            try:
                await wait_until_up(url, api)
                stream_rows = await streams_phase(url, key, api.pid, settings, store, args.streams)

                enqueuer = Enqueuer(
                    settings, store, TemporalBackend(settings.temporal, settings.enqueue_timeout)
                )
                http = httpx.AsyncClient(
                    base_url=url,
                    headers={"Authorization": f"Bearer {key}"},
                    limits=httpx.Limits(max_connections=args.concurrency + 8),
                    timeout=60,
                )

                async def python_call(i: int) -> None:
                    await enqueuer.enqueue_download_records_job(f"wb_{i}", ACTOR)

                async def http_call(i: int) -> None:
                    response = await http.post(
                        "/v1/jobs/download-records",
                        json={"user_id": ACTOR.user_id, "input": {"workbook_id": f"wb_{i}"}},
                    )
                    if response.status_code != 202:
                        raise RuntimeError(f"{response.status_code}: {response.text}")

                # Warm both paths (connections, caches) on workbooks of their own.
                for i in range(2 * per_side - 40, 2 * per_side - 20):
                    await python_call(i)
                for i in range(2 * per_side - 20, 2 * per_side):
                    await http_call(i)
                rows = await compare(
                    {"Python Enqueuer": python_call, "HTTP API (POST)": http_call},
                    args.sequential,
                    args.jobs,
                    args.concurrency,
                )
                await http.aclose()
                await enqueuer.aclose()
            finally:
                api.send_signal(signal.SIGTERM)
                api.wait(30)
                log.close()
                store.close()

    ratio = float(rows[1][3].replace(",", "")) / float(rows[0][3].replace(",", ""))
    added = float(rows[1][1]) - float(rows[0][1])
    print_table(
        f"Enqueue against the dev server ({args.sequential} sequential calls; "
        f"{args.jobs} calls at concurrency {args.concurrency}); API in its own process",
        ["path", "p50 ms", "p99 ms", "jobs/s"],
        rows,
    )
    print(f"\nthroughput ratio HTTP/Python: {ratio:.2f}  (target >= 0.80)")
    print(f"p50 added by HTTP: {added:.1f} ms")
    print_table(
        "The API process (frontend) with open event streams (10 s samples)",
        ["state", "streams", "RSS MB", "CPU % of a core"],
        stream_rows,
    )


if __name__ == "__main__":
    asyncio.run(main())
    sys.stdout.flush()
    os._exit(0)
