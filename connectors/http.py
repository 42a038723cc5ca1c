"""Paginated JSON REST sources, configured in the vocabulary of dlt's ``rest_api`` source.

Table config (validated by :class:`HttpTableConfig`)::

    base_url             "https://api.example.com/v1"                   (required)
    path                 "customers"                                     (default "")
    params               query parameters sent with every request        (default {})
    headers              extra request headers                           (default {})
    data_selector        dotted path to the records array, e.g.
                         "data.items"; empty: the body is the array      (default none)
    primary_key          record field holding the remote id              (default "id")
    paginator            {"type": "json_link" | "header_link" | "cursor" |
                         "offset" | "page_number" | "single_page", ...}  (required;
                         a bare type name is accepted as shorthand)
    requests_per_second  client-side rate limit per base_url            (default none)
    timeout              seconds per request                             (default 30)
    max_request_retries  in-connector retries of one request             (default 5)

The cursor handed back with each page fully determines the request for the next
page: the absolute next URL for the link paginators, the token for ``cursor``, the
offset for ``offset``, the page number for ``page_number``. Resuming from it fetches
exactly the following page. Link paginators follow the next URL as the source gives
it: ``params`` go with the first request only.

Retries inside the connector (``max_request_retries``) cover 408, 429, 5xx, timeouts,
dropped connections and cut-off bodies, with exponential backoff from
``retry_backoff`` seconds (jittered, capped at ``retry_backoff_max``) or the source's
``Retry-After`` (up to ``max_retry_after``). Past them the read raises
:class:`~enqueuer.errors.SourceUnavailableError` and the job's retry policy resumes
from the last cursor.

Credentials come from the table's :class:`~enqueuer.models.ConnectorAccount` only,
and are sent only to the origin (scheme, host, port) of ``base_url``: a next link or
a redirect to another host gets neither the credentials nor the configured headers.
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib.util
import math
import random
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import httpx
import orjson
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from connectors.base import Page, ReadContext, RecordRow
from enqueuer.errors import (
    InvalidTableConfigError,
    PermanentSourceError,
    SourceAuthError,
    SourceNotFoundError,
    SourceRequestError,
    SourceUnavailableError,
)
from enqueuer.models import ConnectorAccount, Table

log = structlog.get_logger(__name__)

_USER_AGENT = "spinner-jobs/0.1 (+httpx)"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_BODY_EXCERPT = 200


# --- configuration ---------------------------------------------------------------------


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JsonLinkPaginator(_Config):
    """The body holds the URL of the next page (absent, null or empty on the last)."""

    type: Literal["json_link"]
    next_url_path: str = Field("next", min_length=1, description="Dotted path of the next URL.")


class HeaderLinkPaginator(_Config):
    """An RFC 8288 ``Link`` header holds the URL of the next page."""

    type: Literal["header_link"]
    links_next_key: str = Field("next", min_length=1, description="The ``rel`` of the link.")


class CursorPaginator(_Config):
    """The body holds a token that is sent back as a query parameter."""

    type: Literal["cursor"]
    cursor_path: str = Field(
        "cursors.next", min_length=1, description="Dotted path of the token in the body."
    )
    cursor_param: str = Field("cursor", min_length=1, description="Query parameter carrying it.")


class OffsetPaginator(_Config):
    """``offset``/``limit`` query parameters.

    Stops when the body's total (``total_path``) is reached or, with no total, on a
    page shorter than ``limit``.
    """

    type: Literal["offset"]
    limit: int = Field(ge=1, description="Records asked for per page.")
    offset: int = Field(0, ge=0, description="Offset of the first page.")
    offset_param: str = Field("offset", min_length=1)
    limit_param: str = Field("limit", min_length=1)
    total_path: str | None = Field(None, description="Dotted path of the total record count.")


class PageNumberPaginator(_Config):
    """A page-number query parameter.

    Stops on an empty page, on the body's page count (``total_pages_path``) or, with
    none and a known ``page_size``, on a page shorter than it.
    """

    type: Literal["page_number"]
    base_page: int = Field(1, ge=0, description="Number of the first page.")
    page_param: str = Field("page", min_length=1)
    page_size_param: str | None = Field(None, description="Query parameter for the page size.")
    page_size: int | None = Field(None, ge=1, description="Records per page (sent if a param).")
    total_pages_path: str | None = Field(None, description="Dotted path of the page count.")

    @model_validator(mode="after")
    def _size_with_param(self) -> PageNumberPaginator:
        if self.page_size_param and self.page_size is None:
            raise ValueError("page_size_param needs page_size")
        return self


class SinglePagePaginator(_Config):
    """One request answers every record."""

    type: Literal["single_page"]


Paginator = Annotated[
    JsonLinkPaginator
    | HeaderLinkPaginator
    | CursorPaginator
    | OffsetPaginator
    | PageNumberPaginator
    | SinglePagePaginator,
    Field(discriminator="type"),
]


class HttpTableConfig(_Config):
    """Validated configuration of an ``http`` table (see the module docstring)."""

    base_url: str = Field(min_length=8)
    path: str = ""
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    data_selector: str | None = None
    primary_key: str = Field("id", min_length=1)
    paginator: Paginator
    requests_per_second: float | None = Field(None, gt=0)
    timeout: float = Field(30.0, gt=0, description="Seconds per request.")
    max_request_retries: int = Field(5, ge=0, le=50)
    retry_backoff: float = Field(0.2, ge=0, description="First retry delay, doubled per retry.")
    retry_backoff_max: float = Field(10.0, ge=0, description="Cap of the retry delay.")
    max_retry_after: float = Field(
        120.0,
        ge=0,
        description="Longest Retry-After honoured in the connector; longer waits are left "
        "to the job's retry policy.",
    )

    @field_validator("paginator", mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        # dlt accepts a bare paginator name; so do we.
        return {"type": value} if isinstance(value, str) else value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = httpx.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an absolute http(s) URL")
        return value

    @property
    def endpoint(self) -> str:
        """``base_url`` joined with ``path``."""
        if not self.path:
            return self.base_url
        return f"{self.base_url.rstrip('/')}/{self.path.lstrip('/')}"


def parse_http_config(config: Mapping[str, Any], table_id: str | None = None) -> HttpTableConfig:
    """Validate ``config`` as an http table config.

    Raises:
        InvalidTableConfigError: naming the table and each bad field (never its value,
            which may hold a token).

    """
    try:
        return HttpTableConfig.model_validate(dict(config))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in exc.errors(include_url=False, include_input=False)
        )
        where = f"table {table_id!r}: " if table_id else ""
        raise InvalidTableConfigError(f"{where}invalid http table config: {problems}") from None


# --- the connector -----------------------------------------------------------------------


class HttpConnector:
    """Pages through paginated JSON REST APIs over one pooled keep-alive client."""

    name = "http"

    def __init__(self, *, max_connections: int = 32) -> None:
        """Create the connector; the HTTP client opens on first use.

        Args:
            max_connections: pool size shared by every table read through this instance.

        """
        self._limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=30.0,
        )
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._limiters: dict[tuple[str, float], _RateLimiter] = {}

    def validate_config(self, config: Mapping[str, Any]) -> None:
        """Raise ``InvalidTableConfigError`` when ``config`` is not a valid http config."""
        parse_http_config(config)

    async def pages(
        self,
        table: Table,
        account: ConnectorAccount | None,
        cursor: str | None,
        context: ReadContext,
    ) -> AsyncIterator[Page]:
        """Yield the table's pages, starting at ``cursor`` (``None``: the first page).

        While the caller handles a page, the next one is already being fetched, so
        network time overlaps with the caller's writes.

        Raises:
            SourceUnavailableError: the source kept failing (5xx, 429, timeouts,
                dropped connections) past ``max_request_retries``.
            SourceAuthError: 401 or 403.
            SourceNotFoundError: 404 or 410.
            SourceRequestError: another 4xx, or a body without a records list or
                with a record lacking the primary key.
            InvalidTableConfigError: the config or the cursor cannot work.

        """
        cfg = parse_http_config(table.config, table.id)
        reader = _TableReader(
            table_id=table.id,
            cfg=cfg,
            client=self._get_client(),
            limiter=self._limiter(cfg),
            account=account,
            job_id=context.job_id,
        )
        pending: asyncio.Task[tuple[list[RecordRow], _Request | None]] | None = None
        try:
            records, following = await reader.read(reader.first_request(cursor))
            while following is not None:
                pending = asyncio.create_task(reader.read(following))
                yield Page(records, following.cursor)
                records, following = await pending
                pending = None
            yield Page(records, None)
        finally:
            if pending is not None:
                # The caller stopped early: drop the prefetched page.
                pending.cancel()
                pending.add_done_callback(_consume_outcome)

    async def aclose(self) -> None:
        """Close the pooled client (a later read opens a new one)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _get_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        # Pooled connections belong to the loop that opened them; a registry reused
        # under a new loop (a second asyncio.run) gets a fresh client.
        if self._client is None or self._client.is_closed or self._client_loop is not loop:
            _remember_missing_sniffio()
            self._client_loop = loop
            self._client = httpx.AsyncClient(
                limits=self._limits,
                follow_redirects=False,  # followed by hand, so credentials stay on origin
                headers={"User-Agent": _USER_AGENT, "Accept": "application/json"},
            )
        return self._client

    def _limiter(self, cfg: HttpTableConfig) -> _RateLimiter | None:
        if cfg.requests_per_second is None:
            return None
        key = (cfg.base_url, cfg.requests_per_second)
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = _RateLimiter(cfg.requests_per_second)
        return limiter


