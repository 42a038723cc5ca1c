"""What the in-process backend and the worker both build from settings.

One home for turning settings into live parts: the connectors (confined as the
settings say), the webhook sender and the parts every job type's table work runs
on. The Temporal worker (``spinner_jobs.worker``) and the in-process backend
(``SPINNER_USE_JOBS=false``) wire the same parts the same way.
"""

from __future__ import annotations

import httpx

from activities.notify import WebhookSender
from activities.tables import WorkParts
from enqueuer.settings import Settings
from spinner_jobs.connectors.http_guard import cookie_free_jar
from spinner_jobs.connectors.registry import ConnectorRegistry, default_connectors
from spinner_jobs.store.base import Store


def open_connectors(settings: Settings) -> ConnectorRegistry:
    """The built-in connectors, confined by the settings (files root, HTTP networks)."""
    return default_connectors(
        settings.files_root_path,
        settings.http_allowed_networks,
        protected_files=settings.store_files,
    )


def open_webhook(settings: Settings) -> tuple[WebhookSender | None, httpx.AsyncClient | None]:
    """The configured webhook sender and the HTTP client it owns (both None when unset).

    The caller closes the client when done.
    """
    hook = settings.webhook
    if not hook.url:
        return None, None
    http = httpx.AsyncClient(timeout=hook.timeout.total_seconds(), cookies=cookie_free_jar())
    secret = hook.secret.get_secret_value() if hook.secret else None
    return WebhookSender(hook.url, secret, http), http


def work_parts(settings: Settings, store: Store, connectors: ConnectorRegistry) -> WorkParts:
    """What the job types' table work runs on: ``store``, ``connectors`` and knobs."""
    return WorkParts(
        store=store,
        connectors=connectors,
        store_outage_timeout=settings.jobs.store_outage_timeout,
        live_interval=settings.jobs.progress_interval,
        exports_dir=settings.data_dir / "exports",
    )
