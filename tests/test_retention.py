"""Retention: keep the newest N completed and M failed jobs, delete older closed ones.

The time-skipping test server implements neither ListWorkflowExecutions nor
DeleteWorkflowExecution nor schedules (all UNIMPLEMENTED), so there the real sweep
workflow and activity run over an in-memory fake of our ``JobIndex`` port, filled
from real job runs. The real ``TemporalJobIndex`` and the schedule are tested on
the dev server, scoped to the test's own task queue.
"""

from __future__ import annotations

import itertools
import logging
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.retention import JobExecution, RetentionActivities
from enqueuer.client import Enqueuer
from enqueuer.settings import RetentionSettings, Settings
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.core import wire
from spinner_jobs.core.errors import JobNotFoundError
from spinner_jobs.core.models import (
    Actor,
    JobStatus,
    RetentionSweepInput,
    RetentionSweepResult,
)
from spinner_jobs.store.sqlite import SqliteStore
from spinner_jobs.worker.schedules import (
    ensure_retention_schedule,
    retention_schedule_id,
    retention_sweep_input,
    retention_worker_parts,
)
from tests.helpers import demo, eventually, temporal_enqueuer
from workflows.retention import RetentionSweepWorkflow

ACTOR = Actor(user_id="u_1", organization_id="org_1")
OK = demo(3, page_size=10)
BAD = demo(10, fail_page=1, fail_kind="permanent")
SLOW = demo(100_000, page_size=10, page_delay=0.05)

_STATUS = {"ok": JobStatus.COMPLETED, "bad": JobStatus.FAILED}


def _kinds(completed: int, failed: int, seed: int) -> list[str]:
    """Completed and failed jobs interleaved, so each bucket is sorted on its own."""
    kinds = ["ok"] * completed + ["bad"] * failed
    random.Random(seed).shuffle(kinds)
    return kinds


@pytest.fixture
def quiet_failed_activities() -> Iterator[None]:
    """Silence the SDK's warning per failed activity: the failures here are on purpose,
    and the console renderer spends about a second drawing each traceback.
    """
    sdk = logging.getLogger("temporalio.activity")
    level = sdk.level
    sdk.setLevel(logging.ERROR)
    yield
    sdk.setLevel(level)


class FakeJobIndex:
    """JobIndex over runs recorded from real executions (describe), deleting in memory.

    It lists running runs too: the sweep must not rely on the index's filter to spare
    them.
    """

    def __init__(self, runs: list[JobExecution] | None = None) -> None:
        self.runs = {r.workflow_id: r for r in runs or []}
        self.ghosts: list[JobExecution] = []  # deleted, yet still listed (visibility lag)

    async def record(self, handle: WorkflowHandle[Any, Any]) -> None:
        d = await handle.describe()
        assert d.status is not None
        self.runs[d.id] = JobExecution(d.id, d.run_id, d.status, d.close_time)

    async def list_closed(
        self, workflow_type: str, query_filter: str | None
    ) -> AsyncIterator[JobExecution]:
        for run in [*self.runs.values(), *self.ghosts]:
            yield run

    async def delete(self, execution: JobExecution) -> bool:
        return self.runs.pop(execution.workflow_id, None) is not None


# --- the sweep's choices, through the real activity ---------------------------------------


async def test_buckets_spare_running_runs_and_count_every_unsuccessful_close() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    s = WorkflowExecutionStatus
    statuses = [
        ("c0", s.COMPLETED),
        ("f0", s.FAILED),
        ("c1", s.COMPLETED),
        ("t0", s.TIMED_OUT),
        ("x0", s.TERMINATED),
        ("k0", s.CANCELED),
        ("n0", s.CONTINUED_AS_NEW),
        ("c2", s.COMPLETED),
    ]
    runs = [
        JobExecution(wid, f"run-{wid}", status, t0 + timedelta(minutes=i))
        for i, (wid, status) in enumerate(statuses)
    ]
    ghost, *runs = runs  # c0: deleted by an earlier attempt, still listed
    runs.append(JobExecution("r0", "run-r0", s.RUNNING, None))
    index = FakeJobIndex(runs)
    index.ghosts.append(ghost)
    sweep = RetentionActivities(index).sweep_closed_jobs
    env = ActivityEnvironment()

    result = await env.run(sweep, RetentionSweepInput(keep_completed=1, keep_failed=1))

    assert result == RetentionSweepResult(
        deleted_completed=["c0", "c1"],
        deleted_failed=["f0", "t0", "x0"],
        kept_completed=1,
        kept_failed=1,
    )
    assert sorted(index.runs) == ["c2", "k0", "n0", "r0"]
    # Once visibility has caught up, a second sweep finds nothing more to delete.
    index.ghosts.clear()
    again = await env.run(sweep, RetentionSweepInput(keep_completed=1, keep_failed=1))
    assert (again.deleted_completed, again.deleted_failed) == ([], [])


