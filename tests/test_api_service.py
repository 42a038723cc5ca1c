"""The API as a service: its keys in both stores, its CLI, service types and SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from spinner_jobs.api import create_api_key
from spinner_jobs.api.keys import hash_key, verify_api_key
from spinner_jobs.core.models import ApiKey
from spinner_jobs.store.base import Store
from tests.helpers import eventually

CLI = str(Path(sys.executable).parent / "spinner-jobs")
ROOT = Path(__file__).resolve().parents[1]


# --- keys in the store -------------------------------------------------------------------


def test_api_keys_are_stored_as_hashes_and_revoked_for_good(any_store: Store) -> None:
    record, key = create_api_key(any_store, "org_1", "billing service")
    assert key.startswith(f"sj_{record.id}_")
    stored = any_store.get_api_key(record.id)
    assert stored is not None
    assert stored.key_hash == hash_key(key)
    assert key.split("_")[2] not in stored.model_dump_json()
    assert verify_api_key(any_store, key).key == stored
    assert verify_api_key(any_store, key[:-1] + ("0" if key[-1] != "0" else "1")).key is None

    # An id is taken once; listing filters by organization, oldest first.
    assert not any_store.put_api_key(stored)
    _, second = create_api_key(any_store, "org_1", "reports")
    create_api_key(any_store, "org_2", "elsewhere")
    assert [k.name for k in any_store.list_api_keys("org_1")] == ["billing service", "reports"]
    assert len(any_store.list_api_keys()) == 3

    first_time = datetime(2030, 1, 1, tzinfo=UTC)
    revoked = any_store.revoke_api_key(record.id, first_time)
    assert revoked is not None
    assert revoked.revoked_at == first_time
    again = any_store.revoke_api_key(record.id, first_time + timedelta(days=1))
    assert again is not None
    assert again.revoked_at == first_time  # the first revocation stands
    assert verify_api_key(any_store, key).key is None
    assert verify_api_key(any_store, key).reason == "revoked"
    assert verify_api_key(any_store, second).key is not None
    assert any_store.revoke_api_key("000000000000", first_time) is None
    any_store.migrate()  # idempotent: the keys are still there
    assert len(any_store.list_api_keys()) == 3


def test_a_key_model_never_shows_its_hash_in_repr() -> None:
    key = ApiKey(
        id="abc", organization_id="o", name="n", key_hash="deadbeef", created_at=datetime.now(UTC)
    )
    assert "deadbeef" not in repr(key)


# --- the CLI -----------------------------------------------------------------------------


def _env(data: Path, **extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SPINNER_")}
    environ.update({"SPINNER_DATA_DIR": str(data), "COLUMNS": "200", **extra})
    return environ


def cli(data: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, env=_env(data, **env), timeout=60
    )


def test_api_key_commands_print_the_key_once_and_revoke_it(tmp_path: Path) -> None:
    created = cli(tmp_path, "api-key", "create", "--org", "org_1", "--name", "billing")
    assert created.returncode == 0, created.stdout + created.stderr
    key = created.stdout.strip()
    assert key.startswith("sj_")
    assert "shown only now" in created.stderr
    key_id = key.split("_")[1]
    with sqlite3.connect(tmp_path / "spinner.db") as conn:
        rows = conn.execute("SELECT id, key_hash FROM api_keys").fetchall()
    assert rows == [(key_id, hash_key(key))]  # the hash, never the key

    listed = cli(tmp_path, "api-key", "list", "--org", "org_1")
    assert listed.returncode == 0, listed.stderr
    assert key_id in listed.stdout
    assert "billing" in listed.stdout
    assert key.split("_")[2] not in listed.stdout

    revoked = cli(tmp_path, "api-key", "revoke", key)  # the whole key works too
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert "revoked" in revoked.stdout
    unknown = cli(tmp_path, "api-key", "revoke", "000000000000")
    assert unknown.returncode != 0
    assert "no API key" in unknown.stdout + unknown.stderr
    empty_org = cli(tmp_path, "api-key", "create", "--org", " ", "--name", "x")
    assert empty_org.returncode != 0
    assert "organization_id" in empty_org.stdout + empty_org.stderr


def test_service_types_decide_what_api_and_worker_run(tmp_path: Path) -> None:
    no_api = cli(tmp_path, "api", SPINNER_SERVICE_TYPE="worker")
    assert no_api.returncode == 2, no_api.stdout + no_api.stderr
    assert "runs no API" in no_api.stdout + no_api.stderr
    no_worker = cli(tmp_path, "worker", SPINNER_SERVICE_TYPE="frontend")
    assert no_worker.returncode == 2
    assert "runs no worker" in no_worker.stdout + no_worker.stderr


# --- the running service -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def service(
    data: Path, command: str, **env: str
) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """``spinner-jobs <command>`` in a process of its own, once its API answers."""
    port = _free_port()
    log = (data / f"{command}.log").open("wb")
    process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        [CLI, command],
        env=_env(data, SPINNER_API_PORT=str(port), SPINNER_LOG_FORMAT="json", **env),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:

            async def answers() -> None:
                assert process.poll() is None, (data / f"{command}.log").read_text()
                try:
                    response = await http.get("/healthz")
                except httpx.TransportError as exc:
                    raise AssertionError(f"not listening yet: {exc}") from None
                assert response.status_code == 200

            await eventually(answers, within=60, interval=0.2)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        log.close()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    return tmp_path / "data"


async def test_sigterm_ends_event_streams_cleanly_and_the_process_exits_0(data: Path) -> None:
    made = cli(
        data, "create-workbook", "wb_1", "--org", "org_1", "--tables", "1", "--records", "100000"
    )
    assert made.returncode == 0, made.stderr
    key = cli(data, "api-key", "create", "--org", "org_1", "--name", "t").stdout.strip()
    env = {"SPINNER_USE_JOBS": "false", "SPINNER_SERVICE_TYPE": "frontend"}
    async with (
        service(data, "api", **env) as (process, url),
        httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as http,
    ):
        body = {"user_id": "u", "input": {"workbook_id": "wb_1"}, "options": {"delay": 60}}
        created = await http.post("/v1/jobs/download-records", json=body)
        assert created.status_code == 202, created.text
        job_id = created.json()["job_id"]
        lines: list[str] = []
        async with http.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            assert stream.status_code == 200
            async for line in stream.aiter_lines():
                lines.append(line)
                if line.startswith("event: progress"):
                    process.send_signal(signal.SIGTERM)
            # The loop ended: the server closed the stream properly (chunked end seen).
        assert any("shutting down" in line for line in lines), lines
        code = await asyncio.to_thread(process.wait, 30)
        assert code == 0, (data / "api.log").read_text()
    log_text = (data / "api.log").read_text()
    assert '"event": "api_stopped"' in log_text
    assert "Traceback" not in log_text


async def test_a_monolith_worker_serves_the_api_and_runs_its_jobs(
    data: Path, dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    made = cli(
        data, "create-workbook", "wb_m", "--org", "org_m", "--tables", "2", "--records", "500"
    )
    assert made.returncode == 0, made.stderr
    key = cli(data, "api-key", "create", "--org", "org_m", "--name", "t").stdout.strip()
    env = {
        "SPINNER_SERVICE_TYPE": "monolith",
        "SPINNER_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "SPINNER_TEMPORAL_TASK_QUEUE": task_queue,  # no other worker polls it
    }
    async with (
        service(data, "worker", **env) as (process, url),
        httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        ) as http,
    ):
        ready = await http.get("/readyz")
        assert ready.json()["checks"] == {"store": "ok", "temporal": "ok"}
        created = await http.post(
            "/v1/jobs/download-records", json={"user_id": "u", "input": {"workbook_id": "wb_m"}}
        )
        assert created.status_code == 202, created.text

        async def completed() -> None:
            progress = (await http.get(created.headers["location"])).json()
            assert progress["status"] == "completed", progress
            assert progress["total_records"] == 1000

        await eventually(completed, within=60)
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 30)
        assert code == 0, (data / "worker.log").read_text()
