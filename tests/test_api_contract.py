"""The HTTP API against its own OpenAPI document, and tenancy and streams at scale.

- Contract fuzzing (schemathesis): every operation of ``/openapi.json``, with generated
  valid and invalid requests and a valid key, on a live uvicorn server: no 5xx, and no
  response that breaks the schema it documents. Bounded and derandomized, on the
  in-process backend, so it is quick and the same on every run.
- Every route with a job id, called with another organization's key about a real job,
  answers exactly what an unknown id gets (404), and no route shows that job.
- 100 event streams on one job all see its final event.
"""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from pydantic import TypeAdapter
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from starlette.routing import Route

from enqueuer import Enqueuer
from enqueuer.backends.inprocess import InProcessBackend
from enqueuer.settings import ApiSettings, Settings
from enqueuer.wiring import work_parts
from spinner_jobs.api import ApiServer, create_api_key, create_app
from spinner_jobs.api.openapi import ISO8601_DURATION
from spinner_jobs.connectors.registry import default_connectors
from spinner_jobs.store.sqlite import SqliteStore
from tests.api_support import (
    Api,
    enqueue_body,
    read_stream,
    running_api,
    same_problem,
    sse_events,
)
from tests.helpers import demo

MAX_EXAMPLES = 25
"""Generated requests per operation and generation mode (valid, invalid)."""


@dataclass
class LiveApi:
    """The API on a real socket, served from its own thread and event loop.

    schemathesis calls it synchronously (``requests``), so the server cannot share the
    test's loop; the store is the test's SQLite file, opened again in that thread.
    """

    settings: Settings
    store_path: Path
    url: str = ""

    def __post_init__(self) -> None:
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="live-api", daemon=True)

    def __enter__(self) -> LiveApi:
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError("the live API did not start within 30 s")
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the live API did not stop within 30 s"
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        store = SqliteStore(self.store_path)
        connectors = default_connectors(http_allowed_networks=["127.0.0.0/8"])
        settings = self.settings.model_copy(update={"use_jobs": False})
        backend = InProcessBackend(work_parts(settings, store, connectors), settings)
        enqueuer = Enqueuer(settings, store, backend)
        server = ApiServer(create_app(settings, enqueuer, store), settings.api)
        try:
            self.url = await server.start()
            self._ready.set()
            await self._stop.wait()
        finally:
            await server.stop()
            await enqueuer.aclose()
            await connectors.aclose()
            store.close()


@pytest.fixture
def live_api(settings: Settings, sqlite_store: SqliteStore, tmp_path: Path) -> Iterator[LiveApi]:
    api_settings = settings.model_copy(update={"api": ApiSettings(port=0)})
    with LiveApi(api_settings, tmp_path / "store.db") as live:
        yield live


def test_every_operation_keeps_its_contract_under_fuzzing(
    live_api: LiveApi, sqlite_store: SqliteStore, make_workbook: Any
) -> None:
    org = f"org_{uuid.uuid4().hex[:8]}"
    _, key = create_api_key(sqlite_store, org, "contract")
    auth = {"Authorization": f"Bearer {key}"}
    # Something to find: a workbook, and a job of it that has finished.
    wb = make_workbook(org=org, t1=demo(20))
    created = httpx.post(
        f"{live_api.url}/v1/jobs/download-records", json=enqueue_body(wb.id), headers=auth
    )
    assert created.status_code == 202, created.text
    document = httpx.get(f"{live_api.url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)

    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 8, [op.label for op in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis_settings(
                max_examples=MAX_EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck),
            )
            def holds(case: Any) -> None:
                response = case.call(base_url=live_api.url, headers=auth, timeout=30)
                case.validate_response(
                    response, checks=[not_a_server_error, response_schema_conformance]
                )

            try:
                holds()
            except Unsatisfiable:
                # Nothing of it can be made invalid (a free-form path id, no parameters).
                assert mode == GenerationMode.NEGATIVE, operation.label

    # The real job through each operation that names it (fuzzing draws unknown ids).
    job_id = created.json()["job_id"]
    for operation in operations:
        # The live page's routes take a view link's token, not a key (test_job_page).
        if not operation.path.startswith("/v1/"):
            continue
        if "{job_id}" in operation.path and operation.method.upper() == "GET":
            case = operation.Case(path_parameters={"job_id": job_id})
            response = case.call(base_url=live_api.url, headers=auth, timeout=30)
            assert response.status_code == 200, (operation.label, response.text)
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance]
            )


@pytest.mark.parametrize(
    "duration",
    [
        timedelta(0),
        timedelta(microseconds=6553),
        timedelta(days=1, seconds=3.5),
        timedelta(seconds=-1),
        timedelta(days=400),
        timedelta(hours=25, minutes=1),
    ],
)
def test_the_documented_duration_pattern_matches_what_the_api_sends(duration: timedelta) -> None:
    sent = TypeAdapter(timedelta).dump_json(duration).decode().strip('"')
    assert re.fullmatch(ISO8601_DURATION, sent), sent
    assert TypeAdapter(timedelta).validate_python(sent) == duration
    for wrong in ("P", "PT", "-P", "1S", "PT1.S", "P1S", "PT1D"):
        assert not re.fullmatch(ISO8601_DURATION, wrong), wrong


# --- tenancy through every route ---------------------------------------------------------


def _all_routes(routes: Any) -> Iterator[Route]:
    """Every route, those of included routers too (FastAPI may keep those nested)."""
    for route in routes:
        if isinstance(route, Route):
            yield route
            continue
        inner = getattr(route, "routes", None)
        for holder in ("router", "original_router"):
            if inner is None:
                inner = getattr(getattr(route, holder, None), "routes", None)
        if inner is not None:
            yield from _all_routes(inner)


