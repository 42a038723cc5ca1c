"""The API's OpenTelemetry server spans: FastAPI's own, on the process's tracing."""

from __future__ import annotations

from fastapi.telemetry import TelemetryConfig

from enqueuer.tracing import Tracing


def telemetry_config(tracing: Tracing | None) -> TelemetryConfig:
    """FastAPI's ``telemetry`` option for ``tracing`` (None: off).

    With tracing, each request gets one server span (named by method and route
    template, continuing a caller's ``traceparent``) and nothing else: metrics stay
    Prometheus's (``/metrics``), logs structlog's, and the per-step spans FastAPI can add
    (dependencies, serialization) are left out. Without it, the API neither traces nor
    exports, even when something else in the process set a global OpenTelemetry provider.
    """
    if tracing is None:
        return {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}
    return {
        "tracer_provider": tracing.provider,
        "tracing": True,
        "metrics": False,
        "logs": False,
        "operation_spans": False,
        "auto_configure": False,
    }
