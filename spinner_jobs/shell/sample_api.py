"""A real loopback HTTP server with paginated sample tables, for demos, benchmarks and tests.

Each table serves deterministic records (:func:`connectors.demo.demo_record`) in one
of the paginator styles the ``http`` connector speaks; :func:`sample_table_config`
returns the matching table config. Bodies are rendered once and cached, and the
server speaks HTTP/1.1 keep-alive, so the connector, not the server, is what a
benchmark measures.

Routes::

    GET /tables               {"tables": [{"name", "records", "style", "page_size"}]}
    GET /tables/{name}?...    one page of the table, shaped by its style:

    style        query                 body                                  next page
    json_link    page                  {"data": [...], "links": {"next": url}}   absolute URL
    header_link  page                  [...]                                 Link header, rel="next"
    cursor       cursor                {"data": {"items": [...]},
                                        "meta": {"next_cursor": token}}      opaque token
    offset       offset, limit         {"results": [...], "total": n}        offset + limit
    page_number  page, per_page        {"items": [...], "total_pages": p}    page + 1 (first: 1)
    single_page  -                     {"records": [...]}                    none

Writable tables (``SampleTable(writable=True)``) serve records with a ``version``
field and take writes, for publishing changes back::

    GET    /tables/{name}/records/{id}   the record, or 404
    POST   /tables/{name}/records        create from the JSON body: 201 with the new record
    PATCH  /tables/{name}/records/{id}   merge the body's fields, version + 1: 200, record
    DELETE /tables/{name}/records/{id}   204, or 404

A record's GET carries its version as a strong ``ETag`` (``"3"``); a PATCH or DELETE
with an ``If-Match`` naming another version is refused with 412, as a source that
supports conditional requests does.

A write with an ``Idempotency-Key`` header that was answered 2xx before gets that answer
again and is not applied twice (:attr:`SampleApi.applied_writes` lists what was).

Test knobs: a required bearer token or API key (401 otherwise), scripted faults
(:class:`Fault`: status bursts, ``Retry-After``, a connection dropped mid-body), a
request log (:class:`LoggedRequest`), and tables that change between runs
(:meth:`SampleApi.set_table`, :meth:`SampleApi.remove_records`).

Command line::

    python -m spinner_jobs.shell.sample_api --port 8765 --tables 3 --records 100000
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import math
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from types import TracebackType
from typing import Any, Literal, get_args
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from spinner_jobs.connectors.demo import demo_record

Style = Literal["json_link", "header_link", "cursor", "offset", "page_number", "single_page"]
STYLES: tuple[Style, ...] = get_args(Style)


@dataclass(frozen=True, slots=True)
class SampleTable:
    """A table the sample API serves.

    Attributes:
        records: how many records the table has before removals.
        style: the paginator style it answers in.
        page_size: records per page for the link and cursor styles, and the default
            ``limit``/``per_page`` of the others (default 1000).
        seed: varies the generated values (default 0).
        removed: record indexes no longer served (default none), to test deletes.
        writable: serve a ``version`` per record and take writes (default False).
        wrap: key a write's fields are wrapped in (``{"data": {...}}``; default none).

    """

    records: int
    style: Style = "json_link"
    page_size: int = 1000
    seed: int = 0
    removed: frozenset[int] = frozenset()
    writable: bool = False
    wrap: str | None = None


@dataclass(frozen=True, slots=True)
class Fault:
    """A scripted answer replacing the normal one for matching requests.

    Faults are consumed in the order injected; a request meets only the first
    fault that still applies to its table.

    Attributes:
        status: HTTP status to answer (default 500); ``None``: the normal answer
            (with ``delay`` or ``drop``). Ignored when ``drop``.
        times: how many matching requests get it (default 1; ``None``: all from now).
        skip: matching requests served normally first (default 0): ``skip=k-1``
            hits the k-th request.
        retry_after: ``Retry-After`` header value to send (default none).
        drop: serve the real page but close the connection halfway through its body.
        delay: seconds to wait before answering (default 0), to provoke timeouts.
        table: only requests for this table (default: any table route).
        body: body to send (default ``{"error": "injected fault"}``).
        method: only requests with this method (default: any), e.g. ``"PATCH"``.

    """

    status: int | None = 500
    times: int | None = 1
    skip: int = 0
    retry_after: str | None = None
    drop: bool = False
    delay: float = 0.0
    table: str | None = None
    body: str | None = None
    method: str | None = None


@dataclass(frozen=True, slots=True)
class AppliedWrite:
    """A write the sample API applied (a replayed idempotent one is not listed again)."""

    method: str
    table: str
    remote_id: str
    idempotency_key: str | None


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """One request the server answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    status: int
    at: float  # time.monotonic() when it arrived
    table: str | None = None
    body: bytes = b""


