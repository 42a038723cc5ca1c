"""A live job page for browsers, opened with a signed, expiring, read-only view link.

A browser cannot put a bearer key on a plain link, so a service with an API key asks
``POST /v1/jobs/{job_id}/view-link`` for a link to hand to a person. The link's token
grants exactly two things, for that one job of that one organization, until it
expires: the page (``GET /jobs/{job_id}``) and the job's event stream that feeds it
(``GET /jobs/{job_id}/events``, the same stream as ``/v1/jobs/{job_id}/events``).
It never enqueues, cancels or reads another job, and ``/v1`` routes do not take it.

Token: ``sjv1.<expires>.<organization>.<mac>`` where ``expires`` is a Unix time in
seconds, ``organization`` the organization id in unpadded base64url and ``mac`` the
unpadded base64url HMAC-SHA256, under the view key, of the job id, the organization
and ``expires`` (see :class:`ViewSigner`). The job id is not in the token: it is the
page's path, and a token made for another job fails the MAC.

The view key is ``SPINNER_API_VIEW_KEY``; unset, a key generated on first use and kept
in ``<data_dir>/view.key`` (mode 0600). Changing the key voids every link given out.

The page is plain HTML with one script and one stylesheet served from here (no build
step, no CDN). Everything taken from the job (table names come from users) is escaped;
the script writes text only through ``textContent``, and a Content-Security-Policy
allows scripts, styles and connections to this origin alone.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations.

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from html import escape
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.responses import StreamingResponse

from enqueuer.jobtypes import JOB_TYPES
from enqueuer.settings import ApiSettings, Settings
from spinner_jobs.api.problems import ApiError, public_detail, request_id_of, status_of
from spinner_jobs.api.sse import job_event_stream, parse_last_event_id
from spinner_jobs.core.errors import (
    InvalidJobError,
    JobNotFoundError,
    SecretKeyError,
    SpinnerError,
    UnknownJobTypeError,
)
from spinner_jobs.core.models import ApiKey, JobProgress, JobStatus, TableStatus

if TYPE_CHECKING:
    from spinner_jobs.api.app import ApiState

log = structlog.get_logger(__name__)

TOKEN_PREFIX = "sjv1"
VIEW_KEY_FILE = "view.key"
MIN_VIEW_KEY_CHARS = 32
_MAC_CONTEXT = b"spinner-jobs view link v1\x00"
_MAX_TOKEN_CHARS = 1024
# Strict: one spelling per token (ASCII digits, unpadded base64url; 43 characters of MAC).
_TOKEN = re.compile(
    rf"{TOKEN_PREFIX}\.([0-9]{{1,12}})\.([A-Za-z0-9_-]{{1,800}})\.([A-Za-z0-9_-]{{43}})"
)
_STATIC = Path(__file__).parent / "static"
_ASSETS = {
    "job-page.js": "text/javascript; charset=utf-8",
    "job-page.css": "text/css; charset=utf-8",
}
PAGE_HEADERS = {
    # The page's own script, style and event stream; nothing inline, nothing elsewhere.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    # The token is in the page's address: never send it on to another site.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


# --- errors ------------------------------------------------------------------------------


class ViewLinkError(ApiError):
    """A job page or its event stream was asked for without a valid view link."""


class MissingViewLinkError(ViewLinkError):
    """No ``token`` parameter."""

    status = HTTPStatus.UNAUTHORIZED

    def __init__(self) -> None:
        super().__init__(
            "this page needs a view link; get one with `POST /v1/jobs/{job_id}/view-link` "
            "and an API key"
        )


class InvalidViewLinkError(ViewLinkError):
    """The token is malformed, altered, or made for another job (the same answer for each)."""

    status = HTTPStatus.FORBIDDEN

    def __init__(self) -> None:
        super().__init__(
            "this view link is not valid for this job; ask for a new one with "
            "`POST /v1/jobs/{job_id}/view-link`"
        )


class ExpiredViewLinkError(ViewLinkError):
    """The token is genuine but its time is up."""

    status = HTTPStatus.UNAUTHORIZED

    def __init__(self) -> None:
        super().__init__(
            "this view link has expired; ask for a new one with `POST /v1/jobs/{job_id}/view-link`"
        )


# --- tokens ------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ViewSigner:
    """Makes and checks view tokens with one key (HMAC-SHA256)."""

    def __init__(self, key: bytes) -> None:
        """Sign with ``key`` (at least 32 bytes)."""
        if len(key) < MIN_VIEW_KEY_CHARS:
            raise SecretKeyError(
                f"the view key is shorter than {MIN_VIEW_KEY_CHARS} bytes; set "
                "SPINNER_API_VIEW_KEY to the output of `spinner-jobs new-key`"
            )
        self._key = key

    def _mac(self, job_id: str, organization_id: str, expires: int) -> bytes:
        message = b"\x00".join((job_id.encode(), organization_id.encode(), str(expires).encode()))
        return hmac.new(self._key, _MAC_CONTEXT + message, hashlib.sha256).digest()

    def sign(self, job_id: str, organization_id: str, expires: int) -> str:
        """The token for ``job_id`` of ``organization_id``, valid until ``expires`` (Unix s)."""
        mac = self._mac(job_id, organization_id, expires)
        return f"{TOKEN_PREFIX}.{expires}.{_b64(organization_id.encode())}.{_b64(mac)}"

    def verify(self, job_id: str, token: str, *, now: float, longest: timedelta) -> str:
        """The organization a token grants ``job_id`` of.

        Raises:
            InvalidViewLinkError: malformed, altered, for another job, or lasting longer
                than ``longest`` from now (a key's links outlive no lowered cap).
            ExpiredViewLinkError: genuine, but ``now`` is past its expiry.

        """
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise InvalidViewLinkError
        try:
            organization_id = _unb64(match.group(2)).decode()
        except (binascii.Error, ValueError):
            raise InvalidViewLinkError from None
        expires = int(match.group(1))
        # Compared as text, so no second spelling of the same token is taken.
        expected = self.sign(job_id, organization_id, expires)
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise InvalidViewLinkError
        if now >= expires:
            raise ExpiredViewLinkError
        if expires - now > longest.total_seconds() + 60:
            raise InvalidViewLinkError
        return organization_id


def view_key(settings: Settings) -> bytes:
    """The key of view links: SPINNER_API_VIEW_KEY, else ``<data_dir>/view.key``.

    The file is made on first use (mode 0600; when two processes race, the first key
    wins and both read it back), as the SQLite store keeps its ``secret.key``.
    """
    if settings.api.view_key is not None:
        return settings.api.view_key.get_secret_value().encode()
    path = settings.data_dir / VIEW_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(temp, path)
            log.info("view_key_file_created", path=str(path))
        except FileExistsError:
            pass
        finally:
            temp.unlink()
    return path.read_text().strip().encode()


# --- models ------------------------------------------------------------------------------


class ViewLinkRequest(BaseModel):
    """How long the link lasts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    expires_in: timedelta | None = Field(
        None,
        description="Lifetime (ISO-8601 or seconds); default SPINNER_API_VIEW_LINK_TTL, "
        "at most SPINNER_API_VIEW_LINK_MAX_TTL.",
    )


class ViewLink(BaseModel):
    """A read-only link to one job's live page."""

    job_id: str
    url: str = Field(description="The page, with its token: hand this to a person.")
    path: str = Field(description="The same, relative to the API (behind a proxy, say).")
    token: str = Field(description="Also takes the job's stream: /jobs/{job_id}/events?token=")
    expires_at: datetime


def view_path(job_id: str, token: str) -> str:
    """The page's path with its token."""
    return f"/jobs/{quote(job_id, safe=':')}?token={quote(token, safe='')}"


def make_view_link(
    signer: ViewSigner,
    job_id: str,
    organization_id: str,
    *,
    settings: ApiSettings,
    base_url: str,
    expires_in: timedelta | None = None,
) -> ViewLink:
    """A view link to ``job_id`` of ``organization_id``, lasting ``expires_in`` (or the default).

    Raises:
        InvalidJobError: ``expires_in`` is not positive or over the cap.

    """
    lasting = expires_in if expires_in is not None else settings.view_link_ttl
    cap = settings.view_link_max_ttl
    if lasting <= timedelta(0) or lasting > cap:
        raise InvalidJobError(
            "expires_in",
            f"must be more than 0 s and at most {int(cap.total_seconds())} s "
            "(SPINNER_API_VIEW_LINK_MAX_TTL)",
        )
    expires = int(time.time() + lasting.total_seconds())
    token = signer.sign(job_id, organization_id, expires)
    path = view_path(job_id, token)
    return ViewLink(
        job_id=job_id,
        url=base_url.rstrip("/") + path,
        path=path,
        token=token,
        expires_at=datetime.fromtimestamp(expires, UTC),
    )


# --- the page ----------------------------------------------------------------------------

_OPEN = frozenset({JobStatus.RUNNING})


def _number(value: int) -> str:
    return f"{value:,}"


def _duration(progress: JobProgress) -> str:
    seconds = progress.duration.total_seconds() if progress.duration is not None else None
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s"


def _summary(progress: JobProgress) -> str:
    """The closed job's one line (the script writes the same when the stream ends)."""
    tables = len(progress.tables)
    plural = "" if tables == 1 else "s"
    line = (
        f"{progress.status.value.capitalize()}: {_number(progress.total_records)} records, "
        f"{tables} table{plural}"
    )
    took = _duration(progress)
    if took:
        line += f", in {took}"
    if progress.error:
        line += f". {progress.error}"
    return line


def _bar(records: int, total: int | None, status: TableStatus) -> str:
    """A table's bar: full once done, indeterminate while its size is unknown."""
    if status == TableStatus.COMPLETED:
        done = max(records, 1)
        return f'<progress max="{done}" value="{done}"></progress>'
    if total is None:
        return "<progress></progress>"
    return f'<progress max="{max(total, 1)}" value="{min(records, total)}"></progress>'


def _count(records: int, total: int | None, estimated: bool, status: TableStatus) -> str:
    """``1,200 / ~3,000`` (``~``: the last snapshot's size), or the count alone once done."""
    if total is None or status == TableStatus.COMPLETED:
        return _number(records)
    return f"{_number(records)} / {'~' if estimated else ''}{_number(total)}"


def render_page(
    progress: JobProgress,
    *,
    title: str,
    events_url: str,
    expires: datetime,
    expected: Mapping[str, int],
) -> str:
    """The job page's HTML: every value from the job escaped (attributes quoted too).

    ``expected`` holds, for tables whose total is unknown (a download), the size of
    their last snapshot: the bar's full width until the count passes it.
    """
    e = escape
    closed = progress.status not in _OPEN
    rows = []
    for table_id, table in progress.tables.items():
        total = table.total if table.total is not None else expected.get(table_id)
        estimated = table.total is None and total is not None
        attempt = f" (attempt {table.attempt})" if table.attempt > 1 else ""
        error = f": {table.error}" if table.error else ""
        rows.append(
            f'<tr class="table" data-table-id="{e(table_id)}" data-records="{table.records}" '
            f'data-total="{"" if total is None else total}" '
            f'data-estimated="{"true" if estimated else "false"}" '
            f'data-status="{e(table.status.value)}">'
            f'<th scope="row" class="name">{e(table.name)}</th>'
            f'<td class="bar">{_bar(table.records, total, table.status)}</td>'
            f'<td class="count">{e(_count(table.records, total, estimated, table.status))}</td>'
            f'<td class="state">{e(table.status.value + attempt + error)}</td>'
            "</tr>"
        )
    summary = _summary(progress) if closed else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{e(title)} · spinner-jobs</title>
<link rel="stylesheet" href="/static/job-page.css">
<script src="/static/job-page.js" defer></script>
</head>
<body>
<main id="job" data-job-id="{e(progress.job_id)}" data-status="{e(progress.status.value)}"
 data-events="{e(events_url)}">
<header>
<h1>{e(title)}</h1>
<p class="meta">{e(progress.job_type)} · workbook <code>{e(progress.workbook_id)}</code>
 · job <code>{e(progress.job_id)}</code></p>
<p class="totals"><span id="status" class="status">{e(progress.status.value)}</span>
 <span id="total-records">{_number(progress.total_records)}</span> records</p>
</header>
<section id="summary" class="summary {e(progress.status.value)}"{"" if closed else " hidden"}>
<p id="summary-line">{e(summary)}</p>
</section>
<p id="notice" class="notice" hidden></p>
<table class="tables">
<thead><tr><th scope="col">Table</th><th scope="col">Progress</th>
<th scope="col">Records</th><th scope="col">Status</th></tr></thead>
<tbody>
{"".join(rows)}
</tbody>
</table>
<footer>Live over Server-Sent Events. This read-only link expires
 {e(expires.strftime("%Y-%m-%d %H:%M UTC"))}.</footer>
</main>
</body>
</html>
"""


def error_page(status: int, detail: str) -> HTMLResponse:
    """A page saying, in words, why the job cannot be shown."""
    phrase = HTTPStatus(status).phrase
    body = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(phrase)} · spinner-jobs</title>
<link rel="stylesheet" href="/static/job-page.css">
</head>
<body>
<main class="error">
<h1>{escape(phrase)}</h1>
<p id="error-detail">{escape(detail)}</p>
</main>
</body>
</html>
"""
    return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)


