"""The TypeScript example (examples/typescript) run with the machine's Node against a live API.

The example is compiled with the pinned ``typescript`` from its lock file, installed
into ``examples/typescript/node_modules`` the first time (from npm, with its cache in
``examples/typescript/.npm-cache``); later runs need no network. The compiled script
enqueues a real job on each backend, follows its event stream and prints progress.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.api_support import Api
from tests.helpers import demo

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "typescript"
NODE = shutil.which("node") or "/usr/bin/node"
NPM = shutil.which("npm") or "/usr/bin/npm"


def _pinned_typescript() -> str:
    version: str = json.loads((EXAMPLE / "package.json").read_text())["devDependencies"][
        "typescript"
    ]
    return version


def _installed_typescript() -> str | None:
    manifest = EXAMPLE / "node_modules" / "typescript" / "package.json"
    if not manifest.is_file():
        return None
    version: str = json.loads(manifest.read_text())["version"]
    return version


@pytest.fixture(scope="session")
def follow_job_js() -> Path:
    """The example, compiled (typescript installed from the lock file when missing)."""
    assert Path(NODE).is_file(), f"Node.js is needed at {NODE}"
    if _installed_typescript() != _pinned_typescript():
        subprocess.run(
            [NPM, "ci", "--no-audit", "--no-fund", "--prefer-offline", "--cache", ".npm-cache"],
            cwd=EXAMPLE,
            check=True,
            capture_output=True,
            timeout=300,
        )
    assert _installed_typescript() == _pinned_typescript()
    built = subprocess.run(
        [NODE, "node_modules/typescript/bin/tsc", "-p", "."],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return EXAMPLE / "dist" / "follow-job.js"


async def run_example(script: Path, url: str, key: str, *args: str) -> tuple[int, str, str]:
    env = {"PATH": os.environ.get("PATH", ""), "SPINNER_API_URL": url, "SPINNER_API_KEY": key}
    process = await asyncio.create_subprocess_exec(
        NODE,
        str(script),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def key_of(api: Api) -> str:
    return api.http.headers["Authorization"].removeprefix("Bearer ")


async def test_the_example_enqueues_a_download_and_prints_its_progress_to_the_end(
    api: Api, make_workbook, follow_job_js: Path
) -> None:
    wb = make_workbook(
        org=api.org,
        customers=demo(400, page_size=50, page_delay=0.3),
        orders=demo(300, page_size=50, page_delay=0.3),
    )
    status, out, err = await run_example(follow_job_js, api.url, key_of(api), wb.id)
    assert (status, err) == (0, ""), out + err
    lines = out.splitlines()
    enqueued = re.fullmatch(r"enqueued (download-records-\w+)", lines[0])
    assert enqueued, lines
    job_id = enqueued.group(1)

    totals = [
        int(m.group(1)) for m in map(re.compile(r"progress (\d+) records \| ").match, lines) if m
    ]
    assert len(totals) >= 2, lines
    assert totals == sorted(totals), totals
    assert totals[-1] == 700
    assert "progress 700 records | customers 400 completed | orders 300 completed" in lines
    assert "table.completed customers: 400 records" in lines
    assert "table.completed orders: 300 records" in lines
    assert re.fullmatch(
        rf"job\.completed {job_id}: 700 records, 2 tables in \d+\.\d s", lines[-1]
    ), lines[-1]
    # The job it printed is the organization's, and it did complete.
    progress = (await api.http.get(f"/v1/jobs/{job_id}")).json()
    assert (progress["status"], progress["total_records"]) == ("completed", 700)


async def test_the_example_exits_non_zero_with_the_problems_detail(
    api: Api, make_workbook, follow_job_js: Path
) -> None:
    wb = make_workbook(org=api.org, t1=demo(10))
    bad_key = "sj_" + "0" * 12 + "_" + "0" * 64
    status, out, err = await run_example(follow_job_js, api.url, bad_key, wb.id)
    assert status == 1, out + err
    assert out == ""
    assert err.startswith("error: 401 Unauthorized: missing or invalid API key;"), err
    assert "[request " in err
    # An unknown workbook: the API's 422 and its detail, naming the workbook.
    status, out, err = await run_example(follow_job_js, api.url, key_of(api), "wb_nope")
    assert status == 1, out + err
    assert err.startswith("error: 422 Unprocessable Entity: "), err
    assert "wb_nope" in err
