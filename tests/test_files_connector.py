"""FilesConnector on real CSV and JSON-lines files: paging, resume, bounded memory, errors."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from spinner_jobs.connectors.base import Page, ReadContext
from spinner_jobs.connectors.files import FilesConnector
from spinner_jobs.core.errors import (
    InvalidTableConfigError,
    SourceNotFoundError,
    SourceRequestError,
)
from spinner_jobs.core.models import Table

TABLE_ID = "tbl_orders"


def make_table(config: dict[str, Any]) -> Table:
    return Table(id=TABLE_ID, workbook_id="wb_1", name="orders", connector="files", config=config)


def rooted_at_its_folder(config: dict[str, Any]) -> FilesConnector:
    """A connector whose root is the folder of the table's (absolute) file."""
    path = Path(str(config.get("path", "")))
    return FilesConnector(path.parent if path.is_absolute() else Path.cwd())


async def read_pages(
    config: dict[str, Any], cursor: str | None = None, conn: FilesConnector | None = None
) -> list[Page]:
    conn = conn or rooted_at_its_folder(config)
    return [page async for page in conn.pages(make_table(config), None, cursor, ReadContext("j"))]


def ids(pages: list[Page]) -> list[str]:
    return [remote_id for p in pages for remote_id, _ in p.records]


def write_csv(path: Path, rows: int, *, delimiter: str = ",", pad: int = 0) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["id", "name", "note"])
        for i in range(rows):
            # Every 7th note spans two lines: a record is not always a line.
            note = f"line one\nline two of {i}" if i % 7 == 0 else f"note, {i}{'x' * pad}"
            writer.writerow([f"ord_{i:05d}", f"name {i}", note])
    return path


def write_jsonl(path: Path, rows: int, *, pad: int = 0) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            f.write(json.dumps({"id": i, "name": f"name {i}", "tags": ["a", i], "pad": "x" * pad}))
            f.write("\n")
            if i == 3:
                f.write("\n")  # blank lines are skipped
    return path


async def test_csv_reads_every_row_once_in_order(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "orders.csv", 2500)
    pages = await read_pages({"path": str(path), "format": "csv"})
    assert [len(p.records) for p in pages] == [1000, 1000, 500]
    assert ids(pages) == [f"ord_{i:05d}" for i in range(2500)]
    assert pages[0].records[7][1] == {
        "id": "ord_00007",
        "name": "name 7",
        "note": "line one\nline two of 7",
    }
    assert [p.next_cursor is None for p in pages] == [False, False, True]


async def test_jsonl_reads_every_record_with_its_json_types(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "orders.jsonl", 2001)
    pages = await read_pages({"path": str(path), "page_size": 1000})  # format from the suffix
    assert [len(p.records) for p in pages] == [1000, 1000, 1]
    assert ids(pages) == [str(i) for i in range(2001)]
    assert pages[0].records[5][1] == {"id": 5, "name": "name 5", "tags": ["a", 5], "pad": ""}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_resuming_from_each_cursor_reads_exactly_the_rest(tmp_path: Path, fmt: str) -> None:
    path = (
        write_csv(tmp_path / "t.csv", 100, delimiter=";")
        if fmt == "csv"
        else write_jsonl(tmp_path / "t.jsonl", 100)
    )
    config = {"path": str(path), "format": fmt, "page_size": 7, "delimiter": ";"}
    pages = await read_pages(config)
    assert len(ids(pages)) == 100
    for done in range(1, len(pages)):
        rest = await read_pages(config, cursor=pages[done - 1].next_cursor)
        assert ids(rest) == ids(pages[done:])
        assert [p.next_cursor for p in rest] == [p.next_cursor for p in pages[done:]]


