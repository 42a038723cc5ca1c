"""Holes a hostile-user review found in tenancy, locking and sources, kept closed.

Each test was written against the engine before its fix and failed there; each states
the behaviour the README promises (or a multi-tenant engine needs): ids of another
organization's workbooks and tables cannot be taken, a live job keeps its locks, a table
never mixes two sources, public calls and the CLI raise typed one-line errors, and
hostile HTTP sources are cut off (deadline, page cap, cycles, secrets, addresses).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from enqueuer import Enqueuer
from enqueuer.backends.inprocess import InProcessBackend
from enqueuer.settings import Settings
from enqueuer.wiring import work_parts
from spinner_jobs.connectors.base import ReadContext
from spinner_jobs.connectors.demo import demo_record
from spinner_jobs.connectors.files import FilesConnector
from spinner_jobs.connectors.http import HttpConnector
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.core.errors import InvalidJobError, JobConflictError, SpinnerError
from spinner_jobs.core.models import Actor, JobStatus, Table, TableCheckpoint, Workbook
from spinner_jobs.store.base import Lease
from spinner_jobs.store.sqlite import SqliteStore
from tests.helpers import temporal_enqueuer

ORG_A = Actor(user_id="alice", organization_id="org_a")
ORG_B = Actor(user_id="bob", organization_id="org_b")
CLI = str(Path(sys.executable).parent / "spinner-jobs")


def _demo_table(wb_id: str, table_id: str, **config: Any) -> Table:
    return Table(id=table_id, workbook_id=wb_id, name=table_id, connector="demo", config=config)


def _write_records(store: SqliteStore, table_id: str, job_id: str, n: int) -> None:
    """Commit ``n`` records to the table as a job would (lock, lease, page, finish)."""
    assert store.lock_tables([table_id], job_id) == {}
    lease: Lease = store.lease(table_id, job_id)
    rows = [(f"r{i}", {"secret_field": f"org_a private {i}"}) for i in range(n)]
    store.write_page(lease, rows, TableCheckpoint(cursor=None, records=n, pages=1))
    store.finish_sync(lease, datetime.now(UTC))


def _in_process(settings: Settings, store: SqliteStore, connectors: ConnectorRegistry) -> Enqueuer:
    backend = InProcessBackend(work_parts(settings, store, connectors), settings)
    return Enqueuer(settings.model_copy(update={"use_jobs": False}), store, backend)


# --- 1. workbook and table ids are global: another organization can take them over -------


def test_review_put_workbook_cannot_take_over_another_orgs_workbook(
    sqlite_store: SqliteStore,
) -> None:
    """Organization B storing a workbook under A's workbook id must be refused.

    Today put_workbook (and so `create-workbook --org org_b wb_a`) silently rewrites the
    workbook's organization to B and deletes A's tables and their records. Accounts are
    protected against exactly this (AccountConflictError); workbooks are not.
    """
    sqlite_store.put_workbook(
        Workbook(id="wb_a", organization_id="org_a", name="A", tables=[_demo_table("wb_a", "t_a")])
    )
    _write_records(sqlite_store, "t_a", "job-a", 5)

    with pytest.raises(SpinnerError):
        sqlite_store.put_workbook(Workbook(id="wb_a", organization_id="org_b", name="mine now"))

    workbook = sqlite_store.get_workbook("wb_a")
    assert workbook is not None
    assert workbook.organization_id == "org_a"
    assert sqlite_store.count_records("t_a") == 5


def test_review_put_workbook_cannot_move_another_orgs_table_into_own_workbook(
    sqlite_store: SqliteStore,
) -> None:
    """A table id of organization A's workbook must not become a table of B's workbook.

    Today the table row is moved (ON CONFLICT (id) DO UPDATE SET workbook_id = ...):
    A's workbook loses the table and B's workbook lists it, with A's records in it.
    A running job of A keeps its lock on it, so B's enqueue also learns A's job id.
    """
    sqlite_store.put_workbook(
        Workbook(id="wb_a", organization_id="org_a", name="A", tables=[_demo_table("wb_a", "t_a")])
    )
    _write_records(sqlite_store, "t_a", "job-a", 5)

    stolen = Workbook(
        id="wb_b", organization_id="org_b", name="B", tables=[_demo_table("wb_b", "t_a")]
    )
    with contextlib.suppress(SpinnerError):  # refused: the right outcome
        sqlite_store.put_workbook(stolen)

    workbook_a = sqlite_store.get_workbook("wb_a")
    workbook_b = sqlite_store.get_workbook("wb_b")
    assert workbook_a is not None
    assert [t.id for t in workbook_a.tables] == ["t_a"]
    assert workbook_b is None or "t_a" not in [t.id for t in workbook_b.tables]


# --- 2. one job per table: an in-process job's lock is taken over while it runs -----------


async def test_review_live_in_process_job_keeps_its_lock_against_another_enqueuer(
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
    make_workbook: Callable[..., Workbook],
) -> None:
    """A second enqueuer (another process: the CLI runs in-process jobs in its own
    process) must get JobConflictError while the first job still runs.

    Today a holder the backend has never seen counts as dead once its lock is older
    than 3 enqueue timeouts + 5 s, so the second enqueue takes the lock over and the
    first, healthy job fails with LockLostError.
    """
    fast = settings.model_copy(update={"enqueue_timeout": timedelta(milliseconds=200)})
    workbook = make_workbook(t1={"records": 200, "page_size": 10, "page_delay": 0.5})
    first = _in_process(fast, sqlite_store, connectors)
    second = _in_process(fast, sqlite_store, connectors)
    try:
        actor = Actor(user_id="u1", organization_id=workbook.organization_id)
        ref = await first.enqueue_download_records_job(workbook.id, actor)
        await asyncio.sleep(first.lock_grace + 0.5)
        with pytest.raises(JobConflictError):
            await second.enqueue_download_records_job(workbook.id, actor)
        progress = await first.progress(ref.job_id, actor=actor)
        assert progress.status == JobStatus.RUNNING
    finally:
        await first.aclose()
        await second.aclose()


# --- 3. a table config replaced while its job retries: the table mixes two sources -------


async def test_review_config_replaced_between_attempts_does_not_mix_sources(
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
) -> None:
    """After a download, the table holds one source's records, not a splice of two.

    Attempt 1 commits pages 1-4 of the old config and fails; the config is replaced
    during the back-off; attempt 2 resumes the old cursor against the new config. The
    job completes, and records 0-39 come from the old source, 40-99 from the new.
    """
    slow_retry = settings.retry.model_copy(update={"initial_interval": timedelta(seconds=3)})
    enq = _in_process(settings.model_copy(update={"retry": slow_retry}), sqlite_store, connectors)
    old = {"records": 100, "page_size": 10, "seed": 1, "fail_page": 5}
    new = {"records": 100, "page_size": 10, "seed": 2}
    sqlite_store.put_workbook(
        Workbook(
            id="wb_m", organization_id="org_a", name="m", tables=[_demo_table("wb_m", "t_m", **old)]
        )
    )
    try:
        ref = await enq.enqueue_download_records_job("wb_m", ORG_A)
        await _until(lambda: _pages_committed(sqlite_store, "t_m", ref.job_id, 4))
        sqlite_store.put_workbook(
            Workbook(
                id="wb_m",
                organization_id="org_a",
                name="m",
                tables=[_demo_table("wb_m", "t_m", **new)],
            )
        )
        result = await asyncio.wait_for(enq.wait(ref.job_id, actor=ORG_A), 30)
        assert result.status == JobStatus.COMPLETED
        stored = [sqlite_store.get_record("t_m", demo_record(0, i).remote_id) for i in range(100)]
        from_old = sum(s == demo_record(1, i).fields for i, s in enumerate(stored))
        from_new = sum(s == demo_record(2, i).fields for i, s in enumerate(stored))
        assert (from_old, from_new) in ((100, 0), (0, 100)), (from_old, from_new)
    finally:
        await enq.aclose()


async def _pages_committed(store: SqliteStore, table_id: str, job_id: str, pages: int) -> bool:
    checkpoint = store.get_checkpoint(table_id, job_id)
    return checkpoint is not None and checkpoint.pages >= pages


async def _until(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


# --- 4. untyped exceptions from public calls ----------------------------------------------


async def test_review_unhashable_table_ids_raise_invalid_job_error(
    settings: Settings, sqlite_store: SqliteStore, connectors: ConnectorRegistry
) -> None:
    """table_ids=[["a"], ["a"]] raises TypeError ("unhashable type: 'list'") today."""
    enq = _in_process(settings, sqlite_store, connectors)
    try:
        with pytest.raises(InvalidJobError):
            await enq.enqueue_download_records_job("wb", ORG_A, table_ids=[["a"], ["a"]])  # type: ignore[list-item]
    finally:
        await enq.aclose()


async def test_review_files_encoding_that_is_not_a_text_codec_is_refused(tmp_path: Path) -> None:
    """encoding="rot13" passes validate_config, then every read raises LookupError."""
    (tmp_path / "a.jsonl").write_text('{"id": 1}\n')
    connector = FilesConnector(tmp_path)
    config = {"path": "a.jsonl", "encoding": "rot13"}
    table = Table(id="t", workbook_id="w", name="t", connector="files", config=config)

    async def validate_and_read() -> None:
        connector.validate_config(config)
        async for _ in connector.pages(table, None, None, ReadContext("job")):
            pass

    with pytest.raises(SpinnerError):
        await validate_and_read()


@pytest.mark.parametrize(
    "args",
    [
        [
            "enqueue",
            "download-records",
            "wb",
            "--user",
            "u",
            "--org",
            "o",
            "--metadata",
            "{not json",
        ],
        ["status", "some-job", "--org", ""],
        ["create-workbook", "", "--org", "org_a"],
    ],
    ids=["bad-metadata-json", "empty-org", "empty-workbook-id"],
)
def test_review_cli_bad_input_is_a_one_line_error_not_a_traceback(
    tmp_path: Path, args: list[str]
) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPINNER_")}
    environ.update({"SPINNER_DATA_DIR": str(tmp_path), "SPINNER_USE_JOBS": "false"})
    done = subprocess.run(
        [CLI, *args], capture_output=True, text=True, env=environ, timeout=60, check=False
    )
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output[-600:]
    assert "error" in output.lower()


# --- 5. hostile http sources --------------------------------------------------------------


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[..., Awaitable[int]]]:
    """Start a raw asyncio HTTP server on loopback with the given handler; yields its port."""
    servers: list[asyncio.Server] = []

    async def start(
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    ) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()


def _http_table(port: int, **config: Any) -> Table:
    return Table(
        id="t_http",
        workbook_id="wb",
        name="t",
        connector="http",
        config={
            "base_url": f"http://127.0.0.1:{port}",
            "paginator": "single_page",
            "max_request_retries": 0,
            **config,
        },
    )


async def _read_all(connector: HttpConnector, table: Table) -> int:
    records = 0
    async for page in connector.pages(table, None, None, ReadContext("job")):
        records += len(page.records)
    return records


async def test_review_http_slow_loris_source_is_cut_off_by_the_timeout(
    raw_server: Callable[..., Awaitable[int]],
) -> None:
    """`timeout` is "seconds per request", but it only bounds each socket read.

    A source that sends one byte every 0.25 s keeps a table with timeout=1 reading
    for as long as it likes (here 15 s; forever for a hostile one, up to the 2-hour
    table timeout, three times).
    """
    body = b'[{"id": 1}]' + b" " * 50

    async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        try:
            for i in range(len(body)):
                writer.write(body[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.25)
        except ConnectionError:
            pass
        writer.close()

    port = await raw_server(dribble)
    connector = HttpConnector(allowed_networks=["127.0.0.0/8"])
    started = time.monotonic()
    try:
        with pytest.raises(SpinnerError):
            await asyncio.wait_for(_read_all(connector, _http_table(port, timeout=1.0)), 30)
    finally:
        await connector.aclose()
    assert time.monotonic() - started < 6, "a request with timeout=1 ran far longer"


async def test_review_http_page_size_is_capped(
    raw_server: Callable[..., Awaitable[int]],
) -> None:
    """A source may not make the worker hold an unbounded page in memory.

    Today the whole body is read into memory (and parsed) with no cap: a 96 MB page is
    accepted (about twice that in resident memory); an endless chunked body takes
    the worker, and every other organization's tables on it, down.
    """
    megabytes = 96

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b" " * (1 << 20)
        try:
            head = b'[{"id": 1}]'
            writer.write(b"%x\r\n%s\r\n" % (len(head), head))
            for _ in range(megabytes):
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    port = await raw_server(flood)
    connector = HttpConnector(allowed_networks=["127.0.0.0/8"])
    try:
        with pytest.raises(SpinnerError):
            await asyncio.wait_for(_read_all(connector, _http_table(port)), 60)
    finally:
        await connector.aclose()


async def test_review_http_secret_in_params_is_refused_or_never_echoed(
    raw_server: Callable[..., Awaitable[int]],
) -> None:
    """Secrets belong in accounts; a token put in `params` leaks like one in `headers` did.

    `headers` with credentials are refused and header values are redacted, but
    `params` ({"api_key": ...}) are accepted, and a 4xx body echoing the request line
    carries the token into the table error (history, logs, status, webhooks).
    """
    token = "sk-live-9f8e7d6c5b4a"

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        body = b"bad request: " + request.split(b"\r\n")[0]
        writer.write(
            b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()
        writer.close()

    port = await raw_server(echo)
    connector = HttpConnector(allowed_networks=["127.0.0.0/8"])
    try:
        table = _http_table(port, params={"api_key": token})

        async def validate_and_read() -> None:
            connector.validate_config(table.config)
            await _read_all(connector, table)

        with pytest.raises(SpinnerError) as caught:
            await validate_and_read()
    finally:
        await connector.aclose()
    assert token not in str(caught.value)


async def test_review_http_source_ignoring_offset_in_varying_order_is_a_cycle(
    raw_server: Callable[..., Awaitable[int]],
) -> None:
    """A source that ignores `offset` is detected only if it repeats the page verbatim.

    Here it answers the same two records every time, in alternating order: no two
    consecutive pages are equal, so the read never ends (records counting up, two
    stored) until the table timeout, three times.
    """
    requests = 0

    async def same_records(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await reader.readuntil(b"\r\n\r\n")
        requests += 1
        body = b'[{"id": 1}, {"id": 2}]' if requests % 2 else b'[{"id": 2}, {"id": 1}]'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    port = await raw_server(same_records)
    connector = HttpConnector(allowed_networks=["127.0.0.0/8"])
    table = _http_table(port, paginator={"type": "offset", "limit": 2})
    try:
        with pytest.raises(SpinnerError):
            await asyncio.wait_for(_read_all(connector, table), 10)
    finally:
        await connector.aclose()
    assert requests < 50


def test_review_oracle_cloud_metadata_address_is_refused() -> None:
    """192.0.0.192 (Oracle Cloud's instance metadata) is in 192.0.0.0/24, which IANA marks
    not globally reachable; Python 3.11.7's ``ipaddress`` calls it global, so the guard
    (which trusts ``is_global``/``is_private``) lets a table config reach it.
    """
    connector = HttpConnector()
    with pytest.raises(SpinnerError):
        connector.validate_config(
            {"base_url": "http://192.0.0.192/opc/v1/instance/", "paginator": "single_page"}
        )


# --- 6. an enqueue interrupted after the server accepted the start -------------------------


async def test_review_enqueue_cancelled_after_start_leaves_no_lockless_job(
    dev_env: Any,
    settings: Settings,
    sqlite_store: SqliteStore,
    connectors: ConnectorRegistry,
    make_workbook: Callable[..., Workbook],
) -> None:
    """A caller's timeout (asyncio cancellation) landing once the server has the start.

    The enqueue's clean-up gives the tables' locks back, but the workflow is running:
    it then fails every table with LockLostError (and sends job.failed) for a job the
    caller was told did not start. Either the started job must be stopped too, or it
    must keep its locks and run. The cancellation is injected right after the real
    start RPC returns, the moment a caller-side timeout can hit in production.
    """
    workbook = make_workbook(t1={"records": 50, "page_size": 10})
    actor = Actor(user_id="u1", organization_id=workbook.organization_id)
    started: list[str] = []
    async with temporal_enqueuer(dev_env.client, settings, sqlite_store, connectors) as enq:
        real_start = enq.backend.start

        async def start_then_cancelled(request: Any) -> str | None:
            await real_start(request)
            started.append(request.input.job_id)
            raise asyncio.CancelledError

        enq.backend.start = start_then_cancelled  # type: ignore[method-assign]
        with pytest.raises(asyncio.CancelledError):
            await enq.enqueue_download_records_job(workbook.id, actor)
        [job_id] = started
        handle = dev_env.client.get_workflow_handle(job_id)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(handle.result(), 30)
        description = await handle.describe()
        assert description.status is not None
        assert description.status.name != "FAILED", "the job ran without its locks and failed"
