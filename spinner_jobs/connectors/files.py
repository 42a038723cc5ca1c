"""CSV and JSON-lines files, streamed page by page.

Table config (validated by :class:`FilesTableConfig`)::

    path         file to read, below the connector's root folder; relative
                 paths resolve against the root                        (required)
    format       "csv" | "jsonl"; none: from the suffix (.csv, .jsonl, .ndjson)
    primary_key  field holding the record's remote id                 (default "id")
    page_size    records per page                                      (default 1000)
    delimiter    CSV field delimiter                                   (default ",")
    encoding     text encoding                                         (default "utf-8")

The cursor is ``"<byte offset>:<line number>"`` of the next unread line, so a resumed
read seeks straight there (a CSV's header line is read again first) and never holds
more than one page in memory. CSV values are strings; JSON-lines records keep their
JSON types, and their ids are converted to strings.

Paths are confined to the root folder (``SPINNER_FILES_ROOT``, by default
``<data_dir>/files``): a path that resolves outside it (absolute, ``..``, a symlink
leading out), a ``~`` path, anything under ``/proc``, ``/sys`` or ``/dev``, a file that
is not a regular file (a device, a FIFO, a socket), and the engine's own database
files (even when the root contains them) are refused with
:class:`~spinner_jobs.core.errors.InvalidTableConfigError`. The check runs when a config is
validated and again each time the file is opened, on the file actually opened, so a
symlink swapped in between is caught too.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import errno
import json
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from spinner_jobs.connectors.base import Page, ReadContext, Record
from spinner_jobs.core.errors import (
    InvalidTableConfigError,
    SourceAuthError,
    SourceNotFoundError,
    SourceRequestError,
    SourceUnavailableError,
)
from spinner_jobs.core.models import ConnectorAccount, Table

log = structlog.get_logger(__name__)

_SUFFIX_FORMATS: dict[str, Literal["csv", "jsonl"]] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


class FilesTableConfig(BaseModel):
    """Validated configuration of a ``files`` table (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(min_length=1)
    format: Literal["csv", "jsonl"] | None = None
    primary_key: str = Field("id", min_length=1)
    page_size: int = Field(1000, ge=1, le=100_000)
    delimiter: str = Field(",", min_length=1, max_length=1)
    encoding: str = "utf-8"

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        # Codecs such as rot13, base64 or zlib are not text encodings: bytes.decode()
        # refuses them (LookupError; not for empty input), and "undefined" decodes
        # nothing (a bare UnicodeError), so every read would fail.
        try:
            b"\n".decode(value)
        except UnicodeDecodeError:
            pass  # a text encoding whose characters take more than one byte (utf-16, ...)
        except (LookupError, UnicodeError):
            raise ValueError(
                f"{value!r} is not a text encoding; use one such as utf-8, latin-1 or cp1252"
            ) from None
        return value

    @property
    def file_format(self) -> Literal["csv", "jsonl"]:
        """``format``, or the one the file's suffix implies."""
        if self.format is not None:
            return self.format
        return _SUFFIX_FORMATS[Path(self.path).suffix.lower()]


def parse_files_config(config: Mapping[str, Any], table_id: str | None = None) -> FilesTableConfig:
    """Validate ``config`` as a files table config.

    Raises:
        InvalidTableConfigError: naming the table and each bad field.

    """
    where = f"table {table_id!r}: " if table_id else ""
    try:
        cfg = FilesTableConfig.model_validate(dict(config))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        )
        raise InvalidTableConfigError(f"{where}invalid files table config: {problems}") from None
    if cfg.format is None and Path(cfg.path).suffix.lower() not in _SUFFIX_FORMATS:
        raise InvalidTableConfigError(
            f"{where}invalid files table config: format: cannot tell from the file name "
            f"{cfg.path!r}; set format to 'csv' or 'jsonl'"
        )
    return cfg


