"""Hostile http table configs and sources: addresses, redirects, secrets, cycles.

Every source here listens on loopback. Addresses outside loopback appear only where
they are refused before any connection is made (literal addresses at validation, and
a resolver of our own that answers them), so no packet leaves the machine even if a
check were missing: the connect-time tests use loopback addresses the connector was
not allowed to reach (127.0.0.2 when only 127.0.0.1/32 is open).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from spinner_jobs.connectors.base import Connector, Page, ReadContext
from spinner_jobs.connectors.http import HttpConnector
from spinner_jobs.connectors.registry import default_connectors
from spinner_jobs.core.errors import (
    InvalidTableConfigError,
    PaginationCycleError,
    SourceAddressRefusedError,
    SourceAuthError,
    SourcePageTooLargeError,
    SourceRequestError,
    SourceUnavailableError,
)
from spinner_jobs.core.models import ConnectorAccount, Table
from spinner_jobs.shell.sample_api import SampleApi, SampleTable

ONLY_127_0_0_1 = ["127.0.0.1/32"]
SECRET = "sk-live-0123456789abcdef"
MAX_PAGES = 12  # a read that has not failed by then has missed the cycle


# --- a scripted loopback source --------------------------------------------------------


@dataclass
class Answer:
    """What the scripted source answers to one path."""

    body: bytes = b"[]"
    status: int = 200
    reason: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


Route = Callable[[str, dict[str, str]], Answer]


class _Server(ThreadingHTTPServer):
    # Keep-alive handler threads end with their client; closing does not wait on them.
    daemon_threads = True
    block_on_close = False


class Source:
    """A loopback HTTP server answering each GET with ``route(path, query)``."""

    def __init__(self, route: Route, host: str = "127.0.0.1") -> None:
        self.route = route
        self.requests: list[tuple[str, dict[str, str]]] = []
        source = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                split = urlsplit(self.path)
                query = dict(parse_qsl(split.query))
                source.requests.append((split.path, query))
                answer = source.route(split.path, query)
                self.send_response(answer.status, answer.reason)
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _Server((host, 0), Handler)
        self.base_url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Source:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def records(*ids: Any, **extra: Any) -> bytes:
    return json.dumps({"data": [{"id": i} for i in ids], **extra}).encode()


def table(config: dict[str, Any]) -> Table:
    return Table(id="tbl_x", workbook_id="wb_1", name="x", connector="http", config=config)


async def read(
    conn: Connector,
    config: dict[str, Any],
    *,
    cursor: str | None = None,
    account: ConnectorAccount | None = None,
) -> list[Page]:
    """Read at most MAX_PAGES pages (so a missed cycle fails instead of hanging)."""
    pages: list[Page] = []
    async for page in conn.pages(table(config), account, cursor, ReadContext("job_1")):
        pages.append(page)
        if len(pages) >= MAX_PAGES:
            break
    assert len(pages) < MAX_PAGES, f"read {len(pages)} pages without stopping"
    return pages


@pytest.fixture
async def conn() -> AsyncIterator[HttpConnector]:
    """A connector that may reach 127.0.0.1 only (not the rest of loopback)."""
    connector = HttpConnector(allowed_networks=ONLY_127_0_0_1, max_connections=4)
    yield connector
    await connector.aclose()


@pytest.fixture
def listening_on_127_0_0_2() -> Iterator[Source]:
    """A loopback source at 127.0.0.2, which the connector was not allowed to reach."""
    with Source(lambda path, query: Answer(records("stolen")), host="127.0.0.2") as source:
        yield source


# --- addresses ------------------------------------------------------------------------------

LITERALS = [
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",  # CGNAT
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "http://240.0.0.1/",
    "http://[::1]/",
    "http://[::]/",
    "http://[fd00::1]/",
    "http://[fe80::1]/",
    "http://[ff02::1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped loopback
    "http://[::ffff:169.254.169.254]/",
    "http://[2002:a9fe:a9fe::]/",  # 6to4 of the metadata address
    "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
    # Not globally reachable per IANA, yet "global" to some Python versions' ipaddress.
    "http://192.0.0.192/",  # Oracle Cloud metadata (192.0.0.0/24)
    "http://192.0.0.9/",
    "http://[fec0::1]/",  # deprecated site-local
    "http://[::ffff:192.0.0.192]/",
    "http://[2002:c000:c0::]/",  # 6to4 of 192.0.0.192
    "http://192.88.99.1/",  # deprecated 6to4 relay anycast
    "http://198.18.0.1/",  # benchmarking
    "http://192.0.2.1/",  # documentation
    "http://255.255.255.255/",
    "http://[2001:db8::1]/",
    "http://[3fff::1]/",  # documentation (RFC 9637)
    "http://[64:ff9b:1::a00:1]/",  # local-use NAT64
    "http://[5f00::1]/",  # SRv6
]


@pytest.mark.parametrize("base_url", LITERALS)
async def test_a_literal_internal_address_is_refused_before_any_request(base_url: str) -> None:
    connector = HttpConnector()
    config = {"base_url": base_url, "paginator": "single_page"}
    with pytest.raises(InvalidTableConfigError, match="connectors reach public addresses only"):
        connector.validate_config(config)
    with pytest.raises(InvalidTableConfigError, match="SPINNER_HTTP_ALLOWED_NETWORKS"):
        await read(connector, config)
    await connector.aclose()


@pytest.mark.parametrize(
    "base_url",
    ["ftp://example.com/x", "file:///etc/passwd", "gopher://example.com/", "//example.com/x"],
)
def test_only_http_and_https(base_url: str) -> None:
    with pytest.raises(InvalidTableConfigError, match="base_url: Value error, must be an absolute"):
        HttpConnector().validate_config({"base_url": base_url, "paginator": "single_page"})


def test_a_public_address_passes_validation() -> None:
    HttpConnector().validate_config(
        {"base_url": "https://93.184.215.14/", "paginator": "json_link"}
    )


async def test_the_loopback_sample_source_is_refused_unless_allowed() -> None:
    with SampleApi({"t": SampleTable(records=10)}) as api:
        default = default_connectors()
        allowed = default_connectors(http_allowed_networks=["127.0.0.0/8"])
        try:
            config = api.config("t")
            with pytest.raises(
                InvalidTableConfigError, match=r"127\.0\.0\.1 is a loopback address"
            ):
                await read(default.get("http"), config)
            by_name = api.config("t", base_url=api.base_url.replace("127.0.0.1", "localhost"))
            with pytest.raises(SourceAddressRefusedError, match="host 'localhost' resolves to"):
                await read(default.get("http"), by_name)
            assert api.requests == []
            pages = await read(allowed.get("http"), config)
            assert len(pages[0].records) == 10
        finally:
            await default.aclose()
            await allowed.aclose()


@pytest.mark.parametrize("host", ["2130706434", "127.2", "0x7f000002", "127.0.0.2"])
async def test_host_names_are_checked_after_resolution(
    conn: HttpConnector, listening_on_127_0_0_2: Source, host: str
) -> None:
    port = listening_on_127_0_0_2.base_url.rsplit(":", 1)[1]
    config = {"base_url": f"http://{host}:{port}/", "paginator": "single_page"}
    with pytest.raises((SourceAddressRefusedError, InvalidTableConfigError)) as caught:
        await read(conn, config)
    assert "public addresses only" in str(caught.value)
    assert listening_on_127_0_0_2.requests == []


async def test_a_redirect_to_an_internal_address_is_refused(
    conn: HttpConnector, listening_on_127_0_0_2: Source
) -> None:
    target = f"{listening_on_127_0_0_2.base_url}/admin"
    with Source(lambda path, query: Answer(status=302, headers=[("Location", target)])) as src:
        config = {"base_url": src.base_url, "path": "/t", "paginator": "single_page"}
        with pytest.raises(SourceAddressRefusedError, match=r"tbl_x.*127\.0\.0\.2 is a loopback"):
            await read(conn, config)
    assert listening_on_127_0_0_2.requests == []


async def test_a_redirect_to_another_scheme_is_refused(conn: HttpConnector) -> None:
    location = [("Location", "file:///etc/passwd")]
    with Source(lambda path, query: Answer(status=301, headers=location)) as src:
        config = {"base_url": src.base_url, "paginator": "single_page"}
        with pytest.raises(SourceRequestError, match="not http"):
            await read(conn, config)


@pytest.mark.parametrize("paginator", ["json_link", "header_link"])
async def test_a_next_link_to_an_internal_address_is_refused(
    conn: HttpConnector, listening_on_127_0_0_2: Source, paginator: str
) -> None:
    link = f"{listening_on_127_0_0_2.base_url}/internal?page=2"

    def route(path: str, query: dict[str, str]) -> Answer:
        if paginator == "json_link":
            return Answer(records(1, next=link))
        return Answer(records(1), headers=[("Link", f'<{link}>; rel="next"')])

    with Source(route) as src:
        config = {"base_url": src.base_url, "data_selector": "data", "paginator": paginator}
        with pytest.raises(SourceAddressRefusedError, match=r"127\.0\.0\.2"):
            await read(conn, config)
    assert listening_on_127_0_0_2.requests == []


async def test_a_resumed_cursor_to_an_internal_address_is_refused(
    conn: HttpConnector, listening_on_127_0_0_2: Source
) -> None:
    config = {"base_url": "http://127.0.0.1:9/", "data_selector": "data", "paginator": "json_link"}
    cursor = f"{listening_on_127_0_0_2.base_url}/x"
    with pytest.raises(SourceAddressRefusedError, match=r"127\.0\.0\.2"):
        await read(conn, config, cursor=cursor)
    assert listening_on_127_0_0_2.requests == []


def fixed_resolver(*answers: Sequence[str]) -> Callable[[str, int], Any]:
    """A resolver answering each lookup with the next of ``answers``."""
    queue = list(answers)

    async def resolve(host: str, port: int) -> Sequence[str]:
        return queue.pop(0)

    return resolve


async def test_every_resolved_address_must_be_allowed() -> None:
    # One allowed and one internal answer: refused whole, nothing connected.
    conn = HttpConnector(
        allowed_networks=ONLY_127_0_0_1, resolver=fixed_resolver(["127.0.0.1", "10.0.0.1"])
    )
    with pytest.raises(SourceAddressRefusedError, match=r"'mixed\.test' resolves to 10\.0\.0\.1"):
        await read(conn, {"base_url": "http://mixed.test:9/", "paginator": "single_page"})
    await conn.aclose()


async def test_the_connection_goes_to_the_address_that_was_checked() -> None:
    # "rebind.test" answers an allowed address and, on the next lookup, another one.
    # The first connection must go to the checked address (the system cannot resolve
    # the name at all), and the later lookup is checked again and refused.
    with Source(lambda path, query: Answer(records(1, 2))) as src:
        port = src.base_url.rsplit(":", 1)[1]
        conn = HttpConnector(
            allowed_networks=ONLY_127_0_0_1,
            resolver=fixed_resolver(["127.0.0.1"], ["169.254.169.254"]),
        )
        config = {
            "base_url": f"http://rebind.test:{port}/",
            "data_selector": "data",
            "paginator": "single_page",
        }
        pages = await read(conn, config)
        assert [r for r, _ in pages[0].records] == ["1", "2"]
        await conn.aclose()  # the next read opens a new connection
        with pytest.raises(SourceAddressRefusedError, match=r"169\.254\.169\.254 is a link-local"):
            await read(conn, config)
        await conn.aclose()
    assert len(src.requests) == 1


# --- secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "Authorization",
        "authorization",
        "Proxy-Authorization",
        "Cookie",
        "X-API-Key",
        "x-apikey",
        "Api_Key",
        "X-Auth-Token",
        "Private-Token",
        "X-Client-Secret",
    ],
)
def test_credential_headers_in_a_config_are_refused(header: str) -> None:
    config = {
        "base_url": "https://api.example.com",
        "paginator": "single_page",
        "headers": {header: SECRET},
    }
    with pytest.raises(InvalidTableConfigError) as caught:
        HttpConnector().validate_config(config)
    message = str(caught.value)
    assert f"header {header!r} carries a credential" in message
    assert "spinner-jobs account create" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"X-Trace": "a\r\nX-Injected: 1"}, "control character"),
        ({"X-Trace": "a\nb"}, "control character"),
        ({"X-Trace": "a\x00b"}, "control character"),
        ({"Bad Name": "x"}, "not a valid HTTP header name"),
        ({"X-Trace:": "x"}, "not a valid HTTP header name"),
        ({"": "x"}, "not a valid HTTP header name"),
    ],
)
def test_headers_that_would_break_the_request_are_refused(
    headers: dict[str, str], problem: str
) -> None:
    config = {"base_url": "https://api.example.com", "paginator": "single_page", "headers": headers}
    with pytest.raises(InvalidTableConfigError, match=problem):
        HttpConnector().validate_config(config)


def test_a_user_and_password_in_the_url_are_refused() -> None:
    config = {"base_url": f"https://user:{SECRET}@api.example.com", "paginator": "single_page"}
    with pytest.raises(InvalidTableConfigError, match="must not carry a user") as caught:
        HttpConnector().validate_config(config)
    assert SECRET not in str(caught.value)


async def test_the_accounts_api_key_header_in_a_config_is_refused(conn: HttpConnector) -> None:
    account = ConnectorAccount(
        id="acc", organization_id="org_1", auth="api_key", secret=SECRET, header="X-Partner"
    )
    config = {
        "base_url": "http://127.0.0.1:9/",
        "paginator": "single_page",
        "headers": {"x-partner": "mine"},
    }
    with pytest.raises(InvalidTableConfigError, match="'X-Partner' is the account's api_key"):
        await read(conn, config, account=account)


async def test_error_messages_carry_a_short_clean_excerpt_and_no_secret(
    conn: HttpConnector,
) -> None:
    body = (
        f"\x1b[31mtoken {SECRET} denied\r\n\x00 tenant=acme; "
        + "db_password=hunter2; " * 40
        + "X-Tenant-Id: tenant-8812-private"
    )
    reason = "Forbidden db_password=hunter2"
    with Source(lambda path, query: Answer(body.encode(), status=403, reason=reason)) as src:
        config = {
            "base_url": src.base_url,
            "path": "/t",
            "paginator": "single_page",
            "headers": {"X-Tenant-Id": "tenant-8812-private"},
        }
        account = ConnectorAccount(
            id="acc", organization_id="org_1", auth="bearer", secret=SECRET, header="X"
        )
        with pytest.raises(SourceAuthError) as caught:
            await read(conn, config, account=account)
    message = str(caught.value)
    assert message.startswith("table 'tbl_x': source answered 403 Forbidden for GET /t;")
    assert SECRET not in message
    assert "token *** denied" in message
    excerpt = message.split("(body starts: ", 1)[1].rstrip(")")
    assert len(excerpt) <= 80
    assert message.count("db_password") <= 3  # a few of the 40, from the excerpt alone
    assert all(c.isprintable() for c in message)
    assert "Forbidden db_password" not in message  # the standard reason, not the source's


async def test_an_echoed_header_value_is_scrubbed(conn: HttpConnector) -> None:
    body = b'{"error": "unknown tenant tenant-8812-private"}'
    with Source(lambda path, query: Answer(body, status=400)) as src:
        config = {
            "base_url": src.base_url,
            "paginator": "single_page",
            "headers": {"X-Tenant-Id": "tenant-8812-private"},
        }
        with pytest.raises(SourceRequestError) as caught:
            await read(conn, config)
    assert "tenant-8812-private" not in str(caught.value)
    assert "unknown tenant ***" in str(caught.value)


@pytest.mark.parametrize(
    "where",
    [
        {"params": {"api_key": SECRET}},
        {"params": {"access_token": SECRET}},
        {"params": {"key": SECRET}},
        {"params": {"clientSecret": SECRET}},
        {"params": {"x-auth": SECRET}},
        {"base_url": f"https://api.example.com/v1?apikey={SECRET}"},
        {"path": f"items?sessionId={SECRET}"},
    ],
    ids=["api_key", "access_token", "key", "camelCase", "auth", "base_url-query", "path-query"],
)
def test_credential_query_parameters_in_a_config_are_refused(where: dict[str, Any]) -> None:
    config = {"base_url": "https://api.example.com", "paginator": "single_page", **where}
    with pytest.raises(InvalidTableConfigError, match="carries a credential") as caught:
        HttpConnector().validate_config(config)
    assert "spinner-jobs account create" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_ordinary_query_parameters_pass() -> None:
    params = {"sort_key": "created", "author": "ann", "limit": 5, "active": True}
    HttpConnector().validate_config(
        {
            "base_url": "https://api.example.com/?fields=id",
            "paginator": "json_link",
            "params": params,
        }
    )


async def test_an_echoed_param_value_is_scrubbed(conn: HttpConnector) -> None:
    body = b'{"error": "unknown tenant tenant-8812-private, region eu-private-7"}'
    with Source(lambda path, query: Answer(body, status=400)) as src:
        config = {
            "base_url": f"{src.base_url}/?region=eu-private-7",
            "paginator": "single_page",
            "params": {"tenant": "tenant-8812-private"},
        }
        with pytest.raises(SourceRequestError) as caught:
            await read(conn, config)
    assert src.requests[0][1] == {"tenant": "tenant-8812-private", "region": "eu-private-7"}
    assert "tenant-8812-private" not in str(caught.value)
    assert "eu-private-7" not in str(caught.value)
    assert "unknown tenant ***, region ***" in str(caught.value)


async def test_a_secret_cut_at_the_end_of_a_long_error_body_is_not_shown(
    conn: HttpConnector,
) -> None:
    # Of a long error body only the start is read; the cut may not leave part of a
    # hidden value, which redaction would no longer recognise, in the excerpt.
    value = "tenant-" + "8" * 1000
    body = (f"{value} " * 400).encode()
    with Source(lambda path, query: Answer(body, status=400)) as src:
        config = {"base_url": src.base_url, "paginator": "single_page", "params": {"t": value}}
        with pytest.raises(SourceRequestError) as caught:
            await read(conn, config)
    assert "tenant-" not in str(caught.value)
    assert "8888" not in str(caught.value)


# --- page size ----------------------------------------------------------------------------------


async def test_a_page_announcing_more_than_max_page_bytes_is_refused(conn: HttpConnector) -> None:
    body = json.dumps([{"id": i, "pad": "x" * 100} for i in range(100)]).encode()
    with Source(lambda path, query: Answer(body)) as src:
        config = {"base_url": src.base_url, "paginator": "single_page", "max_page_bytes": 4096}
        with pytest.raises(SourcePageTooLargeError) as caught:
            await read(conn, config)
        assert len(await read(conn, {**config, "max_page_bytes": len(body)})) == 1
    message = str(caught.value)
    assert "larger than max_page_bytes (4,096 bytes)" in message
    assert f"it announces {len(body):,}" in message
    assert "lower the paginator's page size" in message


async def test_the_page_cap_counts_decompressed_bytes(conn: HttpConnector) -> None:
    # A small gzip body that inflates past the cap (a compression bomb, in little).
    body = gzip.compress(json.dumps([{"id": 1, "pad": " " * 200_000}]).encode())
    answer = Answer(body, headers=[("Content-Encoding", "gzip")])
    with Source(lambda path, query: answer) as src:
        config = {"base_url": src.base_url, "paginator": "single_page", "max_page_bytes": 65536}
        with pytest.raises(SourcePageTooLargeError):
            await read(conn, config)
        pages = await read(conn, {**config, "max_page_bytes": 1 << 20})
    assert [r for r, _ in pages[0].records] == ["1"]


@dataclass
class Flood:
    """A source that answers any request with a head, then one piece over and over."""

    base_url: str = ""
    sent: int = 0  # bytes of the repeated piece written so far


@contextlib.asynccontextmanager
async def flooding_source(head: bytes, piece: bytes) -> AsyncIterator[Flood]:
    """Serve :class:`Flood` on loopback until the client hangs up (1 GiB at most)."""
    flood = Flood()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head)
        with contextlib.suppress(ConnectionError):
            while flood.sent < 1 << 30:
                writer.write(piece)
                flood.sent += len(piece)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    flood.base_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield flood
    finally:
        server.close()


async def test_an_endless_chunked_page_is_cut_off_at_max_page_bytes(conn: HttpConnector) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[ \r\n"
    chunk = b" " * 65536
    async with flooding_source(head, b"%x\r\n%s\r\n" % (len(chunk), chunk)) as flood:
        config = {
            "base_url": flood.base_url,
            "paginator": "single_page",
            "max_page_bytes": 1 << 20,
        }
        with pytest.raises(SourcePageTooLargeError, match="larger than max_page_bytes"):
            await asyncio.wait_for(read(conn, config), 30)
    assert flood.sent < 16 << 20


@pytest.mark.parametrize(
    "flood",
    [
        pytest.param(b"".join(b"X-H%d: %s\r\n" % (i, b"a" * 100) for i in range(1000)), id="lines"),
        pytest.param(b"a" * 65536, id="one-line"),
    ],
)
async def test_endless_response_headers_are_refused_without_waiting_for_the_timeout(
    conn: HttpConnector, flood: bytes
) -> None:
    async with flooding_source(b"HTTP/1.1 200 OK\r\nX-Start: ", flood) as source:
        config = {
            "base_url": source.base_url,
            "paginator": "single_page",
            "timeout": 60,
            "max_request_retries": 0,
        }
        with pytest.raises(SourceUnavailableError) as caught:
            await asyncio.wait_for(read(conn, config), 90)
    message = str(caught.value)
    # Refused by the header limits, not cut off by the table's timeout.
    assert "timeout" not in message
    # One clean line, the source's bytes cut short, and no URL beyond the shown path
    # (a query string can carry a token).
    assert "\n" not in message
    assert source.base_url.removeprefix("http://") not in message
    assert "a" * 200 not in message
    assert source.sent < 16 << 20


@pytest.mark.parametrize("size", [1023, (256 << 20) + 1])
def test_max_page_bytes_is_bounded(size: int) -> None:
    config = {"base_url": "https://api.example.com", "paginator": "json_link"}
    with pytest.raises(InvalidTableConfigError, match="max_page_bytes"):
        HttpConnector().validate_config({**config, "max_page_bytes": size})


# --- pagination cycles --------------------------------------------------------------------------


def link_cycle(base: list[str], hops: list[str]) -> Route:
    """Page /t links to ``hops[0]``, that page to ``hops[1]``, ... (absolute URLs)."""
    chain = ["/t", *hops]

    def route(path: str, query: dict[str, str]) -> Answer:
        following = chain[chain.index(path) + 1]
        return Answer(records(f"{path}-1", f"{path}-2", next=f"{base[0]}{following}"))

    return route


@pytest.mark.parametrize(
    ("hops", "pages_before"), [(["/t"], 1), (["/a", "/b", "/a"], 3), (["/a", "/t"], 2)]
)
async def test_a_next_link_cycle_fails_the_table(
    conn: HttpConnector, hops: list[str], pages_before: int
) -> None:
    base: list[str] = []
    with Source(link_cycle(base, hops)) as src:
        base.append(src.base_url)
        config = {
            "base_url": src.base_url,
            "path": "/t",
            "data_selector": "data",
            "paginator": "json_link",
        }
        with pytest.raises(PaginationCycleError) as caught:
            await read(conn, config)
    message = str(caught.value)
    assert "json_link paginator: next URL" in message
    assert "repeated" in message
    assert message.endswith("check paginator.next_url_path")
    assert len(src.requests) <= pages_before + 1


async def test_a_header_link_cycle_fails_the_table(conn: HttpConnector) -> None:
    base: list[str] = []

    def route(path: str, query: dict[str, str]) -> Answer:
        following = "/b" if path != "/b" else "/a"
        link = f'<{base[0]}{following}>; rel="next"'
        return Answer(records(path), headers=[("Link", link)])

    with Source(route) as src:
        base.append(src.base_url)
        config = {"base_url": src.base_url, "path": "/a", "paginator": "header_link"}
        config["data_selector"] = "data"
        with pytest.raises(PaginationCycleError, match=r"check paginator\.links_next_key$"):
            await read(conn, config)
    assert len(src.requests) <= 3


@pytest.mark.parametrize(
    "tokens", [["abc", "abc"], ["abc", "def", "abc"], ["1", "2", "3", "1"]], ids=str
)
async def test_a_repeated_cursor_fails_the_table(conn: HttpConnector, tokens: list[str]) -> None:
    def route(path: str, query: dict[str, str]) -> Answer:
        step = 0 if "cursor" not in query else tokens.index(query["cursor"]) + 1
        following = tokens[step % len(tokens)]
        return Answer(records(f"r{step}", cursors={"next": following}))

    with Source(route) as src:
        config = {"base_url": src.base_url, "data_selector": "data", "paginator": "cursor"}
        with pytest.raises(PaginationCycleError) as caught:
            await read(conn, config)
    message = str(caught.value)
    assert f"cursor paginator: cursor {tokens[-1]!r} repeated" in message
    assert message.endswith("check paginator.cursor_path")
    assert len(src.requests) <= len(tokens) + 1


@pytest.mark.parametrize(
    ("paginator", "setting"),
    [
        ({"type": "offset", "limit": 3}, "offset_param"),
        ({"type": "page_number", "page_size": 3}, "page_param"),
        ({"type": "page_number"}, "page_param"),
    ],
)
async def test_a_source_that_ignores_the_paging_parameter_fails_the_table(
    conn: HttpConnector, paginator: dict[str, Any], setting: str
) -> None:
    # Same three records whatever the offset or page, with a fresh request id each
    # time, so the bodies differ but the pages do not.
    served = iter(range(1000))

    def route(path: str, query: dict[str, str]) -> Answer:
        return Answer(records("a", "b", "c", request_id=next(served)))

    with Source(route) as src:
        config = {"base_url": src.base_url, "data_selector": "data", "paginator": paginator}
        with pytest.raises(PaginationCycleError) as caught:
            await read(conn, config)
    message = str(caught.value)
    assert "has the same 3 records as the page before" in message
    assert message.endswith(f"check paginator.{setting}")
    assert len(src.requests) == 2


@pytest.mark.parametrize(
    "ids", [("a", "b", "c"), ({"k": 1}, {"k": 2}, [3])], ids=["strings", "unhashable"]
)
async def test_the_same_records_in_another_order_are_a_cycle(
    conn: HttpConnector, ids: tuple[Any, ...]
) -> None:
    served = iter(range(1000))

    def route(path: str, query: dict[str, str]) -> Answer:
        turn = next(served)
        return Answer(records(*(ids[(i + turn) % 3] for i in range(3))))

    with Source(route) as src:
        paginator = {"type": "offset", "limit": 3}
        config = {"base_url": src.base_url, "data_selector": "data", "paginator": paginator}
        with pytest.raises(PaginationCycleError, match="has the same 3 records as the page before"):
            await read(conn, config)
    assert len(src.requests) == 2


async def test_a_long_honest_read_is_not_a_cycle(conn: HttpConnector) -> None:
    # Pages that repeat some ids (overlap) but are not the same page, and cursors that
    # look alike, read to the end.
    def route(path: str, query: dict[str, str]) -> Answer:
        n = int(query.get("cursor", "0"))
        following = {"next": str(n + 1)} if n < 9 else {}
        return Answer(records(n, n + 1, cursors=following))

    with Source(route) as src:
        config = {"base_url": src.base_url, "data_selector": "data", "paginator": "cursor"}
        pages = await read(conn, config)
    assert len(pages) == 10


async def test_cycle_detection_keeps_up_with_prefetching(conn: HttpConnector) -> None:
    # The cycle is found by the prefetch of a page the caller has not asked for yet;
    # the error surfaces when the caller gets there, after the pages before it.
    base: list[str] = []
    with Source(link_cycle(base, ["/a", "/b", "/a"])) as src:
        base.append(src.base_url)
        config = {
            "base_url": src.base_url,
            "path": "/t",
            "data_selector": "data",
            "paginator": "json_link",
        }
        got: list[Page] = []

        async def read_all() -> None:
            async for page in conn.pages(table(config), None, None, ReadContext("j")):
                got.append(page)

        with pytest.raises(PaginationCycleError):
            await read_all()
    assert [ids for page in got for ids, _ in page.records] == ["/t-1", "/t-2", "/a-1", "/a-2"]
