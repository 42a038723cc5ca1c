"""Export one table of the snapshot store to a file: the engine-neutral core of export-records.

:func:`export_table` streams the table's records in keyset pages (by remote id) from the
store into a CSV or JSON Lines file. What it guarantees:

- **Flat memory.** At most one page of records (and its encoded text) is held at a time,
  plus, for CSV, the set of field names: memory does not grow with the table's rows.
- **Atomic files.** The file is written under a temporary name in the target folder
  (``.<name>.<random>.tmp``), flushed and fsynced, then renamed over the final name and
  the folder fsynced. On any error or cancellation the temporary file is removed and the
  final name is untouched: a file from an earlier run is only ever replaced by a
  complete one.
- **Checksums for free.** Size and SHA-256 are computed from the bytes as they are
  written; the file is never read back.
- **Safe names.** The file name comes from :func:`safe_file_name`: whatever the table id
  (``../..``, separators, NUL, thousands of characters), the file lands inside the
  folder, and two different ids never share a name.

Consistency: each page is read in its own transaction. A table written to while it is
exported (a download running) may appear partly before and partly after that write;
every record that stays in the table is exported exactly once. Callers that need a
point-in-time snapshot hold the table's download lock for the export.

The store is reached only through ``run`` (a :class:`StoreRunner`), so the caller
decides how store calls run in a thread and how a store outage is waited out.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, Protocol, TypeVar

import orjson
import structlog

from spinner_jobs.core.errors import InvalidJobError
from spinner_jobs.core.exports import (
    ExportedFile,
    ExportFormat,
    ExportPathError,
    ExportTableChangedError,
)
from spinner_jobs.core.models import RecordRow
from spinner_jobs.store.base import Store

log = structlog.get_logger(__name__)

T = TypeVar("T")

MAX_PAGE_SIZE = 10_000
"""Largest ``page_size`` :func:`export_table` accepts (records per store read)."""

NAME_MAX_CHARS = 100
"""Longest readable part of a file name (the digest and extension come on top)."""

DIGEST_CHARS = 16
"""Hex characters of the SHA-256 of the stem in a file name (64 bits)."""

CSV_ATTEMPTS = 3
"""Write passes a CSV export makes when the table gains fields while it is written."""

# Cells starting with one of these are formulas (or become one) in Excel, LibreOffice
# and Google Sheets; a leading apostrophe makes them text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_JSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


class StoreRunner(Protocol):
    """Awaits a synchronous store call run in a thread: ``await run(store.method, *args)``."""

    def __call__(self, call: Callable[..., T], /, *args: Any) -> Awaitable[T]:
        """Run ``call(*args)`` off the event loop and return its result."""
        ...


ReportRows = Callable[[int], None]
"""Called on the event loop after each page is written, with the rows written so far."""


def safe_file_name(stem: str, fmt: ExportFormat) -> str:
    """A file name for ``stem`` (e.g. a table id) that is safe in any folder.

    The name is ``<readable>-<digest>.<ext>``: ``readable`` keeps the stem's ASCII
    letters, digits, ``_`` and ``-`` (other runs become ``_``; no leading ``_``/``-``;
    at most :data:`NAME_MAX_CHARS`; ``table`` when nothing is left) and ``digest`` is
    the start of the SHA-256 of the whole stem, so stems that read alike (``a/b`` and
    ``a_b``, or two long ids with the same start) still get different names. The result
    has no path separator, no ``..``, no leading dot and at most 125 ASCII characters.
    """
    digest = hashlib.sha256(stem.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_CHARS]
    readable = _NAME_UNSAFE.sub("_", stem).lstrip("_-")[:NAME_MAX_CHARS] or "table"
    return f"{readable}-{digest}.{fmt.suffix}"


async def export_table(
    run: StoreRunner,
    store: Store,
    table_id: str,
    folder: Path,
    file_stem: str,
    fmt: ExportFormat,
    *,
    page_size: int = 1000,
    report: ReportRows,
) -> ExportedFile:
    """Write a snapshot of one table to ``folder`` as one file, atomically.

    CSV: a header row ``id`` followed by the union of the records' field names, sorted
    (the record id column is called ``_id`` instead if a field is named ``id``, ``__id``
    if ``_id`` is taken too, and so on). A first pass over the pages collects the names;
    the second writes the rows. Cells: a string as itself, null or a missing field as an
    empty cell, anything else (numbers, booleans, objects, lists) as compact JSON with
    sorted keys. **Formula injection guard:** a string cell (header, id or value) that
    starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading
    apostrophe (``'``), so spreadsheets show it as text and never evaluate it; the CSV
    is therefore meant for people and spreadsheets, and JSON Lines is the lossless
    format. If the table gains a field between the passes (a download running), the
    write pass starts over with the wider header (up to :data:`CSV_ATTEMPTS` passes;
    progress restarts from 0) rather than drop a value.

    JSON Lines: one ``{"id": <remote id>, "fields": {...}}`` object per line, UTF-8,
    newline-terminated, keys of ``fields`` sorted (the same table gives the same bytes
    from either store). ``id`` and ``fields`` are kept apart so a field named ``id``
    never clashes with the record's id.

    Records come in remote-id byte order, ``page_size`` per store read.

    Args:
        run: runs a store call in a thread (see :class:`StoreRunner`).
        store: the snapshot store.
        table_id: the table to export.
        folder: the folder of the file; created if missing.
        file_stem: what the file is named after (made safe by :func:`safe_file_name`).
        fmt: the file's format.
        page_size: records per store read (1 to :data:`MAX_PAGE_SIZE`).
        report: called with the rows written so far after each page is written.

    Returns:
        The file: absolute path, format, rows, size and SHA-256.

    Raises:
        InvalidJobError: ``page_size`` is out of range.
        ExportPathError: the folder cannot be created or written to.
        ExportTableChangedError: (CSV) the table gained fields during every pass.
        StoreUnavailableError: from ``run``, when the store stays unavailable.

    """
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidJobError("page_size", f"must be 1 to {MAX_PAGE_SIZE}, got {page_size}")
    name = safe_file_name(file_stem, fmt)
    final = _target(folder, name)
    out = _AtomicFile(final)
    try:
        if fmt is ExportFormat.CSV:
            rows = await _write_csv(run, store, table_id, out, page_size, report)
        else:
            rows = await _write_jsonl(run, store, table_id, out, page_size, report)
        # The slow part (fsync) in a thread; the rename and the folder's fsync have no
        # await point, so a cancellation either comes before them or not at all.
        await _in_thread(out.flush)
        out.commit()
    except BaseException:
        out.discard()
        raise
    result = ExportedFile(
        table_id=table_id,
        path=str(final),
        format=fmt,
        rows=rows,
        bytes=out.size,
        sha256=out.sha256,
    )
    log.info(
        "table_export_written",
        table_id=table_id,
        format=fmt.value,
        rows=rows,
        bytes=out.size,
        path=str(final),
    )
    return result


# --- formats --------------------------------------------------------------------------


async def _write_jsonl(
    run: StoreRunner,
    store: Store,
    table_id: str,
    out: _AtomicFile,
    page_size: int,
    report: ReportRows,
) -> int:
    rows = 0
    after: str | None = None
    while True:
        page = await run(store.read_records, table_id, after, page_size)
        if page:
            await _in_thread(_write_jsonl_page, out, page)
            rows += len(page)
            report(rows)
        if len(page) < page_size:
            return rows
        after = page[-1][0]


def _write_jsonl_page(out: _AtomicFile, page: Sequence[RecordRow]) -> None:
    out.write(
        b"".join(
            b'{"id":' + _json(remote_id) + b',"fields":' + _json(_as_dict(fields)) + b"}\n"
            for remote_id, fields in page
        )
    )


async def _write_csv(
    run: StoreRunner,
    store: Store,
    table_id: str,
    out: _AtomicFile,
    page_size: int,
    report: ReportRows,
) -> int:
    names = await _field_names(run, store, table_id, page_size)
    for attempt in range(1, CSV_ATTEMPTS + 1):
        columns = sorted(names)
        await _in_thread(out.write, _csv_line([_id_column(names), *columns]))
        rows = 0
        new: set[str] = set()
        after: str | None = None
        while True:
            page = await run(store.read_records, table_id, after, page_size)
            if page:
                new |= await _in_thread(_write_csv_page, out, page, columns, names)
                rows += len(page)
                report(rows)
            if len(page) < page_size:
                break
            after = page[-1][0]
        if not new:
            return rows
        log.warning(
            "table_export_fields_added", table_id=table_id, fields=sorted(new), attempt=attempt
        )
        names |= new
        await _in_thread(out.rewind)
    raise ExportTableChangedError(table_id, sorted(new))


async def _field_names(run: StoreRunner, store: Store, table_id: str, page_size: int) -> set[str]:
    """Every field name of the table's records (one pass; memory: the names only)."""
    names: set[str] = set()
    after: str | None = None
    while True:
        page = await run(store.read_records, table_id, after, page_size)
        for _, fields in page:
            names.update(fields)
        if len(page) < page_size:
            return names
        after = page[-1][0]


def _write_csv_page(
    out: _AtomicFile, page: Sequence[RecordRow], columns: Sequence[str], known: Collection[str]
) -> set[str]:
    """Write a page's rows; return the field names that are not columns (to redo)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    new: set[str] = set()
    for remote_id, fields in page:
        new.update(key for key in fields if key not in known)
        writer.writerow([_guard(remote_id), *(_cell(fields.get(c)) for c in columns)])
    out.write(buffer.getvalue().encode())
    return new


def _csv_line(cells: Sequence[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([_guard(c) for c in cells])
    return buffer.getvalue().encode()


def _id_column(names: Collection[str]) -> str:
    """``id``, or with as many leading underscores as it takes not to be a field name."""
    column = "id"
    while column in names:
        column = "_" + column
    return column


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return _guard(value)
    # JSON text of a number, boolean, object or list never reads as a formula: it starts
    # with a digit, "-" then a digit, "t", "f", "{" or "[".
    return _json(value).decode()


def _guard(text: str) -> str:
    """``text``, with a leading apostrophe if a spreadsheet would take it as a formula."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _json(value: Any) -> bytes:
    """Compact JSON with sorted keys (the stdlib for what orjson refuses: huge ints)."""
    try:
        return orjson.dumps(value, option=_JSON_OPTIONS)
    except orjson.JSONEncodeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _as_dict(fields: Mapping[str, Any]) -> dict[str, Any]:
    return fields if isinstance(fields, dict) else dict(fields)


# --- files ----------------------------------------------------------------------------


def _target(folder: Path, name: str) -> Path:
    """The final path of ``name`` in ``folder`` (created if missing), checked to be inside."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        root = folder.resolve(strict=True)
    except OSError as exc:
        raise ExportPathError(str(folder), exc.strerror or str(exc)) from exc
    if not root.is_dir():
        raise ExportPathError(str(folder), "it is not a folder")
    final = root / name
    if name in {"", ".", ".."} or final.name != name or final.parent != root:
        raise ExportPathError(str(folder), f"file name {name!r} would leave the folder")
    return final


class _AtomicFile:
    """A file written under a temporary name beside ``final``, hashed as it is written."""

    def __init__(self, final: Path) -> None:
        self.final = final
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        except OSError as exc:
            raise ExportPathError(str(final.parent), exc.strerror or str(exc)) from exc
        self.tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self._committed = False

    @property
    def sha256(self) -> str:
        """SHA-256 of the bytes written so far, lowercase hex."""
        return self._hash.hexdigest()

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._hash.update(data)
        self.size += len(data)

    def rewind(self) -> None:
        """Start the file over: empty, hash and size reset."""
        self._file.seek(0)
        self._file.truncate()
        self._hash = hashlib.sha256()
        self.size = 0

    def flush(self) -> None:
        """Push the bytes to the disk (flush, fsync) and close the file."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def commit(self) -> None:
        """Rename the complete file to its final name, then make the rename durable."""
        os.replace(self.tmp, self.final)
        self._committed = True
        fd = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def discard(self) -> None:
        """Close and remove the temporary file (nothing if it was committed)."""
        with suppress(OSError):
            self._file.close()
        if not self._committed:
            with suppress(FileNotFoundError):
                self.tmp.unlink()


async def _in_thread(call: Callable[..., T], *args: Any) -> T:
    """Run ``call`` in a thread; if cancelled, let the thread finish before re-raising.

    The caller's cleanup (closing and removing the temporary file) must never race a
    thread that is still writing to it.
    """
    task = asyncio.ensure_future(asyncio.to_thread(call, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            with suppress(asyncio.CancelledError):
                await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: the cancellation is what the caller sees
        raise
