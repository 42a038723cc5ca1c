"""Optional OpenTelemetry tracing: one trace from an API request through its job.

With ``SPINNER_OTLP_ENDPOINT`` set, a process builds one :class:`Tracing` at its entry
point and hands it to what it runs:

- the HTTP API (``create_app(..., tracing=...)``): FastAPI's own server span per request,
  continuing a caller's ``traceparent`` header;
- the Temporal client (``TemporalBackend(..., interceptors=tracing.interceptors())``):
  the SDK's ``TracingInterceptor`` makes the ``StartWorkflow`` span inside the request's
  span and carries the context in the workflow's headers. Workers built on that client
  inherit the interceptor, so the workflow's ``RunWorkflow`` span and each activity's
  ``StartActivity``/``RunActivity`` spans join the same trace.

Unset, nothing of this is imported or installed: no interceptor, no span, no exporter.
The SDK and the OTLP exporter come with the ``tracing`` extra
(``pip install 'spinner-jobs[tracing]'``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from enqueuer.settings import Settings
from spinner_jobs.core.errors import TracingSetupError

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider
    from temporalio.client import Interceptor

TRACER_NAME = "spinner_jobs"
SERVICE_NAME = "spinner-jobs"
TRACES_PATH = "/v1/traces"


class Tracing:
    """A process's tracer provider, and the instrumentation that reports to it."""

    def __init__(self, provider: TracerProvider) -> None:
        """Trace into ``provider`` (tests pass one with an in-memory exporter)."""
        self.provider = provider

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracing | None:
        """Tracing to ``settings.otlp_endpoint``; None when it is unset.

        Spans are batched and sent over OTLP/HTTP; ``shutdown`` sends what is left.
        The resource is ``service.name=spinner-jobs`` with the process's service type
        (OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES add to it as usual).

        Raises:
            TracingSetupError: the endpoint is not an http(s) URL, or the ``tracing``
                extra is not installed.

        """
        if not settings.otlp_endpoint:
            return None
        endpoint = otlp_traces_url(settings.otlp_endpoint)
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise TracingSetupError(
                f"SPINNER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is missing ({exc.name}); "
                "install spinner-jobs[tracing] or unset the variable"
            ) from None
        resource = Resource.create(
            {"service.name": SERVICE_NAME, "spinner.service_type": str(settings.service_type)}
        )
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        return cls(provider)

    def interceptors(self) -> list[Interceptor]:
        """The Temporal client's interceptors (its workers inherit them)."""
        from temporalio.contrib.opentelemetry import TracingInterceptor

        return [TracingInterceptor(self.provider.get_tracer(TRACER_NAME))]

    def shutdown(self) -> None:
        """Send the spans still buffered and stop (call once, at the process's end)."""
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            shutdown()


def otlp_traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of an endpoint: ``/v1/traces`` is added to a bare host.

    Raises:
        TracingSetupError: not an absolute http(s) URL.

    """
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TracingSetupError(
            f"SPINNER_OTLP_ENDPOINT must be an http(s) URL of an OTLP/HTTP collector, "
            f"e.g. http://collector:4318; got {endpoint!r}"
        )
    if parts.path in ("", "/"):
        return parts._replace(path=TRACES_PATH).geturl()
    return parts.geturl()


__all__ = ["Tracing", "otlp_traces_url"]
