"""Recorded histories still replay: workflow changes stay deterministic for running jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from enqueuer.jobtypes import JOB_TYPES

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


@pytest.mark.parametrize(
    "text", [p.read_text() for p in HISTORIES], ids=[p.stem for p in HISTORIES]
)
async def test_recorded_history_replays(text: str) -> None:
    started = json.loads(text)["events"][0]
    assert started["eventType"] == "EVENT_TYPE_WORKFLOW_EXECUTION_STARTED"
    history = WorkflowHistory.from_json("recorded", text)
    replayer = Replayer(
        workflows=[kind.workflow for kind in JOB_TYPES], data_converter=pydantic_data_converter
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


def test_there_are_histories_to_replay() -> None:
    assert {p.stem for p in HISTORIES} >= {
        "download-records-failed-and-retried",
        "download-records-cancelled",
        "export-records-completed",
        "publish-changes-retried",
    }
