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
    requests_per_second  client-side rate limit per base_url and
                         connector account                               (default none)
    timeout              seconds one request may take in all: connect,
                         headers, body, redirects                        (default 30)
    max_page_bytes       largest page body accepted, decompressed        (default 64 MiB,
                                                                          at most 256 MiB)
    max_request_retries  in-connector retries of one request             (default 5)
    write                how local changes are published (default none:
                         read-only); see "Publishing changes" below


The cursor handed back with each page fully determines the request for the next
page: the absolute next URL for the link paginators, the token for ``cursor``, the
offset for ``offset``, the page number for ``page_number``. Resuming from it fetches
exactly the following page. Link paginators follow the next URL as the source gives
it: ``params`` go with the first request only.

``timeout`` is a deadline for the whole request, so a source that sends its answer a
byte at a time is cut off like one that does not answer. A body larger than
``max_page_bytes`` (announced by Content-Length or found while streaming it) fails the
table with :class:`~spinner_jobs.core.errors.SourcePageTooLargeError`: lower the
paginator's page size.

Retries inside the connector (``max_request_retries``) cover 408, 429, 5xx, timeouts,
dropped connections and cut-off bodies, with exponential backoff from
``retry_backoff`` seconds (jittered, capped at ``retry_backoff_max``) or the source's
``Retry-After`` (up to ``max_retry_after``). Past them the read raises
:class:`~spinner_jobs.core.errors.SourceUnavailableError` and the job's retry policy resumes
from the last cursor.

Credentials come from the table's :class:`~spinner_jobs.core.models.ConnectorAccount` only,
and are sent only to the origin (scheme, host, port) of ``base_url``: a next link or
a redirect to another host gets neither the credentials nor the configured headers.
A config whose ``headers``, ``params`` or URL query carry a credential is refused
(see :mod:`connectors.http_config`).

Sources are confined: only http and https, and only public addresses unless the
connector was given ``allowed_networks`` (``SPINNER_HTTP_ALLOWED_NETWORKS``). The
address check runs on every connection the client opens, so it covers the first URL,
each redirect hop, each next link and a resumed cursor alike (see
:mod:`connectors.http_guard`).

Pages that cycle fail the table with :class:`~spinner_jobs.core.errors.PaginationCycleError`:
a next URL or cursor token seen before in this read, or a page whose record ids are
the same, in any order, as those of the page before (a source that ignores the
offset or page parameter).

Publishing changes (``write``, for the publish-changes job)::

    create / update / delete   {"method": "POST"|"PUT"|"PATCH"|"DELETE",
                                "path": "records/{id}"}: below base_url; {id} is the
                                record's id, URL-quoted (update and delete need it)
    body                       "fields": the fields object is the JSON body (default);
                               {"wrap": "data"}: sent as {"data": fields}
    response_selector          dotted path of the record in a write's answer
                               (default: the body)
    id_field                   field of the created record holding its id
                               (default: primary_key)
    version_field              record field compared with the downloaded one before an
                               update or delete; needs read
    read                       {"path": "records/{id}", "data_selector": ...}: the
                               GET of one record for that check

A create sends the record's fields, an update only the changed fields, a delete no
body; every write carries an ``Idempotency-Key`` header that is the same each time the
change is sent. With ``version_field``, an update or delete first reads the record: a
version that differs from the download's is a conflict and nothing is written (unless
the job publishes with ``overwrite``). When that read answers a strong ``ETag``, the
write names it in ``If-Match``, so a source that supports conditional requests refuses
the write (412: a conflict) if the record moved between the check and the write.
Outcomes: 2xx confirmed; 409 and 412 conflict; 404/410 done for a delete, a conflict
for an update; another 4xx fails that change only; 401/403 raise ``SourceAuthError``;
408, 429, 5xx and network failures raise ``SourceUnavailableError`` at once (no
in-connector retries: the job retries, and the change goes again with the same key).
Writes reach the same confined addresses as reads, carry credentials only to base_url's
origin, and follow only 307/308 redirects on that origin (never a redirect that turns
them into a GET or takes their body elsewhere).

Error messages carry the status and its standard reason, at most a short excerpt of
a body (control characters removed), and never the account's secret, a configured
header value or a configured query parameter value.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import math
import random
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import httpx
import orjson
import structlog
import yarl

from spinner_jobs.connectors.base import Page, ReadContext
from spinner_jobs.connectors.http_config import (
    ACCOUNT_HINT,
    MAX_PAGE_BYTES_LIMIT,
    CursorPaginator,
    HeaderLinkPaginator,
    HttpTableConfig,
    HttpWriteConfig,
    JsonLinkPaginator,
    OffsetPaginator,
    PageNumberPaginator,
    parse_http_config,
)
from spinner_jobs.connectors.http_guard import (
    AddressPolicy,
    IPNetwork,
    Resolver,
    guarded_connector,
    literal_address,
    system_resolver,
)
from spinner_jobs.connectors.json_pages import DecodedPage, page_decoder
from spinner_jobs.core.changes import Change, ChangeOp, ChangeOutcome
from spinner_jobs.core.errors import (
    InvalidTableConfigError,
    PaginationCycleError,
    PermanentSourceError,
    SourceAddressRefusedError,
    SourceAuthError,
    SourceError,
    SourceNotFoundError,
    SourcePageTooLargeError,
    SourceRequestError,
    SourceUnavailableError,
)
from spinner_jobs.core.models import ConnectorAccount, PageRecord, RecordTexts, Table

