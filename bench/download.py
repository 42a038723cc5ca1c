"""Download throughput: the engine vs. a plain script, side by side in one run.

A loopback sample API serves a workbook of N tables x M records in pages of 1000
(json_link paging). Then, for each store (SQLite; PostgreSQL with --postgres):
  (a) engine: a private dev server (SQLite file, WAL) + one `spinner-jobs worker`
      process; the job is enqueued and timed until its result;
  (b) plain: bench/plain_download.py in its own process, fetching and upserting the
      same pages into the same kind of store with the same parallelism.
Prints records/s of both, their ratio, and the peak RSS of the worker process.

    ./run bench     or    .venv/bin/python bench/download.py --tables 10 --records 100000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.common import dev_server, print_table  # noqa: E402
from enqueuer import Actor, Enqueuer, JobStatus  # noqa: E402
from enqueuer.backends.temporal import TemporalBackend, connect_client  # noqa: E402
from enqueuer.codec import payload_codec  # noqa: E402
from enqueuer.logs import configure_logging  # noqa: E402
from enqueuer.settings import Settings  # noqa: E402
from spinner_jobs.core.models import Table, Workbook  # noqa: E402
from spinner_jobs.shell.sample_api import SampleApi, SampleTable  # noqa: E402
from spinner_jobs.store import open_store  # noqa: E402

ACTOR = Actor(user_id="u_bench", organization_id="org_bench")


def peak_rss_mb(pid: int) -> float:
    """High-water mark of a live process's resident memory (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def warm(api: SampleApi, names: list[str]) -> None:
    """Fetch every page once so both runs read from the server's rendered-page cache."""
    with httpx.Client(timeout=30) as client:
        for name in names:
            url: str | None = f"{api.base_url}/tables/{name}"
            while url:
                url = client.get(url).json()["links"].get("next")


async def engine_run(
    address: str,
    db_url: str,
    api: SampleApi,
    names: list[str],
    folder: Path,
    parallelism: int,
    payload_key: str | None = None,
) -> tuple[int, float, float]:
    task_queue = f"bench-{uuid.uuid4().hex[:6]}"
    settings = Settings(
        data_dir=folder,
        database_url=db_url,
        temporal={"address": address, "task_queue": task_queue},
        jobs={"table_parallelism": parallelism},
        payload_key=payload_key,
    )
    store = open_store(db_url)
    store.put_workbook(
        Workbook(
            id="wb_bench",
            organization_id=ACTOR.organization_id,
            name="bench",
            tables=[
                Table(
                    id=f"tbl_{n}",
                    workbook_id="wb_bench",
                    name=n,
                    connector="http",
                    config=api.config(n),
                )
                for n in names
            ],
        )
    )
    env = {
        **os.environ,
        "SPINNER_SERVICE_TYPE": "worker",  # no HTTP API in the measured process
        "SPINNER_TEMPORAL_ADDRESS": address,
        "SPINNER_TEMPORAL_TASK_QUEUE": task_queue,
        "SPINNER_DATABASE_URL": db_url,
        "SPINNER_HTTP_ALLOWED_NETWORKS": "127.0.0.0/8",  # the sample source is on loopback
        "SPINNER_JOBS_TABLE_PARALLELISM": str(parallelism),
        "SPINNER_LOG_LEVEL": "warning",
        **({"SPINNER_PAYLOAD_KEY": payload_key} if payload_key else {}),
    }
    with (folder / f"worker-{task_queue}.log").open("wb") as log:
        worker = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [sys.executable, "-c", "from spinner_jobs.shell.cli import main; main()", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        client = await connect_client(settings.temporal, codec=payload_codec(settings.payload_key))
        enqueuer = Enqueuer(
            settings, store, TemporalBackend(settings.temporal, settings.enqueue_timeout, client)
        )
        await asyncio.sleep(2)  # let the worker connect and poll
        began = time.perf_counter()
        ref = await enqueuer.enqueue_download_records_job("wb_bench", ACTOR)
        result = await enqueuer.wait(ref.job_id, actor=ACTOR)
        seconds = time.perf_counter() - began
        assert result.status == JobStatus.COMPLETED, result
        rss = peak_rss_mb(worker.pid)
        records = sum(store.count_records(f"tbl_{n}") for n in names)
    finally:
        worker.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(15)
        if worker.poll() is None:
            worker.kill()
        store.close()
    return records, seconds, rss


def plain_run(
    db_url: str, api: SampleApi, names: list[str], parallelism: int
) -> tuple[int, float, float]:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "plain_download.py"),
            "--base-url",
            api.base_url,
            "--tables",
            ",".join(names),
            "--db",
            db_url,
            "--parallelism",
            str(parallelism),
            "--report-rss",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out["records"], out["seconds"], out["peak_rss_mb"]


