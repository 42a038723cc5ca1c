"""A job's events as a ``text/event-stream``, resumable with ``Last-Event-ID``.

The stream follows :meth:`enqueuer.Enqueuer.events` (one poll of the job every
``SPINNER_JOBS_PROGRESS_INTERVAL``) and writes, for each poll that changed something:

1. one event per table that finished since the last poll (``table.completed`` or
   ``table.failed``), in the job's table order, its SSE ``id`` being the event's stable
   id (``<job id>:table.completed:<table id>``, the same as in webhooks and logs);
2. then the ``progress`` event, whose SSE ``id`` is the stream's *cursor*:
   ``<job id>:progress:<n>:<mask>``, where ``n`` counts the progress events sent to this
   client (across reconnects) and ``mask`` (hex) has bit ``i`` set for each table of the
   job, in its table order, whose event has been sent;
3. after the job's last poll, its final event (``job.completed``, ``job.failed`` or
   ``job.cancelled``, with its stable id), and the stream ends.

Each poll's events go out in one write, so a client that reads the progress event has
read the table events before it: the last id it holds is a cursor. Reconnecting with
``Last-Event-ID: <cursor>`` (what a browser's ``EventSource`` sends) sends none of the
table events already sent and continues the progress numbering, so no event id is ever
sent twice. A table event's own id is accepted too: it counts the tables up to it in
the job's table order as sent. After the final event, a reconnect is answered
``204 No Content``, which tells ``EventSource`` to stop. While nothing happens, a
``: keepalive`` comment goes out every ``SPINNER_API_SSE_HEARTBEAT`` so proxies keep
the connection; when the server shuts down, the stream ends with a comment saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from enqueuer.client import Enqueuer
from spinner_jobs.api.problems import INTERNAL_DETAIL, error_problem, problem_body
from spinner_jobs.core.errors import InvalidJobError, SpinnerError
from spinner_jobs.core.models import EventKind, JobEvent, JobProgress, TableStatus

log = structlog.get_logger(__name__)

_FINAL_KINDS = frozenset({EventKind.JOB_COMPLETED, EventKind.JOB_FAILED, EventKind.JOB_CANCELLED})
_TABLE_KINDS = {
    TableStatus.COMPLETED: EventKind.TABLE_COMPLETED,
    TableStatus.FAILED: EventKind.TABLE_FAILED,
}
_CURSOR = re.compile(r"^progress:(\d{1,12}):([0-9a-f]{1,4096})$")
MAX_LAST_EVENT_ID = 8192
"""Longest ``Last-Event-ID`` taken (a cursor of a job of ~30,000 tables)."""


@dataclass(frozen=True)
class Resume:
    """Where a reconnecting client left off (parsed from ``Last-Event-ID``)."""

    sent_progress: int = 0
    mask: int = 0
    """Bit ``i``: the event of the job's ``i``-th table was sent."""
    through_table: str | None = None
    """A table event's id was given: that table and those before it count as sent."""
    finished: bool = False
    """The job's final event was sent: nothing is left to send."""


def parse_last_event_id(job_id: str, value: str | None) -> Resume:
    """The resume point a ``Last-Event-ID`` names (empty or absent: from the start).

    Raises:
        InvalidJobError: the id is not one this stream gave out for this job.

    """
    if not value:
        return Resume()
    prefix = f"{job_id}:"
    if len(value) > MAX_LAST_EVENT_ID or not value.startswith(prefix):
        raise _bad_id()
    rest = value[len(prefix) :]
    if rest in {kind.value for kind in _FINAL_KINDS}:
        return Resume(finished=True)
    cursor = _CURSOR.match(rest)
    if cursor is not None:
        return Resume(sent_progress=int(cursor.group(1)), mask=int(cursor.group(2), 16))
    kind, sep, table_id = rest.partition(":")
    if sep and table_id and kind in {k.value for k in _TABLE_KINDS.values()}:
        return Resume(through_table=table_id)
    raise _bad_id()


def _bad_id() -> InvalidJobError:
    return InvalidJobError(
        "Last-Event-ID", "is not an event id of this job's stream; reconnect without it"
    )