log = structlog.get_logger(__name__)

_USER_AGENT = "spinner-jobs/0.1 (+aiohttp)"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
_EXCERPT = 80  # longest piece of source-controlled text (a body, a path) in a message
_ERROR_BODY_BYTES = 16 << 10  # read of a non-2xx body, for its excerpt
_SCHEMES = ("http://", "https://")


# --- the connector -----------------------------------------------------------------------


class HttpConnector:
    """Pages through paginated JSON REST APIs over one pooled keep-alive client."""

    name = "http"

    def __init__(
        self,
        *,
        max_connections: int = 32,
        allowed_networks: Iterable[IPNetwork | str] = (),
        resolver: Resolver = system_resolver,
    ) -> None:
        """Create the connector; the HTTP client opens on first use.

        Args:
            max_connections: pool size shared by every table read through this instance.
            allowed_networks: networks reachable besides public addresses, e.g.
                ``127.0.0.0/8`` for a source on this machine (default: none).
            resolver: the host-name lookup of each new connection (the system's).

        """
        self._policy = AddressPolicy(allowed_networks)
        self._resolver = resolver
        self._max_connections = max_connections
        self._client: aiohttp.ClientSession | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._limiters: dict[tuple[str | None, str, float], _RateLimiter] = {}

    def validate_config(self, config: Mapping[str, Any]) -> None:
        """Raise ``InvalidTableConfigError`` when ``config`` is not a valid http config.

        A ``base_url`` naming a literal address the connector may not reach is refused
        here; host names are checked when connections are made.
        """
        self._check_literal_host(parse_http_config(config), None)

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
        self._check_literal_host(cfg, table.id)
        reader = _TableReader(
            table_id=table.id,
            cfg=cfg,
            client=self._get_client(),
            limiter=self._limiter(cfg, account),
            account=account,
            job_id=context.job_id,
        )
        pending: asyncio.Task[tuple[Sequence[PageRecord], _Request | None]] | None = None
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

    def validate_write_config(self, config: Mapping[str, Any]) -> None:
        """Raise ``InvalidTableConfigError`` unless ``config`` can publish changes.

        It must be a valid http config with a ``write`` section.
        """
        self._write_config(parse_http_config(config), None)

    async def apply_change(
        self,
        table: Table,
        account: ConnectorAccount | None,
        change: Change,
        *,
        idempotency_key: str,
        overwrite: bool,
    ) -> ChangeOutcome:
        """Send one change to the table's source (see the module docstring).

        Returns:
            confirmed (with the record's id at the source and the fields it returned),
            conflict (the record moved at the source, or 409/412), or failed (another
            4xx: this change only).

        Raises:
            SourceUnavailableError: 408, 429, 5xx, a timeout or a network failure; the
                change may have been applied: send it again with the same key.
            SourceAuthError: 401 or 403.
            SourceRequestError: the source's answer does not fit the write config.
            SourceAddressRefusedError: the source is at an address connectors may not
                reach.
            InvalidTableConfigError: the config has no ``write`` section or is invalid.

        """
        cfg = parse_http_config(table.config, table.id)
        writer = _TableWriter(
            table_id=table.id,
            cfg=cfg,
            write=self._write_config(cfg, table.id),
            client=self._get_client(),
            limiter=self._limiter(cfg, account),
            account=account,
            job_id=change.job_id,
        )
        return await writer.apply(change, idempotency_key, overwrite)

    def _write_config(self, cfg: HttpTableConfig, table_id: str | None) -> HttpWriteConfig:
        self._check_literal_host(cfg, table_id)
        if cfg.write is None:
            where = f"table {table_id!r}: " if table_id else ""
            raise InvalidTableConfigError(
                f"{where}the http table config has no write section, so its changes cannot "
                "be published; add write.create, write.update and/or write.delete"
            )
        return cfg.write

    def _check_literal_host(self, cfg: HttpTableConfig, table_id: str | None) -> None:
        address = literal_address(httpx.URL(cfg.base_url).host)
        if address is None:
            return
        try:
            self._policy.check(str(address), [address])
        except SourceAddressRefusedError as exc:
            where = f"table {table_id!r}: " if table_id else ""
            raise InvalidTableConfigError(
                f"{where}invalid http table config: base_url: {exc}"
            ) from None

    async def aclose(self) -> None:
        """Close the pooled client (a later read opens a new one)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _get_client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        # Pooled connections belong to the loop that opened them; a registry reused
        # under a new loop (a second asyncio.run) gets a fresh client.
        if self._client is None or self._client.closed or self._client_loop is not loop:
            self._client_loop = loop
            self._client = aiohttp.ClientSession(
                connector=guarded_connector(
                    self._policy,
                    limit=self._max_connections,
                    resolver=self._resolver,
                    # The CA bundle httpx ships (certifi), not the environment's.
                    ssl_context=httpx.create_ssl_context(trust_env=False),
                ),
                trust_env=False,  # nothing from the environment (proxies, .netrc)
                cookie_jar=aiohttp.DummyCookieJar(),  # one client serves every organization
                headers={"User-Agent": _USER_AGENT, "Accept": "application/json"},
                # The table's timeout bounds each whole request (asyncio.timeout).
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._client

    def _limiter(
        self, cfg: HttpTableConfig, account: ConnectorAccount | None
    ) -> _RateLimiter | None:
        if cfg.requests_per_second is None:
            return None
        # Per account: a source meters each credential, so one organization's reads do
        # not slow another's. Anonymous reads of a base_url share one limit, as the
        # source can only tell them apart by this worker's address.
        key = (account.id if account is not None else None, cfg.base_url, cfg.requests_per_second)
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = _RateLimiter(cfg.requests_per_second)
        return limiter


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


class _TableClient:
    """What reads and writes of one table share: headers, origin, what a message hides."""

    def __init__(
        self,
        *,
        table_id: str,
        cfg: HttpTableConfig,
        client: aiohttp.ClientSession,
        limiter: _RateLimiter | None,
        account: ConnectorAccount | None,
        job_id: str | None,
    ) -> None:
        self.table_id = table_id
        self.log = log.bind(table_id=table_id, job_id=job_id)
        self.cfg = cfg
        self.client = client
        self.limiter = limiter
        secret = _secret_of(account) if account and account.auth != "none" else ""
        auth: dict[str, str] = {}
        if account is not None and account.auth == "bearer":
            auth["Authorization"] = f"Bearer {secret}"
        elif account is not None and account.auth == "api_key":
            header = account.header.lower()
            if any(name.lower() == header for name in cfg.headers):
                raise InvalidTableConfigError(
                    f"table {table_id!r}: invalid http table config: headers: header "
                    f"{account.header!r} is the account's api_key header; {ACCOUNT_HINT}"
                )
            auth[account.header] = secret
        self.origin_headers = {**cfg.headers, **auth}
        # Never shown in a message: the secret, every configured header value, and
        # every configured query parameter value (params, base_url's and path's query).
        query = [str(v) for v in cfg.params.values() if not isinstance(v, bool)]
        query += _query_values(cfg.endpoint)
        self.hidden = sorted(
            {v for v in (secret, *cfg.headers.values(), *query) if len(v) >= 4},
            key=len,
            reverse=True,
        )
        self._longest_hidden = len(self.hidden[0]) if self.hidden else 0
        self.origin = _origin(httpx.URL(cfg.base_url))

    def _redact(self, text: object) -> str:
        message = str(text)
        for value in self.hidden:
            message = message.replace(value, "***")
        return message

    def _shown_path(self, url: str) -> str:
        # The path only (query strings can carry tokens a user put into params), cut
        # short: a next link's path is chosen by the source.
        return _excerpt(self._redact(_path_of(url)), _EXCERPT)

    def _body_excerpt(self, response: aiohttp.ClientResponse, content: bytes) -> str:
        """A short, clean excerpt of an error body, hidden values removed first."""
        text = self._redact(_text_of(response, content))
        if len(content) >= _ERROR_BODY_BYTES and self._longest_hidden:
            # Only the body's start was read: a hidden value cut there is not
            # recognised by the redaction, and would sit at the very end.
            text = text[: max(0, len(text) - self._longest_hidden + 1)]
        return _excerpt(text, _EXCERPT)

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes | None:
        """The whole (decompressed) body; ``None`` as soon as it passes ``max_page_bytes``."""
        cap = self.cfg.max_page_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > cap:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def _read_start(self, response: aiohttp.ClientResponse) -> bytes:
        """The first ``_ERROR_BODY_BYTES`` of a body only an error's excerpt shows."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():
            chunks.append(chunk)
            size += len(chunk)
            if size >= _ERROR_BODY_BYTES:
                break
        return b"".join(chunks)[:_ERROR_BODY_BYTES]