def sample_table_config(
    base_url: str,
    name: str,
    style: Style = "json_link",
    /,
    *,
    page_size: int = 1000,
    **overrides: Any,
) -> dict[str, Any]:
    """Return the ``http`` connector config that reads table ``name`` of a sample API.

    Args:
        base_url: what :meth:`SampleApi.start` returned.
        name: the table's name.
        style: the table's style (must match the served table).
        page_size: records asked per page by the ``offset``/``page_number`` styles.
        **overrides: top-level config keys to set or replace (e.g. ``requests_per_second``).

    """
    paginators: dict[Style, tuple[str | None, dict[str, Any]]] = {
        "json_link": ("data", {"type": "json_link", "next_url_path": "links.next"}),
        "header_link": (None, {"type": "header_link"}),
        "cursor": (
            "data.items",
            {"type": "cursor", "cursor_path": "meta.next_cursor", "cursor_param": "cursor"},
        ),
        "offset": (
            "results",
            {
                "type": "offset",
                "limit": page_size,
                "offset_param": "offset",
                "limit_param": "limit",
                "total_path": "total",
            },
        ),
        "page_number": (
            "items",
            {
                "type": "page_number",
                "base_page": 1,
                "page_param": "page",
                "page_size_param": "per_page",
                "page_size": page_size,
                "total_pages_path": "total_pages",
            },
        ),
        "single_page": ("records", {"type": "single_page"}),
    }
    selector, paginator = paginators[style]
    config: dict[str, Any] = {
        "base_url": base_url,
        "path": f"/tables/{quote(name, safe='')}",
        "data_selector": selector,
        "primary_key": "id",
        "paginator": paginator,
    }
    config.update(overrides)
    return config


# --- the server ----------------------------------------------------------------------------


@dataclass(slots=True)
class _TableState:
    table: SampleTable
    version: int
    ids: Sequence[int]
    rows: list[dict[str, Any]] | None = None  # a writable table's records


@dataclass(slots=True)
class _FaultState:
    fault: Fault
    skip: int
    times: int | None


@dataclass(slots=True)
class _Answer:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    drop: bool = False


