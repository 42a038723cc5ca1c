"""Publishing one table's local changes: the core, a real store and a real loopback source.

The source is the sample API's writable table (bearer token required, Idempotency-Key
honoured, applied writes counted); the store is SQLite and a real PostgreSQL. A lost
worker is an attempt whose store call to confirm never happens: the next attempt must
send that change again with the same key, and the source must apply it once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest
from pydantic import SecretStr

from activities.publish_core import publish_table
from spinner_jobs.connectors.base import ChangeWriter, ReadContext, change_writer
from spinner_jobs.connectors.demo import DemoConnector
from spinner_jobs.connectors.http import HttpConnector, _strong_etag
from spinner_jobs.core.changes import ChangeState, PublishSummary, is_local_id
from spinner_jobs.core.errors import (
    InvalidTableConfigError,
    SourceAddressRefusedError,
    SourceAuthError,
    SourceRequestError,
    SourceUnavailableError,
)
from spinner_jobs.core.models import ConnectorAccount, Table, TableCheckpoint, Workbook
from spinner_jobs.shell.sample_api import Fault, SampleApi, SampleTable
from spinner_jobs.store import Store

T = TypeVar("T")
TOKEN = "tok-0123456789abcdef"
ACCOUNT = ConnectorAccount(id="acc_1", organization_id="org_1", auth="bearer", secret=TOKEN)
RECORDS = "/tables/people/records"
WRITE: dict[str, Any] = {
    "create": {"method": "POST", "path": RECORDS},
    "update": {"method": "PATCH", "path": RECORDS + "/{id}"},
    "delete": {"method": "DELETE", "path": RECORDS + "/{id}"},
    "read": {"path": RECORDS + "/{id}"},
    "version_field": "version",
}


class WorkerLostError(Exception):
    """The attempt ended between a change's send and its confirmation."""


async def run(call: Callable[..., T], /, *args: Any) -> T:
    return await asyncio.to_thread(call, *args)


def lost_before_confirming(times: int = 1) -> Callable[..., Awaitable[Any]]:
    """A store runner whose first ``times`` confirmations never happen (the worker died)."""
    left = [times]

    async def runner(call: Callable[..., T], /, *args: Any) -> T:
        if getattr(call, "__name__", "") == "confirm_change" and left[0] > 0:
            left[0] -= 1
            raise WorkerLostError
        return await asyncio.to_thread(call, *args)

    return runner


@pytest.fixture
def api() -> Iterator[SampleApi]:
    with SampleApi(
        {"people": SampleTable(records=5, style="json_link", page_size=2, writable=True)},
        bearer_token=TOKEN,
    ) as served:
        yield served


@pytest.fixture
async def conn() -> AsyncIterator[HttpConnector]:
    connector = HttpConnector(allowed_networks=["127.0.0.1/32"])
    yield connector
    await connector.aclose()


def make_table(store: Store, config: dict[str, Any]) -> Table:
    table = Table(
        id="tbl_people", workbook_id="wb_1", name="people", connector="http", config=config
    )
    store.put_workbook(Workbook(id="wb_1", organization_id="org_1", name="wb", tables=[table]))
    return table


@pytest.fixture
async def table(any_store: Store, api: SampleApi, conn: HttpConnector) -> Table:
    """The people table, downloaded once."""
    table = make_table(any_store, api.config("people", write=WRITE))
    await download(any_store, conn, table, "dl_0")
    return table


async def download(store: Store, conn: HttpConnector, table: Table, job_id: str) -> None:
    assert store.lock_tables([table.id], job_id) == {}
    lease = store.lease(table.id, job_id)
    pages = 0
    async for page in conn.pages(table, ACCOUNT, None, ReadContext(job_id)):
        pages += 1
        checkpoint = TableCheckpoint(cursor=page.next_cursor, records=0, pages=pages)
        store.write_page(lease, page.records, checkpoint)
    store.finish_sync(lease, datetime.now(UTC))


