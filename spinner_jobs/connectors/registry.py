"""Connectors by name: the set a worker (or the in-process backend) reads from."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from spinner_jobs.connectors.base import Connector
from spinner_jobs.connectors.demo import DemoConnector
from spinner_jobs.connectors.files import FilesConnector
from spinner_jobs.connectors.http import HttpConnector
from spinner_jobs.core.errors import InvalidTableConfigError


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


def default_connectors(
    files_root: Path | None = None,
    http_allowed_networks: Iterable[IPv4Network | IPv6Network | str] = (),
    *,
    protected_files: Iterable[Path] = (),
) -> ConnectorRegistry:
    """Return the built-in connectors: demo, http, files.

    Args:
        files_root: folder the ``files`` connector reads below (``Settings.files_root_path``);
            None: the ``files`` connector refuses every path.
        http_allowed_networks: networks the ``http`` connector may reach besides public
            addresses (``SPINNER_HTTP_ALLOWED_NETWORKS``), e.g. ``127.0.0.0/8``.
        protected_files: the engine's own database files (``Settings.store_files``),
            never readable by a ``files`` table.
    """
    return ConnectorRegistry(
        [
            DemoConnector(),
            HttpConnector(allowed_networks=http_allowed_networks),
            FilesConnector(files_root, protected=protected_files),
        ]
    )
