"""No cookie travels: the http connector and the webhook sender store and send none.

One connector (one pooled HTTP client) reads the tables of every organization. A cookie
that a source sets while one organization's table is read (a session its credentials
opened, say) must not go back with another organization's requests to the same host,
nor with the next page of the same table: reads are stateless, as the table's config
and account say, and nothing else.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from pydantic import SecretStr

from enqueuer.settings import Settings
from enqueuer.wiring import open_webhook
from spinner_jobs.connectors.base import ReadContext
from spinner_jobs.connectors.http import HttpConnector
from spinner_jobs.core.models import EventKind, JobEvent, Table

SESSION = "session=opened-by-org-a-0123456789"


class CookieSource:
    """A loopback source that sets a session cookie and notes each request's Cookie."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []  # (dataset, Cookie header)
        source = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # a webhook delivery
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                source.seen.append(("webhook", self.headers.get("Cookie")))
                self.send_response(204)
                self.send_header("Set-Cookie", f"{SESSION}; Path=/")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                query = dict(parse_qsl(urlsplit(self.path).query))
                dataset = query.get("dataset", "")
                source.seen.append((dataset, self.headers.get("Cookie")))
                page = int(query.get("page", "1"))
                body = json.dumps(
                    {"data": [{"id": f"{dataset}-{page}"}], "next": page + 1 if page < 3 else None}
                ).encode()
                self.send_response(200)
                self.send_header("Set-Cookie", f"{SESSION}; Path=/")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def source() -> Iterator[CookieSource]:
    src = CookieSource()
    yield src
    src.close()


@pytest.fixture
async def conn() -> AsyncIterator[HttpConnector]:
    connector = HttpConnector(allowed_networks=["127.0.0.1/32"])
    yield connector
    await connector.aclose()


def table(table_id: str, base_url: str, dataset: str) -> Table:
    return Table(
        id=table_id,
        workbook_id=f"wb_{table_id}",
        name=table_id,
        connector="http",
        config={
            "base_url": base_url,
            "path": "items",
            "params": {"dataset": dataset},
            "data_selector": "data",
            "paginator": {"type": "cursor", "cursor_path": "next", "cursor_param": "page"},
        },
    )


async def read(conn: HttpConnector, t: Table, job_id: str) -> list[str]:
    ids: list[str] = []
    async for page in conn.pages(t, None, None, ReadContext(job_id=job_id)):
        ids.extend(remote_id for remote_id, _ in page.records)
    return ids


async def test_a_cookie_one_table_was_given_never_reaches_another_organizations_table(
    conn: HttpConnector, source: CookieSource
) -> None:
    assert await read(conn, table("tbl_org_a", source.base_url, "a"), "job-a") == [
        "a-1",
        "a-2",
        "a-3",
    ]
    assert await read(conn, table("tbl_org_b", source.base_url, "b"), "job-b") == [
        "b-1",
        "b-2",
        "b-3",
    ]

    cookies_b = [cookie for dataset, cookie in source.seen if dataset == "b"]
    assert cookies_b == [None, None, None]


async def test_no_cookie_goes_back_even_to_the_table_that_was_given_it(
    conn: HttpConnector, source: CookieSource
) -> None:
    await read(conn, table("tbl_org_a", source.base_url, "a"), "job-a")

    assert [cookie for _, cookie in source.seen] == [None, None, None]


async def test_the_webhook_sender_keeps_no_cookie_its_receiver_sets(
    source: CookieSource, tmp_path: Any
) -> None:
    settings = Settings(
        data_dir=tmp_path, webhook={"url": f"{source.base_url}/hook", "secret": SecretStr("s")}
    )
    sender, client = open_webhook(settings)
    assert sender is not None
    assert client is not None
    try:
        for kind in (EventKind.PROGRESS, EventKind.JOB_COMPLETED):
            await sender.send(
                JobEvent(
                    event_id=f"job-1:{kind}",
                    kind=kind,
                    job_id="job-1",
                    workbook_id="wb_1",
                    at=datetime.now(UTC),
                )
            )
    finally:
        await client.aclose()

    assert source.seen == [("webhook", None), ("webhook", None)]