async def publish(
    store: Store,
    writer: ChangeWriter,
    table: Table,
    job_id: str = "pub_1",
    *,
    overwrite: bool = False,
    runner: Callable[..., Awaitable[Any]] = run,
    reports: list[tuple[int, int]] | None = None,
) -> PublishSummary:
    """One attempt of job ``job_id`` (its lock is kept; a fresh lease per attempt)."""
    assert store.lock_tables([table.id], job_id) == {}
    lease = store.lease(table.id, job_id)
    seen = reports if reports is not None else []
    return await publish_table(
        runner,
        store,
        writer,
        table,
        ACCOUNT,
        lease,
        overwrite=overwrite,
        report=lambda done, total: seen.append((done, total)),
    )


def same_as_source(store: Store, api: SampleApi, table: Table) -> None:
    assert store.record_ids(table.id) == sorted(api.record_ids("people"))
    for rid in store.record_ids(table.id):
        assert store.get_record(table.id, rid) == api.remote_record("people", rid), rid


def keys_sent(api: SampleApi) -> list[str]:
    return [r.headers["idempotency-key"] for r in api.requests if r.method != "GET"]


# --- the happy path ----------------------------------------------------------------------------


async def test_each_change_is_applied_once_and_a_download_then_agrees(
    any_store: Store, api: SampleApi, conn: HttpConnector, table: Table
) -> None:
    any_store.update_record(table.id, "rec_0000001", {"name": "Ada"})
    local = any_store.create_record(table.id, {"name": "Grace", "amount": 1.5})
    any_store.delete_record(table.id, "rec_0000002")
    changes = any_store.list_changes(table.id)
    api.clear_requests()
    reports: list[tuple[int, int]] = []

    summary = await publish(any_store, conn, table, reports=reports)

    assert (summary.total, summary.confirmed, summary.conflicts, summary.failed) == (3, 3, 0, 0)
    assert reports[0] == (0, 3)
    assert reports[-1] == (3, 3)
    assert [(w.method, w.idempotency_key) for w in api.applied_writes] == [
        ("PATCH", changes[0].change_id),
        ("POST", changes[1].change_id),
        ("DELETE", changes[2].change_id),
    ]
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in api.requests)
    created = api.applied_writes[1].remote_id
    assert not is_local_id(created)
    assert any_store.get_record(table.id, local) is None
    assert api.remote_record("people", created) == {
        "id": created,
        "version": 1,
        "name": "Grace",
        "amount": 1.5,
    }
    assert api.remote_record("people", "rec_0000002") is None
    assert (api.remote_record("people", "rec_0000001") or {})["name"] == "Ada"
    same_as_source(any_store, api, table)  # the store took the source's answers

    # Nothing is left to send; and nothing is dirty: a download follows the source.
    api.clear_requests()
    any_store.unlock_tables([table.id], "pub_1")
    again = await publish(any_store, conn, table, "pub_2")
    assert (again.total, again.attempt_sent, api.requests) == (0, 0, [])
    any_store.unlock_tables([table.id], "pub_2")
    api.edit_remote("people", "rec_0000001", {"name": "Changed at the source"})
    api.edit_remote("people", created, {"amount": 9})
    await download(any_store, conn, table, "dl_1")
    same_as_source(any_store, api, table)


async def test_wrapped_bodies_and_the_created_id(any_store: Store, conn: HttpConnector) -> None:
    with SampleApi({"people": SampleTable(records=1, writable=True, wrap="data")}) as api:
        write = {"create": {"method": "POST", "path": RECORDS}, "body": {"wrap": "data"}}
        table = make_table(any_store, api.config("people", write=write))
        local = any_store.create_record(table.id, {"name": "Lin"})

        summary = await publish(any_store, conn, table)

        assert summary.confirmed == 1
        assert api.requests[-1].body == b'{"data":{"name":"Lin"}}'
        created = api.applied_writes[0].remote_id
        assert any_store.record_ids(table.id) == [created]
        assert any_store.get_record(table.id, created) == {
            "name": "Lin",
            "id": created,
            "version": 1,
        }
        assert local not in any_store.record_ids(table.id)


# --- once per change -----------------------------------------------------------------------------


