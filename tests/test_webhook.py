"""Webhook delivery end to end: a real loopback receiver, real jobs on both backends.

The receiver checks every request's HMAC-SHA256 signature (401 when it does not
match), answers 500 to the first two deliveries of each event id and 200 after, and
keeps what it got. So every event goes through the retry path twice before it is
accepted, and the test can check what a receiver relies on: the same event id and
body on every redelivery, and exactly one accepted copy of each event.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from pydantic import SecretStr
from temporalio.testing import WorkflowEnvironment

from activities.notify import EVENT_ID_HEADER, SIGNATURE_HEADER, WebhookSender, sign
from enqueuer import Actor, Enqueuer, EventKind, JobStatus
from enqueuer.backends.temporal import TemporalBackend
from enqueuer.settings import Settings, WebhookSettings
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.core.models import Backend, JobEvent
from spinner_jobs.store.sqlite import SqliteStore
from spinner_jobs.worker.main import build_worker
from tests.helpers import demo, eventually

SECRET = "whsec-test-0123456789"
FAILURES_PER_EVENT = 2
ACTOR = Actor(user_id="u_hook", organization_id="org_1")


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """The receiver's check, written from the documented scheme rather than ``sign()``."""
    if header is None or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(header.removeprefix("sha256="), expected)


@dataclass(frozen=True)
class Delivery:
    """One POST as the receiver saw it."""

    event_id: str
    body: bytes
    status: int


@dataclass
class Receiver:
    """What the loopback receiver got; filled by the server's handler threads."""

    url: str = ""
    failures_per_event: int = FAILURES_PER_EVENT
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, event_id: str, body: bytes, signature: str | None) -> int:
        """Decide the answer to one delivery and record it."""
        with self.lock:
            if not verify(SECRET, body, signature):
                status = HTTPStatus.UNAUTHORIZED
            else:
                # Refused (unsigned) requests are not deliveries of the event.
                seen = sum(
                    1
                    for d in self.deliveries
                    if d.event_id == event_id and d.status != HTTPStatus.UNAUTHORIZED
                )
                failing = seen < self.failures_per_event
                status = HTTPStatus.INTERNAL_SERVER_ERROR if failing else HTTPStatus.OK
            self.deliveries.append(Delivery(event_id, body, int(status)))
            return int(status)

    def of_job(self, job_id: str) -> list[Delivery]:
        """Deliveries of one job's events."""
        with self.lock:
            return [d for d in self.deliveries if d.event_id.startswith(f"{job_id}:")]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on a free loopback port, in a thread of its own."""
    got = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = got.handle(
                self.headers.get(EVENT_ID_HEADER, ""), body, self.headers.get(SIGNATURE_HEADER)
            )
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            """Keep the test output clean."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    got.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/spinner"
    try:
        yield got
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@asynccontextmanager
async def webhook_enqueuer(
    backend: Backend,
    settings: Settings,
    store: SqliteStore,
    connectors: ConnectorRegistry,
    env: WorkflowEnvironment,
) -> AsyncIterator[Enqueuer]:
    """An Enqueuer of ``backend`` whose events go to the settings' webhook."""
    if backend == Backend.IN_PROCESS:
        # from_settings builds the WebhookSender from the webhook section, as a service would.
        local = settings.model_copy(update={"use_jobs": False})
        async with Enqueuer.from_settings(local, store=store) as enqueuer:
            yield enqueuer
        return
    hook = settings.webhook
    assert hook.url is not None
    assert hook.secret is not None
    async with httpx.AsyncClient(timeout=settings.webhook.timeout.total_seconds()) as http:
        sender = WebhookSender(hook.url, hook.secret.get_secret_value(), http)
        async with build_worker(env.client, settings, store, connectors, sender):
            temporal = TemporalBackend(
                settings.temporal, settings.enqueue_timeout, client=env.client
            )
            yield Enqueuer(settings, store, temporal)