@dataclass(frozen=True, slots=True)
class _Position:
    offset: int  # byte offset of the next unread line
    line: int  # its 1-based line number (for messages)

    @property
    def cursor(self) -> str:
        return f"{self.offset}:{self.line}"


@dataclass(frozen=True, slots=True)
class _Chunk:
    records: list[Record]
    end: _Position
    eof: bool
    header: list[str] | None


class FilesConnector:
    """Reads CSV and JSON-lines files one page per thread hop."""

    name = "files"

    def __init__(self, root: Path | None, *, protected: Iterable[Path] = ()) -> None:
        """Create the connector.

        Args:
            root: the folder table paths resolve against and must stay inside; None
                refuses every path (a table config cannot read the worker's files).
            protected: files no table may read even inside ``root``: the engine's own
                databases (their ``-wal``, ``-shm`` and ``-journal`` files included).

        """
        self._root = root.resolve() if root is not None else None
        self._protected = tuple(
            Path(os.path.abspath(f"{p}{suffix}"))
            for p in protected
            for suffix in ("", "-wal", "-shm", "-journal")
        )

    def validate_config(self, config: Mapping[str, Any]) -> None:
        """Raise ``InvalidTableConfigError`` when ``config`` is not a valid files config."""
        cfg = parse_files_config(config)
        self._resolve(cfg, None)

    async def pages(
        self,
        table: Table,
        account: ConnectorAccount | None,
        cursor: str | None,
        context: ReadContext,
    ) -> AsyncIterator[Page]:
        """Yield the file's records page by page from ``cursor`` (``None``: the start).

        Raises:
            SourceNotFoundError: the file does not exist.
            SourceRequestError: a line is not valid JSON / CSV, or lacks the primary key.
            SourceAuthError: the file cannot be read for lack of permission.
            SourceUnavailableError: another I/O error.
            InvalidTableConfigError: the config or the cursor cannot work.

        """
        cfg = parse_files_config(table.config, table.id)
        path = self._resolve(cfg, table.id)
        reader = _FileReader(table.id, cfg, path, lambda: self._open(path, table.id))
        position = _parse_cursor(table.id, cursor)
        header: list[str] | None = None
        while True:
            chunk = await asyncio.to_thread(reader.read_page, position, header)
            header = chunk.header
            if chunk.eof:
                yield Page(chunk.records, None)
                return
            yield Page(chunk.records, chunk.end.cursor)
            position = chunk.end

    async def aclose(self) -> None:
        """Nothing pooled: each page opens and closes the file."""

    def _resolve(self, cfg: FilesTableConfig, table_id: str | None) -> Path:
        """Return the confined, symlink-free path of ``cfg.path``, or refuse it."""
        where = f"table {table_id!r}: file {cfg.path[:200]!r}"
        if self._root is None:
            raise InvalidTableConfigError(
                f"{where}: the files connector has no root folder; set SPINNER_FILES_ROOT"
            )
        if cfg.path.startswith("~"):
            raise InvalidTableConfigError(
                f"{where}: '~' is not expanded; give a path relative to the files root"
            )
        if "\x00" in cfg.path:
            raise InvalidTableConfigError(f"{where}: a path cannot hold a NUL character")
        resolved = (self._root / cfg.path).resolve()
        self._check_place(resolved, where)
        try:
            info = os.stat(resolved)
        except OSError:
            return resolved  # not there yet: reading it will say "not found"
        self._check_file(info, where)
        return resolved

    def _check_place(self, resolved: Path, where: str) -> None:
        root = self._root
        assert root is not None
        if not resolved.is_relative_to(root):
            raise InvalidTableConfigError(
                f"{where} is outside the files root {root}; put the file below it "
                "(SPINNER_FILES_ROOT) and give its path relative to it"
            )
        if any(resolved.is_relative_to(system) for system in _SYSTEM_TREES):
            raise InvalidTableConfigError(f"{where} is a system file; files tables read data files")
        if resolved in self._protected:
            raise InvalidTableConfigError(
                f"{where} is one of the engine's own database files; tables cannot read it"
            )

    def _check_file(self, info: os.stat_result, where: str) -> None:
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise InvalidTableConfigError(
                f"{where} is {kind}; give the path of a CSV or JSONL file"
            )
        # A hard link to a database file has another name but the same inode.
        for protected in self._protected:
            try:
                other = os.stat(protected)
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino):
                raise InvalidTableConfigError(
                    f"{where} is one of the engine's own database files; tables cannot read it"
                )

    def _open(self, path: Path, table_id: str) -> IO[bytes]:
        """Open ``path`` for reading after checking, again, what it is and where it leads.

        A store's database must never be opened here: closing any descriptor of a
        file drops the process's POSIX locks on it, and SQLite's locks are those. So
        its inode is checked before the open, and the opened file again after.
        """
        where = f"table {table_id!r}: file {str(path)!r}"
        self._check_file(os.stat(path), where)
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidTableConfigError(
                    f"{where} became a symlink after it was checked; fix the files root"
                ) from None
            raise
        try:
            self._check_file(os.fstat(fd), where)
            opened = _opened_path(fd)
            if opened is not None:
                self._check_place(opened, where)
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise


