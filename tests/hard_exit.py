"""pytest plugin: leave with ``os._exit`` once the run is reported.

The Temporal SDK's Rust threads can outlive interpreter finalization and abort the
process (status 134) after every test passed. Exiting hard once the summary is
printed, with the session's real status, keeps green runs green and red runs red.
"""

from __future__ import annotations

import os
import sys

import pytest

_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # Only the main pytest process of a run exits hard; in-process pytester runs do not.
    if not _status or os.environ.get("SPINNER_NO_HARD_EXIT"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_status[-1])
