"""Outages of what the engine leans on: PostgreSQL, a write-locked SQLite file, the
webhook receiver, the Temporal server itself.

Each outage is real (a stopped server, another process holding a lock, a closed port, a
killed dev server) and each case ends with the store compared with the source record by
record.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from temporalio.testing import WorkflowEnvironment

from enqueuer import Enqueuer, JobStatus
from enqueuer.settings import Settings
from enqueuer.wiring import open_webhook
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.core.errors import StoreUnavailableError
from spinner_jobs.core.models import Backend, JobRef
from spinner_jobs.shell.sample_api import SampleApi, SampleTable
from spinner_jobs.store.postgres import PostgresStore
from spinner_jobs.store.sqlite import SqliteStore
from spinner_jobs.worker.main import build_worker
from tests.chaos_support import (
    ACTOR,
    PostgresServer,
    SqliteWriteLock,
    Stopwatch,
    TemporalServer,
    WebhookReceiver,
    WorkerProcess,
    cancel_job,
    connect,
    demo_records,
    free_port,
    job_result,
    put_workbook,
    report,
    sample_records,
    store_differences,
    temporal_enqueuer_on,
    worker_env,
    workers,
)
from tests.helpers import demo, eventually, temporal_enqueuer

# --- PostgreSQL stopped for 30 s mid-job --------------------------------------------------

PG_RECORDS = 6_000
PG_OUTAGE = 30.0


@pytest.mark.timeout(240)
async def test_postgres_stopped_for_30s_mid_job_and_restarted(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    pg = PostgresServer()
    pg.start()
    try:
        store = PostgresStore(pg.url)
        store.migrate()
        with SampleApi({"big": SampleTable(records=PG_RECORDS, page_size=100)}) as api:
            wb, after_wb = f"wb_{uuid.uuid4().hex[:8]}", f"wb_{uuid.uuid4().hex[:8]}"
            table_id, after_table = f"{wb}_big", f"{after_wb}_small"
            # 10 pages/s: 6 s of downloading, so the outage comes mid-table.
            put_workbook(store, wb, {table_id: ("http", api.config("big", requests_per_second=10))})
            put_workbook(store, after_wb, {after_table: ("demo", demo(300))})
            address = dev_env.client.service_client.config.target_host
            env = worker_env(
                address=address, task_queue=task_queue, database_url=pg.url, data_dir=tmp_path
            )
            settings = Settings(
                data_dir=tmp_path,
                database_url=pg.url,
                temporal={"task_queue": task_queue, "address": address},
            )
            enqueuer = temporal_enqueuer_on(dev_env.client, settings, store)
            with workers(WorkerProcess(env, tmp_path / "worker.log")):
                ref = await enqueuer.enqueue_download_records_job(wb, ACTOR)

                async def a_quarter_done() -> bool:
                    return store.count_records(table_id) >= PG_RECORDS // 4

                await eventually(a_quarter_done, within=60)
                written_at_stop = store.count_records(table_id)
                pg.stop("fast")
                await asyncio.sleep(PG_OUTAGE)
                pg.start()
                # The first enqueue after the restart: it goes through, or says the store
                # is unavailable, never a raw driver error.
                first_after: str
                after_ref: JobRef | None = None
                try:
                    after_ref = await enqueuer.enqueue_download_records_job(after_wb, ACTOR)
                    first_after = "ok"
                except StoreUnavailableError:
                    first_after = "StoreUnavailableError"
                except Exception as exc:
                    first_after = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
                if after_ref is None:
                    try:
                        after_ref = await enqueuer.enqueue_download_records_job(after_wb, ACTOR)
                    except Exception as exc:
                        first_after += f"; then {type(exc).__name__}: {exc}"
                result = await asyncio.wait_for(job_result(enqueuer, ref.job_id), 120)
                after = (
                    await asyncio.wait_for(job_result(enqueuer, after_ref.job_id), 60)
                    if after_ref
                    else None
                )
            check = PostgresStore(pg.url)  # fresh connections for the verdict
            differences = store_differences(check, table_id, sample_records(api, "big"))
            after_differences = store_differences(check, after_table, demo_records(300))
            check.close()
        store.close()
    finally:
        pg.destroy()
    report(
        "postgres-down-30s",
        written_at_stop=written_at_stop,
        status=result.status.value,
        first_enqueue_after_restart=first_after,
        store=differences or "exact",
    )
    problems = []
    if written_at_stop >= PG_RECORDS:
        problems.append("PostgreSQL stopped after the table was done")
    if result.status != JobStatus.COMPLETED:
        problems.append(
            f"job {result.status.value}: {result.progress.tables[table_id].error or ''}"
        )
    if differences:
        problems.append(differences)
    if first_after not in ("ok", "StoreUnavailableError"):
        problems.append(f"first enqueue after the restart raised {first_after}")
    if after is None or after.status != JobStatus.COMPLETED or after_differences:
        problems.append(
            f"job enqueued after the restart: {after.status.value if after else 'not started'} "
            f"{after_differences}"
        )
    assert not problems, "; ".join(problems)


# --- SQLite write-locked by another process during an enqueue -----------------------------


@pytest.mark.timeout(120)
async def test_enqueue_while_sqlite_is_write_locked_fails_typed_within_the_timeout(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
) -> None:
    settings = settings.model_copy(update={"enqueue_timeout": timedelta(seconds=1)})
    wb = f"wb_{uuid.uuid4().hex[:8]}"
    table_id = f"{wb}_t"
    put_workbook(sqlite_store, wb, {table_id: ("demo", demo(500))})
    async with temporal_enqueuer(dev_env.client, settings, sqlite_store, connectors) as enqueuer:
        with SqliteWriteLock(sqlite_store.path):
            watch = Stopwatch()
            outcome: BaseException | JobRef
            try:
                outcome = await asyncio.wait_for(
                    enqueuer.enqueue_download_records_job(wb, ACTOR), 60
                )
            except Exception as exc:
                outcome = exc
            took = watch.elapsed
        # The lock is gone: nothing of the refused enqueue may be left in the way.
        later: list[str] = []
        for _ in range(2):
            try:
                ref = await enqueuer.enqueue_download_records_job(wb, ACTOR)
                later.append((await job_result(enqueuer, ref.job_id)).status.value)
            except Exception as exc:
                later.append(f"{type(exc).__name__}: {exc}")
        differences = store_differences(sqlite_store, table_id, demo_records(500))
    kind = type(outcome).__module__ + "." + type(outcome).__name__
    report("sqlite-locked", seconds=took, outcome=kind, later=later, store=differences or "exact")
    problems = []
    if not isinstance(outcome, StoreUnavailableError):
        problems.append(f"enqueue under the lock gave {kind}: {outcome}")
    if took > 1 + 3:
        problems.append(f"it took {took:.1f} s with a 1 s enqueue timeout")
    if later != ["completed", "completed"]:
        problems.append(f"enqueues after the lock was released: {later}")
    if differences:
        problems.append(differences)
    assert not problems, "; ".join(problems)


# --- webhook receiver down ----------------------------------------------------------------

HOOK_TABLES = 3


@asynccontextmanager
async def _hooked_enqueuer(
    backend: Backend,
    settings: Settings,
    store: SqliteStore,
    connectors: ConnectorRegistry,
    dev_env: WorkflowEnvironment,
) -> AsyncIterator[Enqueuer]:
    if backend == Backend.IN_PROCESS:
        local = settings.model_copy(update={"use_jobs": False})
        enqueuer = Enqueuer.from_settings(local, store=store)
        try:
            yield enqueuer
        finally:
            # A job cancelled while its notifications retry may take minutes to wind
            # down; a second cancellation (wait_for's) cuts that short.
            try:
                await asyncio.wait_for(enqueuer.aclose(), 10)
            except TimeoutError:
                await enqueuer.aclose()
        return
    webhook, http = open_webhook(settings)
    try:
        async with build_worker(dev_env.client, settings, store, connectors, webhook):
            yield temporal_enqueuer_on(dev_env.client, settings, store)
    finally:
        if http is not None:
            await http.aclose()


async def _timed_job(
    backend: Backend,
    settings: Settings,
    store: SqliteStore,
    connectors: ConnectorRegistry,
    dev_env: WorkflowEnvironment,
    within: float,
) -> tuple[float | None, str, str]:
    """Run a 3-table job; its duration (None: not done ``within`` s), status, store check."""
    wb = f"wb_{uuid.uuid4().hex[:8]}"
    tables = {f"{wb}_t{i}": ("demo", demo(300, page_delay=0.02)) for i in range(HOOK_TABLES)}
    put_workbook(store, wb, tables)
    async with _hooked_enqueuer(backend, settings, store, connectors, dev_env) as enqueuer:
        watch = Stopwatch()
        ref = await enqueuer.enqueue_download_records_job(wb, ACTOR)
        try:
            result = await asyncio.wait_for(job_result(enqueuer, ref.job_id), within)
        except TimeoutError:
            await cancel_job(enqueuer, ref.job_id)
            return None, "still running", ""
        took = watch.elapsed
    differences = "; ".join(
        d for d in (store_differences(store, t, demo_records(300)) for t in tables) if d
    )
    return took, result.status.value, differences


@pytest.mark.timeout(150)
@pytest.mark.parametrize("backend", [Backend.TEMPORAL, Backend.IN_PROCESS], ids=str)
async def test_a_webhook_receiver_that_is_down_does_not_slow_the_job(
    backend: Backend,
    dev_env: WorkflowEnvironment,
    tmp_path: Path,
    task_queue: str,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
) -> None:
    # Default retry and webhook settings; one table at a time.
    base = Settings(
        data_dir=tmp_path,
        temporal={"task_queue": task_queue},
        jobs={"table_parallelism": 1},
    )

    def hooked(url: str, queue: str) -> Settings:
        return base.model_copy(
            update={
                "webhook": base.webhook.model_copy(
                    update={"url": url, "secret": SecretStr("whsec-chaos")}
                ),
                "temporal": base.temporal.model_copy(update={"task_queue": queue}),
            }
        )

    with WebhookReceiver() as receiver:
        up, up_status, up_store = await _timed_job(
            backend, hooked(receiver.url, f"{task_queue}-up"), sqlite_store, connectors, dev_env, 60
        )
        delivered = len(receiver.received)
    closed = f"http://127.0.0.1:{free_port()}/hooks"  # nothing listens there
    assert up is not None
    down, down_status, down_store = await _timed_job(
        backend, hooked(closed, f"{task_queue}-down"), sqlite_store, connectors, dev_env, up + 20
    )
    report(
        f"webhook-down-{backend}",
        up_seconds=up,
        down_seconds=down,
        delivered_when_up=delivered,
        down_status=down_status,
    )
    problems = []
    if up_status != "completed" or up_store:
        problems.append(f"with the receiver up: {up_status} {up_store}")
    if down is None or down > up + 5:
        took = f"{down:.1f}" if down is not None else f"> {up + 20:.0f}"
        problems.append(
            f"with the receiver down the job took {took} s vs {up:.1f} s up (want ≤ up + 5 s)"
        )
    if down is not None and (down_status != "completed" or down_store):
        problems.append(f"with the receiver down: {down_status} {down_store}")
    assert not problems, "; ".join(problems)


# --- the Temporal dev server restarted mid-job --------------------------------------------

# 10 s of downloading: the table spans the outage and the restart.
TEMPORAL_RECORDS = 20_000
TEMPORAL_DOWN = 5.0


@pytest.mark.timeout(240)
async def test_temporal_dev_server_restarted_mid_job(task_queue: str, tmp_path: Path) -> None:
    server = TemporalServer(tmp_path)
    await server.start()
    db = tmp_path / "shared.db"
    store = SqliteStore(db)
    store.migrate()
    try:
        with SampleApi({"big": SampleTable(records=TEMPORAL_RECORDS, page_size=100)}) as api:
            wb = f"wb_{uuid.uuid4().hex[:8]}"
            table_id = f"{wb}_big"
            put_workbook(store, wb, {table_id: ("http", api.config("big", requests_per_second=20))})
            env = worker_env(
                address=server.address,
                task_queue=task_queue,
                database_url=f"sqlite:///{db}",
                data_dir=tmp_path,
            )
            settings = Settings(
                data_dir=tmp_path, temporal={"task_queue": task_queue, "address": server.address}
            )
            client = await connect(server.address)
            enqueuer = temporal_enqueuer_on(client, settings, store)
            with workers(WorkerProcess(env, tmp_path / "worker.log")) as running:
                assert await running[0].wait_for("worker_started", within=60), running[0].tail()
                ref = await enqueuer.enqueue_download_records_job(wb, ACTOR)

                async def a_tenth_done() -> bool:
                    return store.count_records(table_id) >= TEMPORAL_RECORDS // 10

                await eventually(a_tenth_done, within=60)
                written_at_kill = store.count_records(table_id)
                server.kill()
                await asyncio.sleep(TEMPORAL_DOWN)
                watch = Stopwatch()
                await server.start()
                restart = watch.elapsed
                outcome: str
                try:
                    result = await asyncio.wait_for(job_result(enqueuer, ref.job_id), 150)
                    outcome = result.status.value
                    error = (
                        result.progress.tables[table_id].error
                        if table_id in result.progress.tables
                        else None
                    )
                except Exception as exc:
                    outcome, error = f"{type(exc).__name__}", str(exc)
            differences = store_differences(store, table_id, sample_records(api, "big"))
            checkpoint = store.get_checkpoint(table_id, ref.job_id)
    finally:
        server.stop()
        store.close()
    report(
        "temporal-restart",
        written_at_kill=written_at_kill,
        down_seconds=TEMPORAL_DOWN,
        restart_seconds=restart,
        outcome=outcome,
        store=differences or "exact",
    )
    problems = []
    if written_at_kill >= TEMPORAL_RECORDS:
        problems.append("the server was killed after the table was done")
    if outcome != "completed":
        problems.append(f"job {outcome}: {error}")
    if differences:
        problems.append(differences)
    if checkpoint is not None:
        problems.append(f"checkpoint left for the job: {checkpoint}")
    assert not problems, "; ".join(problems)
