"""What the HTTP API tests share: a running API with keys of two organizations, the
fixtures over it, and readers of its problems and event streams.

Registered as a pytest plugin by ``tests/conftest.py``, so the fixtures (``api`` over each
backend, ``local_enqueuer`` and ``local_api`` in-process) need no import.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest

from enqueuer import Enqueuer
from enqueuer.backends.inprocess import InProcessBackend
from enqueuer.settings import ApiSettings, Settings
from enqueuer.wiring import work_parts
from spinner_jobs.api import ApiServer, create_api_key, create_app
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.store.base import Store
from spinner_jobs.store.sqlite import SqliteStore

PROBLEM = "application/problem+json"


@dataclass
class Api:
    """A running API with a key of ``org`` (``http``) and one of ``other_org`` (``other``).

    The organizations are new for each API: the session's dev server keeps every
    test's jobs, and listings and stats must see only this test's.
    """

    url: str
    http: httpx.AsyncClient
    other: httpx.AsyncClient
    org: str
    other_org: str
    enqueuer: Enqueuer
    store: Store
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, key: str | None = None, **headers: str) -> httpx.AsyncClient:
        """Another client (closed with the API), with ``key`` or none."""
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        client = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30)
        self.clients.append(client)
        return client


@asynccontextmanager
async def running_api(
    enqueuer: Enqueuer, store: Store, **api: Any
) -> AsyncIterator[tuple[Api, ApiServer]]:
    settings = enqueuer.settings.model_copy(
        update={"api": ApiSettings(**{"port": 0, "sse_heartbeat": timedelta(seconds=5), **api})}
    )
    org, other_org = f"org_a_{uuid.uuid4().hex[:8]}", f"org_b_{uuid.uuid4().hex[:8]}"
    _, key = create_api_key(store, org, "tests")
    _, other_key = create_api_key(store, other_org, "tests")
    server = ApiServer(create_app(settings, enqueuer, store), settings.api)
    url = await server.start()
    handle = Api(url, None, None, org, other_org, enqueuer, store)  # type: ignore[arg-type]
    handle.http = handle.client(key)
    handle.other = handle.client(other_key)
    try:
        yield handle, server
    finally:
        for client in handle.clients:
            await client.aclose()
        await server.stop()


@pytest.fixture
async def api(enqueuer: Enqueuer, sqlite_store: SqliteStore) -> AsyncIterator[Api]:
    """The API over each backend in turn."""
    async with running_api(enqueuer, sqlite_store) as (handle, _):
        yield handle


@pytest.fixture
async def local_enqueuer(
    settings: Settings, sqlite_store: SqliteStore, connectors: ConnectorRegistry
) -> AsyncIterator[Enqueuer]:
    backend = InProcessBackend(work_parts(settings, sqlite_store, connectors), settings)
    enqueuer = Enqueuer(settings.model_copy(update={"use_jobs": False}), sqlite_store, backend)
    yield enqueuer
    await enqueuer.aclose()


@pytest.fixture
async def local_api(local_enqueuer: Enqueuer, sqlite_store: SqliteStore) -> AsyncIterator[Api]:
    """The API over the in-process backend (for what does not depend on the backend)."""
    async with running_api(local_enqueuer, sqlite_store) as (handle, _):
        yield handle


def enqueue_body(workbook_id: str, **extra: Any) -> dict[str, Any]:
    return {"user_id": "u_1", "input": {"workbook_id": workbook_id}, **extra}


@dataclass
class Sse:
    """One server-sent event (or comment) as read off the wire."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    comment: str | None = None

    @property
    def json(self) -> dict[str, Any]:
        assert self.data is not None
        parsed: dict[str, Any] = orjson.loads(self.data)
        return parsed


async def sse_events(response: httpx.Response) -> AsyncIterator[Sse]:
    """Parse a ``text/event-stream`` body as it arrives."""
    current = Sse()
    async for line in response.aiter_lines():
        if line == "":
            if current != Sse():
                yield current
            current = Sse()
        elif line.startswith(":"):
            yield Sse(comment=line[1:].strip())
        else:
            name, _, value = line.partition(":")
            setattr(current, name, value.removeprefix(" "))


async def read_stream(
    api: Api, job_id: str, last_event_id: str | None = None, *, until: str | None = None
) -> tuple[list[Sse], bool]:
    """Events of a job's stream: all of them, or up to the first of kind ``until``.

    Returns the events (comments left out) and whether the server ended the stream.
    """
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    seen: list[Sse] = []
    async with api.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event in sse_events(response):
            if event.comment is not None:
                continue
            seen.append(event)
            if until is not None and event.event == until:
                return seen, False
    return seen, True


def same_problem(a: httpx.Response, a_id: str, b: httpx.Response, b_id: str) -> None:
    """Two answers are the same but for the job id in them and the request id."""

    def scrub(response: httpx.Response, job_id: str) -> dict[str, Any]:
        body = response.json()
        body.pop("request_id")
        scrubbed: dict[str, Any] = orjson.loads(
            orjson.dumps(body).replace(job_id.encode(), b"<id>")
        )
        return scrubbed

    assert (a.status_code, a.headers["content-type"]) == (b.status_code, b.headers["content-type"])
    assert scrub(a, a_id) == scrub(b, b_id)
