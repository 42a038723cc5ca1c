"""Serving the API with uvicorn, stopped by the caller's event (SIGTERM in the CLI).

The process's signals stay with the caller: a monolith stops its worker and its API on
the same event. On stop the server stops accepting connections, event streams end
(with a comment saying why), in-flight requests finish within
``SPINNER_API_SHUTDOWN_TIMEOUT``, and then the server returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import structlog
import uvicorn
from fastapi import FastAPI

from enqueuer.settings import ApiSettings
from spinner_jobs.api.app import ApiState
from spinner_jobs.api.problems import ApiAddressError

log = structlog.get_logger(__name__)


class _Server(uvicorn.Server):
    """uvicorn, minus its own signal handlers: the caller's stop event decides."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (so a taken port is our error, not an exit)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ApiAddressError(f"{host}:{port}", exc.strerror or str(exc)) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class ApiServer:
    """The API on a real socket: ``start`` (returns the URL), then ``stop``."""

    def __init__(self, app: FastAPI, settings: ApiSettings) -> None:
        self.app = app
        self.settings = settings
        self.url = ""
        config = uvicorn.Config(
            app,
            log_config=None,  # logging is configured once, by the entry point
            access_log=False,  # the API logs each request itself (request id, org, route)
            timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout.total_seconds())),
            lifespan="off",
            server_header=False,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Listen and serve in the background; returns the base URL (``http://host:port``)."""
        sock = _listen(self.settings.host, self.settings.port)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="api-server")
        while not self._server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise ApiAddressError(self.url, "the server stopped while starting")
            await asyncio.sleep(0.01)
        log.info("api_started", url=self.url)
        return self.url

    async def stop(self) -> None:
        """Shut down gracefully: end event streams, let in-flight requests finish."""
        if self._task is None:
            return
        state: ApiState = self.app.state.api
        state.closing.set()
        self._server.should_exit = True
        await self._task
        self._task = None
        log.info("api_stopped", url=self.url)

    async def serve_until(self, stop: asyncio.Event) -> None:
        """Start, serve until ``stop`` is set, then shut down gracefully."""
        await self.start()
        waiting = asyncio.create_task(stop.wait())
        assert self._task is not None
        try:
            await asyncio.wait({waiting, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            await self.stop()