async def test_max_deletions_deletes_the_oldest_first_and_defers_the_rest() -> None:
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    done = WorkflowExecutionStatus.COMPLETED
    runs = [JobExecution(f"c{i}", "r", done, t0 + timedelta(seconds=i)) for i in range(5)]
    index = FakeJobIndex(list(reversed(runs)))
    result = await ActivityEnvironment().run(
        RetentionActivities(index).sweep_closed_jobs,
        RetentionSweepInput(keep_completed=1, keep_failed=0, max_deletions=2),
    )
    assert result.deleted_completed == ["c0", "c1"]
    assert result.deferred == 2
    assert sorted(index.runs) == ["c2", "c3", "c4"]


# --- time-skipping server: real jobs, real sweep workflow, fake index ---------------------


@pytest.mark.usefixtures("quiet_failed_activities")
async def test_sweep_keeps_the_newest_10_completed_and_5_failed_jobs(
    ts_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    make_workbook,
    connectors: ConnectorRegistry,
) -> None:
    ok, bad, slow = make_workbook(t=OK), make_workbook(t=BAD), make_workbook(t=SLOW)
    client = ts_env.client
    index = FakeJobIndex()
    closed: dict[str, list[str]] = {"ok": [], "bad": []}  # job ids, oldest first
    sweep_queue = f"{settings.temporal.task_queue}-retention"
    async with temporal_enqueuer(client, settings, sqlite_store, connectors) as enqueuer:
        for kind in _kinds(12, 7, seed=1):
            ref = await enqueuer.enqueue_download_records_job(
                (ok if kind == "ok" else bad).id, ACTOR
            )
            assert (await enqueuer.wait(ref.job_id, actor=ACTOR)).status == _STATUS[kind]
            closed[kind].append(ref.job_id)
            await index.record(client.get_workflow_handle(ref.job_id))
            await ts_env.sleep(timedelta(minutes=1))  # distinct close times, a minute apart
        # The order the jobs ran in is the order they closed in (a minute apart).
        close_times = [t for run in index.runs.values() if (t := run.close_time)]
        assert len(close_times) == 19
        assert all(a + timedelta(minutes=1) <= b for a, b in itertools.pairwise(close_times))
        running = await enqueuer.enqueue_download_records_job(slow.id, ACTOR)
        running_handle = client.get_workflow_handle(running.job_id)
        await index.record(running_handle)

        sweep = RetentionActivities(index)
        # Settings defaults: keep 10 completed, 5 failed (RetentionSettings).
        sweep_input = retention_sweep_input(settings, "download-records")
        async with Worker(
            client,
            task_queue=sweep_queue,
            workflows=[RetentionSweepWorkflow],
            activities=[sweep.sweep_closed_jobs],
        ):
            # Real time here: skipping ahead would time out the slow job's heartbeats.
            with ts_env.auto_time_skipping_disabled():
                result = await client.execute_workflow(
                    RetentionSweepWorkflow.run,
                    sweep_input,
                    id=f"sweep-{uuid.uuid4().hex[:8]}",
                    task_queue=sweep_queue,
                )

        assert result == RetentionSweepResult(
            deleted_completed=closed["ok"][:2],
            deleted_failed=closed["bad"][:2],
            kept_completed=10,
            kept_failed=5,
        )
        assert set(index.runs) == {*closed["ok"][2:], *closed["bad"][2:], running.job_id}
        assert (await running_handle.describe()).status == WorkflowExecutionStatus.RUNNING
        await enqueuer.cancel(running.job_id, actor=ACTOR)
        assert (await enqueuer.wait(running.job_id, actor=ACTOR)).status == JobStatus.CANCELLED


# --- dev server: real visibility, real deletes, real schedule -----------------------------


