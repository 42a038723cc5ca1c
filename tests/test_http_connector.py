"""HttpConnector against the real loopback SampleApi: paging, resume, retries, errors, auth."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from spinner_jobs.connectors.base import Page, ReadContext
from spinner_jobs.connectors.http import HttpConnector, _retry_after
from spinner_jobs.connectors.registry import default_connectors
from spinner_jobs.core.errors import (
    InvalidTableConfigError,
    PermanentSourceError,
    SourceAuthError,
    SourceNotFoundError,
    SourceRequestError,
    SourceUnavailableError,
)
from spinner_jobs.core.models import ConnectorAccount, Table
from spinner_jobs.shell.sample_api import STYLES, Fault, SampleApi, SampleTable, Style

TABLE_ID = "tbl_customers"
LOOPBACK = ["127.0.0.0/8"]  # the sample API listens on loopback: opened on purpose
SECRET = "s3cr3t-token-value"
FAST = {"retry_backoff": 0.01, "retry_backoff_max": 0.05}


@pytest.fixture
async def connector() -> AsyncIterator[HttpConnector]:
    conn = HttpConnector(allowed_networks=LOOPBACK)
    yield conn
    await conn.aclose()


@pytest.fixture
def api() -> Iterator[SampleApi]:
    """A sample API with one table per style (2500 records, pages of 1000)."""
    with SampleApi({s: SampleTable(records=2500, style=s, seed=7) for s in STYLES}) as server:
        yield server


def make_table(config: dict[str, Any], table_id: str = TABLE_ID) -> Table:
    return Table(id=table_id, workbook_id="wb_1", name="customers", connector="http", config=config)


async def read_pages(
    conn: HttpConnector,
    config: dict[str, Any],
    cursor: str | None = None,
    account: ConnectorAccount | None = None,
) -> list[Page]:
    return [
        page async for page in conn.pages(make_table(config), account, cursor, ReadContext("job_1"))
    ]


def ids(pages: list[Page]) -> list[str]:
    return [remote_id for p in pages for remote_id, _ in p.records]


def account(auth: str, header: str = "X-API-Key", secret: str = SECRET) -> ConnectorAccount:
    return ConnectorAccount(
        id="acc_1", organization_id="org_1", auth=auth, secret=secret, header=header
    )


# --- paging and resume -------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("records", [2500, 2000])
async def test_every_style_reads_each_record_once_in_order(
    connector: HttpConnector, style: Style, records: int
) -> None:
    with SampleApi({"t": SampleTable(records=records, style=style, seed=3)}) as api:
        pages = await read_pages(connector, api.config("t"))

        assert ids(pages) == api.record_ids("t")
        assert len(set(ids(pages))) == records
        assert [p.next_cursor is None for p in pages] == [False] * (len(pages) - 1) + [True]
        # The totals (or the link's absence) end the read: no extra empty page.
        assert len(pages) == (1 if style == "single_page" else -(-records // 1000))
        assert len(api.requests) == len(pages)
        remote_id, text = pages[0].records[0]
        # The record's fields come as the source's JSON text, kept for the store.
        assert isinstance(text, str)
        fields = orjson.loads(text)
        assert fields["id"] == remote_id
        assert fields["index"] == 0


@pytest.mark.parametrize("style", [s for s in STYLES if s != "single_page"])
async def test_resuming_from_each_cursor_reads_exactly_the_rest(
    connector: HttpConnector, api: SampleApi, style: Style
) -> None:
    config = api.config(style)
    pages = await read_pages(connector, config)
    assert [len(p.records) for p in pages] == [1000, 1000, 500]

    for done in (1, 2):
        api.clear_requests()
        rest = await read_pages(connector, config, cursor=pages[done - 1].next_cursor)
        assert ids(rest) == ids(pages[done:])
        assert [p.next_cursor for p in rest] == [p.next_cursor for p in pages[done:]]
        assert len(api.requests) == 3 - done  # no page fetched twice, none skipped


async def test_empty_table_yields_one_empty_last_page(connector: HttpConnector) -> None:
    with SampleApi({"t": SampleTable(records=0, style="json_link")}) as api:
        pages = await read_pages(connector, api.config("t"))
    assert pages == [Page([], None)]


@pytest.mark.parametrize(("records", "sizes"), [(2500, [1000, 1000, 500]), (2000, [1000, 1000, 0])])
async def test_offset_without_total_stops_on_a_short_page(
    connector: HttpConnector, records: int, sizes: list[int]
) -> None:
    with SampleApi({"t": SampleTable(records=records, style="offset")}) as api:
        config = api.config("t")
        config["paginator"] = {"type": "offset", "limit": 1000}
        pages = await read_pages(connector, config)
        assert [len(p.records) for p in pages] == sizes
        assert ids(pages) == api.record_ids("t")
        assert [r.query["offset"] for r in api.requests] == ["0", "1000", "2000"]


async def test_page_number_without_total_stops_on_a_short_page(connector: HttpConnector) -> None:
    with SampleApi({"t": SampleTable(records=1200, style="page_number")}) as api:
        config = api.config("t")
        config["paginator"] = {
            "type": "page_number",
            "page_size_param": "per_page",
            "page_size": 500,
        }
        pages = await read_pages(connector, config)
        assert [len(p.records) for p in pages] == [500, 500, 200]
        assert [p.next_cursor for p in pages] == ["2", "3", None]
        assert [r.query for r in api.requests] == [
            {"page": str(n), "per_page": "500"} for n in (1, 2, 3)
        ]


async def test_offset_trusts_the_total_over_a_capped_page_size(connector: HttpConnector) -> None:
    # The server caps `limit` at 400: short pages that are not the last.
    with SampleApi({"t": SampleTable(records=1000, style="offset")}, max_page_size=400) as api:
        config = api.config("t")
        config["paginator"]["limit"] = 400
        assert ids(await read_pages(connector, config)) == api.record_ids("t")


def prefetches() -> list[asyncio.Task[Any]]:
    """The connector's page reads running in their own tasks (the prefetch)."""
    return [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") == "_TableReader.read"
    ]


