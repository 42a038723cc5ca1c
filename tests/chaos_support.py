"""Support of the chaos suite: real processes, real servers, record-by-record checks.

Every chaos case ends the same way: the store compared with the source record by
record (:func:`assert_store_matches`). The rest are the moving parts the cases break:
``spinner-jobs worker`` processes (:class:`WorkerProcess`), a PostgreSQL server that can
be stopped and started on the same port (:class:`PostgresServer`), a persistent Temporal
dev server that can be killed and started again (:class:`TemporalServer`), and another
process holding SQLite's write lock (:class:`SqliteWriteLock`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from enqueuer import Actor, Enqueuer
from enqueuer.backends.temporal import TemporalBackend
from enqueuer.settings import Settings
from spinner_jobs.connectors.demo import demo_record
from spinner_jobs.core import wire
from spinner_jobs.core.models import JobEvent, JobProgress, JobResult, Table, Workbook
from spinner_jobs.shell.devserver import dev_server_args, port_open, temporal_cli
from spinner_jobs.shell.sample_api import SampleApi
from spinner_jobs.store.base import Store
from tests.pg import OS_USER, find_bindir

ROOT = Path(__file__).resolve().parents[1]

Records = dict[str, dict[str, Any]]
"""Expected records of a table: remote id → fields."""


# --- what the source has, and the store compared with it ------------------------------


def sample_records(api: SampleApi, name: str) -> Records:
    """Every record the sample API serves for table ``name``, as the http connector stores it."""
    table = api.table(name)
    records: Records = {}
    for index in range(table.records):
        if index in table.removed:
            continue
        record = demo_record(table.seed, index)
        records[record.remote_id] = {"id": record.remote_id, **record.fields}
    return records


def demo_records(records: int, seed: int = 0) -> Records:
    """Every record of a demo-connector table of ``records`` records."""
    return {r.remote_id: dict(r.fields) for r in (demo_record(seed, i) for i in range(records))}


def store_differences(store: Store, table_id: str, expected: Mapping[str, Any]) -> str:
    """Describe how the table's stored records differ from ``expected`` ('' when equal)."""
    ids = store.record_ids(table_id)
    have = set(ids)
    missing = sorted(set(expected) - have)
    extra = sorted(have - set(expected))
    duplicated = len(ids) - len(have)
    wrong = [
        rid
        for rid in ids
        if rid in expected and dict(store.get_record(table_id, rid) or {}) != expected[rid]
    ]
    counted = store.count_records(table_id)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (first {missing[:3]})")
    if extra:
        problems.append(f"{len(extra)} not at the source (first {extra[:3]})")
    if duplicated:
        problems.append(f"{duplicated} duplicated ids")
    if wrong:
        problems.append(f"{len(wrong)} with other fields (first {wrong[:3]})")
    if counted != len(expected):
        problems.append(f"count_records says {counted}")
    if not problems:
        return ""
    return f"table {table_id}: {len(have)} stored vs {len(expected)} at the source: " + "; ".join(
        problems
    )


def assert_store_matches(store: Store, table_id: str, expected: Mapping[str, Any]) -> None:
    """The table holds exactly the source's records: same ids, same fields, once each."""
    problems = store_differences(store, table_id, expected)
    assert not problems, problems


# --- worker processes ---------------------------------------------------------------------


def worker_env(
    *, address: str, task_queue: str, database_url: str, data_dir: Path, **extra: str
) -> dict[str, str]:
    """Environment of a ``spinner-jobs worker`` process: JSON logs, the given server and store.

    ``extra`` adds ``SPINNER_*`` variables (keys without the prefix, e.g. ``WEBHOOK_URL``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINNER_")}
    env.update(
        {
            "SPINNER_TEMPORAL_ADDRESS": address,
            "SPINNER_TEMPORAL_TASK_QUEUE": task_queue,
            "SPINNER_DATABASE_URL": database_url,
            "SPINNER_DATA_DIR": str(data_dir),
            "SPINNER_SERVICE_TYPE": "worker",
            "SPINNER_LOG_FORMAT": "json",
            "SPINNER_LOG_LEVEL": "info",
            # The sources of these tests are loopback servers; opened on purpose.
            "SPINNER_HTTP_ALLOWED_NETWORKS": "127.0.0.0/8",
        }
    )
    env.update({f"SPINNER_{key}": value for key, value in extra.items()})
    return env


class WorkerProcess:
    """One ``spinner-jobs worker`` OS process, logging JSON lines to a file."""

    def __init__(self, env: Mapping[str, str], log: Path) -> None:
        """Start the worker now."""
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from spinner_jobs.shell.cli import main; main()", "worker"],
                env=dict(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
            )

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def events(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far."""
        events = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill
                    continue
        return events

    def find(self, event: str, **match: Any) -> list[dict[str, Any]]:
        """Log events named ``event`` whose fields include ``match``."""
        return [
            e
            for e in self.events()
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        ]

    async def wait_for(self, event: str, within: float, **match: Any) -> dict[str, Any] | None:
        """The first log event named ``event`` (matching), waiting up to ``within`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            found = self.find(event, **match)
            if found:
                return found[0]
            if loop.time() > deadline or self.process.poll() is not None:
                return None
            await asyncio.sleep(0.1)

    def tail(self, chars: int = 3000) -> str:
        """The end of the log, for failure messages."""
        return self.log.read_text(errors="replace")[-chars:]

    def kill(self) -> datetime:
        """SIGKILL the process; return when it was sent."""
        at = datetime.now(UTC)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        return at

    def terminate(self) -> datetime:
        """SIGTERM the process (a graceful shutdown request); return when it was sent."""
        at = datetime.now(UTC)
        self.process.send_signal(signal.SIGTERM)
        return at

    def stop(self) -> None:
        """Make sure the process is gone (SIGTERM, then SIGKILL after 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def event_time(event: Mapping[str, Any]) -> datetime:
    """When a JSON log event was written (its ISO ``timestamp``)."""
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))


