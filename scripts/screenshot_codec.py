"""Screenshots of an encrypted job in the Temporal Web UI, decoded by the codec server.

Starts, on free ports: the codec server (``enqueuer.codec.CodecServer``), a Temporal
dev server whose Web UI calls it (``--ui-codec-endpoint``), a worker and an enqueuer
with ``SPINNER_PAYLOAD_KEY``-style encryption; runs one demo job, then lets headless
Chromium photograph the job's page twice:

- ``docs/webui-codec-decoded.png``: input and result decoded by the codec server;
- ``docs/webui-codec-encrypted.png``: the same page with the codec server stopped, as
  anyone without the key sees it (``binary/encrypted`` payloads).

It also writes ``docs/history-encrypted.txt``: the start event of the raw history,
fetched with a client that has no key.

Needs Chromium (``apt-get install -y chromium``). Run from the repo root::

    .venv/bin/python scripts/screenshot_codec.py
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pydantic import SecretStr
from temporalio.client import Client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from enqueuer.backends.temporal import TemporalBackend, connect_client  # noqa: E402
from enqueuer.client import Enqueuer  # noqa: E402
from enqueuer.codec import CodecServer, payload_codec  # noqa: E402
from enqueuer.logs import configure_logging  # noqa: E402
from enqueuer.settings import Settings  # noqa: E402
from scripts.screenshot import chromium_screenshot, free_port  # noqa: E402
from spinner_jobs.core.models import Actor, Table, Workbook  # noqa: E402
from spinner_jobs.shell.devserver import (  # noqa: E402
    dev_server_args,
    ensure_search_attributes,
    port_open,
    temporal_cli,
)
from spinner_jobs.store import open_store  # noqa: E402
from spinner_jobs.store.secrets import new_key  # noqa: E402
from spinner_jobs.worker.main import build_worker, worker_resources  # noqa: E402

WORKBOOK_ID = "wb_acme_crm"
ACTOR = Actor(user_id="u_alice", organization_id="org_acme")
TOKEN = "screenshot-codec-token"


async def main(args: argparse.Namespace) -> None:
    """Start the stack, run an encrypted job, photograph it, stop everything."""
    configure_logging("console", "warning")
    port, ui_port = free_port(), free_port()
    ui = f"http://localhost:{ui_port}"
    key = SecretStr(new_key())
    codec = payload_codec(key)
    assert codec is not None
    server = CodecServer(codec, SecretStr(TOKEN), [ui], host="127.0.0.1", port=0)
    server.start()
    endpoint = f"{server.url}/{TOKEN}"
    docs = ROOT / "docs"
    with tempfile.TemporaryDirectory(prefix="spinner-codec-shot-") as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            payload_key=key,
            temporal={"address": f"127.0.0.1:{port}", "ui_url": ui},
        )
        cmd = [
            str(temporal_cli()),
            *dev_server_args(settings.temporal.address, ui_port, None, "default"),
            "--ui-codec-endpoint",
            endpoint,
        ]
        log = open(Path(tmp) / "temporal.log", "wb")  # noqa: SIM115, ASYNC230
        dev = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220
        try:
            for _ in range(200):
                if port_open(settings.temporal.address) and port_open(f"127.0.0.1:{ui_port}"):
                    break
                await asyncio.sleep(0.1)
            client = await connect_client(settings.temporal, codec=codec)
            await ensure_search_attributes(client)
            store = open_store(settings.store_url)
            store.put_workbook(
                Workbook(
                    id=WORKBOOK_ID,
                    organization_id=ACTOR.organization_id,
                    name="ACME CRM",
                    tables=[
                        Table(
                            id=f"tbl_{name}",
                            workbook_id=WORKBOOK_ID,
                            name=name,
                            connector="demo",
                            config={"records": n, "page_size": 250},
                        )
                        for name, n in {"customers": 3000, "orders": 5000}.items()
                    ],
                )
            )
            async with (
                worker_resources(settings, store) as (st, connectors, webhook),
                build_worker(client, settings, st, connectors, webhook),
            ):
                backend = TemporalBackend(
                    settings.temporal, settings.enqueue_timeout, client=client
                )
                enqueuer = Enqueuer(settings, store, backend)
                ref = await enqueuer.enqueue_download_records_job(
                    WORKBOOK_ID, ACTOR, metadata={"requested_from": "scripts/screenshot_codec.py"}
                )
                result = await enqueuer.wait(ref.job_id, actor=ACTOR)
                print(f"job {ref.job_id}: {result.status.value}")
                plain = await Client.connect(settings.temporal.address)
                history = await plain.get_workflow_handle(ref.job_id).fetch_history()
                started = history.events[0].workflow_execution_started_event_attributes
                (docs / "history-encrypted.txt").write_text(
                    "First event of the job's history, fetched without the key "
                    "(protobuf text format):\n\n"
                    + f"input {{\n{started.input}}}\nmemo {{\n{started.memo}}}\n"
                    + f"search_attributes {{\n{started.search_attributes}}}\n"
                )
                page = f"{ui}/namespaces/default/workflows/{ref.job_id}/{ref.run_id}/history"
                shot = {"budget_ms": args.budget_ms, "size": (1400, 1100)}
                await asyncio.to_thread(
                    chromium_screenshot,
                    args.chromium,
                    page,
                    docs / "webui-codec-decoded.png",
                    **shot,
                )
                server.stop()
                await asyncio.to_thread(
                    chromium_screenshot,
                    args.chromium,
                    page,
                    docs / "webui-codec-encrypted.png",
                    **shot,
                )
            store.close()
        finally:
            dev.terminate()
            dev.wait(10)
            log.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--chromium", type=Path, default=Path(shutil.which("chromium") or "/usr/bin/chromium")
    )
    parser.add_argument("--budget-ms", type=int, default=15_000)
    asyncio.run(main(parser.parse_args()))
