"""Record workflow histories for the replay test (tests/test_replay.py).

Runs real jobs on a dev server with a real worker and saves their histories to
tests/histories/. Re-record only on purpose: a history recorded before a workflow
change is what proves the change still replays (is deterministic) for running jobs.

    .venv/bin/python scripts/record_histories.py
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from enqueuer import Actor  # noqa: E402
from enqueuer.client import Enqueuer  # noqa: E402
from enqueuer.logs import configure_logging  # noqa: E402
from enqueuer.settings import Settings  # noqa: E402
from spinner_jobs.connectors.registry import default_connectors  # noqa: E402
from spinner_jobs.core import wire  # noqa: E402
from spinner_jobs.core.models import JobRef, Table, Workbook  # noqa: E402
from spinner_jobs.shell.devserver import temporal_cli  # noqa: E402
from spinner_jobs.shell.sample_api import Fault, SampleApi, SampleTable  # noqa: E402
from spinner_jobs.store.sqlite import SqliteStore  # noqa: E402
from tests.helpers import eventually, temporal_enqueuer  # noqa: E402

OUT = ROOT / "tests" / "histories"


async def main() -> None:
    configure_logging("console", "warning")
    env = await WorkflowEnvironment.start_local(
        data_converter=pydantic_data_converter,
        dev_server_existing_path=str(temporal_cli()),
        search_attributes=wire.SEARCH_ATTRIBUTES,
    )
    folder = Path(tempfile.mkdtemp())
    store = SqliteStore(folder / "store.db")
    store.migrate()
    settings = Settings(
        data_dir=folder,
        temporal={"task_queue": f"record-{uuid.uuid4().hex[:6]}"},
        retry={"initial_interval": 0.1},
        jobs={"progress_interval": 0.2, "table_parallelism": 2},
    )
    tables = {
        "ok": {"records": 500, "page_size": 100},
        "flaky": {"records": 500, "page_size": 100, "fail_page": 2, "fail_times": 1},
        "broken": {"records": 50, "fail_page": 1, "fail_kind": "permanent"},
        "slow": {"records": 100_000, "page_size": 10, "page_delay": 0.05},
    }
    store.put_workbook(
        Workbook(
            id="wb_replay",
            organization_id="org_1",
            name="replay",
            tables=[
                Table(id=name, workbook_id="wb_replay", name=name, connector="demo", config=cfg)
                for name, cfg in tables.items()
            ],
        )
    )
    actor = Actor(user_id="u_1", organization_id="org_1")
    connectors = default_connectors(http_allowed_networks=["127.0.0.0/8"])  # the sample source
    async with temporal_enqueuer(env.client, settings, store, connectors) as enqueuer:
        failed = await enqueuer.enqueue_download_records_job(
            "wb_replay", actor, ["ok", "flaky", "broken"]
        )
        await enqueuer.wait(failed.job_id, actor=Actor(user_id="u_1", organization_id="org_1"))
        cancelled = await enqueuer.enqueue_download_records_job("wb_replay", actor, ["slow"])

        async def started() -> bool:
            return (
                await enqueuer.progress(
                    cancelled.job_id, actor=Actor(user_id="u_1", organization_id="org_1")
                )
            ).total_records > 0

        await eventually(started)
        await enqueuer.cancel(cancelled.job_id, actor=Actor(user_id="u_1", organization_id="org_1"))
        await enqueuer.wait(cancelled.job_id, actor=Actor(user_id="u_1", organization_id="org_1"))
        exported = await enqueuer.enqueue_export_records_job(
            "wb_replay", actor, ["ok", "flaky"], "jsonl"
        )
        await enqueuer.wait(exported.job_id, actor=actor)
        published = await _publish(enqueuer, store, actor)
        recorded = {
            "download-records-failed-and-retried": failed,
            "download-records-cancelled": cancelled,
            "export-records-completed": exported,
            "publish-changes-retried": published,
        }
        for name, ref in recorded.items():
            path = OUT / f"{name}.json"
            if path.exists() and "--force" not in sys.argv:
                print(f"kept {path.name}")
                continue
            history = await env.client.get_workflow_handle(ref.job_id).fetch_history()
            path.write_text(history.to_json())
            print(f"recorded {name}: {ref.job_id}")
    await connectors.aclose()
    await env.shutdown()


async def _publish(enqueuer: Enqueuer, store: SqliteStore, actor: Actor) -> JobRef:
    """A publish of three edits to a writable loopback source that fails once."""
    records = "/tables/people/records"
    write = {
        "create": {"method": "POST", "path": records},
        "update": {"method": "PATCH", "path": records + "/{id}"},
        "delete": {"method": "DELETE", "path": records + "/{id}"},
        "read": {"path": records + "/{id}"},
        "version_field": "version",
    }
    api = SampleApi({"people": SampleTable(records=4, writable=True)})
    api.start()
    table = Table(
        id="people",
        workbook_id="wb_publish",
        name="people",
        connector="http",
        config=api.config("people", write=write),
    )
    store.put_workbook(
        Workbook(id="wb_publish", organization_id="org_1", name="publish", tables=[table])
    )
    download = await enqueuer.enqueue_download_records_job("wb_publish", actor)
    await enqueuer.wait(download.job_id, actor=actor)
    [first, second, *_] = store.record_ids("people")
    store.update_record("people", first, {"name": "edited"})
    store.delete_record("people", second)
    store.create_record("people", {"name": "new"})
    api.inject(Fault(status=503, method="PATCH"))
    published = await enqueuer.enqueue_publish_changes_job("wb_publish", actor)
    await enqueuer.wait(published.job_id, actor=actor)
    api.stop()
    return published


if __name__ == "__main__":
    asyncio.run(main())
    sys.stdout.flush()
    os._exit(0)
