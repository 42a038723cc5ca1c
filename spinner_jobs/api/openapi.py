"""The OpenAPI document as the API really answers: durations in the form sent.

pydantic writes a ``timedelta`` as an ISO 8601 duration with fractional seconds
(``PT0.0065S``, ``P1DT3.5S``, ``-PT1S``) and describes it as ``format: duration``,
which JSON Schema defines by RFC 3339's grammar: whole seconds only. A client that
checks formats would refuse the API's own answers (``/v1/stats`` processing times),
so the document states the form with a pattern instead.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

_DATE = r"(\d+Y(\d+M)?(\d+W)?(\d+D)?|\d+M(\d+W)?(\d+D)?|\d+W(\d+D)?|\d+D)"
_TIME = r"T(\d+H(\d+M)?(\d+(\.\d+)?S)?|\d+M(\d+(\.\d+)?S)?|\d+(\.\d+)?S)"
ISO8601_DURATION = rf"^-?P({_DATE}({_TIME})?|{_TIME})$"
"""An ISO 8601 duration as pydantic writes and reads it: ``PT1.5S``, ``P1DT2H``, ``-PT1S``."""


def durations_as_patterns(node: Any) -> Any:
    """Replace ``format: duration`` by the ISO 8601 pattern, throughout ``node`` (in place)."""
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("format") == "duration":
            del node["format"]
            node["pattern"] = ISO8601_DURATION
            node.setdefault("examples", ["PT1.5S"])
        for value in node.values():
            durations_as_patterns(value)
    elif isinstance(node, list):
        for value in node:
            durations_as_patterns(value)
    return node


def describe_durations(app: FastAPI) -> None:
    """Make ``app``'s OpenAPI document describe durations as they are sent."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = durations_as_patterns(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
