"""Screenshots of the live job page (docs/job-page.png, docs/job-page-done.png).

Starts what it needs in one process on a free port and tears it down afterwards: the
HTTP API over in-process jobs (no Temporal needed: the page reads the same event
stream on either backend) and a SQLite store in a temporary folder. It downloads a
demo workbook once (so the next download knows each table's size), then downloads it
again with slowed pages, asks the API for a view link as a service would, opens the
link in headless Chromium (over the DevTools protocol, ``scripts/cdp.py``) and takes
one picture while the bars are part-way and one after the summary shows.

Needs Chromium (Debian: ``apt-get install chromium``). From the repo root::

    .venv/bin/python scripts/job_page_screenshot.py
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere

import httpx  # noqa: E402

from enqueuer.client import Enqueuer  # noqa: E402
from enqueuer.logs import configure_logging  # noqa: E402
from enqueuer.settings import Settings  # noqa: E402
from scripts.cdp import DEFAULT_CHROMIUM, Chromium  # noqa: E402
from spinner_jobs.api import ApiServer, create_api_key, create_app  # noqa: E402
from spinner_jobs.core.models import Table, Workbook  # noqa: E402
from spinner_jobs.store import open_store  # noqa: E402

ORG = "org_acme"
WORKBOOK_ID = "wb_acme_crm"
# records and seconds per page of 100: the tables finish at different times.
TABLES = {"customers": (3_000, 0.05), "orders": (5_000, 0.06), "invoices": (2_000, 0.07)}
NEW_TABLE = ("products", 1_200, 0.05)  # new since the last download: no size known yet
PROGRESS_READ = """
(() => {
  const rows = [...document.querySelectorAll("tr.table")];
  const done = rows.filter((row) => row.dataset.status === "completed").length;
  return {done, summary: !document.getElementById("summary").hidden};
})()
"""


def workbook(*, slow: bool) -> Workbook:
    """The demo workbook; ``slow`` adds the page delays and the new table."""
    tables = dict(TABLES)
    if slow:
        tables[NEW_TABLE[0]] = NEW_TABLE[1:]
    return Workbook(
        id=WORKBOOK_ID,
        organization_id=ORG,
        name="ACME CRM",
        tables=[
            Table(
                id=f"tbl_{name}",
                workbook_id=WORKBOOK_ID,
                name=name,
                connector="demo",
                config={
                    "records": records,
                    "page_size": 100,
                    "seed": i,
                    **({"page_delay": delay} if slow else {}),
                },
            )
            for i, (name, (records, delay)) in enumerate(tables.items())
        ],
    )


async def run(args: argparse.Namespace) -> None:
    """Start the API, run the jobs, take the pictures."""
    configure_logging("console", "warning")
    docs = ROOT / "docs"
    with tempfile.TemporaryDirectory(prefix="spinner-job-page-") as tmp:
        settings = Settings(data_dir=Path(tmp), use_jobs=False, api={"port": 0})
        store = open_store(settings.store_url)
        store.migrate()
        enqueuer = Enqueuer.from_settings(settings, store)
        server = ApiServer(create_app(settings, enqueuer, store), settings.api)
        url = await server.start()
        _, key = create_api_key(store, ORG, "screenshots")
        try:
            async with (
                httpx.AsyncClient(
                    base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
                ) as http,
                Chromium.launch(args.chromium) as chromium,
            ):
                store.put_workbook(workbook(slow=False))
                first = await enqueue(http)
                await enqueuer.wait(first, actor={"user_id": "u", "organization_id": ORG})
                store.put_workbook(workbook(slow=True))
                job_id = await enqueue(http)
                link = (await http.post(f"/v1/jobs/{job_id}/view-link")).json()
                print(f"job {job_id}: {link['url']}")
                page = await chromium.open(link["url"], size=(1000, 520))
                await until(page, lambda seen: seen["done"] >= 1)
                await asyncio.sleep(0.4)  # the finished bar has drawn its last step
                await page.screenshot(docs / "job-page.png")
                await until(page, lambda seen: seen["summary"])
                await asyncio.sleep(0.3)  # the summary's box is drawn
                await page.screenshot(docs / "job-page-done.png")
        finally:
            await server.stop()
            await enqueuer.aclose()
            store.close()
    for name in ("job-page.png", "job-page-done.png"):
        print(f"  docs/{name}: {(docs / name).stat().st_size // 1024} KB")


async def enqueue(http: httpx.AsyncClient) -> str:
    """Enqueue a download of the workbook; its job id."""
    body = {"user_id": "u_alice", "input": {"workbook_id": WORKBOOK_ID}}
    created = await http.post("/v1/jobs/download-records", json=body)
    created.raise_for_status()
    job_id: str = created.json()["job_id"]
    return job_id


async def until(page: Any, condition: Any, within: float = 60) -> None:
    """Read the page every 0.1 s until ``condition`` holds."""
    deadline = time.monotonic() + within
    while not condition(await page.evaluate(PROGRESS_READ)):
        if time.monotonic() > deadline:
            raise TimeoutError("the page did not get there in time")
        await asyncio.sleep(0.1)


def cli() -> None:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chromium", type=Path, default=DEFAULT_CHROMIUM)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    cli()