@contextmanager
def workers(*processes: WorkerProcess) -> Iterator[list[WorkerProcess]]:
    """A list of worker processes stopped on the way out (add more to it as they start)."""
    running = list(processes)
    try:
        yield running
    finally:
        for process in running:
            process.stop()


# --- Temporal ----------------------------------------------------------------------------


async def connect(address: str) -> Client:
    """A client of the server at ``address``, as the engine connects one."""
    return await Client.connect(address, data_converter=pydantic_data_converter)


async def jobs_of_workbook(client: Client, workbook_id: str, *, running: bool = False) -> list[str]:
    """Ids of the download-records executions of a workbook, as visibility lists them."""
    query = f'{wire.SA_WORKBOOK_ID.name}="{workbook_id}"'
    if running:
        query += ' AND ExecutionStatus="Running"'
    return [execution.id async for execution in client.list_workflows(query)]


async def settled_jobs_of_workbook(
    client: Client, workbook_id: str, within: float = 15
) -> list[str]:
    """The workbook's executions once visibility shows none of them running."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while await jobs_of_workbook(client, workbook_id, running=True):
        if loop.time() > deadline:
            break
        await asyncio.sleep(0.2)
    # Visibility lags a start by a moment: look twice, a beat apart.
    await asyncio.sleep(1.0)
    return await jobs_of_workbook(client, workbook_id)


class TemporalServer:
    """A persistent dev server (SQLite file) that a test can kill and start again.

    Started with the project's own ``dev_server_args`` (search attributes, WAL pragmas),
    headless, on a fixed port and database file, so a restart finds its state again.
    """

    def __init__(self, folder: Path) -> None:
        """Choose a port and a database file under ``folder``; :meth:`start` runs it."""
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.db_file = folder / "temporal.db"
        self.log = folder / "temporal.log"
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self, within: float = 60.0) -> None:
        """Start (or start again) on the same port and database file; wait until it listens."""
        self._process = self._spawn()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not await asyncio.to_thread(port_open, self.address):
            if self._process.poll() is not None or loop.time() > deadline:
                self.stop()
                raise RuntimeError(f"dev server not up at {self.address}: {self.log.read_text()}")
            await asyncio.sleep(0.1)

    def _spawn(self) -> subprocess.Popen[bytes]:
        args = dev_server_args(self.address, free_port(), self.db_file, "default")
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [str(temporal_cli()), *args, "--headless"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def kill(self) -> None:
        """SIGKILL the server: no shutdown, as a crashed host would leave it."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()

    def stop(self) -> None:
        """Stop the server if it runs (SIGTERM, then SIGKILL after 10 s)."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- PostgreSQL that can be stopped and started ------------------------------------------

_PG_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


class PostgresServer:
    """A throwaway PostgreSQL server whose test stops and starts it on the same port."""

    def __init__(self) -> None:
        """Create the cluster (``initdb``); :meth:`start` runs it."""
        self._bindir = find_bindir()
        as_root = os.geteuid() == 0
        self._runner = ["runuser", "-u", OS_USER, "--"] if as_root else []
        self.base = Path(tempfile.mkdtemp(prefix="spinner-chaos-pg-"))
        if as_root:
            shutil.chown(self.base, user=OS_USER, group=OS_USER)
        self.data = self.base / "data"
        self.port = free_port()
        self.url = f"postgresql://{OS_USER}@127.0.0.1:{self.port}/postgres"
        self._pg(
            "initdb", "-D", str(self.data), "-U", OS_USER, "--auth=trust", "--no-sync",
            "--encoding=UTF8", "--locale=C",
        )  # fmt: skip

    def _pg(self, tool: str, *args: str) -> None:
        proc = subprocess.run(
            [*self._runner, str(self._bindir / tool), *args],
            cwd=self.base,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            log = self.base / "server.log"
            detail = proc.stdout + proc.stderr + (log.read_text() if log.exists() else "")
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {detail[-2000:]}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} "
            f"-c unix_socket_directories={self.base} {_PG_OPTIONS}"
        )
        self._pg(
            "pg_ctl", "-D", str(self.data), "-l", str(self.base / "server.log"), "-w",
            "-t", "60", "-o", options, "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back open transactions, close connections)."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def accepts(self) -> bool:
        """Whether a connection succeeds now."""
        try:
            with psycopg.connect(self.url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def destroy(self) -> None:
        """Stop the server (if it runs) and delete its files."""
        subprocess.run(
            [*self._runner, str(self._bindir / "pg_ctl"), "-D", str(self.data), "-m",
             "immediate", "-w", "stop"],
            cwd=self.base, capture_output=True, check=False,
        )  # fmt: skip
        shutil.rmtree(self.base, ignore_errors=True)


# --- SQLite held by another process -------------------------------------------------------

_HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
conn.close()
"""