_SYSTEM_TREES = tuple(Path(p) for p in ("/proc", "/sys", "/dev"))


def _opened_path(fd: int) -> Path | None:
    """The path the kernel says ``fd`` was opened at (Linux), all symlinks followed."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def _parse_cursor(table_id: str, cursor: str | None) -> _Position | None:
    if not cursor:
        return None
    offset, _, line = cursor.partition(":")
    try:
        position = _Position(int(offset), int(line) if line else 0)
    except ValueError:
        position = _Position(-1, 0)
    if position.offset < 0:
        raise InvalidTableConfigError(
            f"table {table_id!r}: cursor {cursor[:100]!r} is not a files cursor "
            "('<byte offset>:<line>'); restart the table from the beginning"
        )
    return position


class _FileReader:
    """Blocking page reads of one table's file (run in a worker thread)."""

    def __init__(
        self, table_id: str, cfg: FilesTableConfig, path: Path, opener: Callable[[], IO[bytes]]
    ) -> None:
        self.table_id = table_id
        self.cfg = cfg
        self.path = path
        self.open = opener
        self.format = cfg.file_format

    def read_page(self, start: _Position | None, header: list[str] | None) -> _Chunk:
        """Read up to ``page_size`` records from ``start`` (``None``: the first record)."""
        try:
            with self.open() as file:
                size = os.fstat(file.fileno()).st_size
                if self.format == "csv" and header is None:
                    header, after_header = self._csv_header(file)
                    if start is None:
                        start = after_header
                if start is None:
                    start = _Position(0, 1)
                self._check_boundary(file, start, size)
                file.seek(start.offset)
                if self.format == "csv":
                    records, end = self._csv_rows(file, start, header or [])
                else:
                    records, end = self._jsonl_rows(file, start)
                return _Chunk(records, end, end.offset >= size, header)
        except FileNotFoundError:
            raise SourceNotFoundError(
                f"table {self.table_id!r}: file {str(self.path)!r} not found; check the "
                "table's path"
            ) from None
        except IsADirectoryError:
            raise SourceRequestError(
                f"table {self.table_id!r}: {str(self.path)!r} is a directory, not a file; "
                "check the table's path"
            ) from None
        except PermissionError:
            raise SourceAuthError(
                f"table {self.table_id!r}: permission denied reading {str(self.path)!r}; "
                "grant the worker read access"
            ) from None
        except OSError as exc:
            raise SourceUnavailableError(
                f"table {self.table_id!r}: cannot read {str(self.path)!r}: {exc.strerror or exc}"
            ) from exc

    def _check_boundary(self, file: IO[bytes], start: _Position, size: int) -> None:
        # A cursor must sit just after a newline; if not, the file changed under it.
        if start.offset == 0:
            return
        file.seek(start.offset - 1)
        if start.offset > size or file.read(1) != b"\n":
            raise SourceRequestError(
                f"table {self.table_id!r}: file {str(self.path)!r} changed since cursor "
                f"{start.cursor!r} was taken (no line starts there); restart the table"
            )

    def _lines(self, file: IO[bytes], counter: list[int]) -> Iterator[str]:
        """Yield the decoded lines of ``file``, counting bytes consumed in ``counter[0]``."""
        encoding = self.cfg.encoding
        for raw in iter(file.readline, b""):
            counter[0] += len(raw)
            yield raw.decode(encoding)

    def _csv_header(self, file: IO[bytes]) -> tuple[list[str], _Position]:
        counter = [0]
        reader = csv.reader(self._lines(file, counter), delimiter=self.cfg.delimiter)
        try:
            # The first non-blank row names the columns.
            header = next((row for row in reader if row), [])
        except (csv.Error, UnicodeDecodeError) as exc:
            raise self._line_error(1, f"unreadable CSV header ({exc})") from None
        if header:
            # A UTF-8 byte-order mark would otherwise stick to the first column name.
            header[0] = header[0].removeprefix("\ufeff")
            if self.cfg.primary_key not in header:
                raise self._line_error(
                    1, f"the CSV header has no primary key column {self.cfg.primary_key!r}"
                )
        return header, _Position(counter[0], 1 + reader.line_num)

    def _csv_rows(
        self, file: IO[bytes], start: _Position, header: list[str]
    ) -> tuple[list[Record], _Position]:
        pk, width = self.cfg.primary_key, len(header)
        counter = [start.offset]
        reader = csv.reader(self._lines(file, counter), delimiter=self.cfg.delimiter)
        records: list[Record] = []
        page_size = self.cfg.page_size
        while len(records) < page_size:
            line = start.line + reader.line_num
            try:
                row = next(reader)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as exc:
                raise self._line_error(line, f"unreadable CSV ({exc})") from None
            if not row:
                continue  # a blank line
            if len(row) != width:
                raise self._line_error(line, f"{len(row)} fields where the header has {width}")
            fields = dict(zip(header, row, strict=True))
            key = fields[pk]
            if not key:
                raise self._line_error(line, f"empty primary key {pk!r}")
            records.append(Record(key, fields))
        return records, _Position(counter[0], start.line + reader.line_num)

    def _jsonl_rows(self, file: IO[bytes], start: _Position) -> tuple[list[Record], _Position]:
        pk, page_size = self.cfg.primary_key, self.cfg.page_size
        encoding = self.cfg.encoding
        utf8 = codecs.lookup(encoding).name == "utf-8"
        offset, line = start.offset, start.line
        records: list[Record] = []
        while len(records) < page_size:
            raw = file.readline()
            if not raw:
                break
            this_line = line
            offset += len(raw)
            line += 1
            if raw.isspace():
                continue
            try:
                # json.loads takes UTF-8 bytes as they are: no decode copy.
                value = json.loads(raw if utf8 else raw.decode(encoding))
            except (ValueError, UnicodeDecodeError) as exc:
                raise self._line_error(this_line, f"invalid JSON ({exc})") from None
            if not isinstance(value, dict):
                raise self._line_error(this_line, "the line is not a JSON object")
            key = value.get(pk)
            if key is None:
                raise self._line_error(this_line, f"no primary key {pk!r}")
            records.append(Record(str(key), value))
        return records, _Position(offset, line)

    def _line_error(self, line: int, problem: str) -> SourceRequestError:
        log.warning("file_line_rejected", table_id=self.table_id, line=line)
        return SourceRequestError(
            f"table {self.table_id!r}: file {str(self.path)!r} line {line}: {problem}; "
            "fix the file or the table's primary_key"
        )
