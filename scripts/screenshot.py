"""Screenshots of the Temporal Web UI showing a download-records job (docs/webui*.png).

Starts everything it needs on free ports and tears it down afterwards: a Temporal dev
server with its Web UI, a real worker, a demo workbook of a few tables; enqueues one
job, waits for it, then lets headless Chromium photograph two pages of the UI:

- ``docs/webui.png``: the workflow list filtered by ``WorkbookId="..."`` (the search
  attribute query in the filter bar, the job in the list);
- ``docs/webui-job.png``: the job's own page (summary, details, search attributes).

Needs Chromium. On Debian/Ubuntu::

    sudo apt-get update && sudo apt-get install -y chromium

or point ``--chromium`` at another Chrome/Chromium binary. Run from the repo root::

    .venv/bin/python scripts/screenshot.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

from enqueuer.backends.temporal import TemporalBackend, connect_client  # noqa: E402
from enqueuer.client import Enqueuer  # noqa: E402
from enqueuer.logs import configure_logging  # noqa: E402
from enqueuer.settings import Settings  # noqa: E402
from spinner_jobs.core.models import Actor, Table, Workbook  # noqa: E402
from spinner_jobs.shell.devserver import DevServer, ensure_search_attributes  # noqa: E402
from spinner_jobs.store import open_store  # noqa: E402
from spinner_jobs.worker.main import build_worker, worker_resources  # noqa: E402

INSTALL_HINT = (
    "Chromium not found at {path}. Install it with:\n"
    "    sudo apt-get update && sudo apt-get install -y chromium\n"
    "(Debian/Ubuntu), or pass --chromium /path/to/chrome."
)
WORKBOOK_ID = "wb_acme_crm"
ACTOR = Actor(user_id="u_alice", organization_id="org_acme")
TABLES = {"customers": 3_000, "orders": 5_000, "invoices": 2_000, "products": 600}


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def chromium_screenshot(
    chromium: Path, url: str, out: Path, *, budget_ms: int, size: tuple[int, int]
) -> None:
    """Photograph ``url`` with headless Chromium into ``out`` (PNG)."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        args = [
            str(chromium),
            "--headless",
            "--no-sandbox",  # we may run as root (containers); the page is our own UI
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            # The UI is a JS app: let it fetch and render before the picture is taken.
            f"--virtual-time-budget={budget_ms}",
            f"--screenshot={out}",
            url,
        ]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"chromium failed ({done.returncode}) for {url}:\n{done.stderr[-2000:]}")
    print(f"  {out.relative_to(ROOT)}: {out.stat().st_size // 1024} KB  <- {url}")


@asynccontextmanager
async def finished_job(settings: Settings) -> AsyncIterator[tuple[str, str]]:
    """Create the demo workbook and run one job; yield (job id, run id), worker still up.

    The worker must outlive the screenshots: the UI reads a closed job's current details
    with a query, which only a worker can answer (by replaying the history).
    """
    client = await connect_client(settings.temporal)
    await ensure_search_attributes(client)
    store = open_store(settings.store_url)
    try:
        workbook = Workbook(
            id=WORKBOOK_ID,
            organization_id=ACTOR.organization_id,
            name="ACME CRM",
            tables=[
                Table(
                    id=f"tbl_{name}",
                    workbook_id=WORKBOOK_ID,
                    name=name,
                    connector="demo",
                    config={"records": records, "page_size": 250, "seed": i},
                )
                for i, (name, records) in enumerate(TABLES.items())
            ],
        )
        store.put_workbook(workbook)
        async with (
            worker_resources(settings, store) as (st, connectors, webhook),
            build_worker(client, settings, st, connectors, webhook),
        ):
            backend = TemporalBackend(settings.temporal, settings.enqueue_timeout, client=client)
            enqueuer = Enqueuer(settings, store, backend)
            ref = await enqueuer.enqueue_download_records_job(
                WORKBOOK_ID, ACTOR, metadata={"requested_from": "scripts/screenshot.py"}
            )
            result = await enqueuer.wait(ref.job_id, actor=ACTOR)
            print(
                f"job {ref.job_id}: {result.status.value}, {result.progress.total_records} records"
            )
            assert ref.run_id is not None
            yield ref.job_id, ref.run_id
    finally:
        store.close()


async def main(args: argparse.Namespace) -> None:
    """Start the stack, run the job, take the screenshots, stop the stack."""
    configure_logging("console", "warning")
    port, ui_port = free_port(), free_port()
    ui = f"http://127.0.0.1:{ui_port}"
    with tempfile.TemporaryDirectory(prefix="spinner-screenshot-") as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            temporal={"address": f"127.0.0.1:{port}", "ui_url": ui},
        )
        print(f"dev server at 127.0.0.1:{port}, Web UI at {ui}")
        server = await DevServer.start(
            settings.temporal.address, ui_port=ui_port, log_file=Path(tmp) / "temporal.log"
        )
        try:
            async with finished_job(settings) as (job_id, run_id):
                await take_screenshots(args, ui, settings.temporal.namespace, job_id, run_id)
        finally:
            server.stop()


async def take_screenshots(
    args: argparse.Namespace, ui: str, ns: str, job_id: str, run_id: str
) -> None:
    """Photograph the filtered workflow list and the job's own tabs into docs/."""
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    query = quote(f'WorkbookId="{WORKBOOK_ID}"', safe="")
    job_page = f"{ui}/namespaces/{ns}/workflows/{job_id}/{run_id}"
    shots = {
        # The search-attribute query shows in the filter bar, the job in the list.
        docs / "webui.png": f"{ui}/namespaces/{ns}/workflows?query={query}",
        # The "User Metadata" tab: the static summary and the job's current details.
        docs / "webui-job.png": f"{job_page}/user-metadata",
        docs / "webui-search-attributes.png": f"{job_page}/search-attributes",
    }
    for out, url in shots.items():
        await asyncio.to_thread(
            chromium_screenshot,
            args.chromium,
            url,
            out,
            budget_ms=args.budget_ms,
            size=(1600, 1000),
        )


def cli() -> None:
    """Parse arguments, run, and leave with ``os._exit`` (the SDK can abort at exit)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--chromium",
        type=Path,
        default=Path(shutil.which("chromium") or "/usr/bin/chromium"),
        help="Chromium/Chrome binary (default: chromium on PATH, else /usr/bin/chromium).",
    )
    parser.add_argument(
        "--budget-ms", type=int, default=15_000, help="Chromium virtual-time budget per page."
    )
    args = parser.parse_args()
    if not args.chromium.is_file():
        print(INSTALL_HINT.format(path=args.chromium), file=sys.stderr)
        os._exit(2)
    code = 0
    try:
        asyncio.run(main(args))
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # The Temporal SDK's threads can abort the interpreter at exit after the work is done.
    os._exit(code)


if __name__ == "__main__":
    cli()
