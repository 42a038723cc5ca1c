"""Notification delivery: a signed HTTP webhook, one POST per activity attempt."""

from __future__ import annotations

import hashlib
import hmac

import httpx
import structlog
from temporalio import activity

from spinner_jobs.core import wire
from spinner_jobs.core.models import JobEvent, NotifyInput

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "X-Spinner-Signature"
EVENT_ID_HEADER = "X-Spinner-Event-Id"


def sign(secret: str, body: bytes) -> str:
    """The signature header value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender:
    """POSTs events as JSON to one URL, signed when a secret is set."""

    def __init__(self, url: str, secret: str | None, client: httpx.AsyncClient) -> None:
        self._url = url
        self._secret = secret
        self._client = client

    async def send(self, event: JobEvent) -> None:
        """Deliver ``event`` once.

        Raises:
            httpx.HTTPError: transport failure or a non-2xx answer (the caller retries).

        """
        body = event.model_dump_json().encode()
        headers = {"Content-Type": "application/json", EVENT_ID_HEADER: event.event_id}
        if self._secret:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        response = await self._client.post(self._url, content=body, headers=headers)
        response.raise_for_status()


class NotifyActivities:
    """Delivers job events to the configured webhook (if any)."""

    def __init__(self, webhook: WebhookSender | None) -> None:
        self._webhook = webhook

    @activity.defn(name=wire.ACTIVITY_NOTIFY)
    async def notify(self, input: NotifyInput) -> None:
        """POST one event; an error makes Temporal retry with the webhook's policy."""
        event = input.event
        if self._webhook is None:
            return
        await self._webhook.send(event)
        log.info(
            "webhook_delivered",
            job_id=event.job_id,
            workbook_id=event.workbook_id,
            table_id=event.table_id,
            event_id=event.event_id,
            kind=event.kind.value,
            attempt=activity.info().attempt,
        )
