"""The one settings object, read from ``SPINNER_*`` environment variables.

Nested sections take their section name after the prefix, e.g.
``SPINNER_TEMPORAL_ADDRESS`` or ``SPINNER_RETRY_INITIAL_INTERVAL=PT2S``. Durations
accept ISO-8601 (``PT2S``, ``PT1M30S``) or a number of seconds. Settings are built
once at an entry point (:meth:`Settings.load`) and passed down; nothing else reads
the environment.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from spinner_jobs.core.models import QueueSettings


class ServiceType(StrEnum):
    """What a ``spinner-jobs api``, ``worker`` or ``dev`` process runs."""

    FRONTEND = "frontend"  # the HTTP API (enqueue and follow jobs); no worker
    WORKER = "worker"  # process jobs only; no API
    MONOLITH = "monolith"  # API and worker in one process


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TemporalSettings(_Section):
    """Where the Temporal server is and which queue the jobs use."""

    address: str = Field("localhost:7233", description="host:port of the Temporal frontend.")
    namespace: str = Field("default", description="Temporal namespace of the jobs.")
    task_queue: str = Field("spinner-jobs", description="Task queue of workflows and activities.")
    tls: bool = Field(False, description="Connect with TLS (Temporal Cloud / secured clusters).")
    api_key: SecretStr | None = Field(None, description="API key for Temporal Cloud, if any.")
    ui_url: str = Field("http://localhost:8233", description="Web UI base URL, used in links.")


class RetrySettings(_Section):
    """The retry policy of each table download (Temporal ``RetryPolicy``)."""

    maximum_attempts: int = Field(3, ge=1, description="Attempts per table, first included.")
    initial_interval: timedelta = Field(
        timedelta(seconds=2), description="Wait before the second attempt."
    )
    backoff_coefficient: float = Field(2.0, ge=1.0, description="Growth factor of the wait.")
    maximum_interval: timedelta = Field(
        timedelta(minutes=1), description="Longest wait between attempts."
    )
    maximum_interruptions: int = Field(
        20,
        ge=1,
        description="Attempts in a row lost to the infrastructure (worker crash or "
        "shutdown, store outage) before a table fails; they do not use up maximum_attempts.",
    )


class JobSettings(_Section):
    """Per-job limits and knobs of download-records jobs."""

    table_parallelism: int = Field(4, ge=1, le=64, description="Tables downloaded at once.")
    heartbeat_timeout: timedelta = Field(
        timedelta(seconds=10),
        description="A table attempt with no heartbeat for this long is resumed elsewhere.",
    )
    store_outage_timeout: timedelta = Field(
        timedelta(minutes=5),
        description="How long a table attempt waits out an unavailable store before giving "
        "the attempt up (it is then resumed, without using up a retry).",
    )
    table_timeout: timedelta = Field(
        timedelta(hours=2), description="Longest single attempt at one table."
    )
    max_metadata_bytes: int = Field(
        16 * 1024, ge=0, description="Largest job metadata, as compact JSON bytes."
    )
    max_pending: int = Field(
        1000, ge=1, description="Cap on running jobs; enqueue raises QueueFullError above it."
    )
    progress_interval: timedelta = Field(
        timedelta(seconds=1), description="Longest delay of live progress (heartbeat throttle)."
    )


class RetentionSettings(_Section):
    """How many closed jobs to keep, like BullMQ's removeOnComplete/removeOnFail."""

    keep_completed: int = Field(10, ge=0, description="Most recent completed jobs kept.")
    keep_failed: int = Field(5, ge=0, description="Most recent failed jobs kept.")
    sweep_interval: timedelta = Field(
        timedelta(minutes=10), description="How often the retention schedule sweeps."
    )


class WebhookSettings(_Section):
    """Job and table events POSTed to a URL, signed with HMAC-SHA256."""

    url: str | None = Field(None, description="Receiver URL; no webhook when unset.")
    secret: SecretStr | None = Field(None, description="Key of the X-Spinner-Signature HMAC.")
    timeout: timedelta = Field(timedelta(seconds=10), description="Per-delivery timeout.")
    maximum_attempts: int = Field(10, ge=1, description="Delivery attempts per event.")


class CodecServerSettings(_Section):
    """The Temporal Web UI's remote codec endpoint (``spinner-jobs codec-server``)."""

    host: str = Field("127.0.0.1", description="Address the codec server listens on.")
    port: int = Field(8234, ge=0, le=65535, description="Its port (0: any free port).")
    origins: str = Field(
        "http://localhost:8233",
        description="Comma-separated browser origins allowed by CORS (the Web UI's).",
    )
    token: SecretStr | None = Field(
        None,
        description="Bearer token the UI must send (Authorization header); the server "
        "refuses to start without one.",
    )


class ApiSettings(_Section):
    """The HTTP API (``spinner-jobs api``): where it listens and its limits."""

    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Its port (0: any free port).")
    max_body_bytes: int = Field(
        256 * 1024, ge=1024, description="Largest request body; larger ones get 413."
    )
    max_streams_per_key: int = Field(
        10, ge=1, description="Open event streams (SSE) per API key; one more gets 429."
    )
    sse_heartbeat: timedelta = Field(
        timedelta(seconds=15),
        description="A comment line on an idle event stream this often, so proxies keep it.",
    )
    shutdown_timeout: timedelta = Field(
        timedelta(seconds=10),
        description="On SIGTERM, how long in-flight requests may take before they are cut.",
    )
    view_key: SecretStr | None = Field(
        None,
        description="Key signing job view links (HMAC-SHA256), 32+ characters; unset: a "
        "generated key in <data_dir>/view.key (API processes sharing links share it).",
    )
    view_link_ttl: timedelta = Field(
        timedelta(hours=1), description="Lifetime of a job view link the request gives none."
    )
    view_link_max_ttl: timedelta = Field(
        timedelta(hours=24), description="Longest lifetime a job view link may be given."
    )