async def test_a_worker_lost_after_sending_resends_with_the_same_key_and_the_source_applies_once(
    any_store: Store, api: SampleApi, conn: HttpConnector, table: Table
) -> None:
    any_store.create_record(table.id, {"name": "Once"})
    any_store.update_record(table.id, "rec_0000003", {"name": "Twice?"})
    create, update = any_store.list_changes(table.id)
    api.clear_requests()

    with pytest.raises(WorkerLostError):
        await publish(any_store, conn, table, runner=lost_before_confirming())
    assert [c.state for c in any_store.list_changes(table.id)] == ["sent", "pending"]

    summary = await publish(any_store, conn, table)  # the next attempt, a fresh lease

    assert summary.confirmed == 2
    assert keys_sent(api) == [create.change_id, create.change_id, update.change_id]
    assert [(w.method, w.idempotency_key) for w in api.applied_writes] == [
        ("POST", create.change_id),
        ("PATCH", update.change_id),
    ]
    assert len(api.record_ids("people")) == 6  # one record created, not two
    same_as_source(any_store, api, table)


async def test_confirmed_changes_are_never_sent_again(
    any_store: Store, api: SampleApi, conn: HttpConnector, table: Table
) -> None:
    for rid in ("rec_0000000", "rec_0000001", "rec_0000002"):
        any_store.update_record(table.id, rid, {"name": f"new {rid}"})
    first, second, third = any_store.list_changes(table.id)
    api.clear_requests()
    api.inject(Fault(status=503, method="PATCH", skip=1))  # the second PATCH fails

    with pytest.raises(SourceUnavailableError) as caught:
        await publish(any_store, conn, table)
    assert caught.value.retryable
    assert "same Idempotency-Key" in str(caught.value)
    assert [c.state for c in any_store.list_changes(table.id)] == ["confirmed", "sent", "pending"]

    reports: list[tuple[int, int]] = []
    summary = await publish(any_store, conn, table, reports=reports)

    assert (summary.confirmed, summary.total) == (3, 3)
    assert reports[0] == (1, 3)  # the first attempt's work counts for the job
    assert keys_sent(api) == [
        first.change_id,
        second.change_id,
        second.change_id,
        third.change_id,
    ]
    assert [w.idempotency_key for w in api.applied_writes] == [
        first.change_id,
        second.change_id,
        third.change_id,
    ]


# --- conflicts and failures -------------------------------------------------------------------


async def test_a_record_that_moved_at_the_source_is_a_conflict_and_is_not_overwritten(
    any_store: Store, api: SampleApi, conn: HttpConnector, table: Table
) -> None:
    any_store.update_record(table.id, "rec_0000004", {"name": "mine"})
    api.edit_remote("people", "rec_0000004", {"name": "theirs"})

    summary = await publish(any_store, conn, table)

    assert (summary.conflicts, summary.confirmed) == (1, 0)
    assert api.applied_writes == []
    assert (api.remote_record("people", "rec_0000004") or {})["name"] == "theirs"
    change = any_store.list_changes(table.id)[0]
    assert change.state is ChangeState.CONFLICT
    assert "version is 2 there, was 1" in (change.error or "")
    # Still dirty: a download keeps the local edit.
    any_store.unlock_tables([table.id], "pub_1")
    await download(any_store, conn, table, "dl_1")
    assert (any_store.get_record(table.id, "rec_0000004") or {})["name"] == "mine"
    # A conflict is settled: publishing again sends nothing, even with overwrite...
    assert (await publish(any_store, conn, table, "pub_2", overwrite=True)).attempt_sent == 0
    any_store.unlock_tables([table.id], "pub_2")
    # ...until the record is edited again; overwrite then sends it anyway.
    any_store.update_record(table.id, "rec_0000004", {"amount": 7})
    summary = await publish(any_store, conn, table, "pub_3", overwrite=True)
    assert summary.confirmed == 1
    assert api.remote_record("people", "rec_0000004") == any_store.get_record(
        table.id, "rec_0000004"
    )
    assert (api.remote_record("people", "rec_0000004") or {})["name"] == "mine"