async def test_stopping_early_cancels_the_prefetched_page(
    connector: HttpConnector, api: SampleApi
) -> None:
    # The second page answers slowly, so its prefetch is still in flight when the
    # caller stops after the first.
    api.inject(Fault(status=None, delay=1.0, table="json_link", skip=1))
    gen = connector.pages(make_table(api.config("json_link")), None, None, ReadContext("job_1"))
    assert isinstance(gen, AsyncGenerator)
    first = await anext(gen)
    assert len(first.records) == 1000
    [prefetch] = prefetches()
    assert not prefetch.done()
    await gen.aclose()
    # Asked to cancel at once (no waiting on the clock to observe it) ...
    assert prefetch.cancelling() or prefetch.cancelled()
    # ... and cancelled, not finished: the slow answer was never read.
    done, _ = await asyncio.wait([prefetch], timeout=30)
    assert done == {prefetch}
    assert prefetch.cancelled()


async def test_bad_cursors_are_config_errors(connector: HttpConnector, api: SampleApi) -> None:
    with pytest.raises(InvalidTableConfigError, match="does not fit the offset paginator"):
        await read_pages(connector, api.config("offset"), cursor="not-a-number")
    with pytest.raises(InvalidTableConfigError, match="single_page"):
        await read_pages(connector, api.config("single_page"), cursor="2")
    with pytest.raises(InvalidTableConfigError, match="next-page URL"):
        await read_pages(connector, api.config("json_link"), cursor="page=2")


# --- retries ----------------------------------------------------------------------------


async def test_429_waits_for_retry_after_then_retries(
    connector: HttpConnector, api: SampleApi
) -> None:
    api.inject(Fault(status=429, retry_after="1", table="json_link", skip=1))
    started = time.monotonic()
    pages = await read_pages(connector, api.config("json_link"))
    elapsed = time.monotonic() - started

    assert ids(pages) == api.record_ids("json_link")
    assert elapsed >= 0.95
    statuses = [r.status for r in api.requests]
    assert statuses == [200, 429, 200, 200]
    assert api.requests[2].at - api.requests[1].at >= 0.95
    assert api.requests[1].query == api.requests[2].query == {"page": "2"}