async def _listed(client: Client, query: str) -> dict[str, WorkflowExecutionStatus | None]:
    return {w.id: w.status async for w in client.list_workflows(query)}


async def _gone(client: Client, job_id: str) -> bool:
    try:
        await client.get_workflow_handle(job_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return True
        raise
    return False


@pytest.mark.usefixtures("quiet_failed_activities")
async def test_sweep_deletes_the_oldest_closed_jobs_on_the_dev_server(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    sqlite_store: SqliteStore,
    make_workbook,
    connectors: ConnectorRegistry,
) -> None:
    ok, bad, slow = make_workbook(t=OK), make_workbook(t=BAD), make_workbook(t=SLOW)
    client = dev_env.client
    queue = settings.temporal.task_queue
    # This test's jobs only: the session's dev server holds other tests' jobs too.
    scope = f'TaskQueue="{queue}"'
    query = f'WorkflowType="{wire.WORKFLOW_DOWNLOAD_RECORDS}" AND {scope}'
    closed: dict[str, list[tuple[datetime, str]]] = {"ok": [], "bad": []}
    async with temporal_enqueuer(client, settings, sqlite_store, connectors) as enqueuer:
        for kind in _kinds(5, 4, seed=2):
            ref = await enqueuer.enqueue_download_records_job(
                (ok if kind == "ok" else bad).id, ACTOR
            )
            assert (await enqueuer.wait(ref.job_id, actor=ACTOR)).status == _STATUS[kind]
            closed_at = (await client.get_workflow_handle(ref.job_id).describe()).close_time
            assert closed_at is not None
            closed[kind].append((closed_at, ref.job_id))
        running = await enqueuer.enqueue_download_records_job(slow.id, ACTOR)
        oldest_first = {kind: [j for _, j in sorted(runs)] for kind, runs in closed.items()}
        kept = {*oldest_first["ok"][2:], *oldest_first["bad"][2:]}
        all_closed = {j for runs in oldest_first.values() for j in runs}

        async def all_visible() -> None:
            listed = await _listed(client, query)
            assert listed.get(running.job_id) == WorkflowExecutionStatus.RUNNING, listed
            lagging = {j: listed.get(j) for j in all_closed}
            assert all(s not in (None, WorkflowExecutionStatus.RUNNING) for s in lagging.values())

        await eventually(all_visible)  # visibility lags the closes

        sweep_queue = f"{queue}-retention"
        sweep_input = RetentionSweepInput(keep_completed=3, keep_failed=2, query_filter=scope)
        workflows, activities = retention_worker_parts(client)
        async with Worker(
            client, task_queue=sweep_queue, workflows=workflows, activities=activities
        ):
            result = await client.execute_workflow(
                RetentionSweepWorkflow.run,
                sweep_input,
                id=f"sweep-{uuid.uuid4().hex[:8]}",
                task_queue=sweep_queue,
            )
            assert result == RetentionSweepResult(
                deleted_completed=oldest_first["ok"][:2],
                deleted_failed=oldest_first["bad"][:2],
                kept_completed=3,
                kept_failed=2,
            )

            async def only_newest_listed() -> None:
                assert set(await _listed(client, query)) == kept | {running.job_id}

            async def deleted_gone() -> bool:
                deleted = result.deleted_completed + result.deleted_failed
                return all([await _gone(client, j) for j in deleted])

            await eventually(deleted_gone)
            await eventually(only_newest_listed)
            again = await client.execute_workflow(
                RetentionSweepWorkflow.run,
                sweep_input,
                id=f"sweep-{uuid.uuid4().hex[:8]}",
                task_queue=sweep_queue,
            )
            assert (again.deleted_completed, again.deleted_failed) == ([], [])

        for job_id in kept:
            status = (await client.get_workflow_handle(job_id).describe()).status
            assert status != WorkflowExecutionStatus.RUNNING
        running_handle = client.get_workflow_handle(running.job_id)
        assert (await running_handle.describe()).status == WorkflowExecutionStatus.RUNNING
        await enqueuer.cancel(running.job_id, actor=ACTOR)
        assert (await enqueuer.wait(running.job_id, actor=ACTOR)).status == JobStatus.CANCELLED


async def test_retention_schedule_is_created_once_then_updated(
    dev_env: WorkflowEnvironment, settings: Settings
) -> None:
    client = dev_env.client
    queue = settings.temporal.task_queue
    schedule_id = retention_schedule_id(queue, "download-records")
    handle = client.get_schedule_handle(schedule_id)

    async def sweep_args() -> RetentionSweepInput:
        action = (await handle.describe()).schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert action.workflow == wire.WORKFLOW_RETENTION_SWEEP
        assert action.task_queue == queue
        [sweep] = await client.data_converter.decode(action.args, [RetentionSweepInput])
        assert isinstance(sweep, RetentionSweepInput)
        return sweep

    await ensure_retention_schedule(client, settings)
    try:
        first = await handle.describe()
        assert [i.every for i in first.schedule.spec.intervals] == [timedelta(minutes=10)]
        assert (await sweep_args()).model_dump() == {
            "keep_completed": 10,
            "keep_failed": 5,
            "workflow_type": "download-records",
            "query_filter": f'TaskQueue="{queue}"',
            "max_deletions": 1000,
        }
        # An operator pauses it; a worker restart with new settings updates it, still paused.
        await handle.pause(note="paused by an operator")
        every = timedelta(seconds=1)
        changed = settings.model_copy(
            update={
                "retention": RetentionSettings(
                    keep_completed=3, keep_failed=1, sweep_interval=every
                )
            }
        )
        await ensure_retention_schedule(client, changed)
        second = await handle.describe()
        assert second.schedule.state.paused
        assert [i.every for i in second.schedule.spec.intervals] == [every]
        sweep = await sweep_args()
        assert (sweep.keep_completed, sweep.keep_failed) == (3, 1)
        times = second.info.next_action_times
        assert {b - a for a, b in itertools.pairwise(times)} == {every}

        async def listed_once() -> bool:
            ids = [s.id async for s in await client.list_schedules()]
            return ids.count(schedule_id) == 1

        await eventually(listed_once)

        # Unpaused, it starts real sweeps on the worker's queue at the new interval.
        workflows, activities = retention_worker_parts(client)
        async with Worker(client, task_queue=queue, workflows=workflows, activities=activities):
            await handle.unpause()

            async def two_sweeps_started() -> bool:
                return len((await handle.describe()).info.recent_actions) >= 2

            await eventually(two_sweeps_started, within=10)
            await handle.pause()
            info = (await handle.describe()).info
            spacing = info.recent_actions[1].scheduled_at - info.recent_actions[0].scheduled_at
            # On the interval; a beat may be skipped while a sweep still runs (the overlap
            # policy), which a busy machine does.
            assert spacing >= every, spacing
            assert spacing % every == timedelta(0), spacing
            for action in [a.action for a in info.recent_actions] + list(info.running_actions):
                assert isinstance(action, ScheduleActionExecutionStartWorkflow)
                sweep_handle = client.get_workflow_handle(
                    action.workflow_id, result_type=RetentionSweepResult
                )
                # No jobs on this test's queue: nothing to delete.
                assert await sweep_handle.result() == RetentionSweepResult()
    finally:
        await handle.delete()


# --- in-process backend: the same counts without Temporal ---------------------------------


async def test_in_process_backend_keeps_the_newest_10_completed_and_5_failed(
    settings: Settings, sqlite_store: SqliteStore, make_workbook
) -> None:
    ok, bad = make_workbook(t=OK), make_workbook(t=BAD)
    closed: dict[str, list[str]] = {"ok": [], "bad": []}
    in_process = settings.model_copy(update={"use_jobs": False})
    async with Enqueuer.from_settings(in_process, store=sqlite_store) as enqueuer:
        for kind in _kinds(12, 7, seed=3):
            ref = await enqueuer.enqueue_download_records_job(
                (ok if kind == "ok" else bad).id, ACTOR
            )
            assert (await enqueuer.wait(ref.job_id, actor=ACTOR)).status == _STATUS[kind]
            closed[kind].append(ref.job_id)
        for job_id in closed["ok"][:2] + closed["bad"][:2]:
            with pytest.raises(JobNotFoundError):
                await enqueuer.progress(job_id, actor=ACTOR)
        for kind in ("ok", "bad"):
            for job_id in closed[kind][2:]:
                assert (await enqueuer.progress(job_id, actor=ACTOR)).status == _STATUS[kind]
