"""Enqueue latency and throughput: spinner-jobs' enqueue vs. bare ``start_workflow``.

Both run in the same process against the same dev server (SQLite file, WAL) started
here, with no worker polling (only the enqueue path is measured). The bare baseline
starts the same workflow with the same input and search attributes, but skips what
the engine adds: validation, the workbook/table lookup and the table download locks.

    ./run bench            (or: .venv/bin/python bench/enqueue.py --jobs 1000)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temporalio.common import SearchAttributePair, TypedSearchAttributes

from bench.common import dev_server, percentile, print_table
from enqueuer.backends.temporal import TemporalBackend, connect_client
from enqueuer.client import Enqueuer
from enqueuer.logs import configure_logging
from enqueuer.settings import Settings
from spinner_jobs.core import wire
from spinner_jobs.core.models import (
    JOB_TYPE_DOWNLOAD_RECORDS,
    Actor,
    JobSpec,
    JobWorkflowInput,
    RetryOptions,
    Table,
    Workbook,
)
from spinner_jobs.store.sqlite import SqliteStore

ACTOR = Actor(user_id="u_bench", organization_id="org_bench")


async def timed_calls(call: Callable[[int], Awaitable[None]], ids: range) -> list[float]:
    latencies: list[float] = []
    for i in ids:
        began = time.perf_counter()
        await call(i)
        latencies.append((time.perf_counter() - began) * 1000)
    return latencies


async def throughput(
    call: Callable[[int], Awaitable[None]], ids: range, concurrency: int
) -> tuple[int, float]:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await call(i)

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in ids))
    return len(ids), time.perf_counter() - began


async def compare(
    paths: dict[str, Callable[[int], Awaitable[None]]], sequential: int, jobs: int, concurrency: int
) -> list[list[str]]:
    """Measure each path in A-B-B-A order, so a server slowing as it fills hurts both alike."""
    names = list(paths)
    order = [names[0], names[1], names[1], names[0]]
    latencies: dict[str, list[float]] = {n: [] for n in names}
    runs: dict[str, list[tuple[int, float]]] = {n: [] for n in names}
    next_id = 0
    for name in order:
        ids = range(next_id, next_id + sequential // 2)
        next_id = ids.stop
        latencies[name] += await timed_calls(paths[name], ids)
    for name in order:
        ids = range(next_id, next_id + jobs // 2)
        next_id = ids.stop
        runs[name].append(await throughput(paths[name], ids, concurrency))
    rows = []
    for name in names:
        count = sum(c for c, _ in runs[name])
        seconds = sum(s for _, s in runs[name])
        rows.append(
            [
                name,
                f"{percentile(latencies[name], 50):.1f}",
                f"{percentile(latencies[name], 99):.1f}",
                f"{count / seconds:,.0f}",
            ]
        )
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sequential", type=int, default=300, help="calls timed one by one")
    parser.add_argument("--jobs", type=int, default=1000, help="calls in the throughput run")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight at once")
    args = parser.parse_args()
    per_side = 2 * (args.sequential + args.jobs)

    configure_logging("console", "warning")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        async with dev_server(folder) as address:
            settings = Settings(
                data_dir=folder,
                temporal={"address": address, "task_queue": f"bench-{uuid.uuid4().hex[:6]}"},
                jobs={"max_pending": 10 * per_side},
            )
            client = await connect_client(settings.temporal)
            store = SqliteStore(folder / "store.db")
            store.migrate()
            # One single-table workbook per enqueue: every job takes its own table lock.
            for i in range(per_side):
                wb = f"wb_{i}"
                store.put_workbook(
                    Workbook(
                        id=wb,
                        organization_id=ACTOR.organization_id,
                        name=wb,
                        tables=[Table(id=f"{wb}_t", workbook_id=wb, name="t", connector="demo")],
                    )
                )
            enqueuer = Enqueuer(
                settings,
                store,
                TemporalBackend(settings.temporal, settings.enqueue_timeout, client),
            )
            template = JobWorkflowInput(
                job_id="x",
                job=JobSpec(workbook_id="wb", actor=ACTOR),
                table_ids=["t"],
                retry=RetryOptions(**settings.retry.model_dump()),
                table_parallelism=settings.jobs.table_parallelism,
                heartbeat_timeout=settings.jobs.heartbeat_timeout,
                table_timeout=settings.jobs.table_timeout,
            )

            async def ours(i: int) -> None:
                await enqueuer.enqueue_download_records_job(f"wb_{i}", ACTOR)

            async def bare(i: int) -> None:
                job_id = f"bare-{uuid.uuid4().hex[:16]}"
                job = JobSpec(workbook_id=f"wb_{i}", actor=ACTOR)
                await client.start_workflow(
                    wire.WORKFLOW_DOWNLOAD_RECORDS,
                    template.model_copy(
                        update={"job_id": job_id, "job": job, "table_ids": [f"wb_{i}_t"]}
                    ),
                    id=job_id,
                    task_queue=settings.temporal.task_queue,
                    search_attributes=TypedSearchAttributes(
                        [
                            SearchAttributePair(wire.SA_WORKBOOK_ID, job.workbook_id),
                            SearchAttributePair(wire.SA_USER_ID, ACTOR.user_id),
                            SearchAttributePair(wire.SA_ORGANIZATION_ID, ACTOR.organization_id),
                            SearchAttributePair(wire.SA_JOB_TYPE, JOB_TYPE_DOWNLOAD_RECORDS),
                        ]
                    ),
                    static_summary=f"Download 1 table of workbook {job.workbook_id}",
                )

            # Warm both paths (connections, caches) before timing.
            for i in range(20):
                await bare(i)
            rows = await compare(
                {"bare client.start_workflow": bare, "spinner-jobs enqueue": ours},
                args.sequential,
                args.jobs,
                args.concurrency,
            )
            store.close()
    ratio = float(rows[1][3].replace(",", "")) / float(rows[0][3].replace(",", ""))
    print_table(
        f"Enqueue against the dev server ({args.sequential} sequential calls; "
        f"{args.jobs} calls at concurrency {args.concurrency})",
        ["path", "p50 ms", "p99 ms", "jobs/s"],
        rows,
    )
    print(f"\nthroughput ratio enqueue/bare: {ratio:.2f}  (target >= 0.80)")
    print(f"enqueue p50: {rows[1][1]} ms  (target <= 15 ms)")


if __name__ == "__main__":
    asyncio.run(main())
    sys.stdout.flush()
    import os

    os._exit(0)