async def test_a_retry_after_beyond_the_cap_is_left_to_the_job(
    connector: HttpConnector, api: SampleApi
) -> None:
    api.inject(Fault(status=429, retry_after="3600"))
    started = time.monotonic()
    with pytest.raises(SourceUnavailableError, match=r"tbl_customers.*429.*3600s"):
        await read_pages(connector, api.config("cursor"))
    # No wait at all; the bound holds on a loaded machine and is far below any wait a
    # connector honouring the header (3600 s) or its cap would do.
    assert time.monotonic() - started < 5.0
    assert len(api.requests) == 1


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert _retry_after("2") == 2.0
    assert _retry_after(" 0 ") == 0.0
    in_ten = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    assert 8.5 <= (_retry_after(in_ten) or 0) <= 10.0
    past = email.utils.format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert _retry_after(past) == 0.0
    assert _retry_after("soon") is None
    assert _retry_after(None) is None


async def test_a_5xx_burst_shorter_than_the_retries_succeeds(
    connector: HttpConnector, api: SampleApi
) -> None:
    api.inject(Fault(status=503, times=3, table="offset", skip=1))
    pages = await read_pages(connector, api.config("offset", max_request_retries=3, **FAST))
    assert ids(pages) == api.record_ids("offset")
    assert [r.status for r in api.requests] == [200, 503, 503, 503, 200, 200]


async def test_a_5xx_burst_longer_than_the_retries_is_unavailable(
    connector: HttpConnector, api: SampleApi
) -> None:
    api.inject(Fault(status=500, times=None))
    with pytest.raises(SourceUnavailableError) as caught:
        await read_pages(connector, api.config("page_number", max_request_retries=2, **FAST))
    message = str(caught.value)
    assert "'tbl_customers'" in message
    assert "500 Internal Server Error" in message
    assert "/tables/page_number" in message
    assert "3 attempts" in message
    assert len(api.requests) == 3


async def test_a_connection_dropped_mid_body_is_retried(
    connector: HttpConnector, api: SampleApi
) -> None:
    api.inject(Fault(status=None, drop=True, skip=1, table="header_link"))
    pages = await read_pages(connector, api.config("header_link", **FAST))
    assert ids(pages) == api.record_ids("header_link")
    assert [r.query.get("page") for r in api.requests] == [None, "2", "2", "3"]


async def test_a_truncated_json_body_is_retried(connector: HttpConnector, api: SampleApi) -> None:
    api.inject(Fault(status=200, body='{"data": [{"id": "rec_', table="json_link"))
    pages = await read_pages(connector, api.config("json_link", **FAST))
    assert ids(pages) == api.record_ids("json_link")
    assert len(api.requests) == 4


async def test_a_timeout_is_retried(connector: HttpConnector, api: SampleApi) -> None:
    api.inject(Fault(status=None, delay=0.6, table="cursor"))
    pages = await read_pages(connector, api.config("cursor", timeout=0.2, **FAST))
    assert ids(pages) == api.record_ids("cursor")
    # The slow answer is logged once the server gives up sleeping on it.
    logged = await asyncio.to_thread(api.wait_for_requests, 4)
    assert [r.query.get("cursor") is None for r in logged] == [True, False, False, True]


async def test_an_unreachable_source_is_unavailable(connector: HttpConnector) -> None:
    with SampleApi({}) as gone:
        base_url = gone.base_url
    config = {
        "base_url": base_url,
        "path": "/tables/x",
        "paginator": "single_page",
        "max_request_retries": 1,
        **FAST,
    }
    with pytest.raises(SourceUnavailableError, match=r"'tbl_customers'.*2 attempts.*ConnectError"):
        await read_pages(connector, config)


