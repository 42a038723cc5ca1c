"""Downloaded records keep the source's JSON text: stored as sent, read back as the source has them.

The http connector decodes a page without building a dict per record
(``spinner_jobs.connectors.json_pages``): a body of the expected shape gives each
record's text and primary key, any other body is parsed the general way. These tests
hold both halves: the text that reaches the store is the source's own, and a body the
fast path does not take reads (or fails) exactly as before.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import pytest

from enqueuer import Actor, Enqueuer, JobStatus
from enqueuer.backends.inprocess import InProcessBackend
from enqueuer.settings import Settings
from enqueuer.wiring import work_parts
from spinner_jobs.connectors.base import ReadContext
from spinner_jobs.connectors.http import HttpConnector
from spinner_jobs.connectors.json_pages import PageDecoder
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.core.errors import SourceRequestError, SourceUnavailableError
from spinner_jobs.core.models import Table, TableCheckpoint, Workbook
from spinner_jobs.store.base import Store
from spinner_jobs.store.sqlite import SqliteStore
from tests.test_http_confined import ONLY_127_0_0_1, Answer, Source

ACTOR = Actor(user_id="u_1", organization_id="org_1")

# Two pages whose records are written the way no encoder would write them again:
# spaces, escapes, a trailing zero, keys out of order, an integer past 64 bits.
PAGE_1_RECORDS = [
    b'{ "id" : 1, "name": "Zo\\u00eb \\"quoted\\"",  "amount": 1.50 }',
    b'{"z": [1, {"b": 2, "a": 1}], "id": "k-2", "big": 123456789012345678901234567890}',
]
PAGE_2_RECORDS = [b'{"id": 3, "note": "\\ud83d\\ude00 \\/ caf\xc3\xa9", "none": null}']


def body(records: list[bytes], next_cursor: str | None) -> bytes:
    cursor = json.dumps(next_cursor).encode()
    items = b" ,\n ".join(records)
    return b'{"meta": {"next": ' + cursor + b'}, "data": {"items": [' + items + b"]}}"


def pages_route(path: str, query: dict[str, str]) -> Answer:
    if query.get("cursor") == "p2":
        return Answer(body(PAGE_2_RECORDS, None))
    return Answer(body(PAGE_1_RECORDS, "p2"))


CONFIG = {
    "path": "items",
    "data_selector": "data.items",
    "paginator": {"type": "cursor", "cursor_path": "meta.next", "cursor_param": "cursor"},
}


def http_table(base_url: str, **config: Any) -> Table:
    return Table(
        id="tbl_text",
        workbook_id="wb_text",
        name="text",
        connector="http",
        config={"base_url": base_url, **CONFIG, **config},
    )


def put_workbook(store: Store, base_url: str, **config: Any) -> None:
    store.put_workbook(
        Workbook(
            id="wb_text",
            organization_id="org_1",
            name="text",
            tables=[http_table(base_url, **config)],
        )
    )


async def download(enqueuer: Enqueuer) -> None:
    ref = await enqueuer.enqueue_download_records_job("wb_text", ACTOR)
    result = await enqueuer.wait(ref.job_id, actor=ACTOR)
    assert result.status == JobStatus.COMPLETED, result.progress.error


def stored_texts(store: SqliteStore) -> dict[str, str]:
    with sqlite3.connect(store.path) as conn:
        return dict(conn.execute("SELECT remote_id, fields FROM records").fetchall())


async def test_each_record_is_stored_as_the_text_the_source_sent(
    enqueuer: Enqueuer, sqlite_store: SqliteStore
) -> None:
    with Source(pages_route) as source:
        put_workbook(sqlite_store, source.base_url)
        await download(enqueuer)

    sent = [r.decode() for r in PAGE_1_RECORDS + PAGE_2_RECORDS]
    assert stored_texts(sqlite_store) == {"1": sent[0], "k-2": sent[1], "3": sent[2]}
    # Read back, each record is what the source has: the 64-bit overflow kept exact.
    for remote_id, text in zip(["1", "k-2", "3"], sent, strict=True):
        assert sqlite_store.get_record("tbl_text", remote_id) == json.loads(text)
    assert sqlite_store.get_record("tbl_text", "k-2")["big"] == 123456789012345678901234567890  # type: ignore[index]


@pytest.fixture
async def local(
    settings: Settings, any_store: Store, connectors: ConnectorRegistry
) -> AsyncIterator[tuple[Enqueuer, Store]]:
    """An in-process enqueuer over each store kind."""
    backend = InProcessBackend(work_parts(settings, any_store, connectors), settings)
    enqueuer = Enqueuer(settings.model_copy(update={"use_jobs": False}), any_store, backend)
    yield enqueuer, any_store
    await enqueuer.aclose()


async def test_each_store_reads_the_records_back_as_the_source_has_them(
    local: tuple[Enqueuer, Store],
) -> None:
    enqueuer, store = local
    with Source(pages_route) as source:
        put_workbook(store, source.base_url)
        await download(enqueuer)

    expected = {
        str(record["id"]): record
        for record in (json.loads(r) for r in PAGE_1_RECORDS + PAGE_2_RECORDS)
    }
    assert store.record_ids("tbl_text") == sorted(expected)
    for remote_id, record in expected.items():
        assert store.get_record("tbl_text", remote_id) == record
    assert dict(store.read_records("tbl_text", None, 10)) == expected


async def test_an_id_repeated_within_a_decoded_page_is_stored_once_with_its_last_text(
    local: tuple[Enqueuer, Store],
) -> None:
    enqueuer, store = local
    repeated = [b'{"id": 7, "v": "first"}', b'{"id": 8, "v": "x"}', b'{"id": 7, "v": "last"}']

    def route(path: str, query: dict[str, str]) -> Answer:
        return Answer(body(repeated, None))

    with Source(route) as source:
        put_workbook(store, source.base_url)
        await download(enqueuer)

    assert store.record_ids("tbl_text") == ["7", "8"]
    assert store.get_record("tbl_text", "7") == {"id": 7, "v": "last"}


def test_a_number_beyond_a_double_is_read_back_not_refused(sqlite_store: SqliteStore) -> None:
    # JSON allows 1e400; orjson refuses it when parsing, the standard library reads inf.
    put_workbook(sqlite_store, "https://source.example")
    sqlite_store.lock_tables(["tbl_text"], "job_1")
    lease = sqlite_store.lease("tbl_text", "job_1")
    sqlite_store.write_page(
        lease, [("1", '{"id": 1, "x": 1e400}')], TableCheckpoint(cursor=None, records=1, pages=1)
    )

    assert sqlite_store.read_records("tbl_text", None, 10) == [("1", {"id": 1, "x": float("inf")})]
    assert sqlite_store.get_record("tbl_text", "1") == {"id": 1, "x": float("inf")}


# --- bodies the fast path does not take read as they always did --------------------------


@pytest.fixture
async def conn() -> AsyncIterator[HttpConnector]:
    connector = HttpConnector(allowed_networks=ONLY_127_0_0_1)
    yield connector
    await connector.aclose()


async def read_all(conn: HttpConnector, base_url: str, **config: Any) -> list[tuple[str, Any]]:
    table = http_table(base_url, **config)
    rows: list[tuple[str, Any]] = []
    async for page in conn.pages(table, None, None, ReadContext("job_1")):
        rows.extend(page.records)
    return rows


@pytest.mark.parametrize(
    ("items", "ids"),
    [
        # Keys that are neither strings nor integers.
        (b'[{"id": 1.5}, {"id": true}]', ["1.5", "True"]),
        # A key that is an object: kept as the general path always has.
        (b'[{"id": {"k": 1}}]', ["{'k': 1}"]),
        # An integer past 64 bits: the general path's id (a float's), on every page.
        (
            b'[{"id": 18446744073709551615}, {"id": 18446744073709551616}]',
            ["18446744073709551615", "1.8446744073709552e+19"],
        ),
    ],
)
async def test_keys_of_other_types_take_the_general_path(
    conn: HttpConnector, items: bytes, ids: list[str]
) -> None:
    page = b'{"meta": {"next": null}, "data": {"items": ' + items + b"}}"
    with Source(lambda path, query: Answer(page)) as source:
        rows = await read_all(conn, source.base_url)

    assert [remote_id for remote_id, _ in rows] == ids
    assert [fields for _, fields in rows] == json.loads(items)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (b'[{"id": 1}, {"name": "no id"}]', "record 1 has no primary key 'id'"),
        (b'[{"id": 1}, {"id": null}]', "record 1 has no primary key 'id'"),
        (b'[{"id": 1}, ["not", "an", "object"]]', "record 1 is not an object"),
        (b'{"id": 1}', "records at data_selector 'data.items' are not a list"),
    ],
)
async def test_records_of_another_shape_fail_as_before(
    conn: HttpConnector, items: bytes, message: str
) -> None:
    page = b'{"meta": {"next": null}, "data": {"items": ' + items + b"}}"
    with (
        Source(lambda path, query: Answer(page)) as source,
        pytest.raises(SourceRequestError, match=message),
    ):
        await read_all(conn, source.base_url)


async def test_a_record_that_is_not_utf8_is_an_invalid_body(conn: HttpConnector) -> None:
    # The fast path does not read inside values; the record's text must still be UTF-8.
    page = b'{"meta": {"next": null}, "data": {"items": [{"id": 1, "name": "caf\xe9"}]}}'
    with (
        Source(lambda path, query: Answer(page)) as source,
        pytest.raises(SourceUnavailableError, match="invalid JSON body"),
    ):
        await read_all(conn, source.base_url, max_request_retries=0)


# --- the decoder itself -------------------------------------------------------------------


def test_the_decoder_keeps_texts_keys_and_only_the_paths_asked_for() -> None:
    decoder = PageDecoder(("data", "items"), "id", [("meta", "next")])
    page = decoder.decode(body(PAGE_1_RECORDS, "p2"))

    assert page is not None
    assert page.keys == [1, "k-2"]
    assert page.texts == [r.decode() for r in PAGE_1_RECORDS]
    assert page.values == {"meta": {"next": "p2"}}
    # An absent value is absent from the sparse body, as it is from the source's.
    assert decoder.decode(b'{"data": {"items": []}}') == type(page)([], [], {})


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b'{"data": {"items": [{"id": 1}]',  # cut short
        b'{"data": {"items": {"id": 1}}}',  # not an array
        b'{"data": []}',  # the selector crosses an array
        b'{"meta": "x", "data": {"items": []}}',  # the paginator's path crosses a string
        b'{"data": {"items": [{"id": 1}, 7]}}',
        b'{"data": {"items": [{"id": [1]}]}}',
        b'{"data": {"items": [{"id": 1, "x": 1e5, "y": [1,]}]}}',
        b'{"data": {"items": [{"id": 1, "x": "\xff"}]}}',
    ],
)
def test_the_decoder_declines_what_does_not_fit(content: bytes) -> None:
    decoder = PageDecoder(("data", "items"), "id", [("meta", "next")])

    assert decoder.decode(content) is None


@pytest.mark.parametrize(
    ("selector", "paths"),
    [
        (("data", "0"), []),  # an array index
        ((), [("next",)]),  # a body that is an array has no paths
        (("data",), [("data", "next")]),  # one path inside another
    ],
)
def test_shapes_msgspec_cannot_describe_always_take_the_general_path(
    selector: tuple[str, ...], paths: list[tuple[str, ...]]
) -> None:
    decoder = PageDecoder(selector, "id", paths)

    assert not decoder.enabled
    assert decoder.decode(b'{"data": [{"id": 1}]}') is None


def test_a_body_that_is_the_array_takes_the_fast_path() -> None:
    decoder = PageDecoder((), "key", [])
    page = decoder.decode(b'[{"key": "a", "v": 1}, {"v": 2, "key": 2}]')

    assert page is not None
    assert page.keys == ["a", 2]
    assert page.texts == ['{"key": "a", "v": 1}', '{"v": 2, "key": 2}']
