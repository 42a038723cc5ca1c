"""Shared benchmark helpers: a private dev server, timing and table printing."""

from __future__ import annotations

import socket
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from spinner_jobs.shell.devserver import DevServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def dev_server(folder: Path) -> AsyncIterator[str]:
    """A dev server as `spinner-jobs dev` runs it (SQLite file, WAL), on free ports."""
    address = f"127.0.0.1:{free_port()}"
    server = await DevServer.start(
        address,
        ui_port=free_port(),
        db_file=folder / "temporal.db",
        log_file=folder / "temporal.log",
    )
    try:
        yield address
    finally:
        server.stop()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