@pytest.mark.parametrize("edit", ["update", "delete"])
async def test_a_record_that_moves_between_the_check_and_the_write_is_a_conflict(
    any_store: Store, api: SampleApi, conn: HttpConnector, table: Table, edit: str
) -> None:
    # The check reads version 1; someone edits the record right then; the write names
    # the version it checked (If-Match), so the source refuses it instead of overwriting.
    if edit == "update":
        any_store.update_record(table.id, "rec_0000004", {"name": "mine"})
    else:
        any_store.delete_record(table.id, "rec_0000004")
    api.moves_after_read = {"rec_0000004"}

    summary = await publish(any_store, conn, table)

    assert (summary.conflicts, summary.confirmed) == (1, 0)
    assert api.applied_writes == []
    moved = api.remote_record("people", "rec_0000004") or {}
    assert moved["name"] == "moved after a read"
    writes = [r for r in api.requests if r.method != "GET"]
    assert [r.headers.get("if-match") for r in writes] == ['"1"']


async def test_an_overwrite_and_a_create_name_no_version(
    any_store: Store, api: SampleApi, conn: HttpConnector, table: Table
) -> None:
    any_store.update_record(table.id, "rec_0000001", {"name": "mine"})
    any_store.create_record(table.id, {"name": "new"})

    summary = await publish(any_store, conn, table, overwrite=True)

    assert summary.confirmed == 2
    assert all("if-match" not in r.headers for r in api.requests if r.method != "GET")


@pytest.mark.parametrize(
    ("etag", "sent"),
    [('"v7"', '"v7"'), ('W/"v7"', None), ("v7", None), ('"a"\r\nX: y', None), (None, None)],
)
def test_only_a_strong_etag_is_named_in_if_match(etag: str | None, sent: str | None) -> None:
    # A weak tag never matches in If-Match: naming one would make every write a conflict.
    assert _strong_etag(etag) == sent


async def test_without_overwrite_the_same_edit_again_is_still_a_conflict(
    any_store: Store, api: SampleApi, conn: HttpConnector, table: Table
) -> None:
    any_store.delete_record(table.id, "rec_0000000")
    api.edit_remote("people", "rec_0000000", {"name": "theirs"})

    summary = await publish(any_store, conn, table)

    assert summary.conflicts == 1
    assert api.remote_record("people", "rec_0000000") is not None  # not deleted


async def test_409_and_412_from_the_source_are_conflicts(
    any_store: Store, api: SampleApi, conn: HttpConnector, table: Table
) -> None:
    any_store.update_record(table.id, "rec_0000000", {"name": "x"})
    any_store.update_record(table.id, "rec_0000001", {"name": "y"})
    api.inject(Fault(status=409, method="PATCH"), Fault(status=412, method="PATCH"))

    summary = await publish(any_store, conn, table)

    assert (summary.conflicts, summary.confirmed) == (2, 0)
    errors = [c.error or "" for c in any_store.list_changes(table.id)]
    assert "409 Conflict" in errors[0]
    assert "412 Precondition Failed" in errors[1]


async def test_a_4xx_fails_that_change_only(
    any_store: Store, api: SampleApi, conn: HttpConnector, table: Table
) -> None:
    for rid in ("rec_0000000", "rec_0000001", "rec_0000002"):
        any_store.update_record(table.id, rid, {"name": f"new {rid}"})
    api.inject(Fault(status=422, method="PATCH", skip=1, body='{"error": "name too short"}'))

    summary = await publish(any_store, conn, table)

    assert (summary.confirmed, summary.failed, summary.total) == (2, 1, 3)
    failed = any_store.list_changes(table.id, [ChangeState.FAILED])
    assert [c.remote_id for c in failed] == ["rec_0000001"]
    assert "422 Unprocessable" in (failed[0].error or "")
    assert "name too short" in (failed[0].error or "")
    assert [w.remote_id for w in api.applied_writes] == ["rec_0000000", "rec_0000002"]


async def test_an_update_of_a_record_gone_at_the_source_is_a_conflict_and_a_delete_is_done(
    any_store: Store, api: SampleApi, conn: HttpConnector, table: Table
) -> None:
    any_store.update_record(table.id, "rec_0000000", {"name": "x"})
    any_store.delete_record(table.id, "rec_0000001")
    api.set_table("people", SampleTable(records=5, removed=frozenset({0, 1}), writable=True))

    summary = await publish(any_store, conn, table)

    assert (summary.conflicts, summary.confirmed) == (1, 1)
    assert "gone at the source" in (any_store.list_changes(table.id)[0].error or "")