class _TableReader(_TableClient):
    """State of one ``pages()`` call: config, headers, and the paging rules."""

    def __init__(
        self,
        *,
        table_id: str,
        cfg: HttpTableConfig,
        client: aiohttp.ClientSession,
        limiter: _RateLimiter | None,
        account: ConnectorAccount | None,
        job_id: str,
    ) -> None:
        super().__init__(
            table_id=table_id,
            cfg=cfg,
            client=client,
            limiter=limiter,
            account=account,
            job_id=job_id,
        )
        self.pager = cfg.paginator
        # Query parameters of every request built from the config: base_url's and
        # path's query go in first, and `params` win over them.
        self.params: dict[str, Any] = {**httpx.URL(cfg.endpoint).params, **cfg.params}
        self.selector = _split_path(cfg.data_selector)
        self.pk = cfg.primary_key
        self._paths: dict[str, tuple[str, ...]] = {}
        # Cycle detection: digests of every next URL / cursor token requested in this
        # read, the page count, and the record ids of the page before.
        self._seen: set[bytes] = set()
        self._pages = 0
        self._previous_ids: frozenset[Any] = frozenset()
        self.decoder = page_decoder(self.selector, self.pk, self._body_paths())

    def _body_paths(self) -> tuple[tuple[str, ...], ...]:
        """The paths the paginator reads from a page's body."""
        pager = self.pager
        if isinstance(pager, JsonLinkPaginator):
            return (self._path(pager.next_url_path),)
        if isinstance(pager, CursorPaginator):
            return (self._path(pager.cursor_path),)
        if isinstance(pager, OffsetPaginator) and pager.total_path:
            return (self._path(pager.total_path),)
        if isinstance(pager, PageNumberPaginator) and pager.total_pages_path:
            return (self._path(pager.total_pages_path),)
        return ()

    # --- paging rules ---

    def first_request(self, cursor: str | None) -> _Request:
        """Return the request a read starting at ``cursor`` begins with."""
        req = self._first_request(cursor)
        self._first_time(req.cursor)
        return req

    def _first_request(self, cursor: str | None) -> _Request:
        pager, endpoint = self.pager, self.cfg.endpoint
        params = dict(self.params)
        if isinstance(pager, JsonLinkPaginator | HeaderLinkPaginator):
            if not cursor:
                return _Request(endpoint, params, "")
            if not cursor.startswith(_SCHEMES):
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
        self, req: _Request, response: aiohttp.ClientResponse, body: Any, count: int
    ) -> _Request | None:
        """Return the request for the page after ``req`` (``None``: ``req`` was the last)."""
        pager = self.pager
        if isinstance(pager, JsonLinkPaginator):
            link = _dig(body, self._path(pager.next_url_path))
            return self._link_request(req, response, link if isinstance(link, str) else None)
        if isinstance(pager, HeaderLinkPaginator):
            found = response.links.get(pager.links_next_key)
            link = found.get("url") if found is not None else None
            # aiohttp gives the link resolved against the response's URL.
            return self._link_request(req, response, None if link is None else str(link))
        if isinstance(pager, CursorPaginator):
            token = _dig(body, self._path(pager.cursor_path))
            if token is None or token is _MISSING or token == "" or isinstance(token, bool):
                return None
            if not isinstance(token, str | int | float):
                raise self._body_error(req, f"cursor at {pager.cursor_path!r} is not a token")
            token = str(token)
            if not self._first_time(token):
                raise self._cycle(f"cursor {_excerpt(token, 40)!r} repeated", "cursor_path")
            params = dict(self.params)
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
            params = dict(self.params)
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
            params = dict(self.params)
            params[pager.page_param] = page
            if pager.page_size_param and pager.page_size is not None:
                params[pager.page_size_param] = pager.page_size
            return _Request(req.url, params, str(page), page)
        return None

    def _link_request(
        self, req: _Request, response: aiohttp.ClientResponse, link: str | None
    ) -> _Request | None:
        if not link:
            return None
        # Most APIs send absolute links; a URL join is a measurable part of a page.
        url = link if link.startswith(_SCHEMES) else str(httpx.URL(str(response.url)).join(link))
        if not url.startswith(_SCHEMES):
            raise self._body_error(req, "the next link is not an http(s) URL")
        if not self._first_time(url):
            setting = (
                "next_url_path" if isinstance(self.pager, JsonLinkPaginator) else "links_next_key"
            )
            raise self._cycle(f"next URL {self._shown_path(url)} repeated", setting)
        return _Request(url, None, url)

    # --- fetching ---

    async def read(self, req: _Request) -> tuple[Sequence[PageRecord], _Request | None]:
        """Fetch one page: its records and the request for the page after it.

        Raises:
            PaginationCycleError: the page repeats the one before, or the next URL or
                cursor was already requested in this read.

        """
        response, body = await self.fetch(req)
        if req.cursor == "" and isinstance(self.pager, JsonLinkPaginator | HeaderLinkPaginator):
            # The first page's own URL, so a next link back to it is a repeat too.
            self._first_time(str(response.url))
        self._pages += 1
        records: Sequence[PageRecord]
        if isinstance(body, DecodedPage):
            # Keys and paginator values read by the decoder; each record is its text.
            keys, values = body.keys, body.values
            records = RecordTexts(list(map(str, keys)), body.texts)
        else:
            found = body if not self.selector else _dig(body, self.selector)
            if not isinstance(found, list):
                where = f"data_selector {self.cfg.data_selector!r}" if self.selector else "the body"
                raise self._body_error(
                    req, f"records at {where} are not a list (got {_json_kind(found)})"
                )
            keys, values = self._keys(req, found), body
            # Bare tuples, not Record(...): a NamedTuple's constructor is a tenth of
            # this path's CPU at a thousand records a page.
            records = [(str(key), item) for key, item in zip(keys, found, strict=True)]
        try:
            # The keys as the source gave them: hashing fresh str ids costs more.
            page_ids = frozenset(keys)
        except TypeError:  # an unhashable key (an object or array)
            page_ids = frozenset(map(str, keys))
        self._check_repeat(page_ids)
        return records, self.next_request(req, response, values, len(records))

    def _first_time(self, key: str) -> bool:
        """Remember ``key`` (a URL or token); False when it was seen before in this read."""
        if not key:
            return True
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        if digest in self._seen:
            return False
        self._seen.add(digest)
        return True

    def _check_repeat(self, ids: frozenset[Any]) -> None:
        # As sets: a source ignoring the offset may answer the same records in
        # another order each time.
        previous, self._previous_ids = self._previous_ids, ids
        if ids and ids == previous:
            setting = {
                "json_link": "next_url_path",
                "header_link": "links_next_key",
                "cursor": "cursor_path",
                "offset": "offset_param",
                "page_number": "page_param",
            }.get(self.pager.type, "type")
            raise self._cycle(
                f"page {self._pages} has the same {len(ids)} records as the page before, by id "
                "(the source may ignore the paging parameter, or primary_key is not unique)",
                setting,
            )

    def _keys(self, req: _Request, items: list[Any]) -> list[Any]:
        """Each parsed record's primary key; every record must be an object that has one."""
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
        return keys

    async def fetch(self, req: _Request) -> tuple[aiohttp.ClientResponse, Any]:
        """GET ``req`` with retries; return the response and its body.

        The body is a :class:`DecodedPage` when it has the expected shape (records
        kept as text), else the parsed JSON.
        """
        cfg = self.cfg
        attempts = cfg.max_request_retries + 1
        last = ""
        for attempt in range(1, attempts + 1):
            if self.limiter is not None:
                await self.limiter.acquire()
            delay: float | None = None
            try:
                # The whole request (connect, headers, body, redirects) within
                # `timeout`, one deadline over every redirect hop.
                async with asyncio.timeout(cfg.timeout):
                    response, content = await self._get_following_redirects(req)
            except SourceAddressRefusedError as exc:
                self.log.warning("source_address_refused", error=str(exc))
                raise SourceAddressRefusedError(
                    f"table {self.table_id!r}: GET {self._shown_path(req.url)} refused: {exc}"
                ) from None
            except _UNSENDABLE as exc:
                raise SourceRequestError(
                    f"table {self.table_id!r}: cannot send GET {self._shown_path(req.url)}: "
                    f"{self._redact(exc)}; check base_url, path and headers"
                ) from None
            except aiohttp.ClientError as exc:
                last = self._redact(_network_failure(exc))
                status = 0
            except TimeoutError:
                last = f"no complete answer within the table's timeout ({cfg.timeout:g}s)"
                status = 0
            else:
                status = response.status
                if 200 <= status < 300:
                    # Records kept as the source's text; a body of another shape
                    # (or not JSON at all) is parsed the general way.
                    page = self.decoder.decode(content)
                    if page is not None:
                        return response, page
                    try:
                        return response, orjson.loads(content)
                    except ValueError as exc:
                        # Mostly a body cut short; a retry gets it whole.
                        last = f"{status} with an invalid JSON body ({exc})"
                elif status in (408, 429) or status >= 500:
                    last = f"{status} {_reason(status)}"
                    delay = _retry_after(response.headers.get("retry-after"))
                    if delay is not None and delay > cfg.max_retry_after:
                        raise SourceUnavailableError(
                            f"table {self.table_id!r}: source answered {last} for GET "
                            f"{self._shown_path(req.url)} and asks to wait {delay:.0f}s, "
                            f"longer than max_retry_after ({cfg.max_retry_after:.0f}s); "
                            "the job's retry policy will try again later"
                        )
                else:
                    raise self._status_error(req, response, content)
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
            f"table {self.table_id!r}: source unavailable for GET "
            f"{self._shown_path(req.url)} after {attempts} attempts (last: {last}); "
            "the job's retry policy will try again"
        )

    async def _get_following_redirects(self, req: _Request) -> tuple[aiohttp.ClientResponse, bytes]:
        """GET ``req``, following redirects; return the last response and its body.

        A 2xx body is read whole, up to ``max_page_bytes``; of another status, only
        the start of the body is kept (for the error message's excerpt).
        """
        client = self.client
        url, params = req.url, req.params
        for _ in range(_MAX_REDIRECTS + 1):
            target = httpx.URL(url)
            if params is not None:
                target = target.copy_merge_params(params)
            headers = self.origin_headers if _origin(target) == self.origin else None
            async with client.get(
                _wire(target), headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                location = response.headers.get("location")
                if status not in _REDIRECTS or not location:
                    if 200 <= status < 300:
                        return response, await self._read_page(req, response)
                    return response, await self._read_start(response)
            url, params = str(target.join(location)), None
            if not url.startswith(_SCHEMES):
                raise SourceRequestError(
                    f"table {self.table_id!r}: GET {self._shown_path(req.url)} redirects to a "
                    "URL that is not http(s); check base_url"
                )
        raise SourceRequestError(
            f"table {self.table_id!r}: more than {_MAX_REDIRECTS} redirects for GET "
            f"{self._shown_path(req.url)}; check base_url"
        )

    async def _read_page(self, req: _Request, response: aiohttp.ClientResponse) -> bytes:
        """The (decompressed) body, or ``SourcePageTooLargeError`` past ``max_page_bytes``."""
        cap = self.cfg.max_page_bytes
        declared = response.content_length
        if declared is not None and declared > cap:
            raise self._too_large(req, f" (it announces {declared:,})")
        content = await self._read_capped(response)
        if content is None:
            raise self._too_large(req, "")
        return content

    # --- errors ---

    def _status_error(
        self, req: _Request, response: aiohttp.ClientResponse, content: bytes
    ) -> PermanentSourceError:
        status = response.status
        error: type[PermanentSourceError]
        if status in (401, 403):
            error, advice = SourceAuthError, "check the connector account's credentials"
        elif status in (404, 410):
            error, advice = SourceNotFoundError, "check base_url and path; the table may be gone"
        else:
            error, advice = SourceRequestError, "check the table's params and headers"
        # The standard reason, not the source's own phrase (the source chooses that
        # text); and of the body a short excerpt only, hidden values removed first so
        # no partial secret survives at the cut.
        excerpt = self._body_excerpt(response, content)
        detail = f" (body starts: {excerpt})" if excerpt else ""
        return error(
            f"table {self.table_id!r}: source answered {status} {_reason(status)} "
            f"for GET {self._shown_path(req.url)}; {advice}{detail}"
        )

    def _too_large(self, req: _Request, announced: str) -> SourcePageTooLargeError:
        self.log.warning("source_page_too_large", max_page_bytes=self.cfg.max_page_bytes)
        return SourcePageTooLargeError(
            f"table {self.table_id!r}: the answer to GET {self._shown_path(req.url)} is larger "
            f"than max_page_bytes ({self.cfg.max_page_bytes:,} bytes){announced}; lower the "
            "paginator's page size (limit, page_size) or raise max_page_bytes "
            f"(at most {MAX_PAGE_BYTES_LIMIT:,})"
        )

    def _body_error(self, req: _Request, problem: str) -> SourceRequestError:
        return SourceRequestError(
            f"table {self.table_id!r}: {problem} in the answer to GET {self._shown_path(req.url)}; "
            "check data_selector, primary_key and paginator"
        )

    def _cycle(self, problem: str, setting: str) -> PaginationCycleError:
        self.log.warning("source_pagination_cycle", pages=self._pages, paginator=self.pager.type)
        return PaginationCycleError(
            f"table {self.table_id!r}: {self.pager.type} paginator: {problem} after "
            f"{self._pages} pages; check paginator.{setting}"
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


# --- writing changes (publish-changes) -------------------------------------------------------


class _TableWriter(_TableClient):
    """Sends one table's changes: the write config, the conflict check, the outcomes."""

    def __init__(
        self,
        *,
        table_id: str,
        cfg: HttpTableConfig,
        write: HttpWriteConfig,
        client: aiohttp.ClientSession,
        limiter: _RateLimiter | None,
        account: ConnectorAccount | None,
        job_id: str | None,
    ) -> None:
        super().__init__(
            table_id=table_id,
            cfg=cfg,
            client=client,
            limiter=limiter,
            account=account,
            job_id=job_id,
        )
        self.write = write

    async def apply(self, change: Change, key: str, overwrite: bool) -> ChangeOutcome:
        """Send ``change`` once (with ``key``) and say what the source made of it."""
        write = self.write
        op = change.op
        operation = {
            ChangeOp.CREATE: write.create,
            ChangeOp.UPDATE: write.update,
            ChangeOp.DELETE: write.delete,
        }[op]
        if operation is None:
            return ChangeOutcome.failed(
                f"the table's write config has no {op.value!r} operation; add write.{op.value} "
                "to publish it"
            )
        if op is not ChangeOp.CREATE and change.remote_id in ("", ".", ".."):
            return ChangeOutcome.failed(
                f"record id {change.remote_id!r} cannot be put in a URL path"
            )
        checked: str | None = None
        if op is not ChangeOp.CREATE and write.version_field and not overwrite:
            moved, checked = await self._version_check(change)
            if moved is not None:
                return moved
        body = None if op is ChangeOp.DELETE else self._body(change.fields)
        url = self._url(operation.path, change.remote_id)
        # With the version it checked (If-Match): a source that supports conditional
        # requests refuses the write (412, a conflict) if the record moved since the check.
        response, content = await self._send(operation.method, url, body, key, if_match=checked)
        status = response.status
        if 200 <= status < 300:
            record = self._record_in(_json_or_none(content), write.response_selector)
            return await self._confirmed(change, operation.method, url, record)
        if status in (404, 410):
            if op is ChangeOp.DELETE:
                return ChangeOutcome.confirmed(change.remote_id)  # gone already: done
            return ChangeOutcome.conflict(
                f"{operation.method} {self._shown_path(url)}: the record is gone at the "
                f"source ({status} {_reason(status)}); download the table again"
            )
        if status in (409, 412):
            return ChangeOutcome.conflict(
                f"{operation.method} {self._shown_path(url)}: the source refused it as a "
                f"conflict ({status} {_reason(status)}){self._detail(response, content)}"
            )
        return self._refused(operation.method, url, response, content)

    async def _version_check(self, change: Change) -> tuple[ChangeOutcome | None, str | None]:
        """A conflict (or, for a delete, done) when the record moved since the download.

        Returns:
            the outcome when the change must not be sent, else ``None`` and the record's
            strong ETag as the source answered it (``None`` when it gave none).

        """
        write = self.write
        assert write.read is not None
        assert write.version_field is not None
        url = self._url(write.read.path, change.remote_id)
        response, content = await self._send("GET", url, None, None)
        status = response.status
        if status in (404, 410):
            if change.op is ChangeOp.DELETE:
                return ChangeOutcome.confirmed(change.remote_id), None
            return ChangeOutcome.conflict(
                f"the record is gone at the source (GET {self._shown_path(url)} answered "
                f"{status} {_reason(status)}); download the table again"
            ), None
        if not 200 <= status < 300:
            return self._refused("GET", url, response, content), None
        body = _json_or_none(content)
        record = self._record_in(body, write.read.data_selector)
        if record is None:
            raise SourceRequestError(
                f"table {self.table_id!r}: the answer to GET {self._shown_path(url)} holds no "
                "record object; check write.read.path and write.read.data_selector"
            )
        field = _split_path(write.version_field)
        remote = _dig(record, field)
        downloaded = _dig(change.base or {}, field)
        if remote == downloaded:
            return None, _strong_etag(response.headers.get("etag"))
        return ChangeOutcome.conflict(
            f"the record changed at the source since it was downloaded ({write.version_field} "
            f"is {_excerpt(repr(_shown(remote)), 40)} there, was "
            f"{_excerpt(repr(_shown(downloaded)), 40)}); download the table again, or "
            "publish with overwrite"
        ), None

    async def _confirmed(
        self, change: Change, method: str, url: str, record: dict[str, Any] | None
    ) -> ChangeOutcome:
        write = self.write
        remote_id = change.remote_id
        if change.op is ChangeOp.CREATE:
            id_field = write.id_field or self.cfg.primary_key
            new_id = _dig(record, _split_path(id_field)) if record is not None else _MISSING
            if new_id is _MISSING or new_id is None or isinstance(new_id, bool | dict | list):
                # The source created it: sending it again with the same key, once the
                # config says where the id is, gets the same record back.
                raise SourceRequestError(
                    f"table {self.table_id!r}: the answer to {method} {self._shown_path(url)} "
                    f"has no record id at {id_field!r}; set write.id_field (and "
                    "write.response_selector) to where the created record's id is"
                )
            remote_id = str(new_id)
        if change.op is ChangeOp.DELETE:
            return ChangeOutcome.confirmed(remote_id)
        version = write.version_field
        unknown = version is not None and _dig(record or {}, _split_path(version)) is _MISSING
        if unknown and write.read is not None:
            # Learn the new version now: the next edit's conflict check compares with it.
            record = await self._fresh_record(remote_id) or record
        return ChangeOutcome.confirmed(remote_id, record)

    async def _fresh_record(self, remote_id: str) -> dict[str, Any] | None:
        assert self.write.read is not None
        url = self._url(self.write.read.path, remote_id)
        try:
            response, content = await self._send("GET", url, None, None)
        except SourceError as exc:
            self.log.warning("source_record_refresh_failed", error=str(exc))
            return None
        if not 200 <= response.status < 300:
            return None
        return self._record_in(_json_or_none(content), self.write.read.data_selector)

    def _refused(
        self, method: str, url: str, response: aiohttp.ClientResponse, content: bytes
    ) -> ChangeOutcome:
        """A non-2xx answer that is not a conflict: raise what fails the attempt, else fail."""
        status = response.status
        shown = f"{method} {self._shown_path(url)}"
        if status in (408, 429) or status >= 500:
            raise SourceUnavailableError(
                f"table {self.table_id!r}: source answered {status} {_reason(status)} for "
                f"{shown}; the job's retry policy will send it again (same Idempotency-Key)"
            )
        if status in (401, 403):
            raise SourceAuthError(
                f"table {self.table_id!r}: source answered {status} {_reason(status)} for "
                f"{shown}; check the connector account's credentials"
            )
        if 400 <= status < 500:
            return ChangeOutcome.failed(
                f"{shown}: source answered {status} {_reason(status)}"
                f"{self._detail(response, content)}"
            )
        raise SourceRequestError(
            f"table {self.table_id!r}: source answered {status} {_reason(status)} for {shown}; "
            "check the table's write config"
        )

    def _detail(self, response: aiohttp.ClientResponse, content: bytes) -> str:
        excerpt = self._body_excerpt(response, content)
        return f" (body starts: {excerpt})" if excerpt else ""

    def _body(self, fields: dict[str, Any]) -> bytes:
        wrap = self.write.body
        return orjson.dumps(fields if wrap == "fields" else {wrap.wrap: fields})

    def _url(self, path: str, remote_id: str) -> str:
        """``path`` (``{id}`` filled in, URL-quoted) below ``base_url``, queries merged."""
        filled = path.strip().replace("{id}", quote(remote_id, safe=""))
        base = urlsplit(self.cfg.base_url)
        rel_path, _, rel_query = filled.partition("?")
        joined = f"{base.path.rstrip('/')}/{rel_path.lstrip('/')}"
        query = "&".join(q for q in (base.query, rel_query) if q)
        return urlunsplit((base.scheme, base.netloc, joined, query, ""))

    def _record_in(self, body: Any, selector: str | None) -> dict[str, Any] | None:
        found = _dig(body, _split_path(selector)) if selector else body
        return found if isinstance(found, dict) else None

    async def _send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        key: str | None,
        *,
        if_match: str | None = None,
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        """One request within the table's timeout; network failures raise (retryable)."""
        if self.limiter is not None:
            await self.limiter.acquire()
        shown = f"{method} {self._shown_path(url)}"
        try:
            async with asyncio.timeout(self.cfg.timeout):
                return await self._send_following_redirects(method, url, body, key, if_match)
        except SourceAddressRefusedError as exc:
            self.log.warning("source_address_refused", error=str(exc))
            raise SourceAddressRefusedError(
                f"table {self.table_id!r}: {shown} refused: {exc}"
            ) from None
        except _UNSENDABLE as exc:
            raise SourceRequestError(
                f"table {self.table_id!r}: cannot send {shown}: {self._redact(exc)}; check "
                "base_url and the write config"
            ) from None
        except aiohttp.ClientError as exc:
            detail = self._redact(_network_failure(exc))
        except TimeoutError:
            detail = f"no complete answer within the table's timeout ({self.cfg.timeout:g}s)"
        raise SourceUnavailableError(
            f"table {self.table_id!r}: {shown} failed ({detail}); the job's retry policy will "
            "send it again (same Idempotency-Key)"
        )

    async def _send_following_redirects(
        self, method: str, url: str, body: bytes | None, key: str | None, if_match: str | None
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        """Send, following redirects: a GET as reads do; a write only 307/308 on its origin.

        A write is never turned into a GET (301, 302, 303) nor sent with its body to
        another origin.
        """
        client = self.client
        for _ in range(_MAX_REDIRECTS + 1):
            target = httpx.URL(url)
            same_origin = _origin(target) == self.origin
            headers = dict(self.origin_headers) if same_origin else {}
            if key is not None:
                headers["Idempotency-Key"] = key
            if if_match is not None:
                headers["If-Match"] = if_match
            if body is not None:
                headers["Content-Type"] = "application/json"
            async with client.request(
                method, _wire(target), data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                location = response.headers.get("location")
                if status not in _REDIRECTS or not location:
                    if 200 <= status < 300:
                        return response, await self._read_whole(method, url, response)
                    return response, await self._read_start(response)
            following = target.join(location)
            url = str(following)
            if not url.startswith(_SCHEMES):
                raise SourceRequestError(
                    f"table {self.table_id!r}: {method} {self._shown_path(str(target))} "
                    "redirects to a URL that is not http(s); check base_url"
                )
            elsewhere = _origin(following) != self.origin
            if method != "GET" and (status not in (307, 308) or elsewhere):
                where = "another origin" if elsewhere else f"a GET ({status})"
                raise SourceRequestError(
                    f"table {self.table_id!r}: {method} {self._shown_path(str(target))} "
                    f"redirects to {where}; writes follow only 307/308 on base_url's "
                    "origin: point the write paths at the final URL"
                )
        raise SourceRequestError(
            f"table {self.table_id!r}: more than {_MAX_REDIRECTS} redirects for {method} "
            f"{self._shown_path(url)}; check base_url"
        )

    async def _read_whole(self, method: str, url: str, response: aiohttp.ClientResponse) -> bytes:
        content = await self._read_capped(response)
        if content is None:
            raise SourcePageTooLargeError(
                f"table {self.table_id!r}: the answer to {method} {self._shown_path(url)} "
                f"is larger than max_page_bytes ({self.cfg.max_page_bytes:,} bytes); raise "
                "max_page_bytes"
            )
        return content


# RFC 9110's entity-tag, strong form only: a weak one never matches in If-Match.
_STRONG_ETAG = re.compile(r'"[\x21\x23-\x7e]*"')


def _strong_etag(value: str | None) -> str | None:
    """``value`` when it is a strong entity tag, else ``None``."""
    return value if value is not None and _STRONG_ETAG.fullmatch(value) else None


def _json_or_none(content: bytes) -> Any:
    """The parsed body of a write's answer; None when it is empty or not JSON."""
    if not content.strip():
        return None
    try:
        return orjson.loads(content)
    except ValueError:
        return None


def _shown(value: Any) -> Any:
    return None if value is _MISSING else value


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


# Requests that cannot be sent as configured (a bad URL or header value): not retried.
_UNSENDABLE = (aiohttp.InvalidURL, httpx.InvalidURL, ValueError)


def _network_failure(exc: aiohttp.ClientError) -> str:
    """What went wrong on the network, in a line (for retries' logs and the final error)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Not its str(): that adds the client's TLS settings, which say nothing here.
        reason = exc.os_error.strerror or str(exc.os_error) or "no detail"
        return f"ConnectError: cannot connect to {exc.host}:{exc.port}: {reason}"
    # An answer the parser refused quotes the source's bytes: one clean line, cut short
    # (and not the URL, which str() would add).
    detail = exc.message if isinstance(exc, aiohttp.ClientResponseError) else str(exc)
    return f"{type(exc).__name__}: {_excerpt(detail, 2 * _EXCERPT) or 'no detail'}"


def _wire(url: httpx.URL) -> yarl.URL:
    """``url`` for aiohttp, sent exactly as httpx encoded it."""
    return yarl.URL(str(url), encoded=True)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default_port = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default_port


def _path_of(url: str) -> str:
    try:
        return httpx.URL(url).path or "/"
    except httpx.InvalidURL:
        return "(an invalid URL)"


def _excerpt(text: str, limit: int) -> str:
    """``text`` on one line, control characters dropped, at most ``limit`` characters."""
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in text[: limit * 4]).split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _query_values(url: str) -> list[str]:
    try:
        return [value for _, value in httpx.URL(url).params.multi_items()]
    except httpx.InvalidURL:
        return []


def _text_of(response: aiohttp.ClientResponse, content: bytes) -> str:
    """``content`` as text, in the response's charset when it is a usable one."""
    try:
        return content.decode(response.charset or "utf-8", errors="replace")
    except (LookupError, ValueError):  # a charset that is no text encoding
        return content.decode("utf-8", errors="replace")


def _reason(status: int) -> str:
    return httpx.codes.get_reason_phrase(status) or "(no standard reason)"


def _secret_of(account: ConnectorAccount) -> str:
    secret: Any = account.secret
    # Accounts may hold their secret as a pydantic SecretStr.
    return str(secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret)


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