# --- routes ------------------------------------------------------------------------------


def view_router(
    state: "ApiState",
    *,
    authenticate: Callable[..., Any],
    stream_response: Callable[..., Response],
) -> APIRouter:
    """The view-link routes over the API's ``state``.

    Args:
        state: what the API's routes share (enqueuer, store, stream counts).
        authenticate: the dependency that turns a bearer key into an :class:`ApiKey`.
        stream_response: makes the event-stream response that gives back its slot.

    """
    settings = state.settings
    signer = ViewSigner(view_key(settings))
    router = APIRouter()
    Key = Annotated[ApiKey, Depends(authenticate)]  # noqa: N806 (a type alias)
    Token = Annotated[  # noqa: N806
        str | None, Query(description="The view link's token.", max_length=_MAX_TOKEN_CHARS)
    ]

    def organization_of(job_id: str, token: str | None) -> str:
        if not token:
            raise MissingViewLinkError
        organization_id = signer.verify(
            job_id, token, now=time.time(), longest=settings.api.view_link_max_ttl
        )
        structlog.contextvars.bind_contextvars(organization_id=organization_id, view_link=True)
        return organization_id

    @router.post(
        "/v1/jobs/{job_id}/view-link",
        responses={
            code: {"content": {"application/problem+json": {}}, "description": "A problem."}
            for code in (401, 404, 422)
        },
        tags=["jobs"],
    )
    async def create_view_link(
        job_id: str,
        request: Request,
        key: Key,
        body: Annotated[ViewLinkRequest | None, Body()] = None,
    ) -> ViewLink:
        """A signed, expiring, read-only link to the job's live page, for a browser.

        The link shows this job and follows its events, for anyone holding it, until it
        expires; it does nothing else.
        """
        if await state.enqueuer.backend.find(job_id, key.organization_id) is None:
            raise JobNotFoundError(job_id)
        link = make_view_link(
            signer,
            job_id,
            key.organization_id,
            settings=settings.api,
            base_url=str(request.base_url),
            expires_in=body.expires_in if body is not None else None,
        )
        log.info("view_link_created", job_id=job_id, expires_at=link.expires_at.isoformat())
        return link

    @router.get(
        "/jobs/{job_id}",
        response_class=HTMLResponse,
        tags=["view"],
        responses={
            401: {"description": "No view link, or an expired one (an HTML page)."},
            403: {"description": "A view link not valid for this job."},
        },
    )
    async def job_page(job_id: str, token: Token = None) -> HTMLResponse:
        """The job's live page: a progress bar per table, then the summary (HTML)."""
        try:
            organization_id = organization_of(job_id, token)
            progress = await state.enqueuer.progress(
                job_id, actor={"user_id": "view-link", "organization_id": organization_id}
            )
            workbook, expected = await state.in_store(_snapshot_sizes, state, progress)
        except SpinnerError as exc:
            log.info("job_page_refused", job_id=job_id, error=type(exc).__name__)
            return error_page(status_of(exc), public_detail(exc))
        try:
            title = f"{JOB_TYPES.get(progress.job_type).verb} · {workbook}"
        except UnknownJobTypeError:
            title = f"{progress.job_type} · {workbook}"
        assert token is not None
        events = f"/jobs/{quote(job_id, safe=':')}/events?token={quote(token, safe='')}"
        page = render_page(
            progress,
            title=title,
            events_url=events,
            expected=expected,
            expires=datetime.fromtimestamp(int(token.split(".")[1]), UTC),
        )
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @router.get(
        "/jobs/{job_id}/events",
        response_class=StreamingResponse,
        tags=["view"],
        responses={200: {"content": {"text/event-stream": {}}, "description": "As /v1."}},
    )
    async def job_page_events(job_id: str, request: Request, token: Token = None) -> Response:
        """The job's event stream (as ``/v1/jobs/{job_id}/events``) for a view link's page."""
        organization_id = organization_of(job_id, token)
        resume = parse_last_event_id(job_id, request.headers.get("last-event-id"))
        if await state.enqueuer.backend.find(job_id, organization_id) is None:
            raise JobNotFoundError(job_id)
        if resume.finished:
            return Response(status_code=HTTPStatus.NO_CONTENT)
        slot = f"view:{organization_id}:{job_id}"
        state.open_stream(slot)
        stream = job_event_stream(
            state.enqueuer,
            job_id,
            actor={"user_id": "view-link", "organization_id": organization_id},
            resume=resume,
            interval=settings.jobs.progress_interval.total_seconds(),
            heartbeat=settings.api.sse_heartbeat.total_seconds(),
            closing=state.closing,
            request_id=request_id_of(request),
        )
        log.info(
            "sse_stream_opened",
            job_id=job_id,
            view_link=True,
            resumed=request.headers.get("last-event-id") is not None,
        )
        return stream_response(
            stream,
            on_close=lambda: state.close_stream(slot),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        """The page's script and stylesheet."""
        media_type = _ASSETS.get(name)
        if media_type is None:
            raise HTTPException(status_code=HTTPStatus.NOT_FOUND)
        return Response(
            (_STATIC / name).read_bytes(),
            media_type=media_type,
            headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    return router


def _snapshot_sizes(state: "ApiState", progress: JobProgress) -> tuple[str, dict[str, int]]:
    """The workbook's name and, per table of unknown total synced before, its snapshot size."""
    workbook = state.store.get_workbook(progress.workbook_id)
    if workbook is None:
        return progress.workbook_id, {}
    synced = {table.id for table in workbook.tables if table.last_synced_at is not None}
    sizes = {}
    for table_id, table in progress.tables.items():
        if table.total is None and table_id in synced:
            size = state.store.count_records(table_id)
            if size > 0:
                sizes[table_id] = size
    return workbook.name, sizes


__all__ = [
    "ExpiredViewLinkError",
    "InvalidViewLinkError",
    "MissingViewLinkError",
    "ViewLink",
    "ViewSigner",
    "make_view_link",
    "view_key",
    "view_router",
]