@contextlib.contextmanager
def postgres_urls(enabled: bool) -> Iterator[tuple[str, str] | None]:
    """Two fresh schemas on a throwaway PostgreSQL server (tests/pg.py), or None."""
    if not enabled:
        yield None
        return
    from tests.pg import fresh_schema, running_postgres

    with running_postgres() as url, fresh_schema(url) as engine, fresh_schema(url) as plain:
        yield engine, plain


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tables", type=int, default=10)
    parser.add_argument("--records", type=int, default=100_000, help="records per table")
    parser.add_argument("--parallelism", type=int, default=4, help="tables downloaded at once")
    parser.add_argument(
        "--stores", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql"
    )
    parser.add_argument(
        "--codec",
        action="store_true",
        help="also run the engine with SPINNER_PAYLOAD_KEY set (payload encryption)",
    )
    args = parser.parse_args()
    configure_logging("console", "warning")
    names = [f"t{i:02d}" for i in range(args.tables)]
    total = args.tables * args.records
    rows: list[list[str]] = []
    ratios: list[str] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        SampleApi(
            {
                n: SampleTable(records=args.records, style="json_link", page_size=1000, seed=i)
                for i, n in enumerate(names)
            },
            cache_bytes=1024 * 1024 * 1024,
        ) as api,
    ):
        folder = Path(tmp)
        print(f"warming the sample API cache ({total:,} records)...", flush=True)
        warm(api, names)
        async with dev_server(folder) as address:
            with postgres_urls("postgresql" in args.stores) as pg:
                stores = []
                if "sqlite" in args.stores:
                    stores.append(
                        ("sqlite", f"sqlite:///{folder}/engine.db", f"sqlite:///{folder}/plain.db")
                    )
                if pg:
                    stores.append(("postgresql", pg[0], pg[1]))
                for label, engine_db, plain_db in stores:
                    print(f"{label}: engine run...", flush=True)
                    e_records, e_seconds, e_rss = await engine_run(
                        address, engine_db, api, names, folder, args.parallelism
                    )
                    print(f"{label}: plain run...", flush=True)
                    p_records, p_seconds, p_rss = plain_run(plain_db, api, names, args.parallelism)
                    assert e_records == p_records == total, (e_records, p_records, total)
                    e_rate, p_rate = e_records / e_seconds, p_records / p_seconds
                    rows.append(
                        [
                            label,
                            "engine (dev server + 1 worker)",
                            f"{e_seconds:.1f}",
                            f"{e_rate:,.0f}",
                            f"{e_rss:.0f}",
                        ]
                    )
                    rows.append(
                        [
                            label,
                            "plain script (no engine)",
                            f"{p_seconds:.1f}",
                            f"{p_rate:,.0f}",
                            f"{p_rss:.0f}",
                        ]
                    )
                    ratios.append(
                        f"{label}: engine/plain = {e_rate / p_rate:.2f}  (target >= 0.90); "
                        f"worker peak RSS {e_rss:.0f} MB (target <= 300)"
                    )
                    if args.codec:
                        print(f"{label}: engine run with payload encryption...", flush=True)
                        key = base64.b64encode(os.urandom(32)).decode()
                        c_records, c_seconds, c_rss = await engine_run(
                            address, engine_db, api, names, folder, args.parallelism, key
                        )
                        assert c_records == total, c_records
                        c_rate = c_records / c_seconds
                        rows.append(
                            [
                                label,
                                "engine, SPINNER_PAYLOAD_KEY set",
                                f"{c_seconds:.1f}",
                                f"{c_rate:,.0f}",
                                f"{c_rss:.0f}",
                            ]
                        )
                        ratios.append(
                            f"{label}: engine with payload codec / without = {c_rate / e_rate:.2f}"
                        )
    print_table(
        f"Download of {args.tables} tables x {args.records:,} records (pages of 1,000, "
        f"{args.parallelism} tables at once) from a loopback HTTP source",
        ["store", "path", "seconds", "records/s", "peak RSS MB"],
        rows,
    )
    print()
    for line in ratios:
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
    sys.stdout.flush()
    os._exit(0)