class Settings(BaseSettings):
    """All configuration of spinner-jobs, from ``SPINNER_*`` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix="SPINNER_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        frozen=True,
        extra="ignore",
    )

    use_jobs: bool = Field(
        True, description="Run jobs on Temporal; false runs them in the calling process."
    )
    service_type: ServiceType = Field(ServiceType.MONOLITH, description="Role of the process.")
    data_dir: Path = Field(Path("data"), description="Folder of the SQLite files and dev server.")
    database_url: str | None = Field(
        None,
        description="Snapshot store: sqlite:///path or postgresql://...; "
        "default sqlite under data_dir.",
    )
    files_root: Path | None = Field(
        None,
        description="Folder the files connector may read below; unset: <data_dir>/files.",
    )
    http_allowed_networks: Annotated[tuple[IPv4Network | IPv6Network, ...], NoDecode] = Field(
        (),
        description="Comma-separated CIDRs the http connector may reach besides public "
        "addresses, e.g. 127.0.0.0/8,10.0.0.0/8; empty: public addresses only.",
    )
    enqueue_timeout: timedelta = Field(
        timedelta(seconds=5), description="Longest enqueue call, server connection included."
    )
    fairness_weights: dict[str, Annotated[float, Field(ge=0.001, le=1000)]] = Field(
        default_factory=dict,
        description="Dispatch weight per organization id, as JSON "
        "(SPINNER_FAIRNESS_WEIGHTS='{\"org_a\": 2.0}'): with a backlog, each organization "
        "gets task-queue dispatches in proportion to its weight (0.001 to 1000); "
        "unlisted ones weigh 1.0.",
    )
    metrics_port: int | None = Field(None, description="Prometheus /metrics port on the worker.")
    otlp_endpoint: str | None = Field(
        None,
        description="OpenTelemetry collector for traces, OTLP over HTTP "
        "(http://collector:4318); unset: no tracing. Needs the tracing extra.",
    )
    log_format: Literal["console", "json"] = Field("console", description="Log rendering.")
    log_level: str = Field("info", description="Lowest log level printed.")
    temporal: TemporalSettings = TemporalSettings()
    retry: RetrySettings = RetrySettings()
    jobs: JobSettings = JobSettings()
    retention: RetentionSettings = RetentionSettings()
    webhook: WebhookSettings = WebhookSettings()
    codec: CodecServerSettings = CodecServerSettings()
    api: ApiSettings = ApiSettings()
    job_types: dict[str, QueueSettings] = Field(
        default_factory=dict,
        description="Queue settings per job type, as JSON over the job type's defaults "
        'and the engine-wide ones: SPINNER_JOB_TYPES=\'{"export-records": '
        '{"keep_completed": 50, "priority": 4, "task_queue": "exports"}}\'. '
        "Fields: task_queue, priority, table_parallelism, table_timeout, "
        "heartbeat_timeout, max_pending, keep_completed, keep_failed, retry.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Keys of account secrets at rest: comma-separated base64 32-byte keys, "
        "the first encrypts (`spinner-jobs new-key`). Unset: the SQLite store keeps a "
        "generated key in secret.key beside its file; PostgreSQL refuses account secrets.",
    )
    payload_key: SecretStr | None = Field(
        None,
        description="Keys of Temporal payload encryption, same format; unset: payloads "
        "travel as plain JSON. Clients and workers must share them.",
    )

    @field_validator("http_allowed_networks", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        parts = value.split(",") if isinstance(value, str) else value
        if not isinstance(parts, list | tuple):
            return value
        networks: list[IPv4Network | IPv6Network] = []
        for part in parts:
            if isinstance(part, IPv4Network | IPv6Network):
                networks.append(part)
            elif str(part).strip():
                try:
                    networks.append(ip_network(str(part).strip()))
                except ValueError:
                    raise ValueError(
                        f"{str(part).strip()!r} is not a network in CIDR form; write e.g. "
                        "127.0.0.0/8,10.0.0.0/8 (host bits zero)"
                    ) from None
        return tuple(networks)

    @classmethod
    def load(cls, **overrides: object) -> Settings:
        """Build settings from the environment, with explicit overrides on top."""
        return cls(**overrides)  # type: ignore[arg-type]

    @property
    def store_url(self) -> str:
        """The snapshot store URL, defaulting to a SQLite file under ``data_dir``."""
        return self.database_url or f"sqlite:///{self.data_dir / 'spinner.db'}"

    @property
    def files_root_path(self) -> Path:
        """The folder the files connector reads below: ``files_root`` or ``data_dir/files``."""
        return self.files_root if self.files_root is not None else self.data_dir / "files"

    @property
    def store_files(self) -> tuple[Path, ...]:
        """The engine's own database files, which no table may read, whatever the root."""
        files = [self.data_dir / "temporal.db"]
        if self.store_url.startswith("sqlite:///"):
            files.append(Path(self.store_url.removeprefix("sqlite:///")))
        return tuple(files)
