"""Connectors by name: the set a worker (or the in-process backend) reads from."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from connectors.base import Connector
from connectors.demo import DemoConnector
from connectors.files import FilesConnector
from connectors.http import HttpConnector
from enqueuer.errors import InvalidTableConfigError


class ConnectorRegistry:
    """Looks connectors up by the name stored on each table."""

    def __init__(self, connectors: Iterable[Connector]) -> None:
        self._by_name = {c.name: c for c in connectors}

    @property
    def names(self) -> list[str]:
        """Registered connector names."""
        return sorted(self._by_name)

    def get(self, name: str) -> Connector:
        """Return the connector called ``name``.

        Raises:
            InvalidTableConfigError: no such connector.
        """
        try:
            return self._by_name[name]
        except KeyError:
            raise InvalidTableConfigError(
                f"unknown connector {name!r}; known: {', '.join(self.names)}"
            ) from None

    async def aclose(self) -> None:
        """Close every connector's pooled resources."""
        for connector in self._by_name.values():
            await connector.aclose()


def default_connectors(files_root: Path | None = None) -> ConnectorRegistry:
    """Return the built-in connectors: demo, http, files.

    Args:
        files_root: folder the ``files`` connector may read below; None: anywhere the
            process can read (table configs are then fully trusted).
    """
    return ConnectorRegistry(
        [DemoConnector(), HttpConnector(), FilesConnector(base_dir=files_root)]
    )