# --- permanent errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "phrase"),
    [
        (400, SourceRequestError, "400 Bad Request"),
        (401, SourceAuthError, "401 Unauthorized"),
        (403, SourceAuthError, "403 Forbidden"),
        (404, SourceNotFoundError, "404 Not Found"),
        (422, SourceRequestError, "422 Unprocessable Entity"),
    ],
)
async def test_4xx_raise_the_matching_permanent_error(
    connector: HttpConnector,
    api: SampleApi,
    status: int,
    error: type[PermanentSourceError],
    phrase: str,
) -> None:
    api.inject(Fault(status=status, times=None))
    with pytest.raises(error) as caught:
        await read_pages(connector, api.config("cursor"))
    assert type(caught.value) is error
    assert not caught.value.retryable
    assert str(caught.value).startswith(
        f"table 'tbl_customers': source answered {phrase} for GET /tables/cursor;"
    )
    assert len(api.requests) == 1  # never retried


async def test_an_unknown_table_is_not_found(connector: HttpConnector, api: SampleApi) -> None:
    config = api.config("json_link", path="/tables/nope")
    with pytest.raises(SourceNotFoundError, match="404 Not Found for GET /tables/nope"):
        await read_pages(connector, config)


async def test_records_that_are_not_a_list_are_a_request_error(
    connector: HttpConnector, api: SampleApi
) -> None:
    config = api.config("json_link", data_selector="links")
    with pytest.raises(SourceRequestError, match=r"'links' are not a list \(got object\)"):
        await read_pages(connector, config)
    config = api.config("json_link", data_selector="data.missing")
    with pytest.raises(SourceRequestError, match=r"not a list \(got nothing\)"):
        await read_pages(connector, config)


async def test_a_record_without_the_primary_key_is_a_request_error(
    connector: HttpConnector, api: SampleApi
) -> None:
    with pytest.raises(SourceRequestError, match="'tbl_customers': record 0 has no primary key"):
        await read_pages(connector, api.config("offset", primary_key="uuid"))


async def test_another_primary_key_field_is_used_as_a_string(
    connector: HttpConnector, api: SampleApi
) -> None:
    pages = await read_pages(connector, api.config("single_page", primary_key="index"))
    assert ids(pages) == [str(i) for i in range(2500)]


# --- credentials ----------------------------------------------------------------------------


async def test_bearer_credentials_are_sent(connector: HttpConnector) -> None:
    with SampleApi({"t": SampleTable(records=1500)}, bearer_token=SECRET) as api:
        pages = await read_pages(connector, api.config("t"), account=account("bearer"))
        assert len(ids(pages)) == 1500
        assert {r.headers["authorization"] for r in api.requests} == {f"Bearer {SECRET}"}
        assert all(SECRET not in (p.next_cursor or "") for p in pages)


async def test_api_key_credentials_are_sent_in_the_account_header(connector: HttpConnector) -> None:
    with SampleApi(
        {"t": SampleTable(records=1500, style="cursor")}, api_key=SECRET, api_key_header="X-Token"
    ) as api:
        pages = await read_pages(connector, api.config("t"), account=account("api_key", "X-Token"))
        assert len(ids(pages)) == 1500
        assert {r.headers["x-token"] for r in api.requests} == {SECRET}
        assert all("authorization" not in r.headers for r in api.requests)


async def test_missing_or_wrong_credentials_are_auth_errors(connector: HttpConnector) -> None:
    with SampleApi({"t": SampleTable(records=10)}, bearer_token=SECRET) as api:
        with pytest.raises(SourceAuthError, match="401 Unauthorized"):
            await read_pages(connector, api.config("t"))
        wrong = account("bearer", secret="wrong-secret-value")
        with pytest.raises(SourceAuthError) as caught:
            await read_pages(connector, api.config("t"), account=wrong)
        assert "wrong-secret-value" not in str(caught.value)


async def test_secrets_echoed_by_the_source_are_redacted(
    connector: HttpConnector, api: SampleApi
) -> None:
    api.inject(Fault(status=403, body=f'{{"error": "token {SECRET} was revoked"}}'))
    with pytest.raises(SourceAuthError) as caught:
        await read_pages(connector, api.config("json_link"), account=account("bearer"))
    assert SECRET not in str(caught.value)
    assert "token *** was revoked" in str(caught.value)


