"""Many event streams of one job share its progress fetches, and never another org's."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any, cast

import pytest

from enqueuer.client import Enqueuer
from spinner_jobs.core.errors import JobNotFoundError
from spinner_jobs.core.models import Actor, EventKind, JobEvent, JobProgress
from tests.conftest import WorkbookFactory
from tests.helpers import demo

ACTOR = Actor(user_id="u1", organization_id="org_1")
OTHER = Actor(user_id="u9", organization_id="org_9")


def _count_fetches(enqueuer: Enqueuer) -> list[str]:
    """Record each progress fetch that reaches the backend (the real one answers)."""
    calls: list[str] = []
    real = enqueuer.backend.progress

    async def progress(job_id: str, organization_id: str) -> JobProgress:
        calls.append(organization_id)
        return await real(job_id, organization_id)

    enqueuer.backend.progress = progress  # type: ignore[method-assign]
    return calls


async def test_forty_streams_of_one_job_share_its_progress_fetches(
    enqueuer: Enqueuer, make_workbook: WorkbookFactory
) -> None:
    wb = make_workbook(t=demo(600, page_size=50, page_delay=0.25))
    ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR)
    calls = _count_fetches(enqueuer)
    interval = 0.2

    async def follow() -> list[Any]:
        return [e async for e in enqueuer.events(ref.job_id, actor=ACTOR, interval=interval)]

    began = time.monotonic()
    streams = await asyncio.gather(*(follow() for _ in range(40)))
    took = time.monotonic() - began
    finals = {s[-1].kind for s in streams}
    assert finals == {EventKind.JOB_COMPLETED}
    assert {s[-1].records for s in streams} == {600}
    # One stream alone fetches about once per interval; forty share those fetches.
    polls = took / interval
    assert len(calls) <= 2 * polls + 10, (len(calls), round(polls))
    assert len(calls) < 40 * polls / 4, (len(calls), round(polls))


async def test_a_shared_fetch_never_answers_another_organization(
    enqueuer: Enqueuer, make_workbook: WorkbookFactory
) -> None:
    wb = make_workbook(t=demo(5))
    ref = await enqueuer.enqueue_download_records_job(wb.id, ACTOR, table_ids=None)
    await enqueuer.wait(ref.job_id, actor=ACTOR)
    owner = cast(
        AsyncGenerator[JobEvent, None], enqueuer.events(ref.job_id, actor=ACTOR, interval=10.0)
    )
    first = await anext(owner)  # the owner's fetch is fresh for the next 10 s
    assert first.job_id == ref.job_id
    with pytest.raises(JobNotFoundError):
        await anext(enqueuer.events(ref.job_id, actor=OTHER, interval=10.0))
    await owner.aclose()