@pytest.mark.parametrize("backend", [Backend.TEMPORAL, Backend.IN_PROCESS], ids=str)
async def test_each_event_is_delivered_signed_retried_and_accepted_once(
    backend: Backend,
    receiver: Receiver,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
    dev_env: WorkflowEnvironment,
    make_workbook,
) -> None:
    # The webhook retry policy reuses settings.retry: 100 ms initial interval here.
    settings = settings.model_copy(
        update={"webhook": WebhookSettings(url=receiver.url, secret=SecretStr(SECRET))}
    )
    wb = make_workbook(good=demo(10), bad=demo(10, fail_page=1, fail_kind="permanent"))
    good, bad = f"{wb.id}_good", f"{wb.id}_bad"

    async with webhook_enqueuer(backend, settings, sqlite_store, connectors, dev_env) as enq:
        ref = await enq.enqueue_download_records_job(wb.id, ACTOR)
        result = await enq.wait(ref.job_id, actor=ACTOR)
        job = ref.job_id
        expected = {
            f"{job}:table.completed:{good}",
            f"{job}:table.failed:{bad}",
            f"{job}:job.failed",
        }

        # Delivery runs beside the job (it never delays it): wait until it is done.
        async def all_accepted() -> bool:
            accepted = {d.event_id for d in receiver.of_job(job) if d.status == HTTPStatus.OK}
            return accepted == expected

        await eventually(all_accepted)
    assert result.status == JobStatus.FAILED
    assert result.failed_tables == [bad]
    deliveries = receiver.of_job(job)
    # Every request was signed correctly: no 401 at all.
    assert [d for d in deliveries if d.status == HTTPStatus.UNAUTHORIZED] == []
    # Each event: two refused deliveries, then one accepted; nothing else was sent.
    by_id: dict[str, list[Delivery]] = {}
    for d in deliveries:
        by_id.setdefault(d.event_id, []).append(d)
    assert set(by_id) == expected
    for event_id, attempts in by_id.items():
        assert [d.status for d in attempts] == [500, 500, 200], event_id
        # A redelivery is the same event: same id header, byte-identical body.
        assert {d.body for d in attempts} == {attempts[0].body}, event_id
        assert json.loads(attempts[0].body)["event_id"] == event_id

    # After dedup by event id, the accepted events say what happened.
    events = {
        e.kind: e
        for e in (
            JobEvent.model_validate_json(d.body) for d in deliveries if d.status == HTTPStatus.OK
        )
    }
    assert set(events) == {EventKind.TABLE_COMPLETED, EventKind.TABLE_FAILED, EventKind.JOB_FAILED}
    completed = events[EventKind.TABLE_COMPLETED]
    assert (completed.table_id, completed.records, completed.error) == (good, 10, None)
    failed = events[EventKind.TABLE_FAILED]
    assert failed.table_id == bad
    assert "permanent fault" in (failed.error or "")
    job_failed = events[EventKind.JOB_FAILED]
    assert job_failed.table_id is None
    assert bad in (job_failed.error or "")
    assert {e.job_id for e in events.values()} == {job}
    assert {e.workbook_id for e in events.values()} == {wb.id}


@pytest.mark.parametrize("backend", [Backend.TEMPORAL, Backend.IN_PROCESS], ids=str)
async def test_a_receiver_that_never_accepts_does_not_fail_the_job(
    backend: Backend,
    receiver: Receiver,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
    dev_env: WorkflowEnvironment,
    make_workbook,
) -> None:
    receiver.failures_per_event = 1_000
    hook = WebhookSettings(url=receiver.url, secret=SecretStr(SECRET), maximum_attempts=2)
    settings = settings.model_copy(update={"webhook": hook})
    wb = make_workbook(a=demo(10), b=demo(20))

    async with webhook_enqueuer(backend, settings, sqlite_store, connectors, dev_env) as enq:
        ref = await enq.enqueue_download_records_job(wb.id, ACTOR)
        result = await enq.wait(ref.job_id, actor=ACTOR)

        async def all_given_up() -> bool:
            return len(receiver.of_job(ref.job_id)) >= 6

        await eventually(all_given_up)
    # Notifications are best effort after their retries: the download itself succeeded.
    assert result.status == JobStatus.COMPLETED
    assert result.progress.total_records == 30
    assert sqlite_store.locks_held_by(ref.job_id) == []
    attempts: dict[str, int] = {}
    for d in receiver.of_job(ref.job_id):
        attempts[d.event_id] = attempts.get(d.event_id, 0) + 1
    assert attempts == {
        f"{ref.job_id}:table.completed:{wb.id}_a": 2,
        f"{ref.job_id}:table.completed:{wb.id}_b": 2,
        f"{ref.job_id}:job.completed": 2,
    }


def test_sign_is_hmac_sha256_of_the_body() -> None:
    body = b'{"event_id":"job-1:job.completed","kind":"job.completed"}'
    independent = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert sign(SECRET, body) == f"sha256={independent}"
    assert verify(SECRET, body, sign(SECRET, body))
    # A changed body, another secret or a missing header must not pass.
    assert not verify(SECRET, body.replace(b"completed", b"failed"), sign(SECRET, body))
    assert not verify(SECRET, body, sign("another-secret", body))
    assert not verify(SECRET, body, None)


async def test_receiver_refuses_bad_signatures(receiver: Receiver) -> None:
    event = JobEvent(
        event_id="job-x:job.completed",
        kind=EventKind.JOB_COMPLETED,
        job_id="job-x",
        workbook_id="wb_x",
        at=datetime.now(UTC),
    )
    async with httpx.AsyncClient() as http:
        for secret in ("wrong-secret", None):
            with pytest.raises(httpx.HTTPStatusError) as caught:
                await WebhookSender(receiver.url, secret, http).send(event)
            assert caught.value.response.status_code == HTTPStatus.UNAUTHORIZED
        # The right secret gets through the signature check (then the 500s begin).
        with pytest.raises(httpx.HTTPStatusError) as caught:
            await WebhookSender(receiver.url, SECRET, http).send(event)
        assert caught.value.response.status_code == HTTPStatus.INTERNAL_SERVER_ERROR
