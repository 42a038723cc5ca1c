"""Live per-table progress bars in the terminal, built on ``Enqueuer.events``."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table as RichTable

from enqueuer.client import Enqueuer
from spinner_jobs.core.models import Actor, EventKind, JobProgress, TableStatus

_STYLE = {
    TableStatus.PENDING: "dim",
    TableStatus.ACTIVE: "cyan",
    TableStatus.COMPLETED: "green",
    TableStatus.FAILED: "red",
    TableStatus.CANCELLED: "yellow",
}


async def watch_job(
    enqueuer: Enqueuer,
    job_id: str,
    console: Console,
    *,
    actor: Actor,
    expected: dict[str, int] | None = None,
    interval: float = 0.2,
) -> JobProgress:
    """Show one bar per table until the job closes; return the final progress.

    Args:
        enqueuer: the enqueuer the job runs on.
        job_id: the job to follow.
        actor: who follows it (the job must be of their organization).
        console: where to draw.
        expected: records each table is expected to have, when known (fills the bars).
        interval: seconds between progress reads.

    """
    expected = expected or {}
    bars: dict[str, TaskID] = {}
    final: JobProgress | None = None
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", justify="left"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as view:
        async for event in enqueuer.events(job_id, actor=actor, interval=interval):
            progress = event.progress
            if progress is None:
                continue
            final = progress
            for table in progress.tables.values():
                total = expected.get(table.table_id)
                if table.status == TableStatus.COMPLETED:
                    total = table.records
                if table.table_id not in bars:
                    bars[table.table_id] = view.add_task(
                        f"{table.name:<16}", total=total, status=""
                    )
                style = _STYLE[table.status]
                view.update(
                    bars[table.table_id],
                    description=f"{table.name:<16}",
                    completed=table.records,
                    total=total,
                    status=f"[{style}]{table.status.value}[/]"
                    + (f" (attempt {table.attempt})" if table.attempt > 1 else ""),
                )
            if event.kind in (
                EventKind.JOB_COMPLETED,
                EventKind.JOB_FAILED,
                EventKind.JOB_CANCELLED,
            ):
                break
    assert final is not None
    return final


def summary_table(progress: JobProgress, seconds: float | None = None) -> RichTable:
    """A table of per-table outcomes."""
    table = RichTable(title=f"job {progress.job_id}: {progress.status.value}")
    for column in ("table", "connector", "status", "records", "deleted", "kept (edited)"):
        table.add_column(column, justify="right" if column[0] in "rdk" else "left")
    for t in progress.tables.values():
        table.add_row(
            f"{t.name} ({t.table_id})",
            t.connector,
            f"[{_STYLE[t.status]}]{t.status.value}[/]" + (f": {t.error}" if t.error else ""),
            f"{t.records:,}",
            f"{t.deleted:,}",
            f"{t.kept_dirty:,}",
        )
    caption = f"{progress.total_records:,} records"
    if seconds:
        caption += f" in {seconds:.1f} s ({progress.total_records / seconds:,.0f} records/s)"
    table.caption = caption
    return table
