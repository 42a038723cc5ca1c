"""Sync semantics through a real job, on both stores: deletes, local edits, last sync time."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from temporalio.testing import WorkflowEnvironment

from enqueuer import Actor, JobStatus
from enqueuer.settings import Settings
from spinner_jobs.connectors.registry import ConnectorRegistry
from spinner_jobs.core.models import Table, Workbook
from spinner_jobs.shell.sample_api import SampleApi, SampleTable
from spinner_jobs.store.base import Store
from tests.helpers import temporal_enqueuer

ACTOR = Actor(user_id="u_1", organization_id="org_1")


@pytest.fixture
def source() -> Iterator[SampleApi]:
    with SampleApi({"people": SampleTable(records=1000, style="offset", page_size=100)}) as api:
        yield api


async def test_second_sync_deletes_what_the_source_dropped_but_keeps_local_edits(
    dev_env: WorkflowEnvironment,
    settings: Settings,
    any_store: Store,
    connectors: ConnectorRegistry,
    source: SampleApi,
) -> None:
    any_store.put_workbook(
        Workbook(
            id="wb_sync",
            organization_id="org_1",
            name="sync",
            tables=[
                Table(
                    id="tbl_people",
                    workbook_id="wb_sync",
                    name="people",
                    connector="http",
                    config=source.config("people"),
                )
            ],
        )
    )
    async with temporal_enqueuer(dev_env.client, settings, any_store, connectors) as enqueuer:
        first = await enqueuer.wait(
            (await enqueuer.enqueue_download_records_job("wb_sync", ACTOR)).job_id, actor=ACTOR
        )
        assert first.status == JobStatus.COMPLETED
        assert any_store.count_records("tbl_people") == 1000
        synced_once = any_store.get_workbook("wb_sync").tables[0].last_synced_at  # type: ignore[union-attr]
        assert synced_once is not None

        # The source drops records 0..9; a person edits record 3 locally meanwhile.
        source.remove_records("people", range(10))
        any_store.update_record("tbl_people", "rec_0000003", {"name": "edited here"})

        second = await enqueuer.wait(
            (await enqueuer.enqueue_download_records_job("wb_sync", ACTOR)).job_id, actor=ACTOR
        )

    assert second.status == JobStatus.COMPLETED
    table = second.progress.tables["tbl_people"]
    assert table.records == 990
    assert table.deleted == 9
    assert table.kept_dirty == 1
    expected = sorted(["rec_0000003", *source.record_ids("people")])
    assert any_store.record_ids("tbl_people") == expected
    assert (any_store.get_record("tbl_people", "rec_0000003") or {})["name"] == "edited here"
    synced_twice = any_store.get_workbook("wb_sync").tables[0]  # type: ignore[union-attr]
    assert synced_twice.last_synced_at is not None
    assert synced_twice.last_synced_at > synced_once
    assert synced_twice.locked_by is None
