"""Tracing: one trace from an API request through the job's workflow and its activities.

A real API (uvicorn on loopback), the session's dev server and a worker, all traced into
the OpenTelemetry SDK's in-memory exporter through the same wiring the CLI uses
(``Tracing``, ``connect_client(interceptors=...)``, ``create_app(tracing=...)``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from temporalio.testing import WorkflowEnvironment

from enqueuer import Enqueuer
from enqueuer.backends.temporal import TemporalBackend, connect_client
from enqueuer.settings import ApiSettings, Settings
from enqueuer.tracing import Tracing, otlp_traces_url
from spinner_jobs.api import ApiServer, create_api_key, create_app
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.core import wire
from spinner_jobs.core.errors import TracingSetupError
from spinner_jobs.core.models import JobStatus
from spinner_jobs.store.sqlite import SqliteStore
from spinner_jobs.worker.main import build_worker
from tests.helpers import demo, eventually


@pytest.fixture
def spans() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


@pytest.fixture
async def traced_api(
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
    dev_env: WorkflowEnvironment,
    spans: tuple[Tracing, InMemorySpanExporter],
) -> AsyncIterator[tuple[httpx.AsyncClient, Enqueuer, str]]:
    """API, enqueuer, client and worker traced as `spinner-jobs api` (monolith) traces them."""
    tracing, _ = spans
    temporal = settings.temporal.model_copy(
        update={"address": dev_env.client.service_client.config.target_host}
    )
    settings = settings.model_copy(
        update={
            "temporal": temporal,
            "otlp_endpoint": "http://127.0.0.1:4318",  # never used: the test's provider is
            "api": ApiSettings(port=0, sse_heartbeat=timedelta(seconds=5)),
        }
    )
    client = await connect_client(temporal, interceptors=tracing.interceptors())
    enqueuer = Enqueuer(
        settings, sqlite_store, TemporalBackend(temporal, settings.enqueue_timeout, client=client)
    )
    server = ApiServer(create_app(settings, enqueuer, sqlite_store, tracing=tracing), settings.api)
    org = "org_traced"
    _, key = create_api_key(sqlite_store, org, "tests")
    async with build_worker(client, settings, sqlite_store, connectors):
        url = await server.start()
        try:
            async with httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
            ) as http:
                yield http, enqueuer, org
        finally:
            await server.stop()
            await enqueuer.aclose()
    del client


def _named(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


async def test_one_trace_joins_the_request_the_workflow_and_its_activities(
    traced_api: tuple[httpx.AsyncClient, Enqueuer, str],
    spans: tuple[Tracing, InMemorySpanExporter],
    make_workbook: Any,
) -> None:
    http, enqueuer, org = traced_api
    _, exporter = spans
    wb = make_workbook(org=org, t1=demo(300), t2=demo(200))
    response = await http.post(
        "/v1/jobs/download-records", json={"user_id": "u_1", "input": {"workbook_id": wb.id}}
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    result = await enqueuer.wait(job_id, actor={"user_id": "u_1", "organization_id": org})
    assert result.status == JobStatus.COMPLETED

    activity = f"RunActivity:{wire.ACTIVITY_DOWNLOAD_TABLE}"

    def joined() -> None:
        finished = exporter.get_finished_spans()
        [server] = [
            s
            for s in finished
            if s.kind == SpanKind.SERVER and s.name == "POST /v1/jobs/download-records"
        ]
        [start] = _named(finished, "StartWorkflow:download-records")
        [run] = _named(finished, "RunWorkflow:download-records")
        tables = _named(finished, activity)
        names = sorted({s.name for s in finished})
        assert len(tables) == 2, names
        assert server.context is not None
        assert start.parent is not None
        trace_id = server.context.trace_id
        # The enqueue is a child of the request; the workflow and activities follow it.
        assert start.parent.span_id == server.context.span_id, names
        for span in (start, run, *tables):
            assert span.context is not None
            assert span.context.trace_id == trace_id, (span.name, names)
        assert {(s.attributes or {}).get("temporalWorkflowID") for s in (run, *tables)} == {job_id}

    await eventually(joined, within=10)
    # The request's span carries its route template, never the job id.
    [server] = _named(exporter.get_finished_spans(), "POST /v1/jobs/download-records")
    assert server.attributes is not None
    assert server.attributes.get("http.route") == "/v1/jobs/download-records"
    assert server.attributes.get("http.response.status_code") == 202


async def test_a_callers_traceparent_is_continued(
    traced_api: tuple[httpx.AsyncClient, Enqueuer, str],
    spans: tuple[Tracing, InMemorySpanExporter],
) -> None:
    http, _, _ = traced_api
    _, exporter = spans
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = await http.get(
        "/v1/jobs", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    )
    assert response.status_code == 200, response.text
    [server] = _named(exporter.get_finished_spans(), "GET /v1/jobs")
    assert server.kind == SpanKind.SERVER
    assert server.context is not None
    assert f"{server.context.trace_id:032x}" == trace_id


def test_tracing_is_off_unless_an_endpoint_is_set_and_a_bad_one_says_so(
    settings: Settings,
) -> None:
    assert Tracing.from_settings(settings) is None
    assert otlp_traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert otlp_traces_url("https://x.example/otlp/v1/traces") == "https://x.example/otlp/v1/traces"
    with pytest.raises(TracingSetupError, match="SPINNER_OTLP_ENDPOINT must be an http"):
        Tracing.from_settings(settings.model_copy(update={"otlp_endpoint": "collector:4318"}))
    tracing = Tracing.from_settings(
        settings.model_copy(update={"otlp_endpoint": "http://127.0.0.1:9/"})
    )
    assert tracing is not None
    assert len(tracing.interceptors()) == 1
    tracing.shutdown()
