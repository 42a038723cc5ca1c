"""The ``http`` table config: its fields, paginators, and what a config may not carry.

See :mod:`connectors.http` for what each field does. A config is user input: it may
not name a non-http(s) URL, a literal address connectors may not reach, or a header or
query parameter (in ``params``, ``base_url`` or ``path``) that carries a credential
(credentials belong in connector accounts).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spinner_jobs.core.errors import InvalidTableConfigError

ACCOUNT_HINT = (
    "table configs never hold secrets: create a connector account "
    "(`spinner-jobs account create ID --org ORG --auth bearer`) and set the table's account_id"
)
DEFAULT_MAX_PAGE_BYTES = 64 << 20
MAX_PAGE_BYTES_LIMIT = 256 << 20  # the most a table config may raise max_page_bytes to

# A header or query parameter is taken for a credential when its whole name is one of
# _CREDENTIAL_NAMES, when its name contains one of _CREDENTIAL_WORDS, or when one of the
# words it is made of (split at "-", "_", "." and camelCase) is in _CREDENTIAL_PARTS.
_CREDENTIAL_NAMES = frozenset(
    {"authorization", "proxy-authorization", "cookie", "key", "sig", "pwd", "pass", "jwt", "sid"}
)
_CREDENTIAL_WORDS = (
    "apikey",
    "api-key",
    "api_key",
    "token",
    "secret",
    "password",
    "passwd",
    "session",
    "credential",
    "signature",
    "privatekey",
    "private-key",
    "private_key",
    "accesskey",
    "access-key",
    "access_key",
)
_CREDENTIAL_PARTS = frozenset({"auth", "oauth", "authorization", "authentication"})
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_PARTS = re.compile(r"[a-z0-9]+")


def is_credential_name(name: str) -> bool:
    """Whether a header or query parameter called ``name`` carries a credential.

    Case-insensitive, e.g. ``Authorization``, ``X-API-Key``, ``access_token``,
    ``clientSecret``, ``x-auth``, ``key``.
    """
    stripped = name.strip()
    lowered = stripped.lower()
    if lowered in _CREDENTIAL_NAMES or any(word in lowered for word in _CREDENTIAL_WORDS):
        return True
    parts = _PARTS.findall(_CAMEL.sub("_", stripped).lower())
    return any(part in _CREDENTIAL_PARTS for part in parts)


def is_credential_header(name: str) -> bool:
    """Whether a header called ``name`` carries a credential (see :func:`is_credential_name`)."""
    return is_credential_name(name)


def _query_names(url: str) -> list[str]:
    try:
        return [name for name, _ in httpx.URL(url).params.multi_items()]
    except httpx.InvalidURL:
        return []


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


# --- the write side (publish-changes) ----------------------------------------------------

_PLACEHOLDER = "{id}"


def _write_path(value: str, *, needs_id: bool) -> str:
    """A write path: below base_url, ``{id}`` its only placeholder, no credential in it."""
    stripped = value.strip()
    if "://" in stripped or stripped.startswith("//") or "\\" in stripped:
        raise ValueError("must be a path below base_url, not a URL (writes stay on its origin)")
    if "{" in stripped.replace(_PLACEHOLDER, "") or "}" in stripped.replace(_PLACEHOLDER, ""):
        raise ValueError("{id} is the only placeholder a path may hold")
    if needs_id and _PLACEHOLDER not in stripped.partition("?")[0]:
        raise ValueError("must hold {id} in its path, where the record's id goes")
    _no_credential_in_query(stripped)
    return stripped


class WriteOperation(_Config):
    """One kind of write request: its method and its path below ``base_url``."""

    method: Literal["POST", "PUT", "PATCH", "DELETE"]
    path: str = Field(description="Below base_url; ``{id}`` is replaced by the record's id.")


class RecordRead(_Config):
    """How one record is fetched (GET) for the conflict check."""

    path: str = Field(description="Below base_url, with ``{id}``.")
    data_selector: str | None = Field(None, description="Dotted path of the record in the body.")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _write_path(value, needs_id=True)


class BodyWrap(_Config):
    """Send the fields wrapped in one key: ``{"wrap": "data"}`` sends ``{"data": fields}``."""

    wrap: str = Field(min_length=1)


class HttpWriteConfig(_Config):
    """Where and how a table's local changes are sent (see :mod:`connectors.http`)."""

    create: WriteOperation | None = None
    update: WriteOperation | None = None
    delete: WriteOperation | None = None
    body: Literal["fields"] | BodyWrap = Field(
        "fields", description='"fields": the fields object is the body; or {"wrap": key}.'
    )
    response_selector: str | None = Field(
        None, description="Dotted path of the record in a write's answer (default: the body)."
    )
    id_field: str | None = Field(
        None, description="Field of the created record holding its id (default: primary_key)."
    )
    version_field: str | None = Field(
        None, description="Record field compared with the download's before an update or delete."
    )
    read: RecordRead | None = Field(None, description="Needed with version_field.")

    @model_validator(mode="after")
    def _consistent(self) -> HttpWriteConfig:
        if self.create is None and self.update is None and self.delete is None:
            raise ValueError("names no operation; set create, update and/or delete")
        if self.version_field and self.read is None:
            raise ValueError("version_field needs read (the path that fetches one record)")
        for name, op in (("create", self.create), ("update", self.update), ("delete", self.delete)):
            if op is None:
                continue
            try:
                _write_path(op.path, needs_id=name != "create")
            except ValueError as exc:
                raise ValueError(f"{name}.path {exc}") from None
        return self


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
    timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds one request may take in all: connect, headers, body and redirects.",
    )
    max_page_bytes: int = Field(
        DEFAULT_MAX_PAGE_BYTES,
        ge=1024,
        le=MAX_PAGE_BYTES_LIMIT,
        description="Largest page body accepted (after decompression).",
    )
    max_request_retries: int = Field(5, ge=0, le=50)
    retry_backoff: float = Field(0.2, ge=0, description="First retry delay, doubled per retry.")
    retry_backoff_max: float = Field(10.0, ge=0, description="Cap of the retry delay.")
    max_retry_after: float = Field(
        120.0,
        ge=0,
        description="Longest Retry-After honoured in the connector; longer waits are left "
        "to the job's retry policy.",
    )
    write: HttpWriteConfig | None = Field(
        None, description="How local changes are published; None: the table is read-only."
    )

    @field_validator("paginator", mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        # dlt accepts a bare paginator name; so do we.
        return {"type": value} if isinstance(value, str) else value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL:
            raise ValueError("must be an absolute http(s) URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an absolute http(s) URL")
        if url.userinfo:
            raise ValueError(f"must not carry a user or password; {ACCOUNT_HINT}")
        _no_credential_in_query(value)
        return value

    @field_validator("path")
    @classmethod
    def _no_credential_in_path(cls, value: str) -> str:
        _no_credential_in_query(value)
        return value

    @field_validator("params")
    @classmethod
    def _no_credential_params(
        cls, value: dict[str, str | int | float | bool]
    ) -> dict[str, str | int | float | bool]:
        for name in value:
            if is_credential_name(name):
                raise ValueError(f"parameter {name!r} carries a credential; {ACCOUNT_HINT}")
        return value

    @field_validator("headers")
    @classmethod
    def _no_credentials(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"header name {name[:40]!r} is not a valid HTTP header name")
            if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in text):
                # A line break would end the header and start another (header injection).
                raise ValueError(f"header {name!r} has a control character in its value")
            if is_credential_name(name):
                raise ValueError(f"header {name!r} carries a credential; {ACCOUNT_HINT}")
        return value

    @property
    def endpoint(self) -> str:
        """``base_url`` joined with ``path``."""
        if not self.path:
            return self.base_url
        return f"{self.base_url.rstrip('/')}/{self.path.lstrip('/')}"


# RFC 9110's token: the characters a header name may have.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _no_credential_in_query(url: str) -> None:
    for name in _query_names(url):
        if is_credential_name(name):
            raise ValueError(f"query parameter {name!r} carries a credential; {ACCOUNT_HINT}")


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
