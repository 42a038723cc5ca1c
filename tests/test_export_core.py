"""Export core: tables streamed from a real store (SQLite and PostgreSQL) into files.

Files are parsed back and compared with the store; size and SHA-256 are checked
against the bytes on disk; atomicity is checked by cancelling and failing exports
midway; flat memory is checked with tracemalloc against a whole-table variant.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import threading
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from activities.export_core import (
    CSV_ATTEMPTS,
    StoreRunner,
    _AtomicFile,
    _in_thread,
    _target,
    _write_csv_page,
    _write_jsonl_page,
    export_table,
    safe_file_name,
)
from spinner_jobs.core.errors import InvalidJobError, StoreUnavailableError
from spinner_jobs.core.exports import (
    ExportedFile,
    ExportFormat,
    ExportPathError,
    ExportTableChangedError,
)
from spinner_jobs.core.models import RecordRow, Table, TableCheckpoint, Workbook
from spinner_jobs.store import Store
from spinner_jobs.store.postgres import PostgresStore
from spinner_jobs.store.sqlite import SqliteStore
from tests.pg import fresh_schema

FORMATS = list(ExportFormat)


def to_thread(call: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    """The simplest StoreRunner: the call in a thread, no outage handling."""
    return asyncio.to_thread(call, *args)


RUN: StoreRunner = to_thread


def _fill(store: Store, table_id: str, records: Sequence[RecordRow], page: int = 2000) -> None:
    """Put ``records`` in a fresh table through the download path (lock, lease, pages)."""
    store.put_workbook(
        Workbook(
            id=f"wb-{table_id}",
            organization_id="org1",
            name="Exports",
            tables=[Table(id=table_id, workbook_id=f"wb-{table_id}", name="T", connector="http")],
        )
    )
    assert store.lock_tables([table_id], "job-fill") == {}
    lease = store.lease(table_id, "job-fill")
    for start in range(0, len(records), page):
        chunk = records[start : start + page]
        store.write_page(lease, chunk, TableCheckpoint(cursor=str(start), pages=1))
    store.unlock_tables([table_id], "job-fill")


def _stored(store: Store, table_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (rid, dict(store.get_record(table_id, rid) or {})) for rid in store.record_ids(table_id)
    ]


async def _export(
    store: Store,
    table_id: str,
    folder: Path,
    fmt: ExportFormat,
    *,
    page_size: int = 3,
    run: StoreRunner = RUN,
    reports: list[int] | None = None,
    stem: str | None = None,
) -> ExportedFile:
    seen = reports if reports is not None else []
    return await export_table(
        run,
        store,
        table_id,
        folder,
        stem or table_id,
        fmt,
        page_size=page_size,
        report=seen.append,
    )


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """The export folder: beside the SQLite file, not the folder holding it."""
    return tmp_path / "exports"


def _csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _inside(path: Path, folder: Path) -> bool:
    return path.is_absolute() and path.resolve().parent == folder.resolve()


def _check_digest(result: ExportedFile) -> bytes:
    data = Path(result.path).read_bytes()
    assert result.bytes == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    return data


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


MIXED: list[RecordRow] = [
    ("r01", {"name": "Ada", "age": 36, "score": 3.25, "active": True, "tags": ["a", "b"]}),
    ("r02", {"name": "Grace", "nested": {"k": [1, {"z": None}], "a": "x"}, "age": None}),
    ("r03", {"name": 'línea\nnueva, "quoted"', "emoji": "🚀 ok", "日本": "東京"}),
    ("r04", {}),
    ("r05", {"age": -7, "big": 12345678901234, "active": False}),
    ("r06", {"name": "Ωmega", "tags": []}),
    ("r07", {"name": "tail"}),
]


def _expected_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return "'" + value if value[:1] in {"=", "+", "-", "@", "\t", "\r"} else value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- read_records ------------------------------------------------------------------------


def test_read_records_pages_in_byte_order_and_after_is_exclusive(any_store: Store) -> None:
    # Ids that sort differently under a linguistic collation (the test database's is
    # en-US ICU) and under byte order: upper before lower, "-" and accents.
    ids = ["b", "B", "a", "a-b", "ab", "A", "é", "e", "z", "Z10", "Z9", "日本", "😀", "ä"]
    records: list[RecordRow] = [(rid, {"v": rid, "n": i}) for i, rid in enumerate(ids)]
    _fill(any_store, "t1", records)
    _fill(any_store, "t2", [("a", {"other": True}), ("zz", {"other": True})])
    want = sorted(ids, key=lambda s: s.encode())

    pages: list[list[RecordRow]] = []
    after: str | None = None
    while True:
        page = any_store.read_records("t1", after, 4)
        pages.append(page)
        if len(page) < 4:
            break
        after = page[-1][0]
    assert [len(p) for p in pages] == [4, 4, 4, 2]
    got = [row for p in pages for row in p]
    assert [rid for rid, _ in got] == want
    assert {rid: dict(f) for rid, f in got} == {rid: dict(f) for rid, f in records}

    assert [r for r, _ in any_store.read_records("t1", "a", 3)] == ["a-b", "ab", "b"]
    # `after` need not be an id of the table.
    assert [r for r, _ in any_store.read_records("t1", "a0", 2)] == ["ab", "b"]
    assert [r for r, _ in any_store.read_records("t1", "", 1)] == ["A"]
    assert any_store.read_records("t1", want[-1], 10) == []
    assert any_store.read_records("missing", None, 10) == []
    assert [r for r, _ in any_store.read_records("t2", None, 10)] == ["a", "zz"]
    with pytest.raises(InvalidJobError, match="limit"):
        any_store.read_records("t1", None, 0)
    with pytest.raises(InvalidJobError, match="limit"):
        any_store.read_records("t1", None, -1)


# --- round trips -------------------------------------------------------------------------


async def test_csv_round_trip(any_store: Store, out: Path) -> None:
    _fill(any_store, "t1", MIXED)
    reports: list[int] = []

    result = await _export(any_store, "t1", out, ExportFormat.CSV, reports=reports)

    assert result.format is ExportFormat.CSV
    assert result.rows == len(MIXED)
    assert reports == [3, 6, 7]
    _check_digest(result)
    rows = _csv_rows(Path(result.path))
    stored = _stored(any_store, "t1")
    columns = sorted({name for _, fields in stored for name in fields})
    assert rows[0] == ["id", *columns]
    assert len(rows) == 1 + len(stored)
    for row, (rid, fields) in zip(rows[1:], stored, strict=True):
        assert row[0] == rid
        assert row[1:] == [_expected_cell(fields.get(c)) for c in columns]
        for column, cell in zip(columns, row[1:], strict=True):
            value = fields.get(column)
            if value is not None and not isinstance(value, str):
                assert json.loads(cell) == value  # nested values parse back


async def test_jsonl_round_trip(any_store: Store, out: Path) -> None:
    _fill(any_store, "t1", MIXED)
    reports: list[int] = []

    result = await _export(any_store, "t1", out, ExportFormat.JSONL, reports=reports)

    assert result.rows == len(MIXED)
    assert reports == [3, 6, 7]
    data = _check_digest(result)
    assert data.endswith(b"\n")
    lines = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    assert lines == [{"id": rid, "fields": fields} for rid, fields in _stored(any_store, "t1")]
    assert all(list(line) == ["id", "fields"] for line in lines)


async def test_jsonl_bytes_are_the_same_from_either_store(
    postgres_url: str, tmp_path: Path
) -> None:
    lite = SqliteStore(tmp_path / "store.db")
    lite.migrate()
    with fresh_schema(postgres_url) as url:
        pg = PostgresStore(url)
        pg.migrate()
        try:
            digests = []
            for name, store in (("sqlite", lite), ("postgres", pg)):
                _fill(store, "t1", MIXED)
                result = await _export(store, "t1", tmp_path / name, ExportFormat.JSONL)
                digests.append(result.sha256)
        finally:
            pg.close()
            lite.close()
    assert digests[0] == digests[1]


@pytest.mark.parametrize("fmt", FORMATS)
async def test_empty_table(any_store: Store, out: Path, fmt: ExportFormat) -> None:
    _fill(any_store, "t1", [])
    reports: list[int] = []

    result = await _export(any_store, "t1", out, fmt, reports=reports)

    data = _check_digest(result)
    assert result.rows == 0
    assert reports == []
    assert data == (b"id\r\n" if fmt is ExportFormat.CSV else b"")
    assert _leftovers(out) == [Path(result.path).name]


async def test_unicode_names_ids_and_values(any_store: Store, out: Path) -> None:
    records: list[RecordRow] = [
        ("ключ-1", {"名前": "山田 太郎", "emoji": "👩‍💻🏳️‍🌈", "rtl": "שלום"}),
        ("ключ-2", {"名前": "Zoë Ångström", "combining": "e\u0301"}),
    ]
    _fill(any_store, "таблица", records)

    as_csv = await _export(any_store, "таблица", out, ExportFormat.CSV)
    as_jsonl = await _export(any_store, "таблица", out, ExportFormat.JSONL)

    rows = _csv_rows(Path(as_csv.path))
    assert rows[0] == ["id", "combining", "emoji", "rtl", "名前"]
    assert rows[1] == ["ключ-1", "", "👩‍💻🏳️‍🌈", "שלום", "山田 太郎"]
    assert rows[2] == ["ключ-2", "e\u0301", "", "", "Zoë Ångström"]
    lines = _text(Path(as_jsonl.path)).splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": rid, "fields": fields} for rid, fields in records
    ]
    assert "ключ" in lines[0]  # UTF-8 text, not \u escapes


# --- CSV specifics -----------------------------------------------------------------------


async def test_csv_guards_spreadsheet_formulas(any_store: Store, out: Path) -> None:
    records: list[RecordRow] = [
        ("=id", {"f": "=1+2", '=HYPERLINK("http://x")': "h"}),
        ("r2", {"f": "+SUM(A1:A9)"}),
        ("r3", {"f": "-2+3"}),
        ("r4", {"f": "@cmd"}),
        ("r5", {"f": "\tTAB"}),
        ("r6", {"f": "\rCR"}),
        ("r7", {"f": -5}),  # a number is not a formula
        ("r8", {"f": "'already"}),
        ("r9", {"f": "a=b"}),
    ]
    _fill(any_store, "t1", records)

    result = await _export(any_store, "t1", out, ExportFormat.CSV)

    rows = _csv_rows(Path(result.path))
    assert rows[0] == ["id", '\'=HYPERLINK("http://x")', "f"]
    assert rows[1] == ["'=id", "h", "'=1+2"]
    assert [row[2] for row in rows[2:]] == [
        "'+SUM(A1:A9)",
        "'-2+3",
        "'@cmd",
        "'\tTAB",
        "'\rCR",
        "-5",
        "'already",
        "a=b",
    ]


async def test_csv_id_column_steps_aside_for_a_field_named_id(
    sqlite_store: SqliteStore, out: Path
) -> None:
    _fill(sqlite_store, "t1", [("r1", {"id": 7, "_id": "x", "name": "n"})])

    result = await _export(sqlite_store, "t1", out, ExportFormat.CSV)

    assert _csv_rows(Path(result.path)) == [["__id", "_id", "id", "name"], ["r1", "x", "7", "n"]]


def _adding_fields(
    store: Store, table_id: str, *, every_pass: bool, passes: list[int] | None = None
) -> StoreRunner:
    """A runner that adds a field to a record when a pass over the table starts.

    The first pass (column scan) runs untouched; the write pass (or every later pass)
    finds a field the header does not have yet, as a download running alongside would.
    """
    starts = 0

    async def run(call: Callable[..., Any], *args: Any) -> Any:
        nonlocal starts
        if getattr(call, "__name__", "") == "read_records" and args[1] is None:
            starts += 1
            if passes is not None:
                passes.append(starts)
            if starts == 2 or (every_pass and starts > 2):
                await asyncio.to_thread(
                    store.update_record, table_id, "r05", {"late": starts, f"late{starts}": "x"}
                )
        return await asyncio.to_thread(call, *args)

    return run


async def test_csv_field_added_during_export_is_not_dropped(any_store: Store, out: Path) -> None:
    _fill(any_store, "t1", MIXED)
    reports: list[int] = []

    result = await _export(
        any_store,
        "t1",
        out,
        ExportFormat.CSV,
        run=_adding_fields(any_store, "t1", every_pass=False),
        reports=reports,
    )

    _check_digest(result)
    rows = _csv_rows(Path(result.path))
    assert "late" in rows[0]
    assert "late2" in rows[0]
    by_id = {row[0]: dict(zip(rows[0], row, strict=True)) for row in rows[1:]}
    assert by_id["r05"]["late"] == "2"
    assert by_id["r05"]["late2"] == "x"
    assert result.rows == len(MIXED)
    assert reports == [3, 6, 7, 3, 6, 7]  # the write pass started over once
    assert _leftovers(out) == [Path(result.path).name]


async def test_csv_export_of_a_table_that_keeps_changing_fails_cleanly(
    any_store: Store, out: Path
) -> None:
    _fill(any_store, "t1", MIXED)
    passes: list[int] = []

    with pytest.raises(ExportTableChangedError, match="export it again"):
        await _export(
            any_store,
            "t1",
            out,
            ExportFormat.CSV,
            run=_adding_fields(any_store, "t1", every_pass=True, passes=passes),
        )
    assert len(passes) == 1 + CSV_ATTEMPTS  # the column scan, then the bounded write passes
    assert _leftovers(out) == []


# --- file names --------------------------------------------------------------------------

HOSTILE_STEMS = [
    "../../etc/passwd",
    "a/b",
    "a\\b",
    "/abs/path",
    "nul\x00byte",
    ".",
    "..",
    "",
    ".hidden",
    "-rf",
    "x" * 5000,
    "日本語の表",
    "CON",
    "a\nb",
]


@pytest.mark.parametrize("stem", HOSTILE_STEMS, ids=lambda s: repr(s[:20]))
def test_safe_file_name_is_a_plain_bounded_name(stem: str) -> None:
    name = safe_file_name(stem, ExportFormat.CSV)

    assert name.endswith(".csv")
    assert "/" not in name
    assert "\\" not in name
    assert "\x00" not in name
    assert ".." not in name
    assert not name.startswith((".", "-"))
    assert name.isascii()
    assert name.isprintable()
    assert len(name) <= 125


def test_safe_file_names_never_collide() -> None:
    long_a, long_b = "t" * 300 + "a", "t" * 300 + "b"
    stems = ["a/b", "a_b", "a\\b", "a b", "a\x00b", long_a, long_b, "..", ".", "", "A_b", "a_B"]
    names = {safe_file_name(s, ExportFormat.JSONL) for s in stems}
    assert len(names) == len(stems)
    assert safe_file_name("t1", ExportFormat.CSV) != safe_file_name("t1", ExportFormat.JSONL)
    assert safe_file_name("orders", ExportFormat.CSV).startswith("orders-")


@pytest.mark.parametrize("stem", HOSTILE_STEMS, ids=lambda s: repr(s[:20]))
async def test_export_file_lands_inside_its_folder(
    sqlite_store: SqliteStore, tmp_path: Path, stem: str
) -> None:
    _fill(sqlite_store, "t1", MIXED[:2])
    folder = tmp_path / "exports" / "job1"
    before = _leftovers(tmp_path)

    result = await _export(sqlite_store, "t1", folder, ExportFormat.JSONL, stem=stem)

    path = Path(result.path)
    assert _inside(path, folder)
    assert _leftovers(folder) == [path.name]
    assert _leftovers(tmp_path) == sorted([*before, "exports"])


# --- atomicity ---------------------------------------------------------------------------


def _blocking_at(call_number: int, reached: asyncio.Event) -> StoreRunner:
    """A runner whose ``call_number``-th store call never returns (until cancelled)."""
    calls = 0

    async def run(call: Callable[..., Any], *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == call_number:
            reached.set()
            await asyncio.Event().wait()
        return await asyncio.to_thread(call, *args)

    return run


def _failing_at(call_number: int) -> StoreRunner:
    calls = 0

    async def run(call: Callable[..., Any], *args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == call_number:
            raise StoreUnavailableError("test-store", "gone midway")
        return await asyncio.to_thread(call, *args)

    return run


def _put_earlier(folder: Path, fmt: ExportFormat) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    earlier = folder / safe_file_name("t1", fmt)
    earlier.write_bytes(b"complete file of an earlier run\n")
    return earlier


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("earlier_file", [False, True], ids=["fresh", "earlier-file"])
async def test_cancel_midway_leaves_no_file(
    any_store: Store, out: Path, fmt: ExportFormat, earlier_file: bool
) -> None:
    _fill(any_store, "t1", MIXED)
    earlier = _put_earlier(out, fmt) if earlier_file else None
    reached = asyncio.Event()
    # CSV: 3 scan reads, then the write pass; JSONL: writes from the first read.
    block_at = 6 if fmt is ExportFormat.CSV else 3
    reports: list[int] = []
    task = asyncio.create_task(
        _export(any_store, "t1", out, fmt, run=_blocking_at(block_at, reached), reports=reports)
    )
    await asyncio.wait_for(reached.wait(), 10)
    assert reports == [3, 6]  # pages were written to the temporary file
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task

    if earlier is None:
        assert _leftovers(out) == []
    else:
        assert _leftovers(out) == [earlier.name]
        assert earlier.read_bytes() == b"complete file of an earlier run\n"


@pytest.mark.parametrize("fmt", FORMATS)
async def test_cancel_while_a_page_is_written_leaves_no_file(
    sqlite_store: SqliteStore, out: Path, fmt: ExportFormat
) -> None:
    _fill(sqlite_store, "t1", [(f"r{i:04}", {"v": "x" * 200}) for i in range(3000)])
    earlier = _put_earlier(out, fmt)
    task: asyncio.Task[ExportedFile] | None = None

    def cancel_after_first_page(rows: int) -> None:
        # The next await is the store read or the thread writing the next page.
        assert task is not None
        if rows == 500:
            task.cancel()

    task = asyncio.create_task(
        export_table(
            RUN,
            sqlite_store,
            "t1",
            out,
            "t1",
            fmt,
            page_size=500,
            report=cancel_after_first_page,
        )
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _leftovers(out) == [earlier.name]
    assert earlier.read_bytes() == b"complete file of an earlier run\n"


async def test_cancel_waits_for_the_thread_writing_the_file() -> None:
    # Cleanup after a cancellation closes and removes the temporary file: it must not
    # run while a thread is still writing to that file.
    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []

    def write() -> None:
        started.set()
        release.wait(10)
        finished.append(True)

    task = asyncio.create_task(_in_thread(write))
    assert await asyncio.to_thread(started.wait, 10)
    task.cancel()
    await asyncio.sleep(0.1)
    assert not task.done()  # the cancellation waits for the thread
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == [True]


@pytest.mark.parametrize("fmt", FORMATS)
async def test_store_failure_midway_leaves_earlier_file_intact(
    any_store: Store, out: Path, fmt: ExportFormat
) -> None:
    _fill(any_store, "t1", MIXED)
    earlier = _put_earlier(out, fmt)

    with pytest.raises(StoreUnavailableError, match="gone midway"):
        await _export(
            any_store, "t1", out, fmt, run=_failing_at(2 if fmt is ExportFormat.JSONL else 5)
        )

    assert _leftovers(out) == [earlier.name]
    assert earlier.read_bytes() == b"complete file of an earlier run\n"


@pytest.mark.parametrize("fmt", FORMATS)
async def test_complete_export_replaces_earlier_file(
    any_store: Store, out: Path, fmt: ExportFormat
) -> None:
    _fill(any_store, "t1", MIXED)
    earlier = _put_earlier(out, fmt)

    result = await _export(any_store, "t1", out, fmt)

    assert Path(result.path) == earlier.resolve()
    data = _check_digest(result)
    assert data != b"complete file of an earlier run\n"
    assert _leftovers(out) == [earlier.name]


# --- memory ------------------------------------------------------------------------------

MEMORY_ROWS = 12_000
MEMORY_PAGE = 200  # 60 pages


def _wide_records() -> list[RecordRow]:
    return [
        (f"r{i:06}", {"name": f"name {i}", "text": "lorem ipsum " * 8, "n": i, "tags": ["a", "b"]})
        for i in range(MEMORY_ROWS)
    ]


async def _whole_table_export(store: Store, table_id: str, folder: Path, fmt: ExportFormat) -> int:
    """The variant the bound must catch: every page is kept before anything is written."""
    pages: list[list[RecordRow]] = []
    after: str | None = None
    while True:
        page = await asyncio.to_thread(store.read_records, table_id, after, MEMORY_PAGE)
        pages.append(page)
        if len(page) < MEMORY_PAGE:
            break
        after = page[-1][0]
    out = _AtomicFile(_target(folder, safe_file_name(table_id, fmt)))
    columns = sorted({k for p in pages for _, fields in p for k in fields})
    for page in pages:
        if fmt is ExportFormat.CSV:
            _write_csv_page(out, page, columns, set(columns))
        else:
            _write_jsonl_page(out, page)
    out.flush()
    out.commit()
    return sum(len(p) for p in pages)


def _peak(measure: Callable[[], Any]) -> tuple[int, Any]:
    """Peak of traced memory above the start while ``measure`` runs."""
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = measure()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - start, result


@pytest.fixture
def memory_table(any_store: Store) -> tuple[Store, int]:
    _fill(any_store, "big", _wide_records())
    any_store.read_records("big", None, MEMORY_PAGE)  # warm the thread's connection
    # One page, held: the unit of the bound.
    page_bytes, _ = _peak(lambda: any_store.read_records("big", None, MEMORY_PAGE))
    return any_store, page_bytes


def _run_in_new_loop(coro_factory: Callable[[], Any]) -> Any:
    # tracemalloc must see only this export, not the session loop's other tasks.
    return asyncio.run(coro_factory())


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_memory_stays_within_a_few_pages(
    memory_table: tuple[Store, int], tmp_path: Path, fmt: ExportFormat
) -> None:
    store, page_bytes = memory_table
    bound = 8 * page_bytes

    streamed, result = _peak(
        lambda: _run_in_new_loop(
            lambda: _export(store, "big", tmp_path / "stream", fmt, page_size=MEMORY_PAGE)
        )
    )
    whole, rows = _peak(
        lambda: _run_in_new_loop(lambda: _whole_table_export(store, "big", tmp_path / "whole", fmt))
    )

    print(  # shown with -s: the figures behind the bound
        f"\n{type(store).__name__} {fmt}: page {page_bytes / 1e3:.0f} kB, bound "
        f"{bound / 1e3:.0f} kB, streamed peak {streamed / 1e3:.0f} kB, "
        f"whole-table peak {whole / 1e3:.0f} kB"
    )
    assert result.rows == rows == MEMORY_ROWS
    assert streamed < bound
    assert whole > bound  # the bound does catch an export that holds the table


# --- validation and models ---------------------------------------------------------------


async def test_page_size_and_folder_are_checked(sqlite_store: SqliteStore, tmp_path: Path) -> None:
    _fill(sqlite_store, "t1", MIXED)
    for bad in (0, -1, 10_001):
        with pytest.raises(InvalidJobError, match="page_size"):
            await _export(sqlite_store, "t1", tmp_path, ExportFormat.CSV, page_size=bad)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(ExportPathError, match="SPINNER_DATA_DIR"):
        await _export(sqlite_store, "t1", not_a_folder / "sub", ExportFormat.CSV)


def test_exported_file_model_is_frozen_and_checked() -> None:
    good = ExportedFile(
        table_id="t1", path="/x/t1.csv", format=ExportFormat.CSV, rows=1, bytes=2, sha256="a" * 64
    )
    assert ExportedFile.model_validate_json(good.model_dump_json()) == good
    with pytest.raises(ValidationError):
        good.rows = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        ExportedFile.model_validate({**good.model_dump(), "sha256": "nothex"})
    with pytest.raises(ValidationError):
        ExportedFile.model_validate({**good.model_dump(), "rows": -1})