class SqliteWriteLock:
    """Another OS process holding the write lock of a SQLite file (``BEGIN IMMEDIATE``)."""

    def __init__(self, path: Path) -> None:
        """Describe the lock; entering the context takes it."""
        self._path = path
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> SqliteWriteLock:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(self._path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        assert line.strip() == "locked", f"lock holder said {line!r}"
        return self

    def release(self) -> None:
        """Roll back and end the holding process."""
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.write("\n")
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


# --- ports and clocks ---------------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Stopwatch:
    """Seconds since it was made (monotonic)."""

    def __init__(self) -> None:
        """Start counting."""
        self._start = time.monotonic()

    @property
    def elapsed(self) -> float:
        """Seconds since start."""
        return time.monotonic() - self._start


def report(case: str, **figures: object) -> None:
    """Print a case's measured figures on one line (shown with ``pytest -s`` / ``-rA``)."""
    text = " ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
    )
    print(f"[chaos] {case}: {text}", flush=True)


# --- workbooks, enqueuers, receivers ------------------------------------------------------

ACTOR = Actor(user_id="u_chaos", organization_id="org_chaos")


def _as_caller(method: Callable[..., Any]) -> dict[str, Any]:
    """``actor=ACTOR`` for follow calls that are scoped to the caller's organization."""
    return {"actor": ACTOR} if "actor" in inspect.signature(method).parameters else {}


async def job_progress(enqueuer: Enqueuer, job_id: str) -> JobProgress:
    """``enqueuer.progress`` of a job, asked as ``ACTOR``."""
    return await enqueuer.progress(job_id, **_as_caller(enqueuer.progress))


async def job_result(enqueuer: Enqueuer, job_id: str) -> JobResult:
    """``enqueuer.wait`` for a job, asked as ``ACTOR``."""
    return await enqueuer.wait(job_id, **_as_caller(enqueuer.wait))


async def cancel_job(enqueuer: Enqueuer, job_id: str) -> None:
    """``enqueuer.cancel`` of a job, asked as ``ACTOR``."""
    await enqueuer.cancel(job_id, **_as_caller(enqueuer.cancel))


def job_events(enqueuer: Enqueuer, job_id: str, *, interval: float) -> AsyncIterator[JobEvent]:
    """``enqueuer.events`` of a job, asked as ``ACTOR``."""
    return enqueuer.events(job_id, interval=interval, **_as_caller(enqueuer.events))


def put_workbook(
    store: Store, workbook_id: str, tables: Mapping[str, tuple[str, Mapping[str, Any]]]
) -> Workbook:
    """Create a workbook of ``ACTOR``'s organization: ``{table_id: (connector, config)}``."""
    workbook = Workbook(
        id=workbook_id,
        organization_id=ACTOR.organization_id,
        name=f"chaos {workbook_id}",
        tables=[
            Table(
                id=table_id,
                workbook_id=workbook_id,
                name=table_id,
                connector=connector,
                config=dict(config),
            )
            for table_id, (connector, config) in tables.items()
        ],
    )
    store.put_workbook(workbook)
    return workbook


def temporal_enqueuer_on(client: Client, settings: Settings, store: Store) -> Enqueuer:
    """An Enqueuer on an already connected client (the workers run elsewhere)."""
    backend = TemporalBackend(settings.temporal, settings.enqueue_timeout, client=client)
    return Enqueuer(settings, store, backend)


class WebhookReceiver:
    """A loopback receiver answering 204 to every POST and counting them."""

    def __init__(self) -> None:
        """Bind a free port; entering the context serves it."""
        received: list[bytes] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                """Keep the test output clean."""

        self.received = received
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