async def test_wrong_credentials_fail_the_attempt_not_the_changes(
    any_store: Store, api: SampleApi, conn: HttpConnector, table: Table
) -> None:
    any_store.update_record(table.id, "rec_0000000", {"name": "x"})
    wrong = ACCOUNT.model_copy(update={"secret": SecretStr("nope-nope")})
    lease = (any_store.lock_tables([table.id], "pub_1"), any_store.lease(table.id, "pub_1"))[1]

    with pytest.raises(SourceAuthError):
        await publish_table(
            run, any_store, conn, table, wrong, lease, overwrite=False, report=lambda d, t: None
        )

    assert any_store.list_changes(table.id)[0].state is ChangeState.SENT  # sent again later


# --- confinement and config ----------------------------------------------------------------------


async def test_writes_to_internal_addresses_are_refused_as_reads_are(
    any_store: Store, api: SampleApi, table: Table
) -> None:
    any_store.update_record(table.id, "rec_0000000", {"name": "x"})
    confined = HttpConnector()  # no network opened: loopback is refused
    by_name = table.model_copy(
        update={
            "config": {**table.config, "base_url": api.base_url.replace("127.0.0.1", "localhost")}
        }
    )
    api.clear_requests()
    try:
        with pytest.raises(InvalidTableConfigError, match="loopback address"):
            confined.validate_write_config(table.config)
        with pytest.raises(InvalidTableConfigError, match="loopback address"):
            await publish(any_store, confined, table)
        with pytest.raises(SourceAddressRefusedError, match="public addresses only"):
            await publish(any_store, confined, by_name)
    finally:
        await confined.aclose()
    assert api.requests == []


@pytest.mark.parametrize(
    ("write", "problem"),
    [
        ({"update": {"method": "PATCH", "path": "http://evil.example/{id}"}}, "not a URL"),
        ({"update": {"method": "PATCH", "path": "//evil.example/{id}"}}, "not a URL"),
        ({"update": {"method": "PATCH", "path": "/r/{id}?access_token=x"}}, "credential"),
        ({"update": {"method": "PATCH", "path": "/r"}}, "must hold {id}"),
        ({"create": {"method": "POST", "path": "/r/{ids}"}}, "only placeholder"),
        ({"update": {"method": "PATCH", "path": "/r/{id}"}, "version_field": "v"}, "needs read"),
        ({}, "names no operation"),
        (None, "has no write section"),
    ],
)
def test_hostile_or_incomplete_write_configs_are_refused(
    write: dict[str, Any] | None, problem: str
) -> None:
    config: dict[str, Any] = {"base_url": "https://api.example.com", "paginator": "single_page"}
    if write is not None:
        config["write"] = write
    with pytest.raises(InvalidTableConfigError, match=problem):
        HttpConnector().validate_write_config(config)


def test_a_connector_that_cannot_write_is_refused() -> None:
    with pytest.raises(InvalidTableConfigError, match="cannot publish changes"):
        change_writer(DemoConnector(), "tbl_1")
    assert change_writer(HttpConnector(), "tbl_1") is not None


class _Redirector(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


@pytest.fixture
def redirector(api: SampleApi) -> Iterator[str]:
    """A loopback server answering every request with a 307 to the sample API (another origin)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _redirect(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.send_response(307)
            self.send_header("Location", f"{api.base_url}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_PATCH = _redirect  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = _Redirector(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


async def test_a_write_is_not_redirected_to_another_origin(
    any_store: Store, api: SampleApi, conn: HttpConnector, table: Table, redirector: str
) -> None:
    any_store.update_record(table.id, "rec_0000000", {"name": "x"})
    elsewhere = table.model_copy(
        update={"config": {**table.config, "base_url": redirector, "write": {**WRITE}}}
    )
    elsewhere.config["write"].pop("version_field")
    api.clear_requests()

    with pytest.raises(SourceRequestError, match="redirects to another origin"):
        await publish(any_store, conn, elsewhere)

    assert api.requests == []