async def test_credentials_stay_on_the_base_url_origin(connector: HttpConnector) -> None:
    # base_url says "localhost"; the server's next links say "127.0.0.1": another origin.
    with SampleApi({"t": SampleTable(records=2500)}) as api:
        config = api.config("t", base_url=api.base_url.replace("127.0.0.1", "localhost"))
        pages = await read_pages(connector, config, account=account("bearer"))
        assert len(ids(pages)) == 2500
        sent = ["authorization" in r.headers for r in api.requests]
        assert sent == [True, False, False]


# --- rate limit and config --------------------------------------------------------------------


async def test_requests_per_second_spaces_requests(connector: HttpConnector) -> None:
    with SampleApi({"t": SampleTable(records=2000, page_size=500, style="cursor")}) as api:
        await read_pages(connector, api.config("t", requests_per_second=10))
        starts = [r.at for r in api.requests]
    assert len(starts) == 4
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.08, gaps


def _org_account(org: str) -> ConnectorAccount:
    return ConnectorAccount(
        id=f"acc_{org}", organization_id=org, auth="bearer", secret=f"token-of-{org}-0123"
    )


@pytest.mark.parametrize("same_account", [False, True])
async def test_the_rate_limit_is_kept_per_account(
    connector: HttpConnector, same_account: bool
) -> None:
    # Two tables on one base_url at 2 requests/s, read at once. With the accounts of two
    # organizations, neither waits for the other's requests (the source meters each
    # credential); with one account, the two reads share its limit.
    first, second = _org_account("org_a"), _org_account("org_b")
    if same_account:
        second = first
    with SampleApi({"t": SampleTable(records=20, page_size=10, style="cursor")}) as api:
        config = api.config("t", requests_per_second=2)
        await asyncio.gather(
            read_pages(connector, config, account=first),
            read_pages(connector, config, account=second),
        )
        starts = sorted(r.at for r in api.requests)
    assert len(starts) == 4
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    if same_account:
        assert min(gaps) >= 0.45, gaps
    else:
        # The two first requests go out together, then each read keeps its own pace.
        assert gaps[0] < 0.25, gaps
        assert starts[2] - starts[0] >= 0.45, gaps
        assert starts[3] - starts[1] >= 0.45, gaps


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"path": "/x", "paginator": "single_page"}, "base_url: Field required"),
        ({"base_url": "ftp://example.com", "paginator": "single_page"}, "base_url: Value error"),
        ({"base_url": "http://example.com"}, "paginator: Field required"),
        ({"base_url": "http://example.com", "paginator": "magic"}, "paginator: Input tag 'magic'"),
        (
            {"base_url": "http://example.com", "paginator": {"type": "offset"}},
            "paginator.offset.limit: Field required",
        ),
        (
            {
                "base_url": "http://example.com",
                "paginator": {"type": "page_number", "page_size_param": "n"},
            },
            "page_size_param needs page_size",
        ),
        (
            {"base_url": "http://example.com", "paginator": "single_page", "timeout": 0},
            "timeout: Input should be greater than 0",
        ),
        (
            {"base_url": "http://example.com", "paginator": "single_page", "token": "hunter2"},
            "token: Extra inputs are not permitted",
        ),
    ],
)
async def test_invalid_config_names_the_table_and_field(
    connector: HttpConnector, config: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidTableConfigError) as caught:
        await read_pages(connector, config)
    message = str(caught.value)
    assert message.startswith("table 'tbl_customers': invalid http table config: ")
    assert problem in message
    assert "hunter2" not in message
    with pytest.raises(InvalidTableConfigError):
        connector.validate_config(config)


def test_the_default_registry_has_http_and_files() -> None:
    registry = default_connectors(http_allowed_networks=LOOPBACK)
    assert {"demo", "http", "files"} <= set(registry.names)
    registry.get("http").validate_config(
        {"base_url": "https://api.example.com", "paginator": {"type": "json_link"}}
    )