def _job_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path template) of every route that names a job."""
    routes: list[tuple[str, str]] = []
    for route in _all_routes(app.routes):
        if "{job_id}" not in route.path:
            continue
        params = set(route.param_convertors)
        assert params == {"job_id"}, f"{route.path}: give the test values for {params}"
        routes.extend((method, route.path) for method in sorted(route.methods or ()))
    return [(m, p) for m, p in routes if m != "HEAD"]


async def test_another_organizations_key_gets_404_on_every_route_and_never_its_data(
    enqueuer: Enqueuer, sqlite_store: SqliteStore, make_workbook: Any
) -> None:
    async with running_api(enqueuer, sqlite_store) as (api, server):
        wb = make_workbook(org=api.org, slow=demo(2000, page_size=50, page_delay=0.02))
        created = await api.http.post("/v1/jobs/download-records", json=enqueue_body(wb.id))
        assert created.status_code == 202, created.text
        job_id = created.json()["job_id"]
        unknown = "download-records-0000000000000000"
        document = (await api.http.get("/openapi.json")).json()

        routes = _job_routes(server.app)
        documented = {
            (method.upper(), path)
            for path, item in document["paths"].items()
            if "{job_id}" in path
            for method in item
        }
        assert documented <= set(routes), documented - set(routes)
        assert len(routes) >= 3, routes
        for method, template in routes:
            theirs = await api.other.request(method, template.replace("{job_id}", job_id))
            nobodys = await api.other.request(method, template.replace("{job_id}", unknown))
            where = (method, template, theirs.text)
            if not template.startswith("/v1/"):
                # The live page's routes need a view link (a key opens nothing there):
                # refused alike for their job and an unknown one.
                assert theirs.status_code == nobodys.status_code == 401, where
                if theirs.headers["content-type"].startswith("application/problem+json"):
                    same_problem(theirs, job_id, nobodys, unknown)
                else:
                    assert theirs.text.replace(job_id, "J") == nobodys.text.replace(unknown, "J")
                continue
            assert theirs.status_code == 404, where
            same_problem(theirs, job_id, nobodys, unknown)

        # Routes without a job id: the other organization's answers never show it.
        for path, item in document["paths"].items():
            if "{" in path:
                continue
            for method in item:
                body = enqueue_body(wb.id) if method == "post" else None
                answer = await api.other.request(method.upper(), path, json=body)
                seen = (method, path, answer.status_code, answer.text)
                assert answer.status_code < 500, seen
                assert job_id not in answer.text, seen
                if method == "post":  # their workbook is unknown to this organization
                    assert answer.status_code == 422, seen
                    assert answer.json()["type"].endswith("WorkbookNotFoundError"), seen

        # None of it touched the job: it completes for its owner.
        events, ended = await read_stream(api, job_id)
        assert ended
        assert events[-1].event == "job.completed"


# --- many event streams ------------------------------------------------------------------

STREAMS = 100


@pytest.fixture
async def many_streams_api(
    settings: Settings, sqlite_store: SqliteStore
) -> AsyncIterator[tuple[Api, Any]]:
    connectors = default_connectors(http_allowed_networks=["127.0.0.0/8"])
    local = settings.model_copy(
        update={
            "use_jobs": False,
            "jobs": settings.jobs.model_copy(update={"progress_interval": timedelta(seconds=0.5)}),
        }
    )
    backend = InProcessBackend(work_parts(local, sqlite_store, connectors), local)
    enqueuer = Enqueuer(local, sqlite_store, backend)
    try:
        async with running_api(enqueuer, sqlite_store, max_streams_per_key=STREAMS + 10) as (
            api,
            server,
        ):
            yield api, server
    finally:
        await enqueuer.aclose()
        await connectors.aclose()


async def test_a_hundred_streams_on_one_job_all_see_its_final_event(
    many_streams_api: tuple[Api, Any], make_workbook: Any
) -> None:
    api, _ = many_streams_api
    wb = make_workbook(org=api.org, t1=demo(3000, page_size=100, page_delay=0.3))
    created = await api.http.post("/v1/jobs/download-records", json=enqueue_body(wb.id))
    assert created.status_code == 202, created.text
    job_id = created.json()["job_id"]
    # One connection per stream (httpx's pool holds 100 by default; the probes need one).
    client = httpx.AsyncClient(
        base_url=api.url,
        headers={"Authorization": api.http.headers["Authorization"]},
        limits=httpx.Limits(max_connections=STREAMS + 10),
        timeout=60,
    )
    api.clients.append(client)
    opened = asyncio.Event()
    open_count = 0

    async def follow() -> list[str]:
        nonlocal open_count
        kinds: list[str] = []
        async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            assert response.status_code == 200, await response.aread()
            open_count += 1
            if open_count == STREAMS:
                opened.set()
            async for event in sse_events(response):
                if event.event is not None:
                    kinds.append(f"{event.event}:{event.id}")
        return kinds

    followers = [asyncio.create_task(follow()) for _ in range(STREAMS)]
    await asyncio.wait_for(opened.wait(), 30)
    # All of them were open while the job still ran.
    progress = (await api.http.get(f"/v1/jobs/{job_id}")).json()
    assert progress["status"] == "running", progress
    results = await asyncio.wait_for(asyncio.gather(*followers), 120)
    finals = {kinds[-1] for kinds in results}
    assert finals == {f"job.completed:{job_id}:job.completed"}, finals
    metrics = (await api.http.get("/metrics")).text
    assert "spinner_api_sse_streams_open 0.0" in metrics
