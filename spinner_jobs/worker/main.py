"""The worker process: real clients wired into activity instances."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import structlog
from temporalio.client import Client
from temporalio.worker import Worker

from activities.notify import NotifyActivities, WebhookSender
from activities.tables import TableActivities
from enqueuer import exits
from enqueuer.jobtypes import JOB_TYPES, queue_config, task_queues
from enqueuer.settings import Settings
from enqueuer.wiring import open_connectors, open_webhook, work_parts
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.store import Store, open_store
from spinner_jobs.worker.schedules import ensure_retention_schedule, retention_worker_parts
from workflows.jobtype import JobType
from workflows.notify import NotifyWorkflow

log = structlog.get_logger(__name__)


def tune_gc() -> None:
    """Tune the garbage collector for a worker process (call once, after start-up).

    Every page allocates a thousand records or more (a dict each from the files and
    demo connectors, a tuple and a string each from http), which trips generation-0
    collections all the time; a larger threshold and a frozen start-up heap (modules,
    SDK objects) cut the collector's CPU on the download path.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)


def build_worker(
    client: Client,
    settings: Settings,
    store: Store,
    connectors: ConnectorRegistry,
    webhook: WebhookSender | None = None,
    *,
    task_queue: str | None = None,
) -> Worker:
    """A worker of one task queue: its job types' workflows and table activities.

    The engine's own queue (``settings.temporal.task_queue``) also runs the job
    notifiers and the retention sweep.

    Args:
        client: connected client (pydantic data converter).
        settings: engine settings.
        store: snapshot store the activities write to.
        connectors: sources the activities read from.
        webhook: notification sink, if configured.
        task_queue: run every job type on this queue instead (tests); None for the
            engine's queue and the job types the settings put on it.

    """
    queue = task_queue or settings.temporal.task_queue
    kinds = list(JOB_TYPES) if task_queue else task_queues(settings)[queue]
    return _worker(client, settings, store, connectors, webhook, queue, kinds, own_queue=True)


def build_workers(
    client: Client,
    settings: Settings,
    store: Store,
    connectors: ConnectorRegistry,
    webhook: WebhookSender | None = None,
) -> list[Worker]:
    """One worker per task queue the job types use (usually one: the engine's queue)."""
    return [
        _worker(
            client,
            settings,
            store,
            connectors,
            webhook,
            queue,
            kinds,
            own_queue=queue == settings.temporal.task_queue,
        )
        for queue, kinds in task_queues(settings).items()
    ]


def _worker(
    client: Client,
    settings: Settings,
    store: Store,
    connectors: ConnectorRegistry,
    webhook: WebhookSender | None,
    queue: str,
    kinds: list[JobType],
    *,
    own_queue: bool,
) -> Worker:
    progress = settings.jobs.progress_interval
    parts = work_parts(settings, store, connectors)
    tables = TableActivities(store, store_outage_timeout=settings.jobs.store_outage_timeout)
    workflows: list[type] = [kind.workflow for kind in kinds]
    activities: list[Callable[..., Any]] = [
        *tables.activities(),
        *(kind.work(parts).table_activity() for kind in kinds),
    ]
    if own_queue:
        notify = NotifyActivities(webhook)
        retention_workflows, retention_activities = retention_worker_parts(client)
        workflows += [NotifyWorkflow, *retention_workflows]
        activities += [notify.notify, *retention_activities]
    parallelism = max(
        [settings.jobs.table_parallelism]
        + [queue_config(settings, kind).table_parallelism for kind in kinds]
    )
    return Worker(
        client,
        task_queue=queue,
        workflows=workflows,
        activities=activities,
        # Heartbeat details carry live progress; let them through about once a second.
        max_heartbeat_throttle_interval=progress,
        default_heartbeat_throttle_interval=progress,
        max_concurrent_activities=max(8, parallelism * 4),
        graceful_shutdown_timeout=timedelta(seconds=5),
        # A job's workflow tasks stick to the worker that ran the last one; if that
        # worker died they wait this long before any worker may take them. The SDK's
        # 10 s would add to the heartbeat timeout on every crash resume.
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=2),
    )


@asynccontextmanager
async def worker_resources(
    settings: Settings, store: Store | None = None
) -> AsyncIterator[tuple[Store, ConnectorRegistry, WebhookSender | None]]:
    """Open the store, connectors and webhook client a worker needs; close them after."""
    own_store = store is None
    store = store or open_store(settings.store_url, secret_key=settings.secret_key)
    connectors = open_connectors(settings)
    webhook, http = open_webhook(settings)
    try:
        yield store, connectors, webhook
    finally:
        await connectors.aclose()
        if http is not None:
            await http.aclose()
        if own_store:
            store.close()


async def run_worker(settings: Settings, client: Client, stop: asyncio.Event) -> None:
    """Run a worker until ``stop`` is set."""
    async with worker_resources(settings) as (store, connectors, webhook):
        workers = build_workers(client, settings, store, connectors, webhook)
        await ensure_retention_schedule(client, settings)
        log.info(
            "worker_started",
            task_queues=[w.task_queue for w in workers],
            job_types=JOB_TYPES.names,
            address=settings.temporal.address,
            store=store.url,
        )
        async with contextlib.AsyncExitStack() as running:
            for worker in workers:
                await running.enter_async_context(worker)
            await stop.wait()
        log.info("worker_stopped")
    # The SDK's threads must stop before the interpreter finalizes (see enqueuer.exits).
    exits.install_exit_hook()