class SampleApi:
    """The sample server: ``with SampleApi({...}) as api: url = api.base_url``."""

    def __init__(
        self,
        tables: Mapping[str, SampleTable],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        bearer_token: str | None = None,
        api_key: str | None = None,
        api_key_header: str = "X-API-Key",
        max_page_size: int = 10_000,
        cache_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        """Describe the server; :meth:`start` binds and serves it.

        Args:
            tables: tables by name.
            host: interface to bind (default loopback).
            port: port to bind (default 0: any free port).
            bearer_token: when set, requests need ``Authorization: Bearer <token>``.
            api_key: when set, requests need ``<api_key_header>: <api_key>`` (either
                credential is accepted when both are set).
            api_key_header: header carrying the API key.
            max_page_size: cap on ``limit``/``per_page``.
            cache_bytes: budget of the rendered-page cache (least recently used out).

        """
        self._host, self._port = host, port
        self._bearer = bearer_token
        self._api_key = api_key
        self._api_key_header = api_key_header.lower()
        self._max_page_size = max_page_size
        self._cache_budget = cache_bytes
        self._lock = threading.Lock()
        self._logged = threading.Condition(self._lock)
        self._tables: dict[str, _TableState] = {}
        self._versions = 0
        for name, table in tables.items():
            self.set_table(name, table)
        self._faults: list[_FaultState] = []
        self._log: list[LoggedRequest] = []
        self._answered: dict[str, _Answer] = {}  # Idempotency-Key -> its 2xx answer
        # Record ids someone else edits right after each GET of the record: the moment
        # between a publisher's version check and its write.
        self.moves_after_read: set[str] = set()
        self._applied: list[AppliedWrite] = []
        self._created = 0
        self._cache: OrderedDict[tuple[str, int, int, int], bytes] = OrderedDict()
        self._cache_size = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._base_url = ""

    # --- lifecycle ---

    def start(self) -> str:
        """Bind and serve in a background thread; return the base URL."""
        if self._server is not None:
            return self._base_url
        server = _Server((self._host, self._port), _Handler)
        server.api = self
        self._server = server
        host, port = server.server_address[:2]
        self._base_url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self._base_url

    def stop(self) -> None:
        """Stop serving and close every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            # Wake handler threads blocked reading an idle keep-alive connection.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SampleApi:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://host:port`` once started."""
        if not self._base_url:
            raise RuntimeError("SampleApi is not started; call start() first")
        return self._base_url

    def config(self, name: str, **overrides: Any) -> dict[str, Any]:
        """Return the ``http`` config of served table ``name`` (see ``sample_table_config``)."""
        table = self._state(name).table
        return sample_table_config(
            self.base_url, name, table.style, page_size=table.page_size, **overrides
        )

    # --- tables ---

    def set_table(self, name: str, table: SampleTable) -> None:
        """Add or replace a table; later requests see the new records."""
        if table.records < 0 or table.page_size < 1:
            raise ValueError("records must be >= 0 and page_size >= 1")
        ids: Sequence[int] = range(table.records)
        if table.removed:
            ids = [i for i in ids if i not in table.removed]
        rows = None
        if table.writable:
            rows = []
            for index in ids:
                record = demo_record(table.seed, index)
                rows.append({"id": record.remote_id, "version": 1, **record.fields})
            ids = range(len(rows))
        with self._lock:
            self._versions += 1
            self._tables[name] = _TableState(table, self._versions, ids, rows)

    def remove_records(self, name: str, indexes: Iterable[int]) -> None:
        """Stop serving the records at ``indexes`` (ids ``rec_{index:07d}``) of ``name``."""
        table = self._state(name).table
        self.set_table(name, replace(table, removed=table.removed | frozenset(indexes)))

    def table(self, name: str) -> SampleTable:
        """Return the table served as ``name``."""
        return self._state(name).table

    def record_ids(self, name: str) -> list[str]:
        """Remote ids served for ``name``, in page order."""
        state = self._state(name)
        if state.rows is not None:
            return [str(row["id"]) for row in state.rows]
        return [demo_record(state.table.seed, i).remote_id for i in state.ids]

    # --- writes (writable tables) ---

    def remote_record(self, name: str, remote_id: str) -> dict[str, Any] | None:
        """A writable table's record as the source has it now, or None."""
        with self._lock:
            return _find(self._rows(name), remote_id)

    def edit_remote(self, name: str, remote_id: str, fields: Mapping[str, Any]) -> None:
        """Change a record at the source, as someone else would (its version moves on)."""
        with self._lock:
            self._patch(name, remote_id, dict(fields))

    @property
    def applied_writes(self) -> list[AppliedWrite]:
        """Writes applied so far, oldest first (idempotent replays are not applied)."""
        with self._lock:
            return list(self._applied)

    def warm(self, *names: str) -> int:
        """Render and cache the default pages of ``names`` (default: every table).

        Benchmarks call it first so that they time the client, not the rendering.
        Pages of ``offset``/``page_number`` are warmed for their default page size.

        Returns:
            How many records were rendered.

        """
        rendered = 0
        for name in names or tuple(self._tables):
            state = self._state(name)
            total, size = len(state.ids), state.table.page_size
            if state.table.style == "single_page":
                self._array(name, state, 0, total)
            else:
                for start in range(0, total, size):
                    self._array(name, state, start, start + size)
            rendered += total
        return rendered

    # --- faults and the request log ---

    def inject(self, *faults: Fault) -> None:
        """Queue scripted faults (see :class:`Fault`)."""
        with self._lock:
            self._faults.extend(_FaultState(f, f.skip, f.times) for f in faults)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._faults.clear()

    @property
    def requests(self) -> list[LoggedRequest]:
        """A copy of the request log, oldest first."""
        with self._lock:
            return list(self._log)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[LoggedRequest]:
        """Block until ``count`` requests are logged; return the log.

        Raises:
            TimeoutError: fewer were logged within ``timeout`` seconds (says how many).

        """
        with self._logged:
            if not self._logged.wait_for(lambda: len(self._log) >= count, timeout):
                raise TimeoutError(
                    f"{len(self._log)} requests logged after {timeout}s, waiting for {count}: "
                    f"{[(r.path, r.query, r.status) for r in self._log]}"
                )
            return list(self._log)

    def clear_requests(self) -> None:
        """Empty the request log."""
        with self._lock:
            self._log.clear()

    # --- request handling (handler threads) ---

    def _state(self, name: str) -> _TableState:
        with self._lock:
            try:
                return self._tables[name]
            except KeyError:
                raise KeyError(f"no sample table {name!r}") from None

    def _handle(self, handler: _Handler, body: bytes = b"") -> None:
        arrived = time.monotonic()
        split = urlsplit(handler.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in handler.headers.items()}
        table: str | None = None
        record: str | None = None  # "" for the records collection
        if split.path.startswith("/tables/"):
            quoted, slash, rest = split.path[len("/tables/") :].partition("/")
            table = unquote(quoted)
            if rest == "records" or rest.startswith("records/"):
                record = unquote(rest[len("records/") :]) if rest != "records" else ""
            elif slash:
                table = unquote(split.path[len("/tables/") :])  # as before: no such table
        fault = self._take_fault(table, handler.command) if table is not None else None
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        if fault is not None and fault.status is not None and not fault.drop:
            answer = _Answer(
                fault.status,
                (fault.body or '{"error": "injected fault"}').encode(),
                [("Retry-After", fault.retry_after)] if fault.retry_after else [],
            )
        elif not self._authorized(headers):
            answer = _error(401, "missing or invalid credentials", [("WWW-Authenticate", "Bearer")])
        elif split.path in ("/tables", "/tables/"):
            answer = self._list()
        elif table is not None and record is not None:
            answer = self._record_route(handler.command, table, record, body, headers)
        elif table is not None and handler.command != "GET":
            answer = _error(405, f"{handler.command} is not served for {split.path}")
        elif table is not None:
            answer = self._page(table, query)
            answer.drop = fault is not None and fault.drop and answer.status == 200
        else:
            answer = _error(404, f"no route {split.path}")
        with self._lock:
            self._log.append(
                LoggedRequest(
                    handler.command, split.path, query, headers, answer.status, arrived, table, body
                )
            )
            self._logged.notify_all()
        _write(handler, answer)

    def _take_fault(self, table: str, method: str) -> Fault | None:
        with self._lock:
            for state in self._faults:
                if state.fault.table not in (None, table):
                    continue
                if state.fault.method not in (None, method):
                    continue
                if state.skip > 0:
                    state.skip -= 1
                    return None
                if state.times is not None:
                    state.times -= 1
                    if state.times <= 0:
                        self._faults.remove(state)
                return state.fault
        return None

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        if self._bearer is None and self._api_key is None:
            return True
        if self._bearer is not None and headers.get("authorization") == f"Bearer {self._bearer}":
            return True
        return self._api_key is not None and headers.get(self._api_key_header) == self._api_key

    def _record_route(
        self,
        method: str,
        name: str,
        remote_id: str,
        body: bytes,
        headers: Mapping[str, str],
    ) -> _Answer:
        """One record route of a writable table (see the module docstring)."""
        with self._lock:
            state = self._tables.get(name)
            if state is None or state.rows is None:
                return _error(404, f"no writable table {name!r}")
            if method == "GET" and remote_id:
                found = _find(state.rows, remote_id)
                if found is None:
                    return _error(404, f"no record {remote_id!r}")
                if remote_id in self.moves_after_read:
                    self._patch(name, remote_id, {"name": "moved after a read"})
                tag = _etag(found)
                return _Answer(200, json.dumps(found).encode(), [("ETag", tag)] if tag else [])
            key = headers.get("idempotency-key")
            if key is not None and key in self._answered:
                return self._answered[key]  # already applied: the same answer again
            expected = headers.get("if-match")
            if expected is not None and remote_id and expected != "*":
                current = _find(state.rows, remote_id)
                if current is None or _etag(current) != expected:
                    return _error(412, f"record {remote_id!r} is no longer {expected}")
            answer = self._write(method, name, state, remote_id, body)
            if 200 <= answer.status < 300:
                if key is not None:
                    self._answered[key] = answer
                applied_id = remote_id or json.loads(answer.body)["id"]
                self._applied.append(AppliedWrite(method, name, applied_id, key))
            return answer

    def _write(
        self, method: str, name: str, state: _TableState, remote_id: str, body: bytes
    ) -> _Answer:
        """Apply one write (the lock held)."""
        if method == "DELETE" and remote_id:
            rows = [row for row in state.rows or [] if row["id"] != remote_id]
            if len(rows) == len(state.rows or []):
                return _error(404, f"no record {remote_id!r}")
            self._replace_rows(name, state, rows)
            return _Answer(204, b"")
        if method not in ("POST", "PATCH") or bool(remote_id) != (method == "PATCH"):
            return _error(405, f"{method} is not served here")
        try:
            fields = json.loads(body or b"null")
        except ValueError:
            return _error(400, "the body is not JSON")
        if state.table.wrap is not None:
            fields = fields.get(state.table.wrap) if isinstance(fields, dict) else None
        if not isinstance(fields, dict):
            return _error(422, "the body is not a JSON object of fields")
        if method == "PATCH":
            patched = self._patch(name, remote_id, fields)
            if patched is None:
                return _error(404, f"no record {remote_id!r}")
            return _Answer(200, json.dumps(patched).encode())
        self._created += 1
        created = {**fields, "id": f"new_{self._created:05d}", "version": 1}
        self._replace_rows(name, state, [*(state.rows or []), created])
        return _Answer(201, json.dumps(created).encode())

    def _patch(self, name: str, remote_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        """Merge ``fields`` into a record and move its version on (the lock held)."""
        state = self._tables[name]
        rows = list(self._rows(name))
        for i, row in enumerate(rows):
            if row["id"] == remote_id:
                fields = {k: v for k, v in fields.items() if k not in ("id", "version")}
                rows[i] = {**row, **fields, "version": int(row["version"]) + 1}
                self._replace_rows(name, state, rows)
                return rows[i]
        return None

    def _rows(self, name: str) -> list[dict[str, Any]]:
        rows = self._tables[name].rows
        if rows is None:
            raise KeyError(f"sample table {name!r} is not writable")
        return rows

    def _replace_rows(self, name: str, state: _TableState, rows: list[dict[str, Any]]) -> None:
        # A new version: pages rendered from the old rows are not served again.
        self._versions += 1
        self._tables[name] = _TableState(state.table, self._versions, range(len(rows)), rows)

    def _list(self) -> _Answer:
        with self._lock:
            tables = [
                {
                    "name": name,
                    "records": len(s.ids),
                    "style": s.table.style,
                    "page_size": s.table.page_size,
                }
                for name, s in self._tables.items()
            ]
        return _Answer(200, json.dumps({"tables": tables}).encode())

    def _page(self, name: str, query: Mapping[str, str]) -> _Answer:
        with self._lock:
            state = self._tables.get(name)
        if state is None:
            return _error(404, f"no table {name!r}")
        table, total = state.table, len(state.ids)
        size = table.page_size
        href = f"/tables/{quote(name, safe='')}"
        try:
            if table.style in ("json_link", "header_link"):
                page = _int(query, "page", 1, minimum=1)
                start = (page - 1) * size
                arr = self._array(name, state, start, start + size)
                more = start + size < total
                if table.style == "header_link":
                    last = max(1, math.ceil(total / size))
                    links = [f'<{href}?page=1>; rel="first"', f'<{href}?page={last}>; rel="last"']
                    if more:
                        links.insert(0, f'<{href}?page={page + 1}>; rel="next"')
                    return _Answer(200, arr, [("Link", ", ".join(links))])
                nxt = json.dumps(f"{self._base_url}{href}?page={page + 1}" if more else None)
                return _Answer(200, b'{"data":' + arr + b',"links":{"next":' + nxt.encode() + b"}}")
            if table.style == "cursor":
                token = query.get("cursor")
                start = _decode_cursor(token) if token else 0
                arr = self._array(name, state, start, start + size)
                more = start + size < total
                nxt = json.dumps(_encode_cursor(start + size) if more else None)
                return _Answer(
                    200,
                    b'{"data":{"items":' + arr + b'},"meta":{"next_cursor":' + nxt.encode() + b"}}",
                )
            if table.style == "offset":
                offset = _int(query, "offset", 0, minimum=0)
                limit = _int(query, "limit", size, minimum=1, maximum=self._max_page_size)
                arr = self._array(name, state, offset, offset + limit)
                return _Answer(200, b'{"results":' + arr + b',"total":' + b"%d}" % total)
            if table.style == "page_number":
                page = _int(query, "page", 1, minimum=1)
                per_page = _int(query, "per_page", size, minimum=1, maximum=self._max_page_size)
                start = (page - 1) * per_page
                arr = self._array(name, state, start, start + per_page)
                pages = math.ceil(total / per_page)
                return _Answer(200, b'{"items":' + arr + b',"total_pages":' + b"%d}" % pages)
            return _Answer(200, b'{"records":' + self._array(name, state, 0, total) + b"}")
        except _BadQueryError as exc:
            return _error(400, str(exc))

    def _array(self, name: str, state: _TableState, start: int, stop: int) -> bytes:
        """Return the JSON array of records ``start:stop``, rendered once then cached."""
        key = (name, state.version, start, stop)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        seed = state.table.seed
        rows = []
        if state.rows is not None:
            rows = state.rows[start:stop]
        for index in state.ids[start:stop] if state.rows is None else ():
            record = demo_record(seed, index)
            rows.append({"id": record.remote_id, **record.fields})
        body = json.dumps(rows, separators=(",", ":")).encode()
        with self._lock:
            if key not in self._cache:
                self._cache[key] = body
                self._cache_size += len(body)
            while self._cache_size > self._cache_budget and self._cache:
                _, dropped = self._cache.popitem(last=False)
                self._cache_size -= len(dropped)
        return body


class _BadQueryError(ValueError):
    pass


def _etag(record: Mapping[str, Any]) -> str | None:
    """A record's strong entity tag: its version, quoted; ``None`` without one."""
    version = record.get("version")
    return None if version is None else f'"{version}"'


def _find(rows: Sequence[dict[str, Any]], remote_id: str) -> dict[str, Any] | None:
    return next((dict(row) for row in rows if row["id"] == remote_id), None)


def _int(
    query: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int | None = None
) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadQueryError(f"query parameter {name!r} must be an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise _BadQueryError(f"query parameter {name!r} must be in [{minimum}, {maximum}]")
    return value


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, _, value = text.partition(":")
        if kind != "offset":
            raise ValueError(kind)
        return max(0, int(value))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _BadQueryError("invalid cursor") from None


def _error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> _Answer:
    return _Answer(status, json.dumps({"error": message}).encode(), headers or [])


def _write(handler: _Handler, answer: _Answer) -> None:
    try:
        phrase = HTTPStatus(answer.status).phrase
    except ValueError:  # a scripted status outside the standard list
        phrase = "Unknown"
    lines = [
        f"HTTP/1.1 {answer.status} {phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(answer.body)}",
        *(f"{k}: {v}" for k, v in answer.headers),
    ]
    if handler.close_connection:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if answer.drop:
        # Headers promise the whole body; half of it arrives, then the socket closes.
        handler.wfile.write(head + answer.body[: len(answer.body) // 2])
        handler.close_connection = True
        return
    # One write: headers and body leave in the same segments (no Nagle stall).
    handler.wfile.write(head + answer.body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    api: SampleApi

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet about clients that hung up (timeouts, dropped reads)."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can hang without DNS.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.api._lock:
            self.server.api._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.api._lock:
            self.server.api._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self.server.api._handle(self)

    def _with_body(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.api._handle(self, self.rfile.read(length) if length else b"")

    def do_POST(self) -> None:
        self._with_body()

    def do_PATCH(self) -> None:
        self._with_body()

    def do_PUT(self) -> None:
        self._with_body()

    def do_DELETE(self) -> None:
        self._with_body()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr line."""


# --- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Serve sample tables until interrupted; print the base URL and one config per table."""
    parser = argparse.ArgumentParser(
        prog="python -m spinner_jobs.shell.sample_api", description="Serve paginated sample tables."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--tables", type=int, default=1, help="how many tables (t1, t2, ...)")
    parser.add_argument("--records", type=int, default=10_000, help="records per table")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument(
        "--style",
        choices=[*STYLES, "mixed"],
        default="json_link",
        help="paginator style of every table; 'mixed' cycles through them",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    tables = {
        f"t{n}": SampleTable(
            records=args.records,
            style=STYLES[(n - 1) % len(STYLES)] if args.style == "mixed" else args.style,
            page_size=args.page_size,
            seed=args.seed + n,
        )
        for n in range(1, args.tables + 1)
    }
    api = SampleApi(tables, host=args.host, port=args.port)
    base_url = api.start()
    out = sys.stdout
    out.write(f"sample API serving {len(tables)} tables at {base_url}/tables (Ctrl-C stops)\n")
    for name in tables:
        out.write(json.dumps({"table": name, "config": api.config(name)}) + "\n")
    out.flush()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Installed explicitly: a background job of a non-interactive shell starts with
        # SIGINT ignored, and SIGTERM would skip the clean stop.
        signal.signal(signum, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        api.stop()
    out.write("sample API stopped\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
