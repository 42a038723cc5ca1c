"""The HTTP API on a real uvicorn server on a loopback port, driven with httpx.

Job tests run on both backends (the ``enqueuer`` fixture: Temporal with a real dev
server and worker, and in-process); tests of the HTTP layer alone (auth, limits,
errors, logs, metrics) run in-process, which is quicker and sees the same code.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from enqueuer import Enqueuer
from enqueuer.backends.temporal import TemporalBackend
from enqueuer.settings import ApiSettings, Settings
from spinner_jobs.api import ApiServer, create_api_key, create_app
from spinner_jobs.core.models import Backend, JobStatus
from spinner_jobs.store.postgres import PostgresStore
from spinner_jobs.store.sqlite import SqliteStore
from tests.api_support import (
    PROBLEM,
    Api,
    Sse,
    enqueue_body,
    read_stream,
    running_api,
    same_problem,
    sse_events,
)
from tests.helpers import demo, eventually

# --- authentication ----------------------------------------------------------------------


async def test_missing_invalid_and_revoked_keys_get_the_same_401_problem(
    local_api: Api, sqlite_store: SqliteStore
) -> None:
    record, key = create_api_key(sqlite_store, local_api.org, "soon revoked")
    valid = local_api.client(key)
    assert (await valid.get("/v1/jobs")).status_code == 200
    sqlite_store.revoke_api_key(record.id, datetime.now(UTC))

    wrong_secret = f"sj_{record.id}_{'0' * 64}"
    unknown = f"sj_{'f' * 12}_{'0' * 64}"
    answers = {
        "missing": await local_api.client().get("/v1/jobs"),
        "not bearer": await local_api.client(Authorization=f"Basic {key}").get("/v1/jobs"),
        "malformed": await local_api.client("not-a-key").get("/v1/jobs"),
        "unknown id": await local_api.client(unknown).get("/v1/jobs"),
        "wrong secret": await local_api.client(wrong_secret).get("/v1/jobs"),
        "revoked": await valid.get("/v1/jobs"),
    }
    bodies = []
    for why, response in answers.items():
        assert response.status_code == 401, why
        assert response.headers["content-type"] == PROBLEM, why
        assert response.headers["www-authenticate"].startswith("Bearer"), why
        body = response.json()
        assert body["type"] == "urn:spinner-jobs:error:AuthenticationError", why
        assert body["request_id"] == response.headers["x-request-id"], why
        body.pop("request_id")
        bodies.append(body)
    assert all(body == bodies[0] for body in bodies), bodies
    assert "Bearer" in bodies[0]["detail"]
    # Probes and the API description need no key.
    assert (await local_api.client().get("/healthz")).json() == {"status": "ok"}
    assert (await local_api.client().get("/openapi.json")).status_code == 200


async def test_another_organizations_job_is_a_404_exactly_like_an_unknown_one(
    api: Api, make_workbook
) -> None:
    wb = make_workbook(org=api.org, slow=demo(2000, page_size=50, page_delay=0.02))
    created = await api.http.post("/v1/jobs/download-records", json=enqueue_body(wb.id))
    assert created.status_code == 202, created.text
    job_id = created.json()["job_id"]
    unknown = "download-records-0000000000000000"

    for method, suffix in (("GET", ""), ("POST", "/cancel"), ("GET", "/events")):
        theirs = await api.other.request(method, f"/v1/jobs/{job_id}{suffix}")
        nobodys = await api.other.request(method, f"/v1/jobs/{unknown}{suffix}")
        assert theirs.status_code == 404, (method, suffix, theirs.text)
        assert theirs.json()["type"] == "urn:spinner-jobs:error:JobNotFoundError"
        same_problem(theirs, job_id, nobodys, unknown)
    # The other organization's listing does not show it either.
    assert (await api.other.get("/v1/jobs")).json()["jobs"] == []
    # Its cancel did nothing: the job runs on and completes for its owner.
    assert (await api.http.get(f"/v1/jobs/{job_id}")).json()["status"] != "cancelled"
    events, ended = await read_stream(api, job_id)
    assert ended
    assert events[-1].event == "job.completed"


# --- enqueue -----------------------------------------------------------------------------


async def test_enqueue_answers_202_with_the_job_and_its_location(api: Api, make_workbook) -> None:
    wb = make_workbook(org=api.org, t1=demo(300), t2=demo(200))
    response = await api.http.post(
        "/v1/jobs/download-records",
        json=enqueue_body(wb.id, options={"priority": 2, "metadata": {"from": "api"}}),
    )
    assert response.status_code == 202, response.text
    ref = response.json()
    assert ref["job_type"] == "download-records"
    assert ref["workbook_id"] == wb.id
    assert sorted(ref["table_ids"]) == sorted(t.id for t in wb.tables)
    assert response.headers["location"] == f"/v1/jobs/{ref['job_id']}"

    async def completed() -> None:
        progress = await api.http.get(response.headers["location"])
        assert progress.status_code == 200, progress.text
        assert progress.json()["status"] == "completed"
        assert progress.json()["total_records"] == 500

    await eventually(completed, within=30)
    # The job is the key's organization's, for the user the body named.
    result = await api.enqueuer.wait(
        ref["job_id"], actor={"user_id": "x", "organization_id": api.org}
    )
    assert result.status == JobStatus.COMPLETED


async def test_a_retried_request_with_the_same_idempotency_key_gets_the_same_job(
    api: Api, make_workbook
) -> None:
    wb = make_workbook(org=api.org, slow=demo(3000, page_size=50, page_delay=0.02))
    headers = {"Idempotency-Key": f"order #{uuid.uuid4()} / retry-safe"}
    responses = await asyncio.gather(
        *(
            api.http.post("/v1/jobs/download-records", json=enqueue_body(wb.id), headers=headers)
            for _ in range(10)
        )
    )
    assert [r.status_code for r in responses] == [202] * 10, [r.text for r in responses]
    job_ids = {r.json()["job_id"] for r in responses}
    assert len(job_ids) == 1, job_ids
    [job_id] = job_ids
    # Only that job holds the tables: another enqueue of them (no key) conflicts with it.
    other = await api.http.post("/v1/jobs/download-records", json=enqueue_body(wb.id))
    assert other.status_code == 409, other.text
    assert other.json()["type"] == "urn:spinner-jobs:error:JobConflictError"
    assert other.json()["running_job_id"] == job_id
    # The same key for another organization is another job (keys are per organization).
    wb_b = make_workbook(org=api.other_org, t=demo(10))
    theirs = await api.other.post(
        "/v1/jobs/download-records", json=enqueue_body(wb_b.id), headers=headers
    )
    assert theirs.status_code == 202, theirs.text
    assert theirs.json()["job_id"] != job_id
    # Header and body key together are refused rather than guessed between.
    both = await api.http.post(
        "/v1/jobs/download-records",
        json=enqueue_body(wb.id, options={"job_id": "mine"}),
        headers=headers,
    )
    assert both.status_code == 422
    assert both.json()["field"] == "Idempotency-Key"
    cancelled = await api.http.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 202, cancelled.text


async def test_invalid_requests_are_422_problems_naming_the_field(
    local_api: Api, make_workbook
) -> None:
    wb = make_workbook(org=local_api.org, t=demo(10))
    export = "/v1/jobs/export-records"
    download = "/v1/jobs/download-records"
    cases: list[tuple[str, str, dict[str, Any], str, str]] = [
        ("POST", download, {"input": {"workbook_id": wb.id}}, "user_id", "InvalidJobError"),
        ("POST", download, enqueue_body(wb.id, color="red"), "color", "InvalidJobError"),
        (
            "POST",
            export,
            {"user_id": "u", "input": {"workbook_id": wb.id, "format": "xml"}},
            "input.format",
            "InvalidJobError",
        ),
        (
            "POST",
            download,
            enqueue_body(wb.id, options={"priority": 9}),
            "options.priority",
            "InvalidJobError",
        ),
        (
            "POST",
            download,
            {"user_id": "u", "input": {"workbook_id": wb.id, "table_ids": "t"}},
            "input.table_ids",
            "InvalidJobError",
        ),
        (
            "POST",
            download,
            enqueue_body(wb.id, options={"metadata": {"blob": "x" * 20_000}}),
            "metadata",
            "InvalidJobError",
        ),
        ("POST", download, enqueue_body("wb_nope"), "", "WorkbookNotFoundError"),
        ("GET", "/v1/jobs?status=sleeping", {}, "status", "InvalidJobError"),
        ("GET", "/v1/jobs?page_size=0", {}, "page_size", "InvalidJobError"),
        ("GET", "/v1/jobs?job_type=nope", {}, "job_type", "UnknownJobTypeError"),
        ("GET", "/v1/jobs?page_token=%21%21", {}, "page_token", "InvalidJobError"),
    ]
    for method, path, body, field_name, error in cases:
        response = await local_api.http.request(method, path, json=body or None)
        where = (method, path, field_name)
        assert response.status_code == 422, (where, response.text)
        assert response.headers["content-type"] == PROBLEM, where
        problem = response.json()
        assert problem["type"] == f"urn:spinner-jobs:error:{error}", (where, problem)
        if field_name:
            assert problem["field"] == field_name, (where, problem)
            assert field_name in problem["detail"], (where, problem)
        assert "\n" not in problem["detail"]

    broken = await local_api.http.post(
        download, content=b'{"user_id": ', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422, broken.text
    assert broken.json()["field"] == "body"
    unknown_type = await local_api.http.post("/v1/jobs/nope-records", json=enqueue_body(wb.id))
    assert unknown_type.status_code == 404, unknown_type.text
    assert unknown_type.json()["type"] == "urn:spinner-jobs:error:UnknownJobTypeError"
    assert "download-records" in unknown_type.json()["detail"]
    no_route = await local_api.http.get("/v2/anything")
    assert no_route.status_code == 404
    assert no_route.headers["content-type"] == PROBLEM


async def test_a_body_over_the_cap_is_a_413_problem(
    local_enqueuer: Enqueuer, sqlite_store: SqliteStore, make_workbook
) -> None:
    async with running_api(local_enqueuer, sqlite_store, max_body_bytes=4096) as (api, _):
        wb = make_workbook(org=api.org, t=demo(10))
        big = enqueue_body(wb.id, options={"metadata": {"blob": "x" * 5000}})
        declared = await api.http.post("/v1/jobs/download-records", json=big)
        assert declared.status_code == 413, declared.text
        assert declared.headers["content-type"] == PROBLEM
        assert declared.json()["type"] == "urn:spinner-jobs:error:RequestTooLargeError"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            raw = orjson.dumps(big)
            for at in range(0, len(raw), 1000):
                yield raw[at : at + 1000]

        streamed = await api.http.post(
            "/v1/jobs/download-records",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        assert streamed.status_code == 413, streamed.text
        # Just under the cap passes the API and meets the metadata cap of the Python API.
        small = enqueue_body(wb.id, options={"metadata": {"blob": "x" * 3000}})
        ok = await api.http.post("/v1/jobs/download-records", json=small)
        assert ok.status_code == 202, ok.text


# --- event streams -----------------------------------------------------------------------


async def test_the_event_stream_has_ids_and_ends_after_the_final_event(
    api: Api, make_workbook
) -> None:
    wb = make_workbook(
        org=api.org, quick=demo(100), slower=demo(600, page_size=100, page_delay=0.1)
    )
    job_id = (await api.http.post("/v1/jobs/download-records", json=enqueue_body(wb.id))).json()[
        "job_id"
    ]
    events, ended = await read_stream(api, job_id)
    assert ended, "the server did not end the stream"
    kinds = [e.event for e in events]
    assert kinds[-1] == "job.completed", kinds
    assert kinds.count("job.completed") == 1
    assert all(e.id for e in events), events
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)), ids
    table_events = {e.json["table_id"]: e for e in events if e.event == "table.completed"}
    assert set(table_events) == {t.id for t in wb.tables}
    for table_id, event in table_events.items():
        assert event.id == f"{job_id}:table.completed:{table_id}"
        assert event.json["event_id"] == event.id
    assert events[-1].id == f"{job_id}:job.completed"
    progress = [e for e in events if e.event == "progress"]
    assert progress
    assert all(e.id and e.id.startswith(f"{job_id}:progress:") for e in progress)
    assert progress[-1].json["progress"]["total_records"] == 700


async def test_last_event_id_resumes_the_stream_without_repeats(api: Api, make_workbook) -> None:
    wb = make_workbook(
        org=api.org,
        quick=demo(50),
        middle=demo(400, page_size=50, page_delay=0.15),
        slow=demo(800, page_size=50, page_delay=0.15),
    )
    job_id = (await api.http.post("/v1/jobs/download-records", json=enqueue_body(wb.id))).json()[
        "job_id"
    ]
    # Read until the first table has finished and the progress after it arrived, then drop.
    first: list[Sse] = []
    while not any(e.event == "table.completed" for e in first):
        more, ended = await read_stream(
            api, job_id, first[-1].id if first else None, until="progress"
        )
        assert not ended, "the job ended before the test could reconnect"
        first += more
    assert first[-1].event == "progress"
    rest, ended = await read_stream(api, job_id, first[-1].id)
    assert ended
    ids = [e.id for e in first + rest]
    assert len(ids) == len(set(ids)), f"repeated ids: {ids}"
    table_events = [e.json["table_id"] for e in first + rest if e.event == "table.completed"]
    assert sorted(table_events) == sorted(t.id for t in wb.tables), table_events
    assert rest[-1].event == "job.completed"
    # A table event's own id resumes after it; after the final event there is nothing left.
    after_quick, _ = await read_stream(api, job_id, f"{job_id}:table.completed:{wb.id}_quick")
    assert [e.json["table_id"] for e in after_quick if e.event == "table.completed"] == [
        f"{wb.id}_middle",
        f"{wb.id}_slow",
    ]
    done = await api.http.get(
        f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": rest[-1].id or ""}
    )
    assert done.status_code == 204, done.text
    bogus = await api.http.get(
        f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "someone-else:progress:1:0"}
    )
    assert bogus.status_code == 422
    assert bogus.json()["field"] == "Last-Event-ID"


async def test_open_streams_per_key_are_capped_with_a_429_and_heartbeats_keep_them_alive(
    local_enqueuer: Enqueuer, sqlite_store: SqliteStore, make_workbook
) -> None:
    async with running_api(
        local_enqueuer,
        sqlite_store,
        max_streams_per_key=2,
        sse_heartbeat=timedelta(milliseconds=200),
    ) as (api, _):
        wb = make_workbook(org=api.org, t=demo(10))
        # A delayed job: nothing changes while it waits, so only heartbeats flow.
        body = enqueue_body(wb.id, options={"delay": "PT60S"})
        job_id = (await api.http.post("/v1/jobs/download-records", json=body)).json()["job_id"]
        path = f"/v1/jobs/{job_id}/events"
        async with api.http.stream("GET", path) as one, api.http.stream("GET", path) as two:
            assert (one.status_code, two.status_code) == (200, 200)
            third = await api.http.get(path)
            assert third.status_code == 429, third.text
            assert third.headers["content-type"] == PROBLEM
            assert third.json()["type"] == "urn:spinner-jobs:error:TooManyStreamsError"
            # Another key has streams of its own... but not of this organization's job.
            assert (await api.other.get(path)).status_code == 404
            comments = 0
            async for event in sse_events(one):
                comments += event.comment == "keepalive"
                if comments == 3:
                    break
            metrics = (await api.http.get("/metrics")).text
            assert "spinner_api_sse_streams_open 2.0" in metrics
        # Closed streams give their slots back.

        async def slot_free() -> None:
            async with api.http.stream("GET", path) as again:
                assert again.status_code == 200

        await eventually(slot_free, within=10)
        await api.http.post(f"/v1/jobs/{job_id}/cancel")


# --- listing, stats, cancel --------------------------------------------------------------


async def test_jobs_are_listed_newest_first_with_filters_and_pages(api: Api, make_workbook) -> None:
    wb1 = make_workbook(org=api.org, t=demo(20))
    wb2 = make_workbook(org=api.org, t=demo(20))
    later = make_workbook(org=api.org, t=demo(20))
    done_ids = []
    for wb in (wb1, wb2):
        ref = (await api.http.post("/v1/jobs/download-records", json=enqueue_body(wb.id))).json()
        await api.enqueuer.wait(ref["job_id"], actor={"user_id": "u", "organization_id": api.org})
        done_ids.append(ref["job_id"])
    # A delayed job stays running (waiting) however busy the machine is.
    body = enqueue_body(later.id, options={"delay": "PT10M"})
    running = (await api.http.post("/v1/jobs/download-records", json=body)).json()

    async def listed() -> None:
        page = (await api.http.get("/v1/jobs")).json()
        # Running first, then the most recently closed.
        assert [j["job_id"] for j in page["jobs"]] == [running["job_id"], *reversed(done_ids)]
        assert page["jobs"][0]["status"] == "running"
        assert page["jobs"][1]["status"] == "completed"
        assert page["jobs"][1]["user_id"] == "u_1"

    await eventually(listed, within=15)
    by_workbook = (await api.http.get("/v1/jobs", params={"workbook_id": wb1.id})).json()
    assert [j["job_id"] for j in by_workbook["jobs"]] == [done_ids[0]]
    by_status = (await api.http.get("/v1/jobs", params={"status": "running"})).json()
    assert [j["job_id"] for j in by_status["jobs"]] == [running["job_id"]]
    by_type = (await api.http.get("/v1/jobs", params={"job_type": "export-records"})).json()
    assert by_type["jobs"] == []
    # A filter cannot change the visibility query: quotes are refused on Temporal (and
    # match nothing in-process).
    sneaky = await api.http.get("/v1/jobs", params={"workbook_id": 'x" OR WorkflowType != "'})
    if api.enqueuer.backend.kind == Backend.TEMPORAL:
        assert sneaky.status_code == 422, sneaky.text
        assert sneaky.json()["field"] == "workbook_id"
    else:
        assert sneaky.json()["jobs"] == []
    seen = []
    token = None
    while True:
        params: dict[str, Any] = {"page_size": 1, **({"page_token": token} if token else {})}
        page = (await api.http.get("/v1/jobs", params=params)).json()
        assert len(page["jobs"]) <= 1
        seen += [j["job_id"] for j in page["jobs"]]
        token = page["next_page_token"]
        if token is None:
            break
    assert seen == [running["job_id"], *reversed(done_ids)]

    cancelled = await api.http.post(f"/v1/jobs/{running['job_id']}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json() == {"job_id": running["job_id"], "status": "cancel_requested"}
    await api.enqueuer.wait(running["job_id"], actor={"user_id": "u", "organization_id": api.org})
    again = await api.http.post(f"/v1/jobs/{running['job_id']}/cancel")
    assert again.status_code == 409
    assert again.json()["type"] == "urn:spinner-jobs:error:JobAlreadyClosedError"
    stats = await api.http.get("/v1/stats")
    assert stats.status_code == 200, stats.text
    assert stats.json()["backend"] == api.enqueuer.backend.kind.value
    assert (await api.other.get("/v1/stats")).json()["completed"] == 0


# --- operations --------------------------------------------------------------------------


async def test_readyz_fails_when_the_store_or_temporal_does_not_answer(
    local_enqueuer: Enqueuer, sqlite_store: SqliteStore, settings: Settings
) -> None:
    async with running_api(local_enqueuer, sqlite_store) as (api, _):
        ready = await api.client().get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"store": "ok", "temporal": "not used"}

    with socket_nobody_listens_on() as port:
        # A PostgreSQL store whose server is down, and a Temporal server that is not there.
        down = PostgresStore(f"postgresql://spinner@127.0.0.1:{port}/spinner", timeout=1.0)
        quick = settings.model_copy(
            update={
                "enqueue_timeout": timedelta(seconds=1),
                "temporal": settings.temporal.model_copy(update={"address": f"127.0.0.1:{port}"}),
                "api": ApiSettings(port=0),
            }
        )
        backend = TemporalBackend(quick.temporal, quick.enqueue_timeout)
        temporal = Enqueuer(quick, down, backend)
        server = ApiServer(create_app(quick, temporal, down), quick.api)
        url = await server.start()
        try:
            async with httpx.AsyncClient(base_url=url) as http:
                answer = await http.get("/readyz")
                assert answer.status_code == 503, answer.text
                assert answer.headers["content-type"] == PROBLEM
                checks = answer.json()["checks"]
                assert checks == {"store": "unavailable", "temporal": "unavailable"}
                assert str(port) not in answer.text  # no addresses in answers
                assert (await http.get("/healthz")).status_code == 200
        finally:
            await server.stop()


@pytest.fixture
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    """The API's structlog events (as dicts), at info and above."""
    events: list[dict[str, Any]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if isinstance(record.msg, dict):
                events.append(dict(record.msg))

    handler = Keep()
    loggers = [logging.getLogger(name) for name in ("spinner_jobs.api", "enqueuer")]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
    yield events
    for lg, level in zip(loggers, before, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


async def test_requests_are_logged_and_counted(
    local_api: Api, captured_logs: list[dict[str, Any]], make_workbook
) -> None:
    wb = make_workbook(org=local_api.org, t=demo(10))
    created = await local_api.http.post(
        "/v1/jobs/download-records", json=enqueue_body(wb.id), headers={"X-Request-ID": "req-42"}
    )
    assert created.headers["x-request-id"] == "req-42"
    missing = await local_api.http.get("/v1/jobs/download-records-0000000000000000")
    assert missing.status_code == 404

    def line(route: str, status: int) -> dict[str, Any]:
        found = [
            e
            for e in captured_logs
            if e.get("event") == "api_request" and e["route"] == route and e["status"] == status
        ]
        assert found, captured_logs
        return found[-1]

    posted = line("/v1/jobs/download-records", 202)
    assert posted["request_id"] == "req-42"
    assert posted["organization_id"] == local_api.org
    assert posted["duration_ms"] >= 0
    assert posted["method"] == "POST"
    got = line("/v1/jobs/{job_id}", 404)
    assert got["request_id"] == missing.headers["x-request-id"]
    # The engine's own lines carry the request id too.
    enqueued = [e for e in captured_logs if e.get("event") == "job_enqueued"]
    assert enqueued
    assert enqueued[-1]["request_id"] == "req-42"

    metrics = await local_api.client().get("/metrics")
    assert metrics.status_code == 200
    text = metrics.text
    assert (
        'spinner_api_requests_total{method="POST",route="/v1/jobs/download-records",'
        'status="202"} 1.0'
    ) in text
    assert (
        'spinner_api_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"} 1.0'
    ) in text
    assert 'spinner_api_request_duration_seconds_bucket{le="0.5",method="GET"' in text
    assert "spinner_api_sse_streams_open 0.0" in text
    assert "download-records-0000000000000000" not in text  # routes, not raw paths


async def test_an_unexpected_error_is_a_500_problem_without_internals(
    local_api: Api, sqlite_store: SqliteStore, captured_logs: list[dict[str, Any]]
) -> None:
    # A key row that cannot be read back (a damaged store) makes the lookup itself fail.
    record, key = create_api_key(sqlite_store, local_api.org, "damaged")
    with sqlite3.connect(sqlite_store.path) as conn:
        conn.execute("UPDATE api_keys SET created_at = 'not a time' WHERE id = ?", (record.id,))
    response = await local_api.client(key).get("/v1/jobs")
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["type"] == "about:blank"
    assert body["request_id"] == response.headers["x-request-id"]
    for leak in ("Traceback", "ValueError", ".py", "sqlite", 'File "', "not a time", "isoformat"):
        assert leak not in response.text, leak
    crashed = [e for e in captured_logs if e.get("event") == "api_request_crashed"]
    assert crashed
    assert crashed[-1]["exc_info"]
    assert crashed[-1]["request_id"] == body["request_id"]


async def test_the_openapi_document_has_each_job_types_input(local_api: Api) -> None:
    spec = (await local_api.client().get("/openapi.json")).json()
    for job_type, model in (
        ("download-records", "DownloadRecordsInput"),
        ("export-records", "ExportRecordsInput"),
    ):
        post = spec["paths"][f"/v1/jobs/{job_type}"]["post"]
        assert "202" in post["responses"]
        ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        request_model = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        assert request_model["properties"]["input"]["$ref"].endswith(model)
        assert {"user_id", "input"} <= set(request_model["required"])
    assert "format" in spec["components"]["schemas"]["ExportRecordsInput"]["properties"]
    assert set(spec["paths"]) >= {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/cancel",
        "/v1/stats",
        "/healthz",
        "/readyz",
    }


class socket_nobody_listens_on:  # noqa: N801 - used as a context manager
    """A loopback port with nothing listening (bound, never listened, so no one takes it)."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._sock.close()