async def test_a_csv_with_a_byte_order_mark_and_only_a_header(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfid,name\r\n")
    assert await read_pages({"path": str(path)}) == [Page([], None)]
    path.write_bytes(b"\xef\xbb\xbfid,name\r\n1,a\r\n2,b\r\n")
    pages = await read_pages({"path": str(path), "page_size": 1})
    assert ids(pages) == ["1", "2"]
    assert ids(await read_pages({"path": str(path)}, cursor=pages[0].next_cursor)) == ["2"]


async def test_an_empty_file_yields_one_empty_last_page(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert await read_pages({"path": str(tmp_path / "empty.jsonl")}) == [Page([], None)]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_a_big_file_is_read_with_bounded_memory(tmp_path: Path, fmt: str) -> None:
    # Memory is bounded by the page, not the file: at most two pages are alive (the
    # one the caller holds and the one being read), each parsed into Python objects
    # of two to three times its bytes, plus a fixed overhead. Measured here: 3.5 to
    # 5.8 page-bytes; the bound leaves twice that for a busy machine. The file is 80
    # pages, so a reader that loads the whole file (80+ page-bytes) fails it.
    rows, page_size = 10_000, 125
    path = (
        write_csv(tmp_path / "big.csv", rows, pad=600)
        if fmt == "csv"
        else write_jsonl(tmp_path / "big.jsonl", rows, pad=1000)
    )
    size = path.stat().st_size
    count = pages = 0
    tracemalloc.start()
    try:
        async for page in FilesConnector(tmp_path).pages(
            make_table({"path": str(path), "page_size": page_size}), None, None, ReadContext("j")
        ):
            count += len(page.records)
            pages += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == rows
    assert pages == rows // page_size == 80
    page_bytes = size / pages
    assert peak < 12 * page_bytes, f"peak {peak} B is {peak / page_bytes:.1f} pages of the file"


# --- errors ---------------------------------------------------------------------------------


async def test_a_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match=r"'tbl_orders': file '.*nope\.csv' not found"):
        await read_pages({"path": str(tmp_path / "nope.csv")})


async def test_a_bad_json_line_names_the_table_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1}\n\n{"id": 2}\n{"id": 3,\n')
    with pytest.raises(SourceRequestError) as caught:
        await read_pages({"path": str(path)})
    message = str(caught.value)
    assert message.startswith(f"table 'tbl_orders': file '{path}' line 4: invalid JSON")


async def test_line_numbers_stay_right_after_a_resume(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    path.write_text("".join(f'{{"id": {i}}}\n' for i in range(10)) + '{"name": "no id"}\n')
    pages: list[Page] = []

    async def read_until_failure() -> None:
        table = make_table({"path": str(path), "page_size": 4})
        async for page in FilesConnector(tmp_path).pages(table, None, None, ReadContext("j")):
            pages.append(page)

    with pytest.raises(SourceRequestError):
        await read_until_failure()
    assert len(pages) == 2
    with pytest.raises(SourceRequestError, match="line 11: no primary key 'id'"):
        await read_pages({"path": str(path), "page_size": 4}, cursor=pages[1].next_cursor)


async def test_a_non_object_json_line_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "list.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(SourceRequestError, match="line 1: the line is not a JSON object"):
        await read_pages({"path": str(path)})


async def test_csv_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("id,name\n1,a\n2,b,extra\n")
    with pytest.raises(SourceRequestError, match="line 3: 3 fields where the header has 2"):
        await read_pages({"path": str(path)})
    path.write_text("id,name\n1,a\n,b\n")
    with pytest.raises(SourceRequestError, match="line 3: empty primary key 'id'"):
        await read_pages({"path": str(path)})
    path.write_text("key,name\n1,a\n")
    with pytest.raises(SourceRequestError, match="line 1: the CSV header has no primary key"):
        await read_pages({"path": str(path)})


async def test_a_cursor_that_no_longer_fits_the_file_is_rejected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", 50)
    pages = await read_pages({"path": str(path), "page_size": 10})
    path.write_text('{"id": "rewritten with a much longer first line than before"}\n' * 3)
    with pytest.raises(SourceRequestError, match="changed since cursor"):
        await read_pages({"path": str(path), "page_size": 10}, cursor=pages[0].next_cursor)


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"format": "csv"}, "path: Field required"),
        ({"path": "x.csv", "format": "xml"}, "format: Input should be 'csv' or 'jsonl'"),
        ({"path": "x.txt"}, "cannot tell from the file name"),
        ({"path": "x.csv", "page_size": 0}, "page_size: Input should be greater than or equal"),
        ({"path": "x.csv", "delimiter": ";;"}, "delimiter: String should have at most 1"),
        ({"path": "x.csv", "encoding": "klingon"}, "unknown encoding 'klingon'"),
        ({"path": "x.csv", "encoding": "base64"}, "'base64' is not a text encoding"),
        ({"path": "x.csv", "encoding": "zlib_codec"}, "'zlib_codec' is not a text encoding"),
        ({"path": "x.csv", "encoding": "undefined"}, "'undefined' is not a text encoding"),
        ({"path": "x.csv", "sheet": 1}, "sheet: Extra inputs are not permitted"),
    ],
)
async def test_invalid_config_names_the_table_and_field(
    config: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidTableConfigError) as caught:
        await read_pages(config)
    assert str(caught.value).startswith("table 'tbl_orders': invalid files table config: ")
    assert problem in str(caught.value)
    with pytest.raises(InvalidTableConfigError):
        FilesConnector(Path.cwd()).validate_config(config)


async def test_a_bad_cursor_is_a_config_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", 5)
    with pytest.raises(InvalidTableConfigError, match="is not a files cursor"):
        await read_pages({"path": str(path)}, cursor="page-2")


async def test_the_root_confines_the_paths(tmp_path: Path) -> None:
    inside = tmp_path / "data"
    inside.mkdir()
    write_jsonl(inside / "ok.jsonl", 3)
    write_jsonl(tmp_path / "secret.jsonl", 3)
    conn = FilesConnector(inside)
    assert ids(await read_pages({"path": "ok.jsonl"}, conn=conn)) == ["0", "1", "2"]
    with pytest.raises(InvalidTableConfigError, match="outside the files root"):
        await read_pages({"path": "../secret.jsonl"}, conn=conn)
    with pytest.raises(InvalidTableConfigError, match="outside the files root"):
        conn.validate_config({"path": str(tmp_path / "secret.jsonl")})