def _remember_missing_sniffio() -> None:
    """Make a failed ``import sniffio`` cheap when sniffio is not installed.

    httpcore imports sniffio on every request to detect the async library and falls
    back to asyncio when it is missing; a failed import is not cached, and the
    filesystem search it repeats cost about 1.3 ms per request here (a tenth of a
    1000-record page). A ``None`` entry in ``sys.modules`` makes the import fail at
    once, with the same outcome.
    """
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def _consume_outcome(task: asyncio.Task[Any]) -> None:
    # Mark a dropped prefetch's error as seen so asyncio does not log it.
    if not task.cancelled():
        task.exception()


class _RateLimiter:
    """Spaces request starts at least ``1 / rate`` seconds apart (per event loop)."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0

    async def acquire(self) -> None:
        # Reserve a slot before sleeping: concurrent callers queue up in order
        # without a lock (one event loop, no await between read and write).
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


# --- one table read ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Request:
    """One page request; ``cursor`` is what resumes exactly here."""

    url: str
    params: dict[str, Any] | None
    cursor: str
    position: int = 0


class _TableReader:
    """State of one ``pages()`` call: config, headers, and the paging rules."""

    def __init__(
        self,
        *,
        table_id: str,
        cfg: HttpTableConfig,
        client: httpx.AsyncClient,
        limiter: _RateLimiter | None,
        account: ConnectorAccount | None,
        job_id: str,
    ) -> None:
        self.table_id = table_id
        self.log = log.bind(table_id=table_id, job_id=job_id)
        self.cfg = cfg
        self.client = client
        self.limiter = limiter
        self.pager = cfg.paginator
        self.secret = (
            account.secret.get_secret_value() if account and account.auth != "none" else ""
        )
        auth: dict[str, str] = {}
        if account is not None and account.auth == "bearer":
            auth["Authorization"] = f"Bearer {self.secret}"
        elif account is not None and account.auth == "api_key":
            auth[account.header] = self.secret
        self.origin_headers = {**cfg.headers, **auth}
        self.origin = _origin(httpx.URL(cfg.base_url))
        self.selector = _split_path(cfg.data_selector)
        self.pk = cfg.primary_key
        self._paths: dict[str, tuple[str, ...]] = {}

    # --- paging rules ---

    def first_request(self, cursor: str | None) -> _Request:
        """Return the request a read starting at ``cursor`` begins with."""
        pager, endpoint = self.pager, self.cfg.endpoint
        params = dict(self.cfg.params)
        if isinstance(pager, JsonLinkPaginator | HeaderLinkPaginator):
            if not cursor:
                return _Request(endpoint, params, "")
            if not cursor.startswith(("http://", "https://")):
                raise self._bad_cursor(cursor, "a next-page URL")
            return _Request(cursor, None, cursor)
        if isinstance(pager, CursorPaginator):
            if cursor:
                params[pager.cursor_param] = cursor
            return _Request(endpoint, params, cursor or "")
        if isinstance(pager, OffsetPaginator):
            offset = self._int_cursor(cursor, "an offset", default=pager.offset)
            params[pager.offset_param] = offset
            params[pager.limit_param] = pager.limit
            return _Request(endpoint, params, str(offset), offset)
        if isinstance(pager, PageNumberPaginator):
            page = self._int_cursor(cursor, "a page number", default=pager.base_page)
            params[pager.page_param] = page
            if pager.page_size_param and pager.page_size is not None:
                params[pager.page_size_param] = pager.page_size
            return _Request(endpoint, params, str(page), page)
        if cursor:
            raise self._bad_cursor(cursor, "nothing (single_page has one page)")
        return _Request(endpoint, params, "")

    def next_request(
        self, req: _Request, response: httpx.Response, body: Any, count: int
    ) -> _Request | None:
        """Return the request for the page after ``req`` (``None``: ``req`` was the last)."""
        pager = self.pager
        if isinstance(pager, JsonLinkPaginator):
            link = _dig(body, self._path(pager.next_url_path))
            return self._link_request(req, response, link if isinstance(link, str) else None)
        if isinstance(pager, HeaderLinkPaginator):
            link = response.links.get(pager.links_next_key, {}).get("url")
            return self._link_request(req, response, link)
        if isinstance(pager, CursorPaginator):
            token = _dig(body, self._path(pager.cursor_path))
            if token is None or token is _MISSING or token == "" or isinstance(token, bool):
                return None
            if not isinstance(token, str | int | float):
                raise self._body_error(req, f"cursor at {pager.cursor_path!r} is not a token")
            token = str(token)
            if token == req.cursor:
                raise self._body_error(req, f"cursor at {pager.cursor_path!r} did not advance")
            params = dict(self.cfg.params)
            params[pager.cursor_param] = token
            return _Request(req.url, params, token)
        if isinstance(pager, OffsetPaginator):
            if count == 0:
                return None
            offset = req.position + count
            total = self._int_at(body, pager.total_path)
            # A known total wins over the short-page rule: a server that caps `limit`
            # below ours answers short pages that are not the last.
            if (total is not None and offset >= total) or (total is None and count < pager.limit):
                return None
            params = dict(self.cfg.params)
            params[pager.offset_param] = offset
            params[pager.limit_param] = pager.limit
            return _Request(req.url, params, str(offset), offset)
        if isinstance(pager, PageNumberPaginator):
            if count == 0:
                return None
            pages = self._int_at(body, pager.total_pages_path)
            if pages is not None and req.position >= pager.base_page + pages - 1:
                return None
            if pages is None and pager.page_size is not None and count < pager.page_size:
                return None
            page = req.position + 1
            params = dict(self.cfg.params)
            params[pager.page_param] = page
            if pager.page_size_param and pager.page_size is not None:
                params[pager.page_size_param] = pager.page_size
            return _Request(req.url, params, str(page), page)
        return None

    def _link_request(
        self, req: _Request, response: httpx.Response, link: str | None
    ) -> _Request | None:
        if not link:
            return None
        # Most APIs send absolute links; httpx's URL join is a measurable part of a page.
        url = link if link.startswith(("http://", "https://")) else str(response.url.join(link))
        if url == str(response.url) or url == req.cursor:
            raise self._body_error(req, "the next link points at the page just read")
        return _Request(url, None, url)

    # --- fetching ---

    async def read(self, req: _Request) -> tuple[list[RecordRow], _Request | None]:
        """Fetch one page: its records and the request for the page after it."""
        response, body = await self.fetch(req)
        items = body if not self.selector else _dig(body, self.selector)
        if not isinstance(items, list):
            where = f"data_selector {self.cfg.data_selector!r}" if self.selector else "the body"
            raise self._body_error(
                req, f"records at {where} are not a list (got {_json_kind(items)})"
            )
        return self._records(req, items), self.next_request(req, response, body, len(items))

    def _records(self, req: _Request, items: list[Any]) -> list[RecordRow]:
        pk = self.pk
        try:
            keys = [item[pk] for item in items]
        except (KeyError, TypeError, IndexError):
            keys = []
        if len(keys) != len(items) or None in keys:
            for index, item in enumerate(items):
                if not isinstance(item, dict):
                    raise self._body_error(req, f"record {index} is not an object")
                if item.get(pk) is None:
                    raise self._body_error(req, f"record {index} has no primary key {pk!r}")
        # Bare tuples, not Record(...): a NamedTuple's constructor is a tenth of this
        # path's CPU at a thousand records a page.
        return [(str(key), item) for key, item in zip(keys, items, strict=True)]

    async def fetch(self, req: _Request) -> tuple[httpx.Response, Any]:
        """GET ``req`` with retries; return the response and its parsed JSON body."""
        cfg = self.cfg
        attempts = cfg.max_request_retries + 1
        last = ""
        for attempt in range(1, attempts + 1):
            if self.limiter is not None:
                await self.limiter.acquire()
            delay: float | None = None
            try:
                response = await self._get_following_redirects(req)
            except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL) as exc:
                raise SourceRequestError(
                    f"table {self.table_id!r}: cannot send GET {_path_of(req.url)}: "
                    f"{self._redact(exc)}; check base_url, path and headers"
                ) from None
            except (httpx.TransportError, httpx.DecodingError) as exc:
                last = f"{type(exc).__name__}: {self._redact(exc) or 'no detail'}"
                status = 0
            else:
                status = response.status_code
                if 200 <= status < 300:
                    try:
                        return response, orjson.loads(response.content)
                    except ValueError as exc:
                        # Mostly a body cut short; a retry gets it whole.
                        last = f"{status} with an invalid JSON body ({exc})"
                elif status in (408, 429) or status >= 500:
                    last = f"{status} {response.reason_phrase}"
                    delay = _retry_after(response.headers.get("retry-after"))
                    if delay is not None and delay > cfg.max_retry_after:
                        raise SourceUnavailableError(
                            f"table {self.table_id!r}: source answered {last} for GET "
                            f"{_path_of(req.url)} and asks to wait {delay:.0f}s, longer than "
                            f"max_retry_after ({cfg.max_retry_after:.0f}s); "
                            "the job's retry policy will try again later"
                        )
                else:
                    raise self._status_error(req, response)
            if attempt == attempts:
                break
            if delay is None:
                backoff = min(cfg.retry_backoff_max, cfg.retry_backoff * 2 ** (attempt - 1))
                # Equal jitter: keeps the doubling but spreads parallel readers apart.
                delay = backoff / 2 + random.uniform(0, backoff / 2)
            self.log.warning(
                "source_request_retry",
                status=status or None,
                error=last,
                attempt=attempt,
                delay=round(delay, 3),
            )
            await asyncio.sleep(delay)
        self.log.warning("source_request_gave_up", error=last, attempts=attempts)
        raise SourceUnavailableError(
            f"table {self.table_id!r}: source unavailable for GET {_path_of(req.url)} after "
            f"{attempts} attempts (last: {last}); the job's retry policy will try again"
        )

    async def _get_following_redirects(self, req: _Request) -> httpx.Response:
        url, params = req.url, req.params
        for _ in range(_MAX_REDIRECTS + 1):
            target = httpx.URL(url)
            headers = self.origin_headers if _origin(target) == self.origin else None
            response = await self.client.get(
                target, params=params, headers=headers, timeout=self.cfg.timeout
            )
            location = response.headers.get("location")
            if response.status_code not in _REDIRECTS or not location:
                return response
            url, params = str(response.url.join(location)), None
        raise SourceRequestError(
            f"table {self.table_id!r}: more than {_MAX_REDIRECTS} redirects for GET "
            f"{_path_of(req.url)}; check base_url"
        )

    # --- errors ---

    def _status_error(self, req: _Request, response: httpx.Response) -> PermanentSourceError:
        status = response.status_code
        error: type[PermanentSourceError]
        if status in (401, 403):
            error, advice = SourceAuthError, "check the connector account's credentials"
        elif status in (404, 410):
            error, advice = SourceNotFoundError, "check base_url and path; the table may be gone"
        else:
            error, advice = SourceRequestError, "check the table's params and headers"
        # Redact before cutting, so no partial secret survives at the cut.
        excerpt = self._redact(response.text)[:_BODY_EXCERPT].strip()
        detail = f" (body: {excerpt})" if excerpt else ""
        return error(
            f"table {self.table_id!r}: source answered {status} {response.reason_phrase} "
            f"for GET {_path_of(req.url)}; {advice}{detail}"
        )

    def _body_error(self, req: _Request, problem: str) -> SourceRequestError:
        return SourceRequestError(
            f"table {self.table_id!r}: {problem} in the answer to GET {_path_of(req.url)}; "
            "check data_selector, primary_key and paginator"
        )

    def _bad_cursor(self, cursor: str, expected: str) -> InvalidTableConfigError:
        return InvalidTableConfigError(
            f"table {self.table_id!r}: cursor {cursor[:100]!r} does not fit the "
            f"{self.pager.type} paginator (expected {expected}); restart the table from the "
            "beginning"
        )

    def _int_cursor(self, cursor: str | None, expected: str, *, default: int) -> int:
        if not cursor:
            return default
        try:
            return int(cursor)
        except ValueError:
            raise self._bad_cursor(cursor, expected) from None

    def _int_at(self, body: Any, path: str | None) -> int | None:
        if not path:
            return None
        value = _dig(body, self._path(path))
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            return None
        try:
            return int(value)
        except ValueError:
            return None

    def _path(self, path: str) -> tuple[str, ...]:
        parts = self._paths.get(path)
        if parts is None:
            parts = self._paths[path] = _split_path(path)
        return parts

    def _redact(self, text: object) -> str:
        message = str(text)
        return message.replace(self.secret, "***") if self.secret else message


# --- helpers ----------------------------------------------------------------------------


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def _split_path(path: str | None) -> tuple[str, ...]:
    return tuple(p for p in (path or "").strip().removeprefix("$").split(".") if p)


def _dig(node: Any, parts: tuple[str, ...]) -> Any:
    """Follow a dotted path through objects (and list indexes); ``_MISSING`` if absent."""
    for part in parts:
        if isinstance(node, dict):
            node = node.get(part, _MISSING)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _json_kind(value: Any) -> str:
    if value is _MISSING:
        return "nothing"
    if value is None:
        return "null"
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
    }.get(type(value), type(value).__name__)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default_port = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default_port


def _path_of(url: str) -> str:
    # The path only: query strings can carry tokens a user put into params.
    return httpx.URL(url).path or "/"


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
