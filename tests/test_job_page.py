"""The live job page and its view links, on a real API; the page in headless Chromium.

The browser test drives Debian's Chromium over the DevTools protocol (``scripts/cdp.py``,
on a pipe): it opens a job's view link while the job runs, reads the bars every quarter
second until the summary shows, and checks that they moved forward and ended full.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from enqueuer import Enqueuer
from scripts.cdp import DEFAULT_CHROMIUM, Chromium
from spinner_jobs.api.view import VIEW_KEY_FILE, ViewSigner, view_key
from spinner_jobs.core.errors import SecretKeyError
from spinner_jobs.store.sqlite import SqliteStore
from tests.api_support import PROBLEM, Api, enqueue_body, read_stream, running_api
from tests.helpers import demo

XSS_NAME = '<img src=x onerror="window.__xss=1">\'&<script>window.__xss=2</script>'


async def enqueue(api: Api, workbook_id: str) -> str:
    created = await api.http.post("/v1/jobs/download-records", json=enqueue_body(workbook_id))
    assert created.status_code == 202, created.text
    job_id: str = created.json()["job_id"]
    return job_id


async def view_link(api: Api, job_id: str, **body: Any) -> dict[str, Any]:
    made = await api.http.post(f"/v1/jobs/{job_id}/view-link", json=body or None)
    assert made.status_code == 200, made.text
    link: dict[str, Any] = made.json()
    return link


async def wait_closed(api: Api, job_id: str) -> None:
    _, ended = await read_stream(api, job_id)
    assert ended


def tampered(token: str, part: int, value: str) -> str:
    parts = token.split(".")
    parts[part] = value
    return ".".join(parts)


# --- the view link -----------------------------------------------------------------------


async def test_a_view_link_shows_its_job_and_streams_its_events_and_nothing_else(
    api: Api, make_workbook
) -> None:
    wb = make_workbook(org=api.org, t1=demo(300, page_size=100, page_delay=0.05))
    job_id = await enqueue(api, wb.id)
    other_job = await enqueue(api, make_workbook(org=api.org, t2=demo(50)).id)
    link = await view_link(api, job_id)
    token = link["token"]
    assert link["url"] == f"{api.url}/jobs/{job_id}?token={quote(token, safe='')}"
    assert link["path"] == f"/jobs/{job_id}?token={quote(token, safe='')}"
    assert token.startswith("sjv1.")
    browser = api.client()  # no key: what a person's browser has

    page = await browser.get(link["path"])
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'none'" in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    assert 'data-table-id="' + wb.tables[0].id + '"' in page.text
    assert f'data-events="/jobs/{job_id}/events?token={quote(token, safe="")}"' in page.text
    for asset in ("/static/job-page.js", "/static/job-page.css"):
        assert asset in page.text
        served = await browser.get(asset)
        assert served.status_code == 200, asset
    assert (await browser.get("/static/../app.py")).status_code == 404

    # The page's stream: the job's events to its final one, with the token alone.
    kinds = []
    async with browser.stream("GET", f"/jobs/{job_id}/events", params={"token": token}) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        async for line in stream.aiter_lines():
            if line.startswith("event:"):
                kinds.append(line.partition(":")[2].strip())
    assert kinds[-1] == "job.completed", kinds
    assert "progress" in kinds

    # Not another job: neither its page nor its stream.
    other_page = await browser.get(f"/jobs/{other_job}", params={"token": token})
    assert other_page.status_code == 403
    assert other_page.headers["content-type"].startswith("text/html")
    assert "not valid for this job" in other_page.text
    other_stream = await browser.get(f"/jobs/{other_job}/events", params={"token": token})
    assert other_stream.status_code == 403
    assert other_stream.headers["content-type"] == PROBLEM
    assert other_stream.json()["type"] == "urn:spinner-jobs:error:InvalidViewLinkError"

    # Not the API: no /v1 route takes the token, as a bearer key or as a parameter.
    bearer = api.client(token)
    for method, path in (
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("POST", f"/v1/jobs/{job_id}/view-link"),
        ("GET", "/v1/jobs"),
    ):
        for client, params in ((bearer, {}), (browser, {"token": token})):
            answer = await client.request(method, path, params=params)
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.json()["type"] == "urn:spinner-jobs:error:AuthenticationError"
    enqueued = await bearer.post("/v1/jobs/download-records", json=enqueue_body(wb.id))
    assert enqueued.status_code == 401

    # No token: a page that says how to get one.
    bare = await browser.get(f"/jobs/{job_id}")
    assert bare.status_code == 401
    assert "needs a view link" in bare.text
    assert (await browser.get(f"/jobs/{job_id}/events")).status_code == 401


async def test_altered_expired_and_foreign_view_links_are_refused(
    local_api: Api, make_workbook, settings
) -> None:
    wb = make_workbook(org=local_api.org, t1=demo(50))
    job_id = await enqueue(local_api, wb.id)
    await wait_closed(local_api, job_id)
    token = (await view_link(local_api, job_id))["token"]
    browser = local_api.client()
    assert (await browser.get(f"/jobs/{job_id}", params={"token": token})).status_code == 200

    _, expires, _, mac = token.split(".")
    altered = {
        "mac": tampered(token, 3, ("A" if mac[0] != "A" else "B") + mac[1:]),
        "later expiry": tampered(token, 1, str(int(expires) + 60)),
        "other org": tampered(
            token, 2, ViewSigner(b"x" * 32).sign(job_id, local_api.other_org, 1).split(".")[2]
        ),
        "no mac": tampered(token, 3, ""),
        "not base64": tampered(token, 3, "!!!"),
        "other version": tampered(token, 0, "sjv2"),
        "other digits": tampered(token, 1, "".join(chr(0x0660 + int(d)) for d in expires)),
        "padded org": tampered(token, 2, token.split(".")[2] + "="),
        "garbage": "not-a-token",
        "too long": token + "A" * 2000,
    }
    for why, bad in altered.items():
        page = await browser.get(f"/jobs/{job_id}", params={"token": bad})
        stream = await browser.get(f"/jobs/{job_id}/events", params={"token": bad})
        if why == "too long":  # refused by the parameter's length check
            assert (page.status_code, stream.status_code) == (422, 422), why
            continue
        assert page.status_code == 403, (why, page.text)
        assert "not valid for this job" in page.text, why
        assert stream.status_code == 403, why
        assert stream.json()["type"] == "urn:spinner-jobs:error:InvalidViewLinkError", why

    # Signed with another key: refused; with this API's key but expired: says so.
    stranger = ViewSigner(b"k" * 32).sign(job_id, local_api.org, int(time.time()) + 600)
    assert (await browser.get(f"/jobs/{job_id}", params={"token": stranger})).status_code == 403
    signer = ViewSigner(view_key(settings))
    expired = signer.sign(job_id, local_api.org, int(time.time()) - 1)
    page = await browser.get(f"/jobs/{job_id}", params={"token": expired})
    assert page.status_code == 401
    assert "expired" in page.text
    assert page.headers["content-security-policy"]
    stream = await browser.get(f"/jobs/{job_id}/events", params={"token": expired})
    assert stream.status_code == 401
    assert stream.json()["type"] == "urn:spinner-jobs:error:ExpiredViewLinkError"
    assert "expired" in stream.json()["detail"]
    # A genuine token lasting past today's cap (a cap lowered since) is refused too.
    too_long = signer.sign(job_id, local_api.org, int(time.time()) + 3 * 86400)
    assert (await browser.get(f"/jobs/{job_id}", params={"token": too_long})).status_code == 403

    # Another organization cannot get a link to the job, nor to an unknown one.
    for client in (local_api.other, local_api.http):
        theirs = await client.post("/v1/jobs/download-records-0000000000000000/view-link")
        assert theirs.status_code == 404
    assert (await local_api.other.post(f"/v1/jobs/{job_id}/view-link")).status_code == 404


async def test_view_links_last_an_hour_by_default_and_no_longer_than_the_cap(
    local_api: Api, make_workbook
) -> None:
    job_id = await enqueue(local_api, make_workbook(org=local_api.org, t1=demo(20)).id)
    now = time.time()
    default = await view_link(local_api, job_id)
    expires = int(default["token"].split(".")[1])
    assert 3600 - 5 <= expires - now <= 3600 + 5
    short = await view_link(local_api, job_id, expires_in="PT5M")
    assert 300 - 5 <= int(short["token"].split(".")[1]) - now <= 300 + 5
    for bad in ("P2D", 0, -5):
        refused = await local_api.http.post(
            f"/v1/jobs/{job_id}/view-link", json={"expires_in": bad}
        )
        assert refused.status_code == 422, bad
        assert refused.json()["field"] == "expires_in"


async def test_the_view_key_is_the_setting_or_a_generated_file_kept_in_the_data_dir(
    local_enqueuer: Enqueuer, sqlite_store: SqliteStore, make_workbook, settings
) -> None:
    # Unset: one generated key, kept (0600) and used by every API on the data dir.
    async with running_api(local_enqueuer, sqlite_store) as (first, _):
        job_id = await enqueue(first, make_workbook(org=first.org, t1=demo(20)).id)
        link = await view_link(first, job_id)
    key_file = Path(settings.data_dir) / VIEW_KEY_FILE
    assert key_file.stat().st_mode & 0o777 == 0o600
    async with running_api(local_enqueuer, sqlite_store) as (second, _):
        assert (await second.client().get(link["path"])).status_code == 200
    # Set: that key signs, and links of the file's key no longer open.
    async with running_api(local_enqueuer, sqlite_store, view_key="v" * 40) as (third, _):
        assert (await third.client().get(link["path"])).status_code == 403
        token = ViewSigner(b"v" * 40).sign(job_id, first.org, int(time.time()) + 60)
        page = await third.client().get(f"/jobs/{job_id}", params={"token": token})
        assert page.status_code == 200
    # Too short a key is refused at start, naming the setting.
    with pytest.raises(SecretKeyError, match="SPINNER_API_VIEW_KEY"):
        async with running_api(local_enqueuer, sqlite_store, view_key="short"):
            pass


async def test_table_names_are_escaped_in_the_page(local_api: Api, make_workbook) -> None:
    wb = make_workbook(org=local_api.org, t1=demo(10))
    workbook = wb.model_copy(
        update={"tables": [wb.tables[0].model_copy(update={"name": XSS_NAME})]}
    )
    local_api.store.put_workbook(workbook)
    job_id = await enqueue(local_api, wb.id)
    await wait_closed(local_api, job_id)
    link = await view_link(local_api, job_id)
    page = (await local_api.client().get(link["path"])).text
    assert XSS_NAME not in page
    assert "<img" not in page
    assert "<script>window" not in page
    assert "&lt;img src=x onerror=&quot;window.__xss=1&quot;&gt;&#x27;&amp;" in page


# --- in a browser ------------------------------------------------------------------------

SAMPLE_BARS = """
(() => {
  const rows = [...document.querySelectorAll("tr.table")].map((row) => {
    const bar = row.querySelector("progress");
    return {
      name: row.querySelector(".name").textContent,
      records: Number(row.dataset.records),
      status: row.dataset.status,
      value: bar.hasAttribute("value") ? bar.value : null,
      max: bar.max,
      count: row.querySelector(".count").textContent,
    };
  });
  const summary = document.getElementById("summary");
  return {
    status: document.getElementById("job").dataset.status,
    rows,
    summary: summary.hidden ? null : document.getElementById("summary-line").textContent,
    total: document.getElementById("total-records").textContent,
    images: document.querySelectorAll("img").length,
    xss: window.__xss ?? null,
  };
})()
"""


@pytest.mark.timeout(180)
async def test_the_page_moves_its_bars_while_the_job_runs_and_shows_the_summary_at_the_end(
    local_api: Api, make_workbook
) -> None:
    assert DEFAULT_CHROMIUM.is_file(), f"Chromium is needed at {DEFAULT_CHROMIUM}"
    # A first download makes the snapshot whose size is the next download's estimate.
    wb = make_workbook(org=local_api.org, known=demo(1500, page_size=500))
    await wait_closed(local_api, await enqueue(local_api, wb.id))
    known = wb.tables[0].model_copy(
        update={"config": {"records": 1500, "page_size": 50, "page_delay": 0.12}}
    )
    fresh = known.model_copy(
        update={
            "id": f"{wb.id}_fresh",
            "name": XSS_NAME,
            "config": {"records": 600, "page_size": 50, "page_delay": 0.12},
        }
    )
    local_api.store.put_workbook(wb.model_copy(update={"tables": [known, fresh]}))

    samples: list[dict[str, Any]] = []
    async with Chromium.launch() as chromium:  # started first: it takes a second or two
        job_id = await enqueue(local_api, wb.id)
        link = await view_link(local_api, job_id)
        page = await chromium.open(link["url"])
        started = time.monotonic()
        while time.monotonic() - started < 90:
            sample = await page.evaluate(SAMPLE_BARS)
            samples.append(sample)
            if sample["summary"] is not None:
                break
            await asyncio.sleep(0.25)
        # Opened after the end, the page shows the summary at once, without the stream.
        await page.goto(link["url"])
        reopened = await page.evaluate(SAMPLE_BARS)
        # An altered link is a page that says so.
        await page.goto(link["url"].replace(link["token"], tampered(link["token"], 1, "1")))
        refused = await page.evaluate("document.getElementById('error-detail').textContent")

    final = samples[-1]
    assert final["summary"] is not None, f"no summary after {len(samples)} samples: {final}"
    assert final["summary"].startswith("Completed: 2,100 records, 2 tables, in "), final
    assert final["status"] == "completed"
    assert final["total"] == "2,100"
    running = [s for s in samples if s["summary"] is None]
    known_values = [s["rows"][0]["value"] for s in running]
    fresh_records = [s["rows"][1]["records"] for s in running]
    print(
        f"[job page] {len(samples)} samples over {time.monotonic() - started:.1f} s; "
        f"known bar (max {running[-1]['rows'][0]['max']}): {known_values}; "
        f"fresh records: {fresh_records}"
    )
    # The known table's bar has a size (its last snapshot) and fills step by step.
    assert all(s["rows"][0]["max"] == 1500 for s in running)
    assert known_values == sorted(known_values), known_values
    assert len({v for v in known_values if 0 < v < 1500}) >= 3, known_values
    assert "/ ~1,500" in running[len(running) // 2]["rows"][0]["count"]
    # The new table has no size yet: an indeterminate bar and a rising count.
    assert all(
        s["rows"][1]["value"] is None for s in running if s["rows"][1]["status"] != "completed"
    )
    assert fresh_records == sorted(fresh_records)
    assert len({r for r in fresh_records if 0 < r < 600}) >= 3, fresh_records
    # At the end every bar is full.
    for row in final["rows"]:
        assert row["status"] == "completed"
        assert row["value"] == row["max"] == row["records"], row
    # The hostile table name is text, never markup.
    assert final["rows"][1]["name"] == XSS_NAME
    assert (final["images"], final["xss"]) == (0, None)

    assert reopened["summary"] == final["summary"]
    assert [row["value"] for row in reopened["rows"]] == [1500, 600]
    assert "not valid for this job" in refused, refused


async def test_the_page_says_when_the_link_is_missing(local_api: Api) -> None:
    answer = await local_api.client().get("/jobs/download-records-0000000000000000")
    assert answer.status_code == 401
    assert "POST /v1/jobs/{job_id}/view-link" in answer.text
    unknown = await local_api.client().get("/static/nope.js")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == PROBLEM
