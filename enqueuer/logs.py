"""Logging, configured once at an entry point: structlog key-value events.

Console rendering in development, JSON in production; the standard-library loggers
(the Temporal SDK's among them) go through the same renderer.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog
from temporalio import activity, workflow


def configure_logging(
    fmt: Literal["console", "json"] = "console", level: str = "info", *, stream: object = None
) -> None:
    """Route structlog and stdlib logging through one renderer on stderr.

    Args:
        fmt: ``console`` for people, ``json`` for log shippers.
        level: lowest level printed.
        stream: where to write (default ``sys.stderr``).

    """
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        # Plain tracebacks: the default rich ones cost about a second per failed attempt.
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # The SDK's loggers put the workflow/activity info in `extra`; show it as key-values
    # (job id = workflow id) instead of a dict appended to the message.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(), _flatten_temporal_info],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if fmt == "json" else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request at info; keep it for debugging only.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # The HTTP API logs its own start, stop and requests (spinner_jobs.api); uvicorn's
    # info lines would repeat them.
    logging.getLogger("uvicorn").setLevel(logging.WARNING)


_TEMPORAL_KEYS = ("workflow_id", "run_id", "activity_type", "attempt")


def _flatten_temporal_info(
    _logger: object, _name: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    for key in ("temporal_workflow", "temporal_activity"):
        info = event.pop(key, None)
        if isinstance(info, dict):
            for name in _TEMPORAL_KEYS:
                if name in info:
                    event.setdefault(name, info[name])
    return event


def _identity(
    _logger: object, _name: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    return event