@dataclass
class _Stream:
    job_id: str
    sent_progress: int
    sent_tables: set[str] = field(default_factory=set)
    order: list[str] | None = None

    def start(self, resume: Resume, progress: JobProgress) -> None:
        """Learn the job's table order from its first snapshot and apply the resume point."""
        self.order = list(progress.tables)
        for index, table_id in enumerate(self.order):
            if resume.mask >> index & 1:
                self.sent_tables.add(table_id)
        if resume.through_table in self.order:
            upto = self.order.index(resume.through_table)
            self.sent_tables.update(
                table_id
                for table_id in self.order[: upto + 1]
                if progress.tables[table_id].status in _TABLE_KINDS
            )

    def cursor(self) -> str:
        order = self.order or []
        mask = sum(1 << i for i, table_id in enumerate(order) if table_id in self.sent_tables)
        return f"{self.job_id}:progress:{self.sent_progress}:{mask:x}"


def _frame(event_id: str, kind: str, data: bytes) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id.encode(), kind.encode(), data)


def _table_events(event: JobEvent, stream: _Stream) -> list[bytes]:
    """Events of the tables that finished in this snapshot and were not sent yet."""
    progress = event.progress
    assert progress is not None
    frames = []
    for table_id, table in progress.tables.items():
        kind = _TABLE_KINDS.get(table.status)
        if kind is None or table_id in stream.sent_tables:
            continue
        stream.sent_tables.add(table_id)
        table_event = JobEvent(
            event_id=JobEvent.stable_id(event.job_id, kind, table_id),
            kind=kind,
            job_id=event.job_id,
            job_type=event.job_type,
            workbook_id=event.workbook_id,
            table_id=table_id,
            records=table.records,
            error=table.error,
            at=event.at,
        )
        frames.append(
            _frame(table_event.event_id, kind.value, table_event.model_dump_json().encode())
        )
    return frames


_CLOSING = object()
_END = object()


async def job_event_stream(
    enqueuer: Enqueuer,
    job_id: str,
    *,
    actor: Mapping[str, Any],
    resume: Resume,
    interval: float,
    heartbeat: float,
    closing: asyncio.Event,
    request_id: str | None = None,
) -> AsyncIterator[bytes]:
    """The job's event stream, as the chunks to write (see the module docstring)."""
    stream = _Stream(job_id, resume.sent_progress)
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def follow() -> None:
        try:
            async for event in enqueuer.events(job_id, actor=actor, interval=interval):
                queue.put_nowait(event)
            queue.put_nowait(_END)
        except Exception as exc:  # handed to the stream, which reports it and ends
            queue.put_nowait(exc)

    async def close_on_shutdown() -> None:
        await closing.wait()
        queue.put_nowait(_CLOSING)

    tasks = [
        asyncio.create_task(follow(), name=f"sse:{job_id}"),
        asyncio.create_task(close_on_shutdown(), name=f"sse-close:{job_id}"),
    ]
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), heartbeat)
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if item is _END:
                return
            if item is _CLOSING:
                yield b": the server is shutting down; reconnect with Last-Event-ID\n\n"
                return
            if isinstance(item, BaseException):
                yield _problem_frame(item, job_id, request_id)
                return
            assert isinstance(item, JobEvent)
            if item.kind == EventKind.PROGRESS:
                assert item.progress is not None
                if stream.order is None:
                    stream.start(resume, item.progress)
                frames = _table_events(item, stream)
                stream.sent_progress += 1
                cursor = stream.cursor()
                data = item.model_copy(update={"event_id": cursor}).model_dump_json().encode()
                frames.append(_frame(cursor, item.kind.value, data))
                yield b"".join(frames)
            elif item.kind in _FINAL_KINDS:
                yield _frame(item.event_id, item.kind.value, item.model_dump_json().encode())
            # Table events of Enqueuer.events() were sent from the progress snapshot
            # before them (above), in the job's table order: nothing more to send.
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)


def _problem_frame(error: BaseException, job_id: str, request_id: str | None) -> bytes:
    """An error met while streaming, as a ``problem`` event; the stream then ends."""
    if not isinstance(error, SpinnerError):
        log.error("sse_stream_failed", job_id=job_id, error=repr(error))
        body = problem_body(500, detail=INTERNAL_DETAIL, request_id=request_id)
    else:
        log.warning("sse_stream_ended_by_error", job_id=job_id, error=str(error))
        _, body, _ = error_problem(error, instance=None, request_id=request_id)
    return b"event: problem\ndata: %s\n\n" % orjson.dumps(body)
