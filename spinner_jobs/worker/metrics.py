"""The worker's Prometheus endpoint: the SDK's own metrics and the job's, on one port.

Set ``SPINNER_METRICS_PORT`` and the worker's client is connected with a Temporal
runtime whose Rust core serves ``http://<host>:<port>/metrics``. Everything recorded
through that runtime appears there: the SDK's metrics (``temporal_workflow_completed``,
``temporal_activity_execution_latency``, ``temporal_worker_task_slots_available``, ...,
durations in milliseconds as the SDK reports them) and the job's own, recorded with
``activity.metric_meter()`` / ``workflow.metric_meter()`` (the workflow's meter skips
replays, so a replayed history never counts twice):

==================================  =========  =================================================
name                                type       what
==================================  =========  =================================================
``spinner_records_downloaded``      counter    records written to the store, per committed page
                                               (label ``connector``); retries resume, so each
                                               record is counted once
``spinner_tables_completed``        counter    tables downloaded (label ``connector``)
``spinner_tables_failed``           counter    tables failed for good (label ``connector``)
``spinner_job_duration_seconds``    histogram  job run time, start to close (label ``status``:
                                               completed, failed, cancelled)
==================================  =========  =================================================

Every series also carries ``namespace``, ``task_queue``, ``service_name`` and
``workflow_type`` or ``activity_type``. The names are exported exactly as written: the
exporter's ``counters_total_suffix`` and ``unit_suffix`` stay off, so counters get no
``_total`` and the histogram no second unit suffix (it has the usual ``_bucket``,
``_sum`` and ``_count`` series).
"""

from __future__ import annotations

from functools import cache

import structlog
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from spinner_jobs.core import wire

log = structlog.get_logger(__name__)

JOB_DURATION_BUCKETS = (
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0
)  # fmt: skip
"""Buckets of ``spinner_job_duration_seconds``: a tenth of a second to two hours (+Inf)."""


@cache  # One runtime per process and address: each owns a thread pool and binds the port.
def metrics_runtime(port: int | None, *, host: str = "0.0.0.0") -> Runtime:
    """The Temporal runtime of a worker process, serving Prometheus metrics on ``host:port``.

    Pass it to ``Client.connect(runtime=...)`` (``connect_client(..., runtime=...)``):
    the client and every worker built on it record into it. Calls with the same
    arguments return the same runtime. Its workers heartbeat to the server every
    :data:`wire.WORKER_HEARTBEAT_INTERVAL`, so ``stats()`` counts live workers only.

    Args:
        port: TCP port of the ``/metrics`` endpoint (``SPINNER_METRICS_PORT``); None
            for no endpoint.
        host: interface to bind; all by default, so a scraper in another container
            reaches it.

    """
    if port is None:
        return Runtime(
            telemetry=TelemetryConfig(), worker_heartbeat_interval=wire.WORKER_HEARTBEAT_INTERVAL
        )
    address = f"{host}:{port}"
    runtime = Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=address,
                histogram_bucket_overrides={wire.METRIC_JOB_DURATION: JOB_DURATION_BUCKETS},
            )
        ),
        worker_heartbeat_interval=wire.WORKER_HEARTBEAT_INTERVAL,
    )
    log.info("metrics_endpoint_started", url=f"http://{address}/metrics")
    return runtime
